"""Helpers for the training tests: tiny shards from the demo photos, tiny configs, subprocess runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
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
        "data": {"shards": str(shards), "backend": "dali", "size": 256, "batch_size": 2, "num_threads": 1,
                 "shuffle_buffer": 8, "crop": "random_resized"},
        "model": {"features": 8, "disc_features": 8},
        "loss": {"vgg_weights": "none", "feature_weight_nogan": 0.0},
        "schedule": {"nogan_steps": 2, "gan_steps": 2},
        "logging": {"wandb": "disabled", "every_steps": 1, "sample_every_steps": 1000, "eval_every_steps": 1000,
                    "eval_batches": 1, "sample_count": 2},
        "checkpoint": {"every_steps": 1000, "keep_last": 2},
    }
    for section, values in sections.items():
        tree.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(tree))
    return path


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a child training process: offline W&B, single-threaded BLAS, no GPU."""
    env = dict(os.environ)
    env.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    env.update(extra)
    return env


def run_train(args: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python launch/train.py ARGS` in a child process (one rank)."""
    return subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *args], cwd=REPO, env=env or subprocess_env(),
        capture_output=True, text=True, timeout=timeout,
    )


def accelerate_cmd(*launch_args: str) -> list[str]:
    return [str(VENV_BIN / "accelerate"), "launch", *launch_args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wandb_history(run_file: Path) -> list[dict[str, str]]:
    """History rows (key → JSON text) of an offline W&B run file `run-<id>.wandb`.

    wandb ≥ 0.20 ships no Python reader for its transaction log, so this reads the format directly:
    a 7-byte file header (":W&B", magic, version), then LevelDB-log framing — 32 KiB blocks of records
    with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) — around protobuf
    `Record` messages.
    """
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", f"{run_file}: not a W&B run file"
    block, pos, pending, rows = 32768, 7, b"", []
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:  # block trailer padding
            pos += room
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "history":
                rows.append({(i.key or "/".join(i.nested_key)): i.value_json for i in record.history.item})
    return rows
