"""Helpers for the training tests: tiny shards from the demo photos, tiny configs, subprocess runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
TRAIN_SCRIPT = REPO / "launch" / "train.py"


def build_tiny_shards(root: Path) -> Path:
    """24 demo photos → 5 train shards (19 images) + 2 val shards (5 images) under `root/shards`."""
    from shards.build import build_shards
    from shards.demo_images import write_demo_images
    from shards.options import BuildOptions

    photos = root / "photos"
    write_demo_images(photos, count=24, seed=0)
    out = root / "shards"
    build_shards(photos, out, BuildOptions(shard_samples=4, val_fraction=0.25, workers=1), progress=False)
    return out


def tiny_config(path: Path, shards: Path, out_dir: Path, **sections) -> Path:
    """Write a debug-sized run config (features 8, batch 2, 256², cheap logging) with `sections` merged in."""
    tree = {
        "run": {"name": "tiny", "out_dir": str(out_dir), "seed": 0, "device": "cpu"},
        "data": {
            "shards": str(shards),
            "backend": "dali",
            "size": 256,
            "batch_size": 2,
            "num_threads": 1,
            "shuffle_buffer": 8,
            "crop": "random_resized",
        },
        "model": {"features": 8, "disc_features": 8},
        "loss": {"vgg_weights": "none", "feature_weight_nogan": 0.0},
        "schedule": {"nogan_steps": 2, "gan_steps": 2},
        "logging": {
            "wandb": "disabled",
            "every_steps": 1,
            "sample_every_steps": 1000,
            "eval_every_steps": 1000,
            "eval_batches": 1,
            "sample_count": 2,
        },
        "checkpoint": {"every_steps": 1000, "keep_last": 2},
    }
    for section, values in sections.items():
        tree.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(tree))
    return path


def small_gan(*overrides: str):
    """A `ColorizationGAN` built as training builds it, on the CPU: width 8, batch 2, no VGG, `overrides` on top."""
    from configs import load_config
    from launch.train import build_accelerator
    from launch.training.gan import build_gan

    cfg = load_config(
        None,
        [
            "run.device=cpu",
            "model.features=8",
            "model.disc_features=8",
            "data.batch_size=2",
            "loss.feature_weight_nogan=0",
            *overrides,
        ],
    )
    return build_gan(cfg, build_accelerator(cfg))


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a child training process: offline W&B, single-threaded BLAS, no GPU."""
    env = dict(os.environ)
    # W&B in this test process (`colorize-wandb sync` in-process) leaves its service's address here;
    # a child would log through that service instead of starting its own.
    env.pop("WANDB_SERVICE", None)
    env.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    env.update(extra)
    return env


def run_train(args: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python launch/train.py ARGS` in a child process (one rank)."""
    return subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *args],
        cwd=REPO,
        env=env or subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def kill_after_checkpoint(
    args: list[str], checkpoint: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`python launch/train.py ARGS` in a child process, SIGKILLed as soon as the checkpoint folder
    `checkpoint` (`<run dir>/checkpoints/step_<n>`) exists: a hard crash at a known point. The folder
    appears complete (renamed from `step_<n>.tmp`), so the child may have run on a little past it."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(
            [sys.executable, str(TRAIN_SCRIPT), *args], cwd=REPO, env=env or subprocess_env(), stdout=out, stderr=err
        )
        deadline = time.monotonic() + timeout
        while not checkpoint.is_dir() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        out.seek(0), err.seek(0)
        return subprocess.CompletedProcess(child.args, child.returncode, out.read(), err.read())


def accelerate_cmd(*launch_args: str) -> list[str]:
    return [str(VENV_BIN / "accelerate"), "launch", *launch_args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wandb_records(path: Path) -> list[dict]:
    """Every record of a W&B run's transaction log (`run-<id>.wandb`, or the run folder holding it), read
    by W&B's own reader: `wandb leet inspect --json` (wandb ≥ 0.30; one JSON object per record, each
    with "type" and a field of that name)."""
    result = subprocess.run(
        [str(VENV_BIN / "wandb"), "leet", "inspect", "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def wandb_history(path: Path) -> list[dict]:
    """The history rows (key → value; media as `<key>._type`, `<key>.path`, …) of a W&B run file."""
    return [record["history"]["item"] for record in wandb_records(path) if record["type"] == "history"]
