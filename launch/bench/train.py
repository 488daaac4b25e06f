"""`colorize-bench train`: end-to-end training speed with the real loader — a short run of both phases
through `launch/train.py`'s own loop, timed from the metrics it logs.

Runs `--warmup + --steps` steps of each phase (NoGAN, critic warm-up, GAN) in a temporary run
directory (W&B off),
logging every step, then reports per phase, over the steps after warm-up: images/s, step ms and the
data-wait fraction (time blocked on the loader / step time), plus the hours `--schedule`'s steps would
take on this device at the measured rates (divide by the GPU count for ideal data-parallel scaling).
Single process; for several GPUs run `launch/train.py` itself under `accelerate launch`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from configs import ConfigError, load_config
from launch.bench.step import add_timing_arguments, projected_hours, schedule_text, timing_overrides
from launch.training.schedule import PHASES

NEVER = 10**9  # a cadence longer than the run: samples/eval/checkpoints only where the loop forces them


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/demo.yaml", help="run config (model, data, losses)")
    parser.add_argument("--shards", default=None, help="shards directory (default: the config's data.shards)")
    add_timing_arguments(parser, steps=20, warmup=3)


def phase_figures(records: list[dict], phase: str, warmup: int, batch: int) -> dict[str, float]:
    """images/s, step ms and data-wait fraction of `phase` over its logged steps after the first `warmup`."""
    rows = [r for r in records if r.get("phase") == phase and "perf/step_ms" in r][warmup:]
    if not rows:
        raise ValueError(f"no timed {phase} steps")
    total_ms = sum(r["perf/step_ms"] for r in rows)
    wait_ms = sum(r["perf/step_ms"] * r["data/wait_fraction"] for r in rows)
    step_ms = total_ms / len(rows)
    return {"images_per_s": 1000.0 * batch / step_ms, "step_ms": step_ms, "wait_fraction": wait_ms / total_ms}


def run(args: argparse.Namespace) -> int:
    from launch.train import main as train_main
    from launch.training.tracking import read_metrics

    if args.steps < 1 or args.warmup < 0:
        print("error: --steps must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="colorize-bench-train-") as out_dir:
        per_phase = args.steps + args.warmup
        overrides = [
            f"run.device={args.device}",
            f"run.out_dir={out_dir}",
            "run.name=bench",
            f"schedule.nogan_steps={per_phase}",
            f"schedule.critic_steps={per_phase}",
            f"schedule.gan_steps={per_phase}",
            "logging.wandb=disabled",
            "logging.every_steps=1",
            f"logging.sample_every_steps={NEVER}",
            f"logging.eval_every_steps={NEVER}",
            "logging.eval_batches=1",
            f"checkpoint.every_steps={NEVER}",
            *args.overrides,
        ]
        if args.shards is not None:
            overrides.append(f"data.shards={args.shards}")
        overrides += timing_overrides(args)
        try:
            cfg = load_config(args.config, overrides)
            schedule_cfg = load_config(args.schedule)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        status = train_main(["--config", args.config, *overrides])
        if status != 0:
            return status
        records = read_metrics(Path(out_dir) / "bench" / "metrics.jsonl")
    figures = {phase: phase_figures(records, phase, args.warmup, cfg.data.batch_size) for phase in PHASES}
    print(
        f"backend {cfg.data.backend}, batch {cfg.data.batch_size} at {cfg.data.size}², features "
        f"{cfg.model.features}/{cfg.model.disc_features}, {args.steps} timed steps per phase after {args.warmup}"
    )
    print(f"{'phase':<6} {'images/s':>10} {'step ms':>10} {'data wait':>10}")
    for phase, f in figures.items():
        print(f"{phase:<6} {f['images_per_s']:>10.2f} {f['step_ms']:>10.1f} {100 * f['wait_fraction']:>9.1f}%")
    rates = {phase: f["images_per_s"] for phase, f in figures.items()}
    print(
        f"projected for {args.schedule} ({schedule_text(schedule_cfg.schedule)} × batch "
        f"{schedule_cfg.data.batch_size}): {projected_hours(schedule_cfg, rates):,.1f} h on this device"
    )
    return 0
