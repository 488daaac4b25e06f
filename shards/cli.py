"""`colorize-shards`: build (whole, or in parts), merge parts, verify, and make demo images.

User mistakes print one `error:` line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pipeline.location import base_name, is_remote, join
from pipeline.shard_list import MANIFEST_FILE, ShardsDirError
from shards.errors import BuildError
from shards.keys import display_path
from shards.options import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_QUALITY,
    DEFAULT_SHARD_SAMPLES,
    DEFAULT_VAL_FRACTION,
    BuildOptions,
    default_workers,
)

STAGING_HELP = (
    "s3:// OUT only: local folder where shards are written before upload, with the build's lock and "
    "progress records (default: ~/.cache/colorize-shards/<bucket>/<prefix>)"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="colorize-shards",
        description="Turn an image folder or archive (ImageNet's tar or zip, or any tree) into WebDataset shards.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser(
        "build",
        help="build shuffled train/val shards, DALI indexes and manifest.json (resumes a killed build)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    build.add_argument(
        "src",
        type=Path,
        help="source image folder, or a .tar / .zip of one read in place (class subfolders, or inner per-class "
        ".tar files as in ILSVRC2012_img_train.tar, become `cls`)",
    )
    build.add_argument(
        "out",
        help="output shards folder (created; resumed if it holds this build), or an object-store prefix "
        "s3://bucket/prefix (endpoint and credentials from the AWS environment: AWS_ENDPOINT_URL, …)",
    )
    build.add_argument("--workers", type=int, default=default_workers(), help="decode processes")
    build.add_argument("--shard-samples", type=int, default=DEFAULT_SHARD_SAMPLES, help="images planned per shard")
    build.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION, help="fraction of images in val")
    build.add_argument("--seed", type=int, default=0, help="seed of the global shuffle")
    build.add_argument("--short-side", type=int, default=None, help="downsize images whose shorter side is larger")
    build.add_argument("--quality", type=int, default=DEFAULT_QUALITY, help="JPEG quality of re-encoded images")
    build.add_argument("--keep-colourless", action="store_true", help="keep greyscale/colourless images")
    build.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="skip images with more pixels (width × height) than this, undecoded; bounds each worker's memory",
    )
    build.add_argument(
        "--split",
        choices=("train", "val"),
        default=None,
        help="put every image into this split (e.g. ILSVRC2012_img_val.tar → val shards) "
        "instead of choosing by --val-fraction",
    )
    build.add_argument(
        "--inside",
        default=None,
        metavar="FOLDER",
        help="build from this folder of SRC (Kaggle's zip: ILSVRC/Data/CLS-LOC/train)",
    )
    build.add_argument(
        "--part",
        default=None,
        metavar="K/N",
        help="build only the K-th of N disjoint parts of the plan (N machines, one OUT); "
        "the last part to finish writes manifest.json",
    )
    build.add_argument(
        "--quiet", action="store_true", help="no progress bar and no next-step hint: the summary line alone"
    )
    build.add_argument("--staging", default=None, metavar="DIR", help=STAGING_HELP)

    merge = commands.add_parser("merge", help="check the parts of a --part K/N build and write manifest.json")
    merge.add_argument("out", help="shards folder (or s3://bucket/prefix) all parts were built into")
    merge.add_argument("--staging", default=None, metavar="DIR", help=STAGING_HELP)

    verify = commands.add_parser("verify", help="check every shard and index against manifest.json")
    verify.add_argument("out", help="shards folder, or s3://bucket/prefix (each shard is downloaded and re-hashed)")

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


def _summary(manifest: dict, keep_colourless: bool) -> str:
    totals, counts = manifest["totals"], manifest["splits"]
    return (
        f"{totals['images']} images → kept {totals['kept']} (train {counts['train']}, val {counts['val']}, "
        f"re-encoded {totals['converted']}), colourless {totals['colourless']}"
        f"{' (kept)' if keep_colourless else ' (dropped)'}, skipped {totals['skipped']}; "
        f"{len(manifest['shards'])} shards, {totals['bytes'] / 1e6:.1f} MB"
    )


def _print_skipped(manifest: dict) -> None:
    for item in manifest["skipped"][:10]:
        print(f"  skipped {display_path(item['path'])}: {item['reason']}")
    if len(manifest["skipped"]) > 10:
        print(f"  … {len(manifest['skipped']) - 10} more skipped files listed in the manifest")


def _build(args) -> int:
    from shards.build import build_shards
    from shards.parts import parse_part

    options = BuildOptions(
        shard_samples=args.shard_samples,
        val_fraction=args.val_fraction,
        seed=args.seed,
        short_side=args.short_side,
        quality=args.quality,
        keep_colourless=args.keep_colourless,
        max_pixels=args.max_pixels,
        split=args.split,
        workers=args.workers,
    )
    part = parse_part(args.part) if args.part is not None else None
    start = time.perf_counter()
    manifest = build_shards(
        args.src, args.out, options, progress=not args.quiet, inside=args.inside, part=part, staging=args.staging
    )
    seconds = time.perf_counter() - start
    if "missing" in manifest:  # a part, and other parts have not finished yet
        waiting = ", ".join(map(str, manifest["missing"]))
        print(
            f"part {manifest['part']}/{manifest['parts']}: {_summary(manifest, options.keep_colourless)}; "
            f"{seconds:.1f} s in this run. Waiting for part(s) {waiting}: the last part to finish writes "
            f"manifest.json (or run `colorize-shards merge {args.out}` once all have finished)"
        )
    else:
        merged = f"all {part[1]} parts merged; " if part else ""
        print(
            f"{merged}{_summary(manifest, options.keep_colourless)}; {seconds:.1f} s in this run → "
            f"{display_path(str(join(args.out, MANIFEST_FILE)))}"
        )
    _print_skipped(manifest)
    status = _nothing_kept(manifest, args.out)
    if status == 0 and "missing" not in manifest and not args.quiet:
        print(
            f"next: colorize-train --config configs/demo.yaml data.shards={args.out} run.name={base_name(args.out)}"
            "   (configs/imagenet.yaml for an ImageNet-sized set)"
        )
    return status


def _nothing_kept(manifest: dict, out) -> int:
    """1 with an error line when a finished build kept no image (nothing to train on), else 0."""
    if "missing" in manifest or manifest["shards"]:
        return 0
    totals = manifest["totals"]
    print(
        f"error: no image of the source was kept ({totals['skipped']} skipped, {totals['colourless']} colourless): "
        f"{display_path(str(join(out, MANIFEST_FILE)))} lists each with its reason",
        file=sys.stderr,
    )
    return 1


def _merge(args) -> int:
    from shards.lock import OutputLock, role_of
    from shards.parts import merge_parts

    if is_remote(args.out):
        manifest = _merge_store(args)
    elif not (Path(args.out) / "parts").is_dir():
        manifest = merge_parts(args.out)  # no parts: says so, without creating anything in OUT
    else:
        with OutputLock(Path(args.out), role_of(None, merge=True)):
            manifest = merge_parts(args.out)
    print(
        f"{_summary(manifest, manifest['options']['keep_colourless'])} → "
        f"{display_path(str(join(args.out, MANIFEST_FILE)))}"
    )
    _print_skipped(manifest)
    return _nothing_kept(manifest, args.out)


def _merge_store(args) -> dict:
    """`merge` of parts built into an `s3://` prefix: their part files are fetched into the staging
    folder, merged there (shards checked by their size and SHA-256 in the store), the manifest uploaded."""
    from shards.lock import OutputLock, role_of
    from shards.output_dir import prepare_output
    from shards.parts import merge_parts
    from shards.store_output import StoreOutput, default_staging

    store = StoreOutput(args.out, Path(args.staging) if args.staging else default_staging(args.out))
    prepare_output(store.stage)
    with OutputLock(store.stage, role_of(None, merge=True)), store.naming():
        store.pull_parts()
        manifest = merge_parts(store.stage, store.check_shard)
        store.publish_manifest()
    return manifest


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
        raise BuildError(f"--count must be positive, got {args.count}")
    paths = write_demo_images(args.dir, count=args.count, seed=args.seed, workers=default_workers())
    print(f"wrote {len(paths)} demo photos in {len({p.parent for p in paths})} class folders under {args.dir}")
    if args.heldout is not None:
        held = write_heldout_photos(args.heldout)
        print(f"wrote {len(held)} held-out photos to {args.heldout}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"build": _build, "merge": _merge, "verify": _verify, "demo-images": _demo_images}
    try:
        return commands[args.command](args)
    except (BuildError, ShardsDirError) as error:
        print(f"error: {display_path(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted (run the same command again to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
