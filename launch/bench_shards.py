"""`colorize-bench shards`: shard-building throughput on generated ImageNet-like JPEGs.

Generates (once, untimed) a folder of `--images` JPEGs at quality 90 whose longer side is 450–500 px
(≈ ImageNet's typical 500×375), made from random crops of real photos with slight brightness and
saturation jitter and luminance grain (σ 12 levels: without it the upscaled crops are smoother than
camera photos and compress to half of ImageNet's ~110 KB average; with it ≈ 90 KB), in class
subfolders; then times `build_shards` on it with the default options
(colourless check on, source bytes kept) and prints images/s, plus the CPU time per image (which,
unlike images/s, does not depend on what else the machine is running) and the load average.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from shards.build import build_shards
from shards.demo_images import write_photo_crops
from shards.options import BuildOptions, default_workers


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (pool workers, `tar`)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=2000, help="number of generated JPEGs")
    parser.add_argument("--workers", type=int, default=default_workers(), help="decode processes")
    parser.add_argument("--keep", action="store_true", help="keep the generated images and shards, print where")


def run(args: argparse.Namespace) -> int:
    if args.images < 1 or args.workers < 1:
        print("error: --images and --workers must be positive", flush=True)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="colorize-bench-shards-"))
    try:
        source, out = scratch / "images", scratch / "shards"
        start = time.perf_counter()
        paths = write_photo_crops(source, args.images, seed=0, quality=90, long_side=(450, 500), jitter=0.1, grain=12,
                                  workers=args.workers)
        source_bytes = sum(p.stat().st_size for p in paths)
        print(
            f"generated {len(paths)} JPEGs ({source_bytes / len(paths) / 1e3:.0f} KB average) "
            f"in {time.perf_counter() - start:.1f} s (not timed)",
            flush=True,
        )
        cpu_before = _cpu_seconds()
        start = time.perf_counter()
        manifest = build_shards(source, out, BuildOptions(workers=args.workers), progress=False)
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu_before
        totals = manifest["totals"]
        print(
            f"shards: {totals['images']} images → {totals['kept']} kept, {len(manifest['shards'])} shards, "
            f"{totals['bytes'] / 1e6:.1f} MB in {seconds:.2f} s with {args.workers} workers: "
            f"{totals['images'] / seconds:.0f} images/s ({source_bytes / seconds / 1e6:.0f} MB/s of source); "
            f"CPU {cpu:.2f} s = {1e3 * cpu / totals['images']:.2f} ms/image "
            f"(machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
        )
        if totals["kept"] != totals["images"]:
            print(f"error: expected every generated image kept, got {totals}")
            return 1
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0
