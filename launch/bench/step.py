"""`colorize-bench step`: training-step speed on synthetic batches, per phase, and what it implies for a
full schedule.

Builds the GAN exactly as `launch/train.py` does (`launch.training.gan.build_gan`), feeds a fixed
synthetic batch already on the device (so no data wait), and times `--steps` steps of each phase
(NoGAN, critic warm-up, GAN) after `--warmup` untimed ones, reading the losses back once at the end as
the loop does on a logging step. With `model.ema_decay` > 0 (the ImageNet config's), the NoGAN and
GAN steps include the update of the generator's average, and that update is also timed alone
(`ema_update_ms`); `model.ema_decay=0` measures the steps without it. The VGG feature loss is built with random weights (same cost as
ImageNet weights, no download). Per phase it reports images/s, step time, FLOPs per image (so
TFLOP/s and, with `--peak-tflops`, the share of the device's peak), the warm-up's time beyond its
steps' own (with `--compile`: mostly compilation), how many graphs torch.compile built in warm-up and
after it, and on CUDA the peak memory allocated and reserved. Then the hours `--schedule` would take
on 1 and on 8 devices at the measured per-device rates (from the first batch size).

`--batch-sizes 64,128,256` repeats the measurement at each batch size in one process (the networks
are built once; smallest first, so a run cut short or out of memory keeps the small ones).
`--profile-dir DIR` then records `--profile-steps` more steps of each phase with `torch.profiler`
(host and CUDA activity) into `DIR/trace-<phase>-b<batch>.json.gz`, a gzipped Chrome trace (open in
Perfetto or chrome://tracing). With `--json`, the figures are rewritten after every phase, so a run
killed midway leaves what it measured.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from configs import ConfigError, load_config, scale_to_processes
from launch.training.schedule import CRITIC, GAN, NOGAN, PHASES, TITLES, phase_steps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/imagenet.yaml", help="run config for model and losses")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's peak TFLOP/s at this precision, to print each phase's share of it",
    )
    parser.add_argument(
        "--batch-sizes",
        help="comma-separated batch sizes measured one after the other, e.g. 64,128,256 "
        "(default: --batch-size or the config's)",
    )
    parser.add_argument("--profile-dir", type=Path, help="write a gzipped torch.profiler trace per phase here")
    parser.add_argument("--profile-steps", type=int, default=5, help="steps per phase in each trace (default 5)")
    add_timing_arguments(parser, steps=10, warmup=2)


def add_timing_arguments(parser: argparse.ArgumentParser, steps: int, warmup: int) -> None:
    """The options `colorize-bench step` and `colorize-bench train` share."""
    parser.add_argument("--schedule", default="configs/imagenet.yaml", help="config whose schedule is projected")
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default: the config's)")
    parser.add_argument("--steps", type=int, default=steps, help="timed steps per phase")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed steps per phase before timing")
    parser.add_argument("--compile", action="store_true", help="torch.compile both networks (model.compile)")
    parser.add_argument("--json", type=Path, help="also write the figures here (atomically)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--features", type=int, default=None, help="generator width (default: the config's)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="further config overrides")


def timing_overrides(args: argparse.Namespace) -> list[str]:
    """Config overrides for the shared options (`add_timing_arguments`) that were given."""
    overrides = []
    if args.batch_size is not None:
        overrides.append(f"data.batch_size={args.batch_size}")
    if args.features is not None:
        overrides.append(f"model.features={args.features}")
    if args.compile:
        overrides.append("model.compile=true")
    return overrides


def synthetic_batch(batch: int, size: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random colour batch: (L_net B×1×S×S, ab_net B×2×S×S) in [-1, 1] on `device`."""
    from pipeline.lab import rgb_to_network

    g = torch.Generator().manual_seed(seed)
    rgb = torch.nn.functional.interpolate(torch.rand(batch, 3, 16, 16, generator=g), size=size, mode="bilinear")
    L, ab = rgb_to_network(rgb)
    return L.to(device), ab.to(device)


def projected_hours(schedule_cfg, images_per_s: dict[str, float]) -> float:
    """Hours for one device to run the schedule's samples of each phase (NoGAN, critic warm-up, GAN)
    at the measured phase rates (a phase the schedule does not run needs none)."""
    batch = schedule_cfg.data.batch_size
    seconds = 0.0
    for phase in PHASES:
        steps = phase_steps(phase, schedule_cfg.schedule)
        if steps:
            seconds += steps * batch / images_per_s[phase]
    return seconds / 3600.0


def schedule_text(schedule) -> str:
    """`50,000 NoGAN + 10,000 critic warm-up + 75,000 GAN steps` (phases of 0 steps left out)."""
    parts = [f"{phase_steps(p, schedule):,} {TITLES[p]}" for p in PHASES if phase_steps(p, schedule) or p != CRITIC]
    return " + ".join(parts) + " steps"


