"""Real multi-process training on CPU (gloo) through `accelerate launch`: two processes on one machine,
two "machines" of one process each on 127.0.0.1, and the batch-split check."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from launch.training.tracking import read_metrics

from _train_helpers import REPO, TRAIN_SCRIPT, accelerate_cmd, build_tiny_shards, free_port, subprocess_env, tiny_config

# Whole training runs in subprocesses: tens of seconds each on 2 cores.
pytestmark = pytest.mark.slow

# Deterministic crops and no flip, so the same source image gives the same tensor on any rank and
# per-sample hashes can be compared across ranks.
DETERMINISTIC_DATA = {"crop": "resize", "flip": False, "batch_size": 4}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return build_tiny_shards(tmp_path_factory.mktemp("ddp_data"))


def _debug_dumps(run_dir: Path) -> tuple[dict, dict]:
    return tuple(json.loads((run_dir / "debug" / f"rank{r}.json").read_text()) for r in (0, 1))


def _check_data_parallel(run_dir: Path, steps: int) -> None:
    """Both ranks ran every step, hold bit-identical parameters, and saw disjoint samples."""
    rank0, rank1 = _debug_dumps(run_dir)
    assert rank0["step"] == rank1["step"] == steps
    assert rank0["params_sha256"] == rank1["params_sha256"]
    assert len(rank0["samples"]) == len(rank1["samples"]) == steps * 2  # per-rank batch 4 / 2
    assert not set(rank0["samples"]) & set(rank1["samples"])
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records if "train/l1" in r] == list(range(1, steps + 1))  # rank 0 only writes
    assert (run_dir / "checkpoints" / f"step_{steps}" / "loader_rank1.pt").is_file()
    assert (run_dir / "checkpoints" / f"step_{steps}" / "random_states_1.pkl").is_file()


def test_two_processes_one_machine(shards, tmp_path):
    """configs/accelerate/cpu2.yaml really starts two ranks that train one model data-parallel."""
    config = tiny_config(
        tmp_path / "tiny.yaml",
        shards,
        tmp_path / "runs",
        data=DETERMINISTIC_DATA,
        schedule={"nogan_steps": 2, "gan_steps": 2},
    )
    result = subprocess.run(
        accelerate_cmd(
            "--config_file",
            str(REPO / "configs/accelerate/cpu2.yaml"),
            "--main_process_port",
            str(free_port()),
            str(TRAIN_SCRIPT),
            "--config",
            str(config),
        ),
        cwd=REPO,
        env=subprocess_env(COLORIZE_DEBUG_DUMP="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    _check_data_parallel(tmp_path / "runs" / "tiny", steps=4)


def test_two_machines_one_process_each(shards, tmp_path):
    """The multi-node path: --num_machines 2 with machine ranks 0 and 1 meeting on 127.0.0.1."""
    config = tiny_config(
        tmp_path / "tiny.yaml",
        shards,
        tmp_path / "runs",
        data=DETERMINISTIC_DATA,
        schedule={"nogan_steps": 1, "gan_steps": 2},
    )
    port = str(free_port())
    machines = [
        subprocess.Popen(
            accelerate_cmd(
                "--multi_gpu",
                "--num_machines",
                "2",
                "--num_processes",
                "2",
                "--machine_rank",
                str(rank),
                "--main_process_ip",
                "127.0.0.1",
                "--main_process_port",
                port,
                "--mixed_precision",
                "no",
                "--dynamo_backend",
                "no",
                str(TRAIN_SCRIPT),
                "--config",
                str(config),
            ),
            cwd=REPO,
            env=subprocess_env(COLORIZE_DEBUG_DUMP="1", ACCELERATE_USE_CPU="true"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [m.communicate(timeout=300) for m in machines]
    for m, (_, err) in zip(machines, outputs, strict=False):
        assert m.returncode == 0, err[-3000:]
    _check_data_parallel(tmp_path / "runs" / "tiny", steps=3)


def test_batch_that_does_not_split_over_processes_is_refused(shards, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", shards, tmp_path / "runs", data={"batch_size": 3})
    result = subprocess.run(
        accelerate_cmd(
            "--config_file",
            str(REPO / "configs/accelerate/cpu2.yaml"),
            "--main_process_port",
            str(free_port()),
            str(TRAIN_SCRIPT),
            "--config",
            str(config),
        ),
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "error: data.batch_size = 3 does not divide by the number of processes (2)" in result.stderr
    assert not (tmp_path / "runs" / "tiny" / "checkpoints").exists()
