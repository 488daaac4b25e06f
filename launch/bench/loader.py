"""`colorize-bench loader`: the loader backends side by side on the same shards, against a baseline.

Runs each source for the same number of seconds, one after the other in one process, and prints
images/s, the ratio to `baseline` (the seed project's loader), and a bare-decode ceiling: the same
read and the same JPEG decode the training pipeline does — with `crop: random_resized` on the train
split, DALI's random-crop decode of only the crop's region (`decoders.image_random_crop`, the
config's `crop_scale` and `crop_ratio`), else the whole image — and nothing after it (no resize,
flip, Lab or copy out), with the same threads, batch and shards. So each pipeline's own cost is
visible, and no pipeline can beat its ceiling by decoding less than it. Every source yields the same
output: L B×1×S×S and ab B×2×S×S float32 network Lab on `--device`.
- `--device cpu` (default without CUDA): `baseline,torch,dali`; the ceiling is DALI's CPU decoder
  (libjpeg-turbo).
- `--device cuda`: `dali,torch,torch-cpu` — DALI's GPU pipeline, the `torch` backend decoding on the
  GPU (batched nvJPEG, `data.decode_device: auto`) and decoding in its DataLoader workers with the
  batch copied to the GPU (`torch-cpu`, `decode_device: cpu`); the ceiling is DALI's `mixed` decoder
  (nvJPEG, fancy upsampling as in training) at `hw_decoder_load` 0 (CUDA cores only), 0.65 (the
  training pipeline's share for the hardware decoder) and 1, and the best of the three is the
  ceiling the fractions use. NVML's JPEG-engine utilisation during each source
  (`launch.bench.gpu_monitor`) says whether the hardware decoder took part. The clock is read after
  `torch.cuda.synchronize()`, so work still queued on the GPU is not left out of a timing.

Batch, threads, crop and shuffle buffer are the training run's when `--config` names its config
(`--config configs/imagenet.yaml`: batch 64, 8 threads); otherwise batch 32 and all cores. Options
given explicitly win over the config.

The time is split into `--rounds` rounds; each round runs every source for its share of the seconds,
after `--warmup` untimed batches (worker start and compile in the first round; in later rounds, the
batches each source queued while the others ran). A machine whose speed drifts over a minute (a
shared virtual machine) then shifts every source alike instead of skewing the ratios; each rate is its
total images over its total timed seconds. With `--json`, the figures so far are rewritten after
every round (`complete` false until the last), so a run cut short keeps what it measured.

`--also-shards LOCATION` times every backend on the same shards at another location too (an
`s3://` prefix beside a local copy, `launch/bench/pull.py`), in the same rounds; each source's bytes/s
and the store link 8,000 images/s per GPU would need are printed with the figures. With `--cache-dir
DIR`, `dali` on `s3://` shards is also timed reading node-local copies made in DIR (`data.cache_dir`,
`pipeline/shard_cache.py`) as `dali@s3+cache`, in a fresh folder inside DIR removed at the end (so
the copy is made, and timed, every run); the seconds each source took to start (for the cached one:
copying its shards) are printed beside its rate.

Without `--shards`, ImageNet-like shards are generated first (untimed): `--images` JPEGs at quality
90, longer side 450–500 px, from real photos with grain (`shards.demo_images.write_photo_crops`),
built with `shards.build.build_shards`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from configs import ConfigError, DataConfig, load_config
from configs.atomic import write_text_atomic
from launch.bench import pull
from pipeline.location import is_remote

CEILING = "ceiling"
HW_DECODER_LOADS = (0.0, 0.65, 1.0)
"""`hw_decoder_load` values the CUDA ceiling is measured at (the training pipeline uses 0.65)."""
CEILING_TEXT = {
    "cpu": "DALI CPU decoder (libjpeg-turbo): read + the training decode only ({decode}), same threads and batch",
    "cuda": "DALI mixed decoder (nvJPEG): read + the training decode only ({decode}), same threads and batch; "
    "best of hw_decoder_load 0, 0.65, 1",
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
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="with s3:// shards: also time `dali` reading node-local copies of them (data.cache_dir), as "
        "dali@s3+cache, made afresh in a folder inside this directory (removed at the end), so the copy is timed too",
    )
    parser.add_argument("--split", default="train", help="split to read (default train)")
    parser.add_argument(
        "--backends",
        help="comma-separated: baseline, torch, torch-cpu, dali (default: baseline,torch,dali "
        "on cpu, dali,torch,torch-cpu on cuda)",
    )
    parser.add_argument("--config", help="run config whose data section sets batch, threads, crop (module doc)")
    parser.add_argument("--batch-size", type=int, help="images per batch (default: the config's, else 32)")
    parser.add_argument("--size", type=int, help="crop side S, a multiple of 256 (default: the config's, else 256)")
    parser.add_argument(
        "--crop", choices=("random_resized", "resize"), help="default: the config's, else random_resized"
    )
    parser.add_argument(
        "--threads", type=int, help="DALI threads / DataLoader workers (default: the config's, else all cores)"
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
    sources: dict,
    batch_size: int,
    seconds: float,
    warmup: int,
    rounds: int,
    sync=_no_sync,
    monitor=None,
    after_round=None,
) -> tuple[dict[str, float], dict[str, dict | None]]:
    """Images/s of each endless iterator in `sources`, timed in `rounds` interleaved rounds (module doc),
    and, with a `JpegEngineMonitor`, each source's JPEG-engine utilisation over its timed seconds.
    `after_round(rounds done, rates so far, utilisation)` runs after every round."""
    totals = {name: [0, 0.0] for name in sources}
    spans: dict[str, list[dict]] = {name: [] for name in sources}
    for done in range(1, rounds + 1):
        for name, batches in sources.items():
            if monitor is not None:
                for _ in range(warmup):  # the warm-up stays out of the utilisation span too
                    next(batches)
                sync()
                monitor.begin()
                images, elapsed = _timed(batches, batch_size, seconds / rounds, 0, sync)
                if (span := monitor.end()) is not None:
                    spans[name].append(span)
            else:
                images, elapsed = _timed(batches, batch_size, seconds / rounds, warmup, sync)
            totals[name][0] += images
            totals[name][1] += elapsed
        rates = {name: images / elapsed for name, (images, elapsed) in totals.items()}
        utilisation = {name: merge_spans(spans[name]) for name in sources}
        if after_round is not None:
            after_round(done, rates, utilisation)
    return rates, utilisation


def merge_spans(spans: list[dict]) -> dict | None:
    """One source's JPEG-engine utilisation over all its rounds (sample-weighted mean, overall max)."""
    counted = [span for span in spans if span["samples"]]
    if not counted:
        return None
    samples = sum(span["samples"] for span in counted)
    mean = sum(span["mean_percent"] * span["samples"] for span in counted) / samples
    return {
        "mean_percent": round(mean, 1),
        "max_percent": max(span["max_percent"] for span in counted),
        "samples": samples,
    }