def time_ema_update(gan, steps: int, warmup: int, device: torch.device) -> float:
    """Milliseconds per update of the generator's average alone (after `warmup` untimed ones)."""
    assert gan.ema is not None
    for _ in range(warmup):
        gan.ema.update()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        gan.ema.update()
    _sync(device)
    return 1000 * (time.perf_counter() - start) / steps


def _time_phase(step_fn, L, ab, steps: int, device: torch.device) -> float:
    """Seconds per step of `step_fn`, synchronised like the training loop: the host queues the steps
    and reads the losses back once at the end (the loop's sync point on a logging step)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        terms = step_fn(L, ab)
    torch.stack([t.float() for t in terms.values()]).tolist()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def compiled_frames() -> int:
    """Frames torch.compile has compiled in this process so far (first compiles and recompiles)."""
    from torch._dynamo.utils import counters

    return int(counters["frames"]["ok"])


def step_flops(step_fn, L, ab) -> int:
    """Floating-point operations of one step (forward, backward; torch's FlopCounterMode), counted on
    the eager networks: compiled graphs hide their operations from the counter."""
    import torch._dynamo
    from torch.utils.flop_counter import FlopCounterMode

    with torch._dynamo.config.patch(disable=True), FlopCounterMode(display=False) as counter:
        step_fn(L, ab)
    return int(counter.get_total_flops())


def batch_sizes(args: argparse.Namespace, config_batch: int) -> list[int]:
    """The batch sizes to measure: `--batch-sizes`, else the config's (after `--batch-size`)."""
    if not args.batch_sizes:
        return [config_batch]
    try:
        sizes = [int(part) for part in args.batch_sizes.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--batch-sizes {args.batch_sizes!r}: expected comma-separated integers") from None
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"--batch-sizes {args.batch_sizes!r}: expected positive integers")
    return sizes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_phase(step_fn, L, ab, steps: int, path: Path) -> dict:
    """Record `steps` steps of `step_fn` with torch.profiler into `path` (a gzipped Chrome trace);
    returns the trace's name and size and the 8 operations with the most self device time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if L.is_cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            terms = step_fn(L, ab)
        torch.stack([t.float() for t in terms.values()]).tolist()
    raw = path.with_suffix("")  # trace-….json
    path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(raw))
    with open(raw, "rb") as source, gzip.open(path, "wb", compresslevel=6) as target:
        shutil.copyfileobj(source, target)
    raw.unlink()

    def device_us(event) -> float:
        return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)))

    averages = sorted(prof.key_averages(), key=device_us, reverse=True)[:8]
    top = [
        {"name": event.key[:80], "calls": event.count, "self_device_ms": round(device_us(event) / 1000 / steps, 3)}
        for event in averages
        if device_us(event) > 0
    ]
    return {"trace": path.name, "trace_bytes": path.stat().st_size, "profiled_steps": steps, "top_ops_per_step": top}


def measure_phase(step_fn, L, ab, args: argparse.Namespace, flops_per_image: dict, phase: str, gan) -> dict:
    """One phase at one batch size: warm-up, timed steps, the evaluation check, FLOPs (counted once per
    phase, at the first batch size), peak memory on CUDA, and a profiler trace when asked."""
    device, batch = L.device, L.shape[0]
    cuda = device.type == "cuda"
    if cuda:
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    before = compiled_frames()
    started = time.perf_counter()
    for _ in range(args.warmup):
        step_fn(L, ab)
    _sync(device)
    warmup_s = time.perf_counter() - started
    warmed = compiled_frames()
    seconds = _time_phase(step_fn, L, ab, args.steps, device)
    # After the timed steps, what the training loop does at an evaluation (an eager eval-mode
    # forward), then one more step of the phase: neither should compile anything new.
    generator_module = gan.accelerator.unwrap_model(gan.G)
    generator_module.eval()
    with torch.no_grad():
        generator_module.forward(L)
    generator_module.train()
    step_fn(L, ab)
    recompiles = compiled_frames() - warmed
    if phase not in flops_per_image:
        flops_per_image[phase] = step_flops(step_fn, L, ab) / batch
    tflops = flops_per_image[phase] * batch / seconds / 1e12
    row = {
        "images_per_s": batch / seconds,
        "step_ms": 1000 * seconds,
        "flops_per_image": flops_per_image[phase],
        "tflops": tflops,
        "peak_fraction": tflops / args.peak_tflops if args.peak_tflops else None,
        "warmup_s": warmup_s,
        # Warm-up time beyond its steps' own: compilation, cuDNN autotuning, first allocations.
        "warmup_overhead_s": max(0.0, warmup_s - args.warmup * seconds),
        "compiles_in_warmup": warmed - before,
        "recompiles_after_warmup": recompiles,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30 if cuda else None,
    }
    if args.profile_dir is not None:
        path = args.profile_dir / f"trace-{phase}-b{batch}.json.gz"
        row["profile"] = profile_phase(step_fn, L, ab, args.profile_steps, path)
    return row


def run(args: argparse.Namespace) -> int:
    from launch.train import build_accelerator
    from launch.training.gan import build_gan

    try:
        overrides = [f"run.device={args.device}", "loss.vgg_weights=none", *args.overrides, *timing_overrides(args)]
        cfg = load_config(args.config, overrides)
        schedule_cfg = load_config(args.schedule)
        if args.steps < 1 or args.warmup < 0 or args.profile_steps < 1:
            raise ConfigError("--steps and --profile-steps must be >= 1 and --warmup >= 0")
        sizes = batch_sizes(args, cfg.data.batch_size)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Both phases are timed whatever the config's schedule says, so both need the feature loss decided
    # by weight alone.
    cfg = replace(cfg, schedule=replace(cfg.schedule, nogan_steps=1, critic_steps=1, gan_steps=1))
    accelerator = build_accelerator(cfg)
    cfg, _ = scale_to_processes(cfg, accelerator.num_processes)
    gan = build_gan(cfg, accelerator)
    device = accelerator.device
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"device {device_name}, precision {accelerator.mixed_precision}, batch {', '.join(map(str, sizes))} at "
        f"{cfg.data.size}², features {cfg.model.features}/{cfg.model.disc_features}, "
        f"feature loss {'on' if gan.feature_loss is not None else 'off'} (NoGAN weight {cfg.loss.feature_weight_nogan}, "
        f"GAN weight {cfg.loss.feature_weight_gan}), compile {'on' if cfg.model.compile else 'off'}, "
        f"EMA generator {f'on (decay {cfg.model.ema_decay:g})' if gan.ema is not None else 'off'}"
    )
    report: dict = {
        "device": device_name,
        "precision": accelerator.mixed_precision,
        "batch": sizes[0],
        "size": cfg.data.size,
        "compile": cfg.model.compile,
        "features": cfg.model.features,
        "feature_loss": gan.feature_loss is not None,
        "ema_decay": cfg.model.ema_decay,
        "phases": {},
        "runs": [],
        "complete": False,
    }

    def save() -> None:
        if args.json is not None:
            from configs.atomic import write_json_atomic

            write_json_atomic(args.json, report)

    save()
    print(
        f"{'batch':>5} {'phase':<6} {'images/s':>10} {'step ms':>10} {'TFLOP/s':>9} {'of peak':>8} "
        f"{'compiles':>9} {'in timed':>9} {'peak GiB':>9}"
    )
    flops_per_image: dict[str, float] = {}
    for batch in sizes:
        L, ab = synthetic_batch(batch, cfg.data.size, device)
        if device.type == "cuda" and cfg.model.channels_last:
            L, ab = L.contiguous(memory_format=torch.channels_last), ab.contiguous(memory_format=torch.channels_last)
        run_record: dict = {"batch": batch, "phases": {}}
        report["runs"].append(run_record)
        try:
            for phase, fn in ((NOGAN, gan.nogan_step), (CRITIC, gan.critic_step), (GAN, gan.gan_step)):
                row = run_record["phases"][phase] = measure_phase(fn, L, ab, args, flops_per_image, phase, gan)
                share, peak = row["peak_fraction"], row["peak_memory_gib"]
                print(
                    f"{batch:>5} {phase:<6} {row['images_per_s']:>10.2f} {row['step_ms']:>10.1f} {row['tflops']:>9.2f} "
                    f"{'' if share is None else f'{100 * share:.1f}%':>8} {row['compiles_in_warmup']:>9} "
                    f"{row['recompiles_after_warmup']:>9} {'' if peak is None else f'{peak:.1f}':>9}",
                    flush=True,
                )
                save()
        except torch.OutOfMemoryError:
            run_record["error"] = "out of memory"
            print(f"{batch:>5} out of memory: larger batches are not tried", flush=True)
            del L, ab
            torch.cuda.empty_cache()
            save()
            break
    report["phases"] = report["runs"][0]["phases"]
    if gan.ema is not None:
        report["ema_update_ms"] = time_ema_update(gan, args.steps, args.warmup, device)
        print(f"EMA update alone: {report['ema_update_ms']:.2f} ms (included in each NoGAN and GAN step above)")
        save()
    print("data wait  0 (synthetic batch already on the device; see `colorize-bench train` for the loader)")
    rates = {phase: row["images_per_s"] for phase, row in report["phases"].items()}
    report["projection"] = {"config": args.schedule}
    if len(rates) == len(PHASES):
        for devices in (1, 8):
            # Each device at the measured rate (ideal data-parallel scaling), the schedule as a run on that
            # many processes would resolve it (a per-process batch grows the global batch).
            scaled, _ = scale_to_processes(schedule_cfg, devices)
            hours = projected_hours(scaled, {phase: rate * devices for phase, rate in rates.items()})
            report["projection"][f"hours_{devices}_device{'s' if devices > 1 else ''}"] = hours
            s = scaled.schedule
            print(
                f"projected for {args.schedule} on {devices} device{'s' if devices > 1 else ''} ({schedule_text(s)} "
                f"× batch {scaled.data.batch_size}): {hours:,.1f} h"
                + (" on this device" if devices == 1 else " at this device's rate each")
            )
    report["complete"] = True
    save()
    return 0
