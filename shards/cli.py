"""`colorize-shards`: build, verify, and make demo images. User mistakes print one `error:` line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from shards.errors import ShardsError
from shards.options import (
    DEFAULT_QUALITY,
    DEFAULT_SHARD_SAMPLES,
    DEFAULT_VAL_FRACTION,
    BuildOptions,
    default_workers,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="colorize-shards",
        description="Turn an image folder (ImageNet train/ layout or any tree) into WebDataset shards.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser(
        "build",
        help="build shuffled train/val shards, DALI indexes and manifest.json (resumes a killed build)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    build.add_argument("src", type=Path, help="source image folder (class subfolders become `cls`)")
    build.add_argument("out", type=Path, help="output shards folder (created; resumed if it holds this build)")
    build.add_argument("--workers", type=int, default=default_workers(), help="decode processes")
    build.add_argument("--shard-samples", type=int, default=DEFAULT_SHARD_SAMPLES, help="images planned per shard")
    build.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION, help="fraction of images in val")
    build.add_argument("--seed", type=int, default=0, help="seed of the global shuffle")
    build.add_argument("--short-side", type=int, default=None, help="downsize images whose shorter side is larger")
    build.add_argument("--quality", type=int, default=DEFAULT_QUALITY, help="JPEG quality of re-encoded images")
    build.add_argument("--keep-colourless", action="store_true", help="keep greyscale/colourless images")
    build.add_argument("--quiet", action="store_true", help="no progress bar")

    verify = commands.add_parser("verify", help="check every shard and index against manifest.json")
    verify.add_argument("out", type=Path, help="shards folder")

    demo = commands.add_parser(
        "demo-images",
        help="write the demo photo set (crops of photos shipped with scikit-image)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument("dir", type=Path, help="folder for the training photos (one subfolder per class)")
    demo.add_argument("--count", type=int, default=400, help="number of training photos")
    demo.add_argument("--seed", type=int, default=0, help="seed of the crops")
    demo.add_argument("--heldout", type=Path, default=None, help="also write held-out test photos here")
    return parser


def _build(args) -> int:
    from shards.build import build_shards

    options = BuildOptions(
        shard_samples=args.shard_samples,
        val_fraction=args.val_fraction,
        seed=args.seed,
        short_side=args.short_side,
        quality=args.quality,
        keep_colourless=args.keep_colourless,
        workers=args.workers,
    )
    start = time.perf_counter()
    manifest = build_shards(args.src, args.out, options, progress=not args.quiet)
    seconds = time.perf_counter() - start
    totals, counts = manifest["totals"], manifest["splits"]
    print(
        f"{totals['images']} images → kept {totals['kept']} (train {counts['train']}, val {counts['val']}, "
        f"re-encoded {totals['converted']}), colourless {totals['colourless']}"
        f"{' (kept)' if options.keep_colourless else ' (dropped)'}, skipped {totals['skipped']}; "
        f"{len(manifest['shards'])} shards, {totals['bytes'] / 1e6:.1f} MB; {seconds:.1f} s "
        f"in this run → {args.out / 'manifest.json'}"
    )
    for item in manifest["skipped"][:10]:
        print(f"  skipped {item['path']}: {item['reason']}")
    if len(manifest["skipped"]) > 10:
        print(f"  … {len(manifest['skipped']) - 10} more skipped files listed in the manifest")
    return 0


def _verify(args) -> int:
    from shards.verify import verify_shards

    problems = verify_shards(args.out)
    if problems:
        print(f"error: {problems[0]}", file=sys.stderr)
        for problem in problems[1:]:
            print(f"  also: {problem}", file=sys.stderr)
        return 1
    print(f"{args.out}: all shards and indexes match manifest.json")
    return 0


def _demo_images(args) -> int:
    from shards.demo_images import write_demo_images, write_heldout_photos

    if args.count < 1:
        raise ShardsError(f"--count must be positive, got {args.count}")
    paths = write_demo_images(args.dir, count=args.count, seed=args.seed, workers=default_workers())
    print(f"wrote {len(paths)} demo photos in {len({p.parent for p in paths})} class folders under {args.dir}")
    if args.heldout is not None:
        held = write_heldout_photos(args.heldout)
        print(f"wrote {len(held)} held-out photos to {args.heldout}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"build": _build, "verify": _verify, "demo-images": _demo_images}
    try:
        return commands[args.command](args)
    except ShardsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted (run the same command again to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
