"""Print whether the demo run learned, from its `metrics.jsonl`.

    python launch/demo_report.py runs/demo

Two checks, each printed with its numbers: the mean train/l1 over the last tenth of the NoGAN steps is
at most 0.8× the mean over the first tenth, and the final val ab-L1 (CIELAB units) is below the grey
baseline's (ab = 0): the generator's (eval/ab_l1) and, when the run keeps one, its average's
(eval/ema/ab_l1), side by side. With a critic warm-up, also how well D told G's colours from the real
ones at its first and last logged step (train/d_acc_fake, train/d_acc_real: the share of patches on
the right side). Lists where the pictures are. Exit 0 when the checks hold, 1 otherwise, 2 when the
run has no usable metrics.
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


def critic_accuracy(records: list[dict]) -> tuple[dict, dict] | None:
    """(first, last) logged critic warm-up records holding train/d_acc_fake, or None without any."""
    rows = [r for r in records if r.get("phase") == "critic" and "train/d_acc_fake" in r]
    return (rows[0], rows[-1]) if rows else None


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
    grey = final["eval/ab_l1_grey"]
    scored = [final[key] for key in ("eval/ab_l1", "eval/ema/ab_l1") if key in final]
    beats_grey = all(value < grey for value in scored)
    print(
        f"NoGAN train/l1: first tenth {first:.4f} → last tenth {last:.4f} "
        f"(×{ratio:.2f}; needs ≤ ×{L1_RATIO_LIMIT}) {'OK' if learned_l1 else 'NOT MET'}"
    )
    if "eval/ema/ab_l1" in final:
        print(
            f"val ab-L1 at step {final['step']}: generator {final['eval/ab_l1']:.3f}, EMA generator "
            f"{final['eval/ema/ab_l1']:.3f} vs grey baseline {grey:.3f} (CIELAB units; PSNR "
            f"{final['eval/psnr']:.2f} / {final['eval/ema/psnr']:.2f} dB vs {final['eval/psnr_grey']:.2f} dB; "
            f"both need to beat grey) {'OK' if beats_grey else 'NOT MET'}"
        )
    else:
        print(
            f"val ab-L1 at step {final['step']}: {final['eval/ab_l1']:.3f} vs grey baseline "
            f"{grey:.3f} (CIELAB units; PSNR {final['eval/psnr']:.2f} dB vs "
            f"{final['eval/psnr_grey']:.2f} dB) {'OK' if beats_grey else 'NOT MET'}"
        )
    critic = critic_accuracy(records)
    if critic is not None:
        start, end = critic
        print(
            f"critic warm-up: D's accuracy on G's colours {start['train/d_acc_fake']:.2f} (step {start['step']}) "
            f"→ {end['train/d_acc_fake']:.2f} (step {end['step']}); on real colours "
            f"{start['train/d_acc_real']:.2f} → {end['train/d_acc_real']:.2f}"
        )
    samples = sorted((args.run_dir / "samples").glob("step_*.png"), key=lambda p: int(p.stem.split("_")[1]))
    if samples:
        print(f"sample grids (grey | prediction | truth): {args.run_dir / 'samples'}/ (latest {samples[-1].name})")
    print(f"colourised held-out photos: {args.run_dir / 'colorized'}/")
    return 0 if learned_l1 and beats_grey else 1


if __name__ == "__main__":
    sys.exit(main())
