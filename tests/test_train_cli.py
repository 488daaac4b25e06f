"""Training from the user's side, as real processes: `colorize-train` (accelerate launch with one and
two CPU processes) and `python launch/train.py` — config mistakes, the run-directory guard, the closing
lines, and Ctrl-C."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from _train_helpers import REPO, VENV_BIN, build_tiny_shards, run_train, subprocess_env, tiny_config

CPU1 = str(REPO / "configs" / "accelerate" / "cpu1.yaml")
CPU2 = str(REPO / "configs" / "accelerate" / "cpu2.yaml")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return build_tiny_shards(tmp_path_factory.mktemp("cli_data"))


def colorize_train(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / "colorize-train"), *args],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("accelerate_config", [CPU1, CPU2], ids=["1-process", "2-processes"])
def test_a_mistyped_override_is_one_line_naming_it_with_close_keys(shards, tmp_path, accelerate_config):
    config = tiny_config(tmp_path / "tiny.yaml", shards, tmp_path / "runs")
    result = colorize_train("--config_file", accelerate_config, "--config", str(config), "data.batch_sise=4")
    assert result.returncode == 2, result.stderr[-3000:]
    assert error_lines(result.stderr) == [
        "error: override data.batch_sise=4: unknown key 'data.batch_sise'; "
        "did you mean 'data.batch_size', 'data.batch_size_unit' or 'data.size'?"
    ]
    assert not (tmp_path / "runs").exists()  # nothing started, nothing written


@pytest.mark.slow
def test_train_py_names_the_override_too(shards, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", shards, tmp_path / "runs")
    result = run_train(["--config", str(config), "logging.every_steps=2", "--resume", "run.nmae=x"])
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        "error: override run.nmae=x: unknown key 'run.nmae'; did you mean 'run.name' or 'run.seed'?"
    ]
    assert str(config) not in result.stderr


@pytest.mark.slow
def test_a_config_error_inside_two_training_processes_exits_2_without_a_launcher_traceback(shards, tmp_path):
    # CUDA availability is decided in the training processes, after the launcher's own checks: this
    # error comes back through torchrun, whose ChildFailedError must not surface.
    config = tiny_config(tmp_path / "tiny.yaml", shards, tmp_path / "runs")
    result = colorize_train("--config_file", CPU2, "--config", str(config), "run.device=cuda")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "error: run.device = 'cuda' but CUDA is not available" in result.stderr
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr


def test_the_batch_split_is_checked_before_the_processes_start(shards, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", shards, tmp_path / "runs")
    result = colorize_train("--config_file", CPU2, "--config", str(config), "data.batch_size=3")
    assert result.returncode == 2
    assert error_lines(result.stderr) == ["error: data.batch_size = 3 does not divide by the number of processes (2)"]


def test_overrides_before_config_are_named(shards, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", shards, tmp_path / "runs")
    result = colorize_train("data.batch_size=4", "--config", str(config))
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        "error: 'data.batch_size=4' stands before --config: give key=value overrides after --config"
    ]


@pytest.mark.slow
def test_from_a_shards_build_to_a_trained_run_and_over_it_again(tmp_path):
    # The build's last line is the command that trains on its output.
    from shards.demo_images import write_demo_images

    write_demo_images(tmp_path / "photos", count=24, seed=0)
    out = tmp_path / "my-shards"
    build = subprocess.run(
        [str(VENV_BIN / "python"), "-m", "shards.cli", "build", str(tmp_path / "photos"), str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    last = build.stdout.strip().splitlines()[-1]
    assert last.startswith(f"next: colorize-train --config configs/demo.yaml data.shards={out} run.name=my-shards")

    # That command as printed, made tiny by overrides after it, trains and ends with what to do next.
    command = shlex.split(last.removeprefix("next: ").split("   (")[0])
    tiny = ["model.features=8", "model.disc_features=8", "data.batch_size=2", "data.compile_lab=false"]
    tiny += ["schedule.nogan_steps=2", "schedule.critic_steps=0", "schedule.gan_steps=2"]
    tiny += ["logging.wandb=disabled", "logging.sample_count=2"]
    tiny += [f"run.out_dir={tmp_path / 'runs'}"]
    first = colorize_train(*command[1:], *tiny)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = tmp_path / "runs" / "my-shards"
    weights = run_dir / "generator.safetensors"
    assert error_lines(first.stderr)[-2:] == [
        f"done: 4 steps; generator exported to {weights}",
        f"next: colorize PHOTOS --weights {weights}   (or the web page: colorize-ui --weights {weights})",
    ]
    metrics, exported = (run_dir / "metrics.jsonl").read_bytes(), weights.read_bytes()

    # A fresh start over it: one line naming both ways on, from the launcher and from train.py alike.
    expected = [
        f"error: {run_dir} already holds a run (checkpoints, metrics.jsonl, generator.safetensors): "
        "add --resume to continue it, or --overwrite to move it aside and start over"
    ]
    refused = colorize_train(*command[1:], *tiny)
    assert refused.returncode == 2 and error_lines(refused.stderr) == expected, refused.stderr[-3000:]
    refused = run_train([*command[1:], *tiny, "schedule.gan_steps=3"])
    assert refused.returncode == 2 and error_lines(refused.stderr) == expected
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics and weights.read_bytes() == exported

    # --overwrite (here among the overrides) moves the earlier run aside, whole, and starts over.
    again = run_train([*command[1:], *tiny, "--overwrite", "schedule.gan_steps=1"])
    assert again.returncode == 0, again.stderr[-3000:]
    old = tmp_path / "runs" / "my-shards.old-1"
    assert f"--overwrite: moved the earlier run to {old}" in again.stderr
    assert (old / "metrics.jsonl").read_bytes() == metrics and (old / "generator.safetensors").read_bytes() == exported
    assert error_lines(again.stderr)[-2].startswith("done: 3 steps")


def _interrupt_training(
    args: list[str], run_dir: Path, signum: int = signal.SIGINT, whole_group: bool = True
) -> tuple[int, str]:
    """Start `colorize-train ARGS` in its own process group, wait until a step is logged, then send
    `signum` to the whole group (Ctrl-C, as a terminal does) or to the launcher alone; returns (exit
    status, stderr)."""
    env = subprocess_env()
    del env["OMP_NUM_THREADS"]  # unset, as in a user's shell: accelerate then picks the thread count
    proc = subprocess.Popen(
        [str(VENV_BIN / "colorize-train"), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.1)
    if whole_group:
        os.killpg(proc.pid, signum)
    else:
        os.kill(proc.pid, signum)
    _, stderr = proc.communicate(timeout=240)
    # The launcher waited for its training processes: none is left when it returns.
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)
    return proc.returncode, stderr


@pytest.mark.slow
@pytest.mark.parametrize("accelerate_config", [CPU1, CPU2], ids=["1-process", "2-processes"])
def test_ctrl_c_saves_and_prints_one_line(shards, tmp_path, accelerate_config):
    config = tiny_config(
        tmp_path / "tiny.yaml", shards, tmp_path / "runs", schedule={"nogan_steps": 2000, "gan_steps": 0}
    )
    run_dir = tmp_path / "runs" / "tiny"
    status, stderr = _interrupt_training(["--config_file", accelerate_config, "--config", str(config)], run_dir)
    assert status == 130, stderr[-3000:]
    after_training = stderr.split("stopped by SIGINT")[-1]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr and "SignalException" not in stderr
    assert "--num_cpu_threads_per_process" not in stderr  # accelerate's note on its own choice is dropped
    assert stderr.count("stopped by SIGINT; checkpoint saved, resume with --resume") == 1
    assert not [line for line in after_training.splitlines()[1:] if line.strip() and not line.startswith("train:")]
    assert any((run_dir / "checkpoints").iterdir())


@pytest.mark.slow
def test_the_time_limit_warning_sent_to_the_launcher_alone_reaches_both_processes(shards, tmp_path):
    """SIGUSR1 (the warning launch/slurm.sh asks for before a time limit) to colorize-train itself: it
    passes the signal on, both training processes save, and the status says "stopped by SIGUSR1"."""
    config = tiny_config(
        tmp_path / "tiny.yaml", shards, tmp_path / "runs", schedule={"nogan_steps": 2000, "gan_steps": 0}
    )
    run_dir = tmp_path / "runs" / "tiny"
    args = ["--config_file", CPU2, "--config", str(config)]
    status, stderr = _interrupt_training(args, run_dir, signal.SIGUSR1, whole_group=False)
    assert status == 128 + signal.SIGUSR1, stderr[-3000:]
    assert stderr.count("stopped by SIGUSR1; checkpoint saved, resume with --resume") == 1
    assert "Traceback" not in stderr
    assert any((run_dir / "checkpoints").iterdir())


def test_resume_and_overwrite_together_are_refused():
    result = colorize_train("--config", "configs/demo.yaml", "--resume", "--overwrite")
    assert result.returncode == 2 and "give one of them" in result.stderr


def test_help_shows_both_halves_of_the_command_line():
    result = colorize_train("--help", timeout=120)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: colorize-train [accelerate launch options]")
    assert "--resume" in result.stdout and "--overwrite" in result.stdout
