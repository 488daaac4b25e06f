"""`colorize-bench loader`: the loader backends side by side on the same shards, against a baseline.

Runs each source for the same number of seconds, one after the other in one process, and prints
images/s, the ratio to `baseline` (the seed project's loader), and a bare-decode ceiling — read + full decode alone, no crop, flip
or Lab, with the same threads, batch and shards — so each pipeline's own cost is visible. Every
source yields the same output: L B×1×S×S and ab B×2×S×S float32 network Lab on `--device`.
- `--device cpu` (default without CUDA): `baseline,torch,dali`; the ceiling is DALI's CPU
  `decoders.image` (libjpeg-turbo).
- `--device cuda`: `dali,torch,torch-cpu` — DALI's GPU pipeline, the `torch` backend decoding on the
  GPU (batched nvJPEG, `data.decode_device: auto`) and decoding in its DataLoader workers with the
  batch copied to the GPU (`torch-cpu`, `decode_device: cpu`); the ceiling is DALI's `mixed`
  `decoders.image` (nvJPEG with the hardware decoder). The clock is read after
  `torch.cuda.synchronize()`, so work still queued on the GPU is not left out of a timing.

The time is split into `--rounds` rounds; each round runs every backend and then the ceiling for
its share of the seconds, after `--warmup` untimed batches (worker start and compile in the first
round; in later rounds, the batches each source queued while the others ran). A machine whose speed
drifts over a minute (a shared virtual machine) then shifts every source alike instead of skewing
the ratios; each rate is its total images over its total timed seconds.

`--also-shards LOCATION` times every backend on the same shards at another location too (an
`s3://` prefix beside a local copy, `launch/bench/pull.py`), in the same rounds; each source's bytes/s
and the store link 8,000 images/s per GPU would need are printed with the figures.

Without `--shards`, ImageNet-like shards are generated first (untimed): `--images` JPEGs at quality
90, longer side 450–500 px, from real photos with grain (`shards.demo_images.write_photo_crops`),
built with `shards.build.build_shards`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from configs import DataConfig
from configs.atomic import write_text_atomic
from launch.bench import pull
from pipeline.location import is_remote

CEILING = "decode ceiling"
CEILING_TEXT = {
    "cpu": "DALI CPU fn.decoders.image (read + full decode only), same threads and batch",
    "cuda": "DALI mixed fn.decoders.image (nvJPEG + hardware decoder; read + full decode only), same threads and batch",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shards", help="shards directory or s3://bucket/prefix (default: generate ImageNet-like shards)"
    )
    parser.add_argument(
        "--also-shards",
        action="append",
        default=[],
        metavar="LOCATION",
        help="the same shards elsewhere (e.g. s3://bucket/prefix beside a local copy): every backend is "
        "also timed on them, in the same rounds, as BACKEND@s3 or BACKEND@local (repeatable)",
    )
    parser.add_argument("--split", default="train", help="split to read (default train)")
    parser.add_argument(
        "--backends",
        help="comma-separated: baseline, torch, torch-cpu, dali (default: baseline,torch,dali "
        "on cpu, dali,torch,torch-cpu on cuda)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=256, help="crop side S (multiple of 256)")
    parser.add_argument("--crop", choices=("random_resized", "resize"), default="random_resized")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="DALI threads / DataLoader workers (default: all cores)",
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per backend")
    parser.add_argument("--warmup", type=int, default=4, help="untimed batches per source at the start of each round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds the seconds are split into")
    parser.add_argument("--images", type=int, default=1500, help="images to generate when --shards is omitted")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="also write the results here (atomically)")


def generate_shards(directory: Path, images: int, workers: int) -> Path:
    """ImageNet-like JPEG shards in `directory/shards` (see module doc); returns that path."""
    from shards.build import build_shards
    from shards.demo_images import write_photo_crops
    from shards.options import BuildOptions

    write_photo_crops(
        directory / "images", images, seed=0, quality=90, long_side=(450, 500), jitter=0.1, grain=12, workers=workers
    )
    build_shards(
        directory / "images", directory / "shards", BuildOptions(workers=workers, val_fraction=0.0), progress=False
    )
    return directory / "shards"


def _no_sync() -> None:
    pass


def _timed(batches, batch_size: int, seconds: float, warmup: int, sync=_no_sync) -> tuple[int, float]:
    """(images, seconds) from iterating the endless iterator `batches` for `seconds`, after `warmup` batches.

    `sync` (torch.cuda.synchronize on CUDA) runs before each clock reading: GPU sources return batches
    whose work may still be queued, and without it the warm-up's work would be booked to the timed
    part and the last batches' work left out.
    """
    for _ in range(warmup):
        next(batches)
    sync()
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = next(batches)
        images += batch[0].shape[0] if isinstance(batch, (tuple, list)) else batch_size
    sync()
    return images, time.perf_counter() - start


def measure_in_rounds(
    sources: dict, batch_size: int, seconds: float, warmup: int, rounds: int, sync=_no_sync
) -> dict[str, float]:
    """Images/s of each endless iterator in `sources`, timed in `rounds` interleaved rounds (module doc)."""
    totals = {name: [0, 0.0] for name in sources}
    for _ in range(rounds):
        for name, batches in sources.items():
            images, elapsed = _timed(batches, batch_size, seconds / rounds, warmup, sync)
            totals[name][0] += images
            totals[name][1] += elapsed
    return {name: images / elapsed for name, (images, elapsed) in totals.items()}


def decode_ceiling(
    shards_dir: str | Path, split: str, batch_size: int, threads: int, device: torch.device | None = None
):
    """Endless iterator over batches of DALI read + full JPEG decode only: no crop, flip, Lab or copy out.

    CPU (`device` None or cpu): libjpeg-turbo on DALI's threads. CUDA: the `mixed` decoder on
    `device` (nvJPEG, the hardware decoder taking the share the training pipeline gives it), the
    decoded H×W×3 uint8 images left in GPU memory.
    """
    from nvidia.dali import fn, pipeline_def, types

    from pipeline.shard_list import split_shards

    shards = split_shards(shards_dir, split)

    @pipeline_def
    def decode_only():
        jpegs = fn.readers.webdataset(
            paths=[str(s.path) for s in shards],
            index_paths=[str(s.index_path) for s in shards],
            ext=["jpg"],
            random_shuffle=True,
            initial_fill=1024,
        )
        if gpu:
            # The decoder settings of the training pipeline's mixed decoders (`pipeline/dali_pipeline.py`).
            return fn.decoders.image(
                jpegs, device="mixed", output_type=types.RGB, hw_decoder_load=0.65, jpeg_fancy_upsampling=True
            )
        return fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)

    gpu = device is not None and device.type == "cuda"
    device_id = None
    if device is not None and gpu:
        device_id = device.index if device.index is not None else torch.cuda.current_device()
    pipe = decode_only(batch_size=batch_size, num_threads=threads, device_id=device_id, seed=1, prefetch_queue_depth=2)
    pipe.build()
    while True:
        pipe.run()
        yield None


def _machine() -> dict:
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else ""
    )
    import nvidia.dali

    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "dali": nvidia.dali.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    return info


SOURCES = ("baseline", "torch", "torch-cpu", "dali")


def default_backends(device: str) -> str:
    """The sources timed when --backends is not given (module doc)."""
    return "dali,torch,torch-cpu" if device == "cuda" else "baseline,torch,dali"


def run(args: argparse.Namespace) -> int:
    if args.backends is None:
        args.backends = default_backends(args.device)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if "seed" in backends:
        print("error: --backends: the source 'seed' was renamed: use 'baseline'", file=sys.stderr)
        return 2
    unknown = sorted(set(backends) - set(SOURCES))
    if unknown or not backends:
        print(
            f"error: --backends {args.backends!r}: unknown backend(s) {unknown} (choose from {', '.join(SOURCES)})",
            file=sys.stderr,
        )
        return 2
    if (
        args.size <= 0
        or args.size % 256
        or args.batch_size < 1
        or args.seconds <= 0
        or args.threads < 1
        or args.rounds < 1
        or args.warmup < 0
    ):
        print(
            "error: --size must be a positive multiple of 256; --batch-size, --seconds, --threads, --rounds "
            "positive; --warmup not negative",
            file=sys.stderr,
        )
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    scratch = None
    try:
        if args.shards is None:
            scratch = Path(tempfile.mkdtemp(prefix="colorize-bench-loader-"))
            print(f"generating {args.images} ImageNet-like JPEGs and shards (not timed) …", flush=True)
            shards_dir = generate_shards(scratch, args.images, args.threads)
        else:
            shards_dir = args.shards
        return _run(args, backends, shards_dir)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _run(args, backends, shards_dir: str | Path) -> int:
    from pipeline import make_loader
    from pipeline.loader_base import BadShardError
    from pipeline.shard_list import ShardsDirError

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    try:
        sources, locations = {}, {}
        everywhere = [(loc, b) for loc in [str(shards_dir), *args.also_shards] for b in backends]
        # `baseline` (the seed's loader) reads local files only.
        for location, name in [(loc, b) for loc, b in everywhere if not (b == "baseline" and is_remote(loc))]:
            source = pull.source_name(name, location, str(shards_dir))
            locations[source] = location
            # torch-cpu: the torch backend decoding in its workers, whatever the device.
            torch_cpu = name == "torch-cpu"
            cfg = DataConfig(
                shards=location,
                backend="torch" if torch_cpu else name,
                size=args.size,
                crop=args.crop,
                batch_size=args.batch_size,
                num_threads=args.threads,
                decode_device="cpu" if torch_cpu else "auto",
            )
            sources[source] = iter(make_loader(cfg, 0, 1, device, split=args.split, endless=True))
        sources[CEILING] = decode_ceiling(shards_dir, args.split, args.batch_size, args.threads, device)
        print(
            f"timing {', '.join(sources)}: {args.rounds} round(s) of {args.seconds / args.rounds:.1f} s each …",
            flush=True,
        )
        sync = torch.cuda.synchronize if device.type == "cuda" else _no_sync
        rates = measure_in_rounds(sources, args.batch_size, args.seconds, args.warmup, args.rounds, sync)
    except (ShardsDirError, BadShardError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    del sources  # stops the DataLoader workers and DALI threads before the report
    ceiling = rates.pop(CEILING)
    results: dict[str, dict] = {name: {"images_per_s": round(rate, 1)} for name, rate in rates.items()}
    baseline_rate = results.get("baseline", {}).get("images_per_s")
    for name, r in results.items():
        r["ratio_vs_baseline"] = round(r["images_per_s"] / baseline_rate, 2) if baseline_rate else None
        r["fraction_of_decode_ceiling"] = round(r["images_per_s"] / ceiling, 3)
        # What one rank pulls from where its shards live; the same backend on the primary shards.
        r["bytes_per_s"] = round(r["images_per_s"] * pull.mean_sample_bytes(locations[name], args.split))
        r["fraction_of_primary"] = round(r["images_per_s"] / results[name.split("@")[0]]["images_per_s"], 3)
    machine = _machine() | {
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
    }
    report = {
        "backends": results,
        "decode_ceiling_images_per_s": round(ceiling, 1),
        "decode_ceiling": CEILING_TEXT[device.type],
        "settings": {
            "batch_size": args.batch_size,
            "size": args.size,
            "crop": args.crop,
            "threads": args.threads,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "device": args.device,
            "shards": str(shards_dir),
            "also_shards": args.also_shards,
        },
        "machine": machine,
        "sizing": (sizing := pull.sizing(pull.mean_sample_bytes(str(shards_dir), args.split))),
    }
    print(f"\n{'backend':10s} {'images/s':>10s} {'× baseline':>10s} {'of decode':>10s} {'MB/s':>8s}")
    for name, r in results.items():
        ratio = f"{r['ratio_vs_baseline']:.2f}" if r["ratio_vs_baseline"] is not None else "-"
        print(
            f"{name:10s} {r['images_per_s']:10.1f} {ratio:>10s} {100 * r['fraction_of_decode_ceiling']:9.0f}% "
            f"{r['bytes_per_s'] / 1e6:8.1f}"
            + (f"   {100 * r['fraction_of_primary']:.0f}% of {name.split('@')[0]}" if "@" in name else "")
        )
    print(f"{'decode':10s} {ceiling:10.1f}   (ceiling: {CEILING_TEXT[device.type]})")
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, load average {load_before:.1f} → "
        f"{machine['load_average_after']:.1f}"
    )
    print(f"sizing: {pull.sizing_line(sizing)}")
    if args.json:
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
    return 0