def hardware_decoder_verdict(monitor, utilisation: dict[str, dict | None], device: torch.device) -> dict:
    """Whether the hardware JPEG decoder took part: NVJPG busy while DALI or a ceiling with a
    hardware share ran (None when it could not be read)."""
    if device.type != "cuda":
        return {"used": None, "evidence": "CPU run"}
    if monitor is None or not monitor.available:
        return {"used": None, "evidence": monitor.reason if monitor is not None else "not monitored"}
    busy = {name: u["max_percent"] for name, u in utilisation.items() if u is not None}
    if not busy:
        return {"used": None, "evidence": "no NVML samples during the timed seconds"}
    with_share = {name: value for name, value in busy.items() if not name.endswith("hw_decoder_load 0")}
    return {
        "used": max(with_share.values(), default=0) > 0,
        "evidence": "NVJPG max utilisation % per source: " + ", ".join(f"{k} {v}" for k, v in busy.items()),
    }


def training_decode(cfg: DataConfig, split: str) -> str:
    """Which decode the training pipeline runs for `cfg` on `split` (`pipeline/dali_pipeline.py`)."""
    return "random-crop ROI decode" if split == "train" and cfg.crop == "random_resized" else "full decode"


def decode_ceiling(
    shards_dir: str | Path,
    split: str,
    cfg: DataConfig,
    device: torch.device | None = None,
    hw_decoder_load: float = 0.65,
):
    """Endless iterator over batches of DALI read + the training pipeline's JPEG decode only: no resize,
    flip, Lab or copy out (module doc). Batch, threads, shuffle buffer and prefetch are `cfg`'s.

    CPU (`device` None or cpu): libjpeg-turbo on DALI's threads. CUDA: the `mixed` decoder on `device`
    (nvJPEG with fancy upsampling, as in training; the hardware decoder takes `hw_decoder_load` of each
    batch where the chip has one), the decoded H×W×3 uint8 images left in GPU memory.
    """
    from nvidia.dali import fn, pipeline_def, types

    from pipeline.shard_list import split_shards

    shards = split_shards(shards_dir, split)
    gpu = device is not None and device.type == "cuda"
    decoder = {"device": "mixed", "hw_decoder_load": hw_decoder_load, "jpeg_fancy_upsampling": True} if gpu else {}
    random_crop = training_decode(cfg, split) != "full decode"

    @pipeline_def
    def decode_only():
        jpegs = fn.readers.webdataset(
            paths=[str(s.path) for s in shards],
            index_paths=[str(s.index_path) for s in shards],
            ext=["jpg"],
            random_shuffle=True,
            initial_fill=cfg.shuffle_buffer,
        )
        # The decoder settings of the training pipeline (`pipeline/dali_pipeline.py`).
        if random_crop:
            return fn.decoders.image_random_crop(
                jpegs,
                output_type=types.RGB,
                random_area=list(cfg.crop_scale),
                random_aspect_ratio=list(cfg.crop_ratio),
                num_attempts=10,
                **decoder,
            )
        return fn.decoders.image(jpegs, output_type=types.RGB, **decoder)

    device_id = None
    if device is not None and gpu:
        device_id = device.index if device.index is not None else torch.cuda.current_device()
    pipe = decode_only(
        batch_size=cfg.batch_size,
        num_threads=cfg.num_threads,
        device_id=device_id,
        seed=1,
        prefetch_queue_depth=cfg.prefetch,
    )
    pipe.build()
    while True:
        pipe.run()
        yield None


