"""Real multi-process training on CPU (gloo) through `accelerate launch`: two processes on one machine
train data-parallel, two "machines" of one process each on 127.0.0.1 resume that run exactly, and the
batch-split check. Everything is read from outside: the run's checkpoints, exports and metrics, and
loaders the test builds itself."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from configs import load_config
from launch.training.checkpoint import EMA_FILE
from launch.training.tracking import read_metrics
from pipeline import make_loader

from _train_helpers import REPO, TRAIN_SCRIPT, accelerate_cmd, build_tiny_shards, free_port, subprocess_env, tiny_config

# Whole training runs in subprocesses: tens of seconds each on 2 cores.
pytestmark = pytest.mark.slow

# Deterministic crops and no flip, so the same source image gives the same tensor on any rank and
# samples can be told apart by the bytes of their L channel.
DETERMINISTIC_DATA = {"crop": "resize", "flip": False, "batch_size": 4}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return build_tiny_shards(tmp_path_factory.mktemp("ddp_data"))


def _sample_hashes(L: torch.Tensor) -> list[str]:
    return [hashlib.sha256(sample.contiguous().numpy().tobytes()).hexdigest() for sample in L]


def _check_data_parallel(run_dir: Path, steps: int) -> None:
    """Both ranks ran every step, each on its own part of the data, the two parts disjoint.

    The test rebuilds each rank's training loader (the run's config, rank r of 2) and checks that the
    loader position rank r saved at the last step is exactly `steps` batches into that stream.
    """
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records if "perf/step_ms" in r] == list(range(1, steps + 1))  # rank 0 only writes
    checkpoint = run_dir / "checkpoints" / f"step_{steps}"
    assert (checkpoint / "random_states_1.pkl").is_file()
    cfg = load_config(run_dir / "config.yaml")
    seen = []
    for rank in (0, 1):
        fresh = iter(make_loader(cfg.data, rank, 2, CPU, seed=cfg.run.seed))
        stream = [next(fresh) for _ in range(steps + 1)]
        state = torch.load(checkpoint / f"loader_rank{rank}.pt", weights_only=True)
        assert state["rank"] == rank and state["world_size"] == 2
        restored = make_loader(cfg.data, rank, 2, CPU, seed=cfg.run.seed)
        restored.load_state_dict(state)
        L, ab = next(iter(restored))
        assert torch.equal(L, stream[steps][0]) and torch.equal(ab, stream[steps][1]), f"rank {rank}"
        seen.append({h for L, _ in stream[:steps] for h in _sample_hashes(L)})
    assert len(seen[0]) == len(seen[1]) == steps * 2  # per-rank batch 4 / 2, no sample twice
    assert seen[0].isdisjoint(seen[1])


def _two_processes(config: Path) -> subprocess.CompletedProcess:
    """configs/accelerate/cpu2.yaml: two processes on this machine."""
    return subprocess.run(
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


def _two_machines(config: Path, *train_args: str) -> None:
    """The multi-node path: --num_machines 2 with machine ranks 0 and 1 meeting on 127.0.0.1."""
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
                *train_args,
            ),
            cwd=REPO,
            env=subprocess_env(ACCELERATE_USE_CPU="true"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [m.communicate(timeout=300) for m in machines]
    for m, (_, err) in zip(machines, outputs, strict=True):
        assert m.returncode == 0, err[-3000:]


def test_two_processes_train_data_parallel_and_two_machines_resume_them_exactly(shards, tmp_path):
    """configs/accelerate/cpu2.yaml starts two ranks that train one model data-parallel (NoGAN,
    critic warm-up, GAN, with the generator's average); two one-process "machines" resume its step-3
    checkpoint and redo step 4 bit for bit.

    The resumed ranks both start from the saved weights (rank 0's). Each update averages the
    gradients of both ranks, so it comes out the same as in the first run only if rank 1 held rank
    0's generator and discriminator there too: identical weights on both ranks, shown from outside.
    The average's BatchNorm statistics differ between ranks (each averages its own replica's), so the
    last evaluation, which both ranks score with their average, matches only if each rank used rank
    0's statistics in both runs.
    """
    config = tiny_config(
        tmp_path / "tiny.yaml",
        shards,
        tmp_path / "runs",
        data=DETERMINISTIC_DATA,
        # SyncBatchNorm is CUDA-only (its CPU forward raises): a CPU run ignores model.sync_batchnorm.
        model={"features": 8, "disc_features": 8, "ema_decay": 0.9, "sync_batchnorm": True},
        schedule={"nogan_steps": 1, "critic_steps": 1, "gan_steps": 2},
        checkpoint={"every_steps": 3, "keep_last": 2},
    )
    result = _two_processes(config)
    assert result.returncode == 0, result.stderr[-3000:]
    first = tmp_path / "runs" / "tiny"
    _check_data_parallel(first, steps=4)

    second = tmp_path / "runs" / "resumed"
    shutil.copytree(first, second)
    shutil.rmtree(second / "checkpoints" / "step_4")
    _two_machines(config, "--resume", "run.name=resumed")
    _check_data_parallel(second, steps=4)
    for name in ("model.safetensors", "model_1.safetensors"):  # G, D as accelerate saved them
        expected = load_file(str(first / "checkpoints" / "step_4" / name))
        got = load_file(str(second / "checkpoints" / "step_4" / name))
        assert expected.keys() == got.keys()
        assert all(torch.equal(expected[k], got[k]) for k in expected), name
    averages = [
        torch.load(d / "checkpoints" / "step_4" / EMA_FILE, weights_only=True)["module"] for d in (first, second)
    ]
    assert all(torch.equal(value, averages[1][k]) for k, value in averages[0].items())
    last = [read_metrics(d / "metrics.jsonl")[-1] for d in (first, second)]
    losses = [{k: v for k, v in record.items() if k.startswith("train/")} for record in last]
    assert losses[0] == losses[1] and "train/d_total" in losses[0]
    assert last[0]["eval/ema/ab_l1"] == last[1]["eval/ema/ab_l1"] and last[0]["eval/ab_l1"] == last[1]["eval/ab_l1"]


def test_batch_that_does_not_split_over_processes_is_refused(shards, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", shards, tmp_path / "runs", data={"batch_size": 3})
    result = _two_processes(config)
    assert result.returncode != 0
    assert "error: data.batch_size = 3 does not divide by the number of processes (2)" in result.stderr
    assert not (tmp_path / "runs" / "tiny" / "checkpoints").exists()
