"""The training entry point end to end on CPU, one process: both phases, outputs, exact resume after
a SIGKILL, SIGTERM, non-finite losses, config errors, W&B offline files."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from launch.training.checkpoint import EMA_FILE
from launch.training.tracking import read_metrics
from models.export import read_metadata

from _train_helpers import (
    REPO,
    TRAIN_SCRIPT,
    build_tiny_shards,
    kill_after_checkpoint,
    run_train,
    subprocess_env,
    tiny_config,
    wandb_history,
)

# Whole training runs in subprocesses: tens of seconds each on 2 cores.
pytestmark = pytest.mark.slow

LOSS_KEYS = ("train/l1", "train/g_total", "train/g_adv", "train/d_real", "train/d_fake", "train/d_total")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return build_tiny_shards(tmp_path_factory.mktemp("train_data"))


def _losses(records: list[dict], steps: range) -> dict[int, dict[str, float]]:
    by_step = {r["step"]: r for r in records if "train/d_total" in r or "train/l1" in r}
    return {s: {k: by_step[s][k] for k in LOSS_KEYS if k in by_step[s]} for s in steps}


def test_exact_resume_after_sigkill_across_phase_switch(shards, tmp_path):
    """7 steps straight vs killed by the test once the checkpoint at N = 3 is on disk, then resumed:
    identical losses N+1…7, with the NoGAN → critic warm-up → GAN switches inside N+1…7, and
    bit-identical generator averages (EMA) at the end, in the checkpoint and in the export. Also
    checks the run directory's contents."""
    n = 3
    config = tiny_config(
        tmp_path / "tiny.yaml",
        shards,
        tmp_path / "runs",
        # The next checkpoint after N comes two steps later (the phase switch at 5): the kill lands
        # between the two, however late the test sees step N's folder.
        schedule={"nogan_steps": 5, "critic_steps": 1, "gan_steps": 1},
        model={"features": 8, "disc_features": 8, "ema_decay": 0.9},
        checkpoint={"every_steps": n, "keep_last": 2},
        logging={
            "every_steps": 1,
            "sample_every_steps": 3,
            "eval_every_steps": 3,
            "eval_batches": 1,
            "wandb": "offline",
        },
    )
    # All three runs are child processes with the same environment (thread count included): float
    # reductions then happen in the same order, and equality can be asked for to ~1 ulp.
    straight = run_train(["--config", str(config), "run.name=straight"])
    assert straight.returncode == 0, straight.stderr[-2000:]

    cut = tmp_path / "runs" / "cut"
    killed = kill_after_checkpoint(["--config", str(config), "run.name=cut"], cut / "checkpoints" / f"step_{n}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    # A save the kill cut short is left under its temporary name, never as a checkpoint.
    assert [p.name for p in (cut / "checkpoints").iterdir() if not p.name.endswith(".tmp")] == [f"step_{n}"]

    resumed = run_train(["--config", str(config), "run.name=cut", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {cut / 'checkpoints' / f'step_{n}'} (step {n}, phase nogan)" in resumed.stderr

    straight_records = read_metrics(tmp_path / "runs" / "straight" / "metrics.jsonl")
    cut_records = read_metrics(cut / "metrics.jsonl")
    assert [r["step"] for r in cut_records] == [r["step"] for r in straight_records] == list(range(1, 8))
    assert [r["phase"] for r in cut_records] == ["nogan"] * 5 + ["critic", "gan"]
    expected, got = _losses(straight_records, range(n + 1, 8)), _losses(cut_records, range(n + 1, 8))
    assert set(got[7]) == set(LOSS_KEYS)  # GAN steps report every term
    assert set(got[6]) == {"train/d_real", "train/d_fake", "train/d_total"}  # the critic's: D alone
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), f"step {step}"
    # Eval after resume sees the same generator and the same average as the straight run.
    for key in ("eval/ab_l1", "eval/ema/ab_l1"):
        assert cut_records[-1][key] == pytest.approx(straight_records[-1][key], rel=1e-5), key
    # The average (EMA) itself: bit for bit, in the last checkpoint and in the export.
    averages = [
        torch.load(tmp_path / "runs" / name / "checkpoints" / "step_7" / EMA_FILE, weights_only=True)
        for name in ("straight", "cut")
    ]
    assert averages[0]["updates"] == averages[1]["updates"] == 6  # 5 NoGAN + 1 GAN; none in the critic step
    assert averages[0]["module"].keys() == averages[1]["module"].keys()
    for key, value in averages[0]["module"].items():
        assert torch.equal(value, averages[1]["module"][key]), key
    exports = [load_file(tmp_path / "runs" / name / "generator.safetensors") for name in ("straight", "cut")]
    assert exports[0].keys() == averages[0]["module"].keys()
    assert all(
        torch.equal(exports[0][k], exports[1][k]) and torch.equal(exports[0][k], v)
        for k, v in averages[0]["module"].items()
    )

    # Run directory: config, samples, checkpoints (keep_last 2, no partial ones), exported generator.
    run_dir = tmp_path / "runs" / "straight"
    assert "nogan_steps: 5" in (run_dir / "config.yaml").read_text()
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["step_3.png", "step_6.png", "step_7.png"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_6", "step_7"]  # 3, 5 pruned
    assert {"loader_rank0.pt", "custom_checkpoint_0.pkl", EMA_FILE, "random_states_0.pkl", "optimizer_2.bin"} <= {
        p.name for p in (run_dir / "checkpoints" / "step_7").iterdir()
    }
    assert "step 5: NoGAN phase done, checkpoint saved; critic warm-up phase starts" in straight.stderr
    assert "step 6: critic warm-up phase done, checkpoint saved; GAN phase starts" in straight.stderr
    meta = read_metadata(run_dir / "generator.safetensors")
    assert meta["step"] == 7 and meta["phase"] == "gan" and meta["model"]["features"] == 8
    assert meta["weights"] == "ema" and meta["ema"] == {"decay": 0.9, "updates": 6}
    with safe_open(str(run_dir / "generator.safetensors"), framework="pt") as f:
        assert "initial_down.0.weight" in f.keys()
    assert not (run_dir / "generator.json").exists()  # the metadata lives in the header only

    # W&B offline: a run file under the run dir holding the expected metric keys, one row per step.
    (run_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    rows = wandb_history(run_file)
    keys = set().union(*rows)
    for key in (
        *LOSS_KEYS,
        "train/lr_g",
        "train/lr_d",
        "train/d_out_real",
        "train/d_out_fake",
        "train/d_acc_real",
        "train/d_acc_fake",
        "perf/images_per_s",
        "perf/step_ms",
        "perf/eta_hours",
        "data/wait_fraction",
        "eval/ab_l1",
        "eval/ab_l1_grey",
        "eval/psnr",
        "eval/psnr_grey",
        "eval/ema/ab_l1",
        "eval/ema/psnr",
        "samples/grid.path",
        "samples/table.path",
        "step",
        "samples_seen",
    ):
        assert key in keys, key
    assert [r["_step"] for r in rows] == [r["step"] for r in rows] == list(range(1, 8))
    assert [r["samples_seen"] for r in rows] == [2 * s for s in range(1, 8)]
    # The one list of metric keys covers every number the trainer logs.
    from launch.training import metric_keys

    for record in straight_records:
        assert set(record) - {"step", "phase"} <= set(metric_keys.SCALARS), record


def test_sigterm_saves_a_checkpoint_and_exits_143(shards, tmp_path):
    config = tiny_config(
        tmp_path / "tiny.yaml", shards, tmp_path / "runs", schedule={"nogan_steps": 500, "gan_steps": 0}
    )
    proc = subprocess.Popen(
        [sys.executable, str(TRAIN_SCRIPT), "--config", str(config)],
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "runs" / "tiny" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    step = read_metrics(metrics)[-1]["step"]
    assert f"step {step}: stopped by SIGTERM; checkpoint saved" in stderr
    assert (tmp_path / "runs" / "tiny" / "checkpoints" / f"step_{step}" / "loader_rank0.pt").is_file()
    assert read_metadata(tmp_path / "runs" / "tiny" / "generator.safetensors")["step"] == step


def test_non_finite_loss_stops_and_keeps_last_checkpoint(shards, tmp_path, monkeypatch, capsys):
    import torch

    import launch.training.gan as steps
    from launch.train import main

    real_l1, calls = steps.ab_l1, {"n": 0}

    def l1_nan_on_third_step(fake, real):
        calls["n"] += 1
        value = real_l1(fake, real)
        return value * torch.nan if calls["n"] == 3 else value

    monkeypatch.setattr(steps, "ab_l1", l1_nan_on_third_step)
    config = tiny_config(
        tmp_path / "tiny.yaml",
        shards,
        tmp_path / "runs",
        schedule={"nogan_steps": 5, "gan_steps": 0},
        checkpoint={"every_steps": 2},
    )
    assert main(["--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "error: non-finite loss at step 3: train/l1 = nan" in err
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny" / "checkpoints").iterdir()) == ["step_2"]
    assert read_metadata(tmp_path / "runs" / "tiny" / "generator.safetensors")["step"] == 2


def test_config_mistakes_are_one_line_errors(shards, tmp_path, capsys):
    from launch.train import main

    config = tiny_config(tmp_path / "tiny.yaml", shards, tmp_path / "runs")
    assert main(["--config", str(config), "optim.nogan.lr=-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "optim.nogan.lr" in err and len(err.splitlines()) == 1
    assert main(["--config", str(config), "data.shards=" + str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nowhere" in err and "Traceback" not in err
    result = run_train(["--config", str(config), "model.features=zero"])
    assert result.returncode == 2 and "model.features" in result.stderr and "Traceback" not in result.stderr


def test_bench_step_and_train_print_phase_rates_and_projection(shards, tmp_path, capsys):
    from launch.bench import main as bench

    config = tiny_config(tmp_path / "tiny.yaml", shards, tmp_path / "runs")
    report = tmp_path / "step.json"
    assert (
        bench(
            [
                "step",
                "--config",
                str(config),
                "--steps",
                "1",
                "--warmup",
                "0",
                "--device",
                "cpu",
                "--peak-tflops",
                "1",
                "--json",
                str(report),
                "model.ema_decay=0.9",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "batch 2 at 256², features 8/8" in out and "EMA generator on (decay 0.9)" in out
    assert re.findall(r"^\s+2 (\w+) ", out, re.MULTILINE) == ["nogan", "critic", "gan"]  # one table row each
    assert (
        "projected for configs/imagenet.yaml on 1 device (50,000 NoGAN + 10,000 critic warm-up + 75,000 GAN steps "
        "× batch 64)" in out
    )
    assert "on 8 devices (6,250 NoGAN + 1,250 critic warm-up + 9,375 GAN steps × batch 512)" in out
    figures = json.loads(report.read_text())
    for phase in ("nogan", "critic", "gan"):
        row = figures["phases"][phase]
        assert row["images_per_s"] > 0 and row["flops_per_image"] > 1e8  # a 256² U-Net: ≥ 0.1 GFLOP
        assert row["peak_fraction"] == pytest.approx(row["tflops"] / 1)
        assert row["compiles_in_warmup"] == row["recompiles_after_warmup"] == 0  # compile is off
    # The critic step is G's forward and D's step: less work than a GAN step (which adds G's backward).
    assert figures["phases"]["critic"]["flops_per_image"] < figures["phases"]["gan"]["flops_per_image"]
    assert figures["ema_decay"] == 0.9 and figures["ema_update_ms"] > 0 and "EMA update alone" in out
    assert figures["projection"]["hours_8_devices"] < figures["projection"]["hours_1_device"]

    assert bench(["train", "--config", str(config), "--steps", "1", "--warmup", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    phases = ("nogan", "critic", "gan")
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith(phases)}
    assert set(rows) == set(phases)
    for images_per_s, step_ms, wait in rows.values():
        assert float(images_per_s) > 0 and float(step_ms) > 0 and 0 <= float(wait.rstrip("%")) <= 100
    assert "h on this device" in out
