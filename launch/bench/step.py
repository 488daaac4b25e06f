"""`colorize-bench step`: training-step speed on synthetic batches, per phase, and what it implies for a
full schedule.

Builds the GAN exactly as `launch/train.py` does (`launch.training.gan.build_gan`), feeds a fixed
synthetic batch already on the device (so no data wait), and times `--steps` NoGAN steps and
`--steps` GAN steps after `--warmup` untimed ones, reading the losses back once at the end as the
loop does on a logging step. The VGG feature loss is built with random weights (same cost as
ImageNet weights, no download). It also reports each step's FLOPs (so TFLOP/s and, with
`--peak-tflops`, the share of the device's peak), how many graphs torch.compile built in warm-up and
after it, and the hours `--schedule` would take on 1 and on 8 devices at the measured per-device rate.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from configs import ConfigError, load_config, scale_to_processes
from launch.training.schedule import GAN, NOGAN


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/imagenet.yaml", help="run config for model and losses")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's peak TFLOP/s at this precision, to print each phase's share of it",
    )
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
    """Hours for one device to run the schedule's NoGAN and GAN samples at the measured phase rates."""
    batch = schedule_cfg.data.batch_size
    nogan = schedule_cfg.schedule.nogan_steps * batch / images_per_s[NOGAN]
    gan = schedule_cfg.schedule.gan_steps * batch / images_per_s[GAN]
    return (nogan + gan) / 3600.0


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


def run(args: argparse.Namespace) -> int:
    from launch.train import build_accelerator
    from launch.training.gan import build_gan

    try:
        overrides = [f"run.device={args.device}", "loss.vgg_weights=none", *args.overrides, *timing_overrides(args)]
        cfg = load_config(args.config, overrides)
        schedule_cfg = load_config(args.schedule)
        if args.steps < 1 or args.warmup < 0:
            raise ConfigError("--steps must be >= 1 and --warmup >= 0")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Both phases are timed whatever the config's schedule says, so both need the feature loss decided
    # by weight alone.
    cfg = replace(cfg, schedule=replace(cfg.schedule, nogan_steps=1, gan_steps=1))
    accelerator = build_accelerator(cfg)
    cfg, _ = scale_to_processes(cfg, accelerator.num_processes)
    gan = build_gan(cfg, accelerator)
    L, ab = synthetic_batch(cfg.data.batch_size, cfg.data.size, accelerator.device)
    if accelerator.device.type == "cuda" and cfg.model.channels_last:
        L, ab = L.contiguous(memory_format=torch.channels_last), ab.contiguous(memory_format=torch.channels_last)

    device_name = (
        torch.cuda.get_device_name()
        if accelerator.device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    print(
        f"device {device_name}, precision {accelerator.mixed_precision}, batch {cfg.data.batch_size} at "
        f"{cfg.data.size}², features {cfg.model.features}/{cfg.model.disc_features}, "
        f"feature loss {'on' if gan.feature_loss is not None else 'off'} (NoGAN weight {cfg.loss.feature_weight_nogan}, "
        f"GAN weight {cfg.loss.feature_weight_gan}), compile {'on' if cfg.model.compile else 'off'}"
    )
    rates, report = (
        {},
        {
            "device": device_name,
            "precision": accelerator.mixed_precision,
            "batch": cfg.data.batch_size,
            "size": cfg.data.size,
            "compile": cfg.model.compile,
            "features": cfg.model.features,
            "feature_loss": gan.feature_loss is not None,
            "phases": {},
        },
    )
    print(
        f"{'phase':<6} {'images/s':>10} {'step ms':>10} {'TFLOP/s':>9} {'of peak':>8} {'compiles':>9} {'in timed':>9}"
    )
    for phase, fn in ((NOGAN, gan.nogan_step), (GAN, gan.gan_step)):
        before = compiled_frames()
        for _ in range(args.warmup):
            fn(L, ab)
        warmed = compiled_frames()
        seconds = _time_phase(fn, L, ab, args.steps, accelerator.device)
        # After the timed steps, what the training loop does at an evaluation (an eager eval-mode
        # forward), then one more step of the phase: neither should compile anything new.
        generator_module = accelerator.unwrap_model(gan.G)
        generator_module.eval()
        with torch.no_grad():
            generator_module.forward(L)
        generator_module.train()
        fn(L, ab)
        recompiles = compiled_frames() - warmed
        flops = step_flops(fn, L, ab)
        rates[phase] = cfg.data.batch_size / seconds
        tflops = flops / seconds / 1e12
        share = tflops / args.peak_tflops if args.peak_tflops else None
        report["phases"][phase] = {
            "images_per_s": rates[phase],
            "step_ms": 1000 * seconds,
            "flops_per_image": flops / cfg.data.batch_size,
            "tflops": tflops,
            "peak_fraction": share,
            "compiles_in_warmup": warmed - before,
            "recompiles_after_warmup": recompiles,
        }
        row = report["phases"][phase]
        print(
            f"{phase:<6} {rates[phase]:>10.2f} {1000 * seconds:>10.1f} {tflops:>9.2f} "
            f"{'' if share is None else f'{100 * share:.1f}%':>8} {row['compiles_in_warmup']:>9} "
            f"{row['recompiles_after_warmup']:>9}"
        )
    print("data wait  0 (synthetic batch already on the device; see `colorize-bench train` for the loader)")
    report["projection"] = {"config": args.schedule}
    for devices in (1, 8):
        # Each device at the measured rate (ideal data-parallel scaling), the schedule as a run on that
        # many processes would resolve it (a per-process batch grows the global batch).
        scaled, _ = scale_to_processes(schedule_cfg, devices)
        hours = projected_hours(scaled, {phase: rate * devices for phase, rate in rates.items()})
        report["projection"][f"hours_{devices}_device{'s' if devices > 1 else ''}"] = hours
        s = scaled.schedule
        print(
            f"projected for {args.schedule} on {devices} device{'s' if devices > 1 else ''} ({s.nogan_steps:,} NoGAN + "
            f"{s.gan_steps:,} GAN steps × batch {scaled.data.batch_size}): {hours:,.1f} h"
            + (" on this device" if devices == 1 else " at this device's rate each")
        )
    if args.json is not None:
        from configs.atomic import write_json_atomic

        write_json_atomic(args.json, report)
    return 0