def ceiling_names(device: torch.device) -> dict[str, float | None]:
    """The ceiling sources timed on `device` → their `hw_decoder_load` (None on the CPU)."""
    if device.type != "cuda":
        return {CEILING: None}
    return {f"{CEILING}, hw_decoder_load {load:g}": load for load in HW_DECODER_LOADS}


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


def data_settings(args: argparse.Namespace) -> DataConfig:
    """The data section the sources share: `--config`'s (else batch 32 on all cores), then the
    options given explicitly."""
    base = load_config(args.config).data if args.config else DataConfig(num_threads=os.cpu_count() or 1)
    given = {"batch_size": args.batch_size, "num_threads": args.threads, "size": args.size, "crop": args.crop}
    return dataclasses.replace(base, **{key: value for key, value in given.items() if value is not None})


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
    try:
        data = data_settings(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if (
        data.size <= 0
        or data.size % 256
        or data.batch_size < 1
        or args.seconds <= 0
        or data.num_threads < 1
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
            shards_dir = generate_shards(scratch, args.images, data.num_threads)
        else:
            shards_dir = args.shards
        return _run(args, backends, dataclasses.replace(data, shards=str(shards_dir)))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _run(args, backends, data: DataConfig) -> int:
    from pipeline import make_loader
    from pipeline.loader_base import BadShardError
    from pipeline.shard_list import ShardsDirError

    device = torch.device(args.device)
    shards_dir = data.shards  # a folder or s3://bucket/prefix
    torch.set_num_threads(data.num_threads)
    load_before = os.getloadavg()[0]
    monitor = None
    if device.type == "cuda":
        from launch.bench.gpu_monitor import JpegEngineMonitor

        monitor = JpegEngineMonitor(device.index if device.index is not None else torch.cuda.current_device())
    settings = {
        "config": args.config,
        "batch_size": data.batch_size,
        "size": data.size,
        "crop": data.crop,
        "crop_scale": list(data.crop_scale),
        "crop_ratio": list(data.crop_ratio),
        "threads": data.num_threads,
        "ceiling_decode": training_decode(data, args.split),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "device": args.device,
        "shards": shards_dir,
        "also_shards": args.also_shards,
        "cache_dir": str(args.cache_dir) if args.cache_dir else None,
    }
    ceilings = ceiling_names(device)
    locations: dict[str, str] = {}
    startup: dict[str, float] = {}  # source → seconds to build its loader (for a cached one: the copy)
    scratch_cache = ""
    text = CEILING_TEXT[device.type].format(decode=training_decode(data, args.split))

    def report_for(rates: dict[str, float], utilisation: dict, rounds_done: int) -> dict:
        ceiling_rates = {name: rates[name] for name in ceilings if name in rates}
        best = max(ceiling_rates.values())
        results: dict[str, dict] = {
            name: {"images_per_s": round(rate, 1)} for name, rate in rates.items() if name not in ceilings
        }
        baseline_rate = results.get("baseline", {}).get("images_per_s")
        for name, r in results.items():
            r["ratio_vs_baseline"] = round(r["images_per_s"] / baseline_rate, 2) if baseline_rate else None
            r["fraction_of_decode_ceiling"] = round(r["images_per_s"] / best, 3)
            # What one rank pulls from where its shards live; the same backend on the primary shards.
            r["bytes_per_s"] = round(r["images_per_s"] * pull.mean_sample_bytes(locations[name], args.split))
            r["fraction_of_primary"] = round(r["images_per_s"] / results[name.split("@")[0]]["images_per_s"], 3)
            r["startup_s"] = round(startup[name], 2)
            if device.type == "cuda":
                r["jpeg_engine_utilisation"] = utilisation.get(name)
        return {
            "backends": results,
            "decode_ceiling_images_per_s": round(best, 1),
            "decode_ceiling": text,
            "ceilings": {
                name: {
                    "hw_decoder_load": ceilings[name],
                    "images_per_s": round(rate, 1),
                    "jpeg_engine_utilisation": utilisation.get(name),
                }
                for name, rate in ceiling_rates.items()
            },
            "hardware_decoder": hardware_decoder_verdict(monitor, utilisation, device),
            "settings": settings,
            "sizing": pull.sizing(pull.mean_sample_bytes(shards_dir, args.split)),
            "complete": rounds_done == args.rounds,
            "rounds_done": rounds_done,
        }

    def after_round(done: int, rates: dict[str, float], utilisation: dict) -> None:
        if args.json:
            write_text_atomic(args.json, json.dumps(report_for(rates, utilisation, done), indent=2) + "\n")

    try:
        sources = {}
        # (location, backend, cache dir): `baseline` (the seed's loader) reads local files only.
        everywhere = [
            (loc, b, "")
            for loc in [shards_dir, *args.also_shards]
            for b in backends
            if not (b == "baseline" and is_remote(loc))
        ]
        if args.cache_dir:
            # A fresh folder inside DIR, removed at the end: the copy is timed, and nothing of DIR is touched.
            args.cache_dir.mkdir(parents=True, exist_ok=True)
            scratch_cache = tempfile.mkdtemp(prefix="colorize-bench-cache-", dir=args.cache_dir)
            everywhere += [
                (loc, "dali", scratch_cache) for loc, b, _ in list(everywhere) if b == "dali" and is_remote(loc)
            ]
        for location, name, cache_dir in everywhere:
            source = pull.source_name(name, location, shards_dir) + ("+cache" if cache_dir else "")
            locations[source] = location
            # torch-cpu: the torch backend decoding in its workers, whatever the device.
            torch_cpu = name == "torch-cpu"
            cfg = dataclasses.replace(
                data,
                shards=location,
                backend="torch" if torch_cpu else name,
                decode_device="cpu" if torch_cpu else "auto",
                cache_dir=cache_dir,
            )
            start = time.perf_counter()
            sources[source] = iter(make_loader(cfg, 0, 1, device, split=args.split, endless=True))
            startup[source] = time.perf_counter() - start
        for name, load in ceilings.items():
            sources[name] = decode_ceiling(
                shards_dir, args.split, data, device, hw_decoder_load=0.65 if load is None else load
            )
        print(
            f"timing {', '.join(sources)}: {args.rounds} round(s) of {args.seconds / args.rounds:.1f} s each, "
            f"batch {data.batch_size}, {data.num_threads} threads …",
            flush=True,
        )
        sync = torch.cuda.synchronize if device.type == "cuda" else _no_sync
        rates, utilisation = measure_in_rounds(
            sources, data.batch_size, args.seconds, args.warmup, args.rounds, sync, monitor, after_round
        )
    except (ShardsDirError, BadShardError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if monitor is not None:
            monitor.close()
        if scratch_cache:
            shutil.rmtree(scratch_cache, ignore_errors=True)
    del sources  # stops the DataLoader workers and DALI threads before the report
    report = report_for(rates, utilisation, args.rounds)
    report["machine"] = _machine() | {
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
    }
    machine = report["machine"]
    print(
        f"\n{'backend':14s} {'images/s':>10s} {'× baseline':>10s} {'of decode':>10s} {'MB/s':>8s} {'NVJPG max':>10s}"
        f" {'start s':>8s}"
    )
    for name, r in report["backends"].items():
        ratio = f"{r['ratio_vs_baseline']:.2f}" if r["ratio_vs_baseline"] is not None else "-"
        print(
            f"{name:14s} {r['images_per_s']:10.1f} {ratio:>10s} {100 * r['fraction_of_decode_ceiling']:9.0f}% "
            f"{r['bytes_per_s'] / 1e6:8.1f} {_percent(r.get('jpeg_engine_utilisation')):>10s} {r['startup_s']:8.1f}"
            + (f"   {100 * r['fraction_of_primary']:.0f}% of {name.split('@')[0]}" if "@" in name else "")
        )
    for name, c in report["ceilings"].items():
        print(f"{name}: {c['images_per_s']:.1f} images/s, NVJPG max {_percent(c['jpeg_engine_utilisation'])}")
    print(f"ceiling: {text}")
    if device.type == "cuda":
        verdict = report["hardware_decoder"]
        print(f"hardware JPEG decoder used: {verdict['used']} ({verdict['evidence']})")
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, load average {load_before:.1f} → "
        f"{machine['load_average_after']:.1f}"
    )
    print(f"sizing: {pull.sizing_line(report['sizing'])}")
    if args.json:
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
    return 0


def _percent(utilisation: dict | None) -> str:
    return "-" if not utilisation or utilisation.get("max_percent") is None else f"{utilisation['max_percent']}%"
