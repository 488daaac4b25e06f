"""`colorize-bench shards`: shard-building throughput on generated ImageNet-like JPEGs.

Generates (once, untimed) a folder of `--images` JPEGs at quality 90 whose longer side is 450–500 px
(≈ ImageNet's typical 500×375), made from random crops of real photos with slight brightness and
saturation jitter and luminance grain (σ 12 levels: without it the upscaled crops are smoother than
camera photos and compress to half of ImageNet's ~110 KB average; with it ≈ 90 KB), in class
subfolders; then times `build_shards` on it with the default options
(colourless check on, source bytes kept) and prints images/s, plus the CPU time per image (which,
unlike images/s, does not depend on what else the machine is running) and the load average.

`--sources folder,tar,zip` also packs the same images (untimed) as ILSVRC2012_img_train.tar is laid
out (an outer tar of one inner tar per class) and/or as a zip of the folder (JPEGs stored), and times a
build from each in turn, `--rounds` times, interleaved (folder, tar, folder, tar, …) so drift in the
machine's load hits every source alike; the last lines give each source's median and its ratio to the
folder's. Every archive build must write the folder build's shards (checked).

`--colourless table,lab` times the build side by side with the colourless check's chroma computed
two ways, interleaved like the sources: `table`, the builder's numpy lookup table
(`shards.colourless.chroma`), and `lab`, the project's torch reference (`pipeline.lab.rgb_to_lab`,
one thread per worker). Both must keep the same images (checked). The table stays in the builder only
while this shows it paying ≥ 20 % of build throughput (issue #23); the figure is in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import statistics
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

import shards.colourless
from shards.build import build_shards
from shards.demo_images import write_photo_crops
from shards.options import BuildOptions, default_workers

SOURCES = ("folder", "tar", "zip")
COLOURLESS = ("table", "lab")


def _lab_chroma(rgb: np.ndarray) -> np.ndarray:
    """CIELAB chroma (float32, H×W) of an H×W×3 uint8 sRGB image, by the torch reference `pipeline.lab`."""
    import torch

    from pipeline.lab import rgb_to_lab

    lab = rgb_to_lab(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).to(torch.float32) / 255.0)
    return torch.hypot(lab[1], lab[2]).numpy()


def _use_chroma(check: str) -> None:
    """Make the colourless check (in this process, and in the workers it forks) compute chroma by `check`."""
    if check == "lab":
        import torch

        torch.set_num_threads(1)  # the forked decode workers inherit it: one thread each, like the table
    shards.colourless.chroma = _TABLE_CHROMA if check == "table" else _lab_chroma


_TABLE_CHROMA = shards.colourless.chroma


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (pool workers, `tar`)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=2000, help="number of generated JPEGs")
    parser.add_argument("--workers", type=int, default=default_workers(), help="decode processes")
    parser.add_argument(
        "--sources",
        default="folder",
        help="comma-separated sources to build from, in turn: folder, tar (ImageNet's nested layout), zip",
    )
    parser.add_argument(
        "--colourless",
        default="table",
        help="comma-separated chroma implementations for the colourless check, timed in turn: table (the "
        "builder's lookup table), lab (the torch reference pipeline/lab.py)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="builds per source, interleaved across sources")
    parser.add_argument("--keep", action="store_true", help="keep the generated images and shards, print where")


def _pack(kind: str, folder: Path, scratch: Path) -> Path:
    """The generated folder as an archive of `kind` (untimed)."""
    if kind == "zip":
        path = scratch / "images.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            for file in sorted(folder.rglob("*.jpg")):
                archive.write(file, file.relative_to(folder).as_posix())
        return path
    path = scratch / "ILSVRC2012_img_train.tar"
    with tarfile.open(path, "w") as outer:
        for cls in sorted(p for p in folder.iterdir() if p.is_dir()):
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as inner:
                for file in sorted(cls.iterdir()):
                    inner.add(file, arcname=file.name)
            info = tarfile.TarInfo(f"{cls.name}.tar")
            info.size = buffer.tell()
            buffer.seek(0)
            outer.addfile(info, buffer)
    return path


def _timed_build(src: Path, out: Path, workers: int) -> tuple[dict, float, float]:
    """(manifest, wall seconds, CPU seconds) of one build into a fresh `out`."""
    shutil.rmtree(out, ignore_errors=True)
    cpu_before = _cpu_seconds()
    start = time.perf_counter()
    manifest = build_shards(src, out, BuildOptions(workers=workers), progress=False)
    return manifest, time.perf_counter() - start, _cpu_seconds() - cpu_before


def run(args: argparse.Namespace) -> int:
    sources = [name.strip() for name in args.sources.split(",") if name.strip()]
    if args.images < 1 or args.workers < 1 or args.rounds < 1:
        print("error: --images, --workers and --rounds must be positive", flush=True)
        return 2
    checks = [name.strip() for name in args.colourless.split(",") if name.strip()]
    if not checks or any(name not in COLOURLESS for name in checks):
        print(f"error: --colourless takes a comma-separated list of {', '.join(COLOURLESS)}", flush=True)
        return 2
    if not sources or any(name not in SOURCES for name in sources):
        print(
            f"error: --sources takes a comma-separated list of {', '.join(SOURCES)}; got {args.sources!r}", flush=True
        )
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="colorize-bench-shards-"))
    try:
        folder = scratch / "images"
        start = time.perf_counter()
        paths = write_photo_crops(
            folder, args.images, seed=0, quality=90, long_side=(450, 500), jitter=0.1, grain=12, workers=args.workers
        )
        source_bytes = sum(p.stat().st_size for p in paths)
        built_from = {name: folder if name == "folder" else _pack(name, folder, scratch) for name in sources}
        print(
            f"generated {len(paths)} JPEGs ({source_bytes / len(paths) / 1e3:.0f} KB average)"
            f"{' and packed them as ' + ', '.join(n for n in sources if n != 'folder') if set(sources) - {'folder'} else ''}"
            f" in {time.perf_counter() - start:.1f} s (not timed)",
            flush=True,
        )
        variants = [(name, check) for name in sources for check in checks]
        label = {variant: variant[0] + (f" ({variant[1]} chroma)" if len(checks) > 1 else "") for variant in variants}
        rates: dict[tuple[str, str], list[float]] = {variant: [] for variant in variants}
        first_shards: dict[str, str] | None = None
        for round_index in range(args.rounds):
            for variant in variants:
                _use_chroma(variant[1])
                manifest, seconds, cpu = _timed_build(built_from[variant[0]], scratch / "shards", args.workers)
                totals = manifest["totals"]
                rates[variant].append(totals["images"] / seconds)
                print(
                    f"shards from {label[variant]}"
                    f"{f' (round {round_index + 1}/{args.rounds})' if args.rounds > 1 else ''}: "
                    f"{totals['images']} images → {totals['kept']} kept, {len(manifest['shards'])} shards, "
                    f"{totals['bytes'] / 1e6:.1f} MB in {seconds:.2f} s with {args.workers} workers: "
                    f"{totals['images'] / seconds:.0f} images/s ({source_bytes / seconds / 1e6:.0f} MB/s of source); "
                    f"CPU {cpu:.2f} s = {1e3 * cpu / totals['images']:.2f} ms/image "
                    f"(machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)",
                    flush=True,
                )
                if totals["kept"] != totals["images"]:
                    print(f"error: expected every generated image kept, got {totals}")
                    return 1
                written = {entry["name"]: entry["sha256"] for entry in manifest["shards"]}
                first_shards = first_shards or written
                if written != first_shards:
                    print(f"error: the build from {label[variant]} wrote other shards than the first build")
                    return 1
        if len(variants) > 1 or args.rounds > 1:
            base = statistics.median(rates[variants[-1]] if len(checks) > 1 else rates[variants[0]])
            against = label[variants[-1]] if len(checks) > 1 else label[variants[0]]
            for variant in variants:
                median = statistics.median(rates[variant])
                print(
                    f"{label[variant]}: median {median:.0f} images/s over {args.rounds} run(s) "
                    f"({', '.join(f'{r:.0f}' for r in rates[variant])}) = {100 * median / base:.1f} % of {against}"
                )
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0
