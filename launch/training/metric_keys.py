"""The one list of metric keys the trainer logs to W&B (and to `metrics.jsonl`), by dashboard section.

The trainer's W&B logging (`launch/training/wandb_run.py`) and the dashboard (`colorize-wandb
dashboard`) both read these; the tests check that every key in a real run's `metrics.jsonl` is listed
here and that every dashboard panel names a key from here.
"""

from __future__ import annotations

STEP = "step"
"""The x-axis of every panel: the completed optimiser step (W&B's `_step` is the same number)."""
SAMPLES_SEEN = "samples_seen"
"""Images trained on so far (step × global batch): an alternative x-axis across batch sizes."""
AXES = (STEP, SAMPLES_SEEN)

NOGAN_LOSSES = ("train/l1", "train/feature", "train/g_total")
GAN_LOSSES = (
    "train/g_adv",
    "train/l1",
    "train/feature",
    "train/g_total",
    "train/d_real",
    "train/d_fake",
    "train/d_total",
)
CRITIC_LOSSES = ("train/d_real", "train/d_fake", "train/d_total")
"""The critic warm-up's terms (D alone), as in GAN."""
D_OUTPUTS = ("train/d_out_real", "train/d_out_fake")
D_ACCURACY = ("train/d_acc_real", "train/d_acc_fake")
"""The share of D's patch logits on the right side of 0 (real > 0, fake < 0): critic warm-up and GAN."""
LEARNING_RATES = ("train/lr_g", "train/lr_d")
TRAIN = tuple(dict.fromkeys((*NOGAN_LOSSES, *GAN_LOSSES, *CRITIC_LOSSES, *D_OUTPUTS, *D_ACCURACY, *LEARNING_RATES)))

PERF = ("perf/images_per_s", "perf/step_ms", "perf/eta_hours")
DATA = ("data/wait_fraction",)
EMA_EVAL = ("eval/ema/ab_l1", "eval/ema/psnr")
"""The generator's average (`model.ema_decay` > 0) on the same validation images."""
EVAL = ("eval/ab_l1", "eval/ab_l1_grey", "eval/psnr", "eval/psnr_grey", *EMA_EVAL)
"""Validation figures beside the grey (ab = 0) baseline."""

SAMPLE_GRID = "samples/grid"
SAMPLE_TABLE = "samples/table"
MEDIA = (SAMPLE_GRID, SAMPLE_TABLE)
SAMPLE_TABLE_COLUMNS = ("index", "grey", "prediction", "truth", "ab_l1", "psnr")

SCALARS = (*TRAIN, *PERF, *DATA, *EVAL)
"""Every number the trainer logs (each `metrics.jsonl` line holds some of these besides step/phase)."""
ALL = (*AXES, *SCALARS, *MEDIA)

SUMMARIES = {
    "eval/ab_l1": "min",
    "eval/psnr": "max",
    "eval/ema/ab_l1": "min",
    "eval/ema/psnr": "max",
    **{key: "mean" for key in (*PERF, *DATA)},
}
"""W&B run summaries that are not simply the last value: best eval figures, mean throughput."""
