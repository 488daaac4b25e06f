"""Print whether the demo run learned, from its `metrics.jsonl`.

    python launch/demo_report.py runs/demo

Two checks, each printed with its numbers: the mean train/l1 over the last tenth of the NoGAN steps is
at most 0.8× the mean over the first tenth, and the final eval/ab_l1 (CIELAB units) is below the grey
baseline's (ab = 0). Also lists where the pictures are. Exit 0 when both hold, 1 otherwise, 2 when
the run has no usable metrics.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from launch.training.tracking import read_metrics

L1_RATIO_LIMIT = 0.8


def nogan_l1_tenths(records: list[dict]) -> tuple[float, float]:
    """(mean train/l1 over the first tenth, over the last tenth) of the logged NoGAN steps."""
    points = [(r["step"], r["train/l1"]) for r in records if r.get("phase") == "nogan" and "train/l1" in r]
    if len(points) < 2:
        raise ValueError("fewer than two logged NoGAN steps")
    last_step = max(step for step, _ in points)
    tenth = max(1, last_step // 10)
    first = [v for s, v in points if s <= tenth]
    last = [v for s, v in points if s > last_step - tenth]
    return sum(first) / len(first), sum(last) / len(last)


def final_eval(records: list[dict]) -> dict:
    """The last record holding eval/ab_l1 and its grey baseline."""
    evals = [r for r in records if "eval/ab_l1" in r]
    if not evals:
        raise ValueError("no eval/ab_l1 record")
    return evals[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="run directory, e.g. runs/demo")
    args = parser.parse_args(argv)
    path = args.run_dir / "metrics.jsonl"
    try:
        records = read_metrics(path)
        first, last = nogan_l1_tenths(records)
        final = final_eval(records)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {path}: {exc}", file=sys.stderr)
        return 2
    ratio = last / first
    learned_l1 = ratio <= L1_RATIO_LIMIT
    beats_grey = final["eval/ab_l1"] < final["eval/ab_l1_grey"]
    print(
        f"NoGAN train/l1: first tenth {first:.4f} → last tenth {last:.4f} "
        f"(×{ratio:.2f}; needs ≤ ×{L1_RATIO_LIMIT}) {'OK' if learned_l1 else 'NOT MET'}"
    )
    print(
        f"val ab-L1 at step {final['step']}: {final['eval/ab_l1']:.3f} vs grey baseline "
        f"{final['eval/ab_l1_grey']:.3f} (CIELAB units; PSNR {final['eval/psnr']:.2f} dB vs "
        f"{final['eval/psnr_grey']:.2f} dB) {'OK' if beats_grey else 'NOT MET'}"
    )
    samples = sorted((args.run_dir / "samples").glob("step_*.png"), key=lambda p: int(p.stem.split("_")[1]))
    if samples:
        print(f"sample grids (grey | prediction | truth): {args.run_dir / 'samples'}/ (latest {samples[-1].name})")
    print(f"colourised held-out photos: {args.run_dir / 'colorized'}/")
    return 0 if learned_l1 and beats_grey else 1


if __name__ == "__main__":
    sys.exit(main())
