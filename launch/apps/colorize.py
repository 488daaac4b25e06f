"""`colorize`: colourise photos at full resolution with a trained generator.

    colorize photo.jpg --weights runs/demo/generator.safetensors            → colorized/photo.png
    colorize album/ "scans/*.tif" --weights G.safetensors --out out/ --format jpg --side-by-side
    colorize old.jpg --weights G_1_2000000_gan.pth --out old-colour.jpg     (one input, a file name)

Inputs are files, folders (searched recursively for image extensions) and glob patterns. Outputs go
to `--out` (a folder, default `colorized/`) as `<stem>.png` (or `.jpg` with `--format jpg`); a file
found in a folder keeps its sub-folder under `--out`. With exactly one input, `--out` may instead be
a file name ending in .png/.jpg/.jpeg, which also picks the format. `--side-by-side` adds
`<stem>_side_by_side.<ext>`: the input's lightness (grey) beside the result, same height.

An input that cannot be read is reported ("skipped x.jpg: cannot identify image file") and the rest
are still written; the exit status is then 1. Bad weights or options: one `error:` line, status 2.
"""

from __future__ import annotations

import argparse
import glob
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.image_io import IMAGE_EXTENSIONS, OUTPUT_FORMATS, ImageReadError, read_image, write_image

_GLOB_CHARS = set("*?[")
# Images decoded at once: enough for same-shape inputs to fill batches, few enough to bound memory.
_WINDOW_BATCHES = 4


class UsageError(ValueError):
    """A command-line mistake; printed as one `error:` line."""


@dataclass
class Job:
    """One input file and where its result goes."""

    source: Path
    output: Path

    @property
    def side_by_side(self) -> Path:
        return self.output.with_name(f"{self.output.stem}_side_by_side{self.output.suffix}")


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def expand_inputs(inputs: list[str]) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Resolve files, folders and globs into (file, path relative to the output folder) pairs.

    Returns the pairs in command-line order (folder contents sorted) and the problems found
    ("no such file or folder", "no files match"), one line each.
    """
    found: list[tuple[Path, Path]] = []
    problems: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and _is_image_name(p))
            if not files:
                problems.append(f"{item}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            found += [(p, p.relative_to(path)) for p in files]
        elif path.is_file():
            found.append((path, Path(path.name)))
        elif _GLOB_CHARS & set(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
            files = [p for p in matches if p.is_file()]
            if not files:
                problems.append(f"{item}: no files match")
            found += [(p, Path(p.name)) for p in files]
        else:
            problems.append(f"{item}: no such file or folder")
    return found, problems


def plan_outputs(sources: list[tuple[Path, Path]], out: str, fmt: str) -> list[Job]:
    """Map inputs to output paths; raise UsageError when two inputs would write the same file."""
    out_path = Path(out)
    if out_path.suffix.lower() in OUTPUT_FORMATS:
        if len(sources) != 1:
            raise UsageError(f"--out {out} names one file, but {len(sources)} inputs were given; pass a folder")
        return [Job(sources[0][0], out_path)]
    if out_path.suffix and not out_path.is_dir():
        raise UsageError(
            f"--out {out}: a file name must end in {', '.join(OUTPUT_FORMATS)}; a folder name has no suffix"
        )
    jobs: list[Job] = []
    seen: dict[Path, Path] = {}
    for source, relative in sources:
        target = out_path / relative.parent / f"{relative.stem}.{fmt}"
        if target in seen:
            raise UsageError(f"{seen[target]} and {source} would both be written to {target}; rename one or run twice")
        seen[target] = source
        jobs.append(Job(source, target))
    return jobs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="colorize",
        description="Colourise photos at full resolution: the network predicts colour on a copy whose "
        "long side is --size, upsampled and recombined with the original's lightness.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) or glob patterns")
    parser.add_argument("--weights", required=True, help="generator.safetensors (ours) or a seed G_*.pth")
    parser.add_argument(
        "--out",
        default="colorized",
        help="output folder (default: colorized/), or with one input a file name ending in .png/.jpg",
    )
    parser.add_argument(
        "--format", choices=("png", "jpg"), default="png", help="output format in a folder (default: png)"
    )
    parser.add_argument(
        "--side-by-side", action="store_true", help="also write <stem>_side_by_side: grey input | colour result"
    )
    parser.add_argument(
        "--size",
        type=int,
        default=512,
        help="long side of the network's input, rounded to a multiple of 256 (default: 512)",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda (default: auto)")
    parser.add_argument(
        "--batch-size", type=int, default=8, help="images per network call; same-shape inputs are grouped (default: 8)"
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    from models.export import load_generator
    from pipeline.inference import Colorizer, resolve_device

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.size < 128:
        raise UsageError(f"--size must be at least 128, got {args.size}")
    sources, problems = expand_inputs(args.inputs)
    for problem in problems:
        print(f"skipped {problem}", file=sys.stderr)
    if not sources:
        raise UsageError("no input images found")
    jobs = plan_outputs(sources, args.out, args.format)
    try:
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as exc:
        raise UsageError(f"--device {args.device}: {exc}") from None
    generator, _ = load_generator(args.weights, device=device)
    colorizer = Colorizer(generator, device=device, size=args.size)

    failed_jobs = 0
    window = args.batch_size * _WINDOW_BATCHES
    with tqdm(total=len(jobs), unit="img", disable=len(jobs) < 2, file=sys.stderr) as bar:
        for start in range(0, len(jobs), window):
            ready: list[tuple[Job, np.ndarray]] = []
            for job in jobs[start : start + window]:
                try:
                    ready.append((job, read_image(job.source)))
                except ImageReadError as exc:
                    tqdm.write(f"skipped {job.source}: {exc}", file=sys.stderr)
                    failed_jobs += 1
                    bar.update(1)
            results = colorizer.colorize([rgb for _, rgb in ready], args.batch_size, with_grey=args.side_by_side)
            for (job, _), result in zip(ready, results, strict=True):
                try:
                    write_image(job.output, result.rgb)
                    if args.side_by_side:
                        assert result.grey is not None  # asked for with with_grey
                        write_image(job.side_by_side, np.concatenate((result.grey, result.rgb), axis=1))
                except OSError as exc:
                    tqdm.write(f"failed {job.output}: {exc.strerror or exc}", file=sys.stderr)
                    failed_jobs += 1
                bar.update(1)
    failed = failed_jobs + len(problems)
    written = len(jobs) - failed_jobs
    print(
        f"colorize: wrote {written} image(s) to {Path(args.out)}" + (f", {failed} failed" if failed else ""),
        file=sys.stderr,
    )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    from models.export import WeightsError

    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (UsageError, WeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
