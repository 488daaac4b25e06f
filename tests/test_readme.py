"""Every command in the README's bash blocks works, in a shell that has run the README's
`source .venv/bin/activate`.

The commands run one after another, in README order, as one user session in a fresh folder that
holds this checkout's `.venv` and `configs/`, with one change: `configs/demo.yaml` is a tiny config (a
width-8 generator, 2 + 2 steps, W&B off), so the session's trainings take seconds. A command added to
the README later runs here too. The few that cannot run here are in NOT_RUN with the reason; for
those, the arguments are checked instead (the command's own parser, `make -n`), and so are the
commands of the docs pages named in DOCS.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from unittest import mock

import pytest

from _train_helpers import REPO, VENV_BIN, tiny_config

README = REPO / "README.md"
DOCS = ("docs/training.md", "docs/using.md", "docs/pipeline.md")
"""Docs pages whose commands are checked for valid arguments (they are not run)."""

NOT_RUN = {
    "make demo": "the whole demo, minutes; the README's first session runs its steps one by one",
    "make test": "this test suite",
    "make gpu-kit": "downloads wheels (network)",
    "make gpu-rehearse": "packs a stand-in kit and runs the three calls, minutes (tests/test_gpu_rehearsal.py runs it)",
    "make gpu-check": "the GPU check's three commands in a row (tests/test_gpu_rehearsal.py runs them on a stand-in)",
    "colorize-ui": "serves until stopped (tests/test_ui.py starts a real server)",
    "/data/": "ImageNet is not on this machine",
    "8gpu.yaml": "needs eight GPUs",
    "colorize-wandb sync": "uploads to W&B (network)",
    "colorize-wandb dashboard": "writes a W&B workspace (network)",
    "wandb sweep": "creates a sweep on W&B (network)",
    "G_1_2000000_gan.pth": "the seed project's checkpoint is not shipped",
    "sbatch": "needs a Slurm cluster (tests/test_slurm.py submits the scripts to a real one)",
}
"""Substring of a README command → why it is not run here."""

SCRIPTS = {ep.name: ep for ep in importlib.metadata.distribution("colorization").entry_points}


def bash_commands(path: Path) -> list[str]:
    """The commands of every ```bash block of a Markdown file, continuation lines joined."""
    blocks = re.findall(r"^```bash\n(.*?)^```", path.read_text(), flags=re.M | re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            if shlex.split(line, comments=True):
                commands.append(line.strip())
    return commands


def not_run_reason(command: str) -> str | None:
    return next((why for key, why in NOT_RUN.items() if key in command), None)


class _Parsed(Exception):
    """Raised once a command's own argument parser has accepted its arguments."""


def check_arguments(command: str) -> None:
    """Fail unless the command's arguments are valid, without running it."""
    argv = shlex.split(command, comments=True)
    program, args = argv[0], argv[1:]
    if program == "make":
        result = subprocess.run(["make", "-n", "-C", str(REPO), *args], capture_output=True, text=True)
        assert result.returncode == 0, f"{command}: {result.stderr}"
    elif program == "colorize-train":
        from accelerate.commands.launch import launch_command_parser

        from configs import load_config
        from launch.apps.train_cli import TRAIN_SCRIPT, split_argv
        from launch.training.command_line import parse_args

        launch_argv, train_argv = split_argv(args)
        train_args = parse_args(train_argv)
        load_config(REPO / train_args.config, train_args.overrides)
        launch_args = launch_command_parser().parse_args([*launch_argv, str(TRAIN_SCRIPT), *train_argv])
        if launch_args.config_file:
            assert (REPO / launch_args.config_file).is_file(), f"{command}: no {launch_args.config_file}"
    elif program in SCRIPTS:
        original = argparse.ArgumentParser.parse_args

        def parse_then_stop(self, *a, **k):
            original(self, *a, **k)  # SystemExit(2) on bad arguments
            raise _Parsed

        with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop), pytest.raises(_Parsed):
            SCRIPTS[program].load()(args)
    elif program == "sbatch":
        script = REPO / next(arg for arg in args if not arg.startswith("-"))
        assert script.is_file(), f"{command}: no {script}"
        subprocess.run(["bash", "-n", str(script)], check=True)
    elif program == "wandb":
        assert shutil.which("wandb", path=str(VENV_BIN)), "wandb is not installed"
        for arg in args:
            if arg.endswith(".yaml"):
                assert (REPO / arg).is_file(), f"{command}: {arg} does not exist"
    else:
        pytest.fail(f"no argument check for {program!r} ({command}): add one, or run the command")


def test_not_run_entries_are_all_used():
    commands = bash_commands(README)
    unused = [key for key in NOT_RUN if not any(key in command for command in commands)]
    assert not unused, f"NOT_RUN entries that match no README command: {unused}"


@pytest.mark.parametrize("doc", ["README.md", *DOCS])
def test_arguments_of_commands_not_run_are_valid(doc):
    commands = bash_commands(REPO / doc)
    assert commands
    for command in commands:
        if doc != "README.md" or not_run_reason(command):
            if command.startswith("source "):
                continue
            check_arguments(command)


@pytest.fixture
def session(tmp_path) -> Path:
    """A folder like a fresh checkout after `make install`: this `.venv` and `configs/` (with a tiny
    demo.yaml), and nothing built yet."""
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    shutil.copytree(REPO / "configs", tmp_path / "configs", ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    tiny_config(
        tmp_path / "configs" / "demo.yaml",
        Path("demo-data/shards"),
        Path("runs"),
        run={"name": "demo", "out_dir": "runs", "seed": 0, "device": "auto"},
        data={"compile_lab": False},  # compiling costs more than it saves in 4 steps
        logging={"wandb": "disabled"},
    )
    return tmp_path


@pytest.mark.slow
def test_readme_commands_run_after_activating_the_venv(session):
    commands = bash_commands(README)
    activate = "source .venv/bin/activate"
    assert activate in commands, "the README must say how to put the commands on PATH"
    # A shell as a new user has it: the venv's commands are not on PATH until the README's line.
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != VENV_BIN)
    env = {**os.environ, "PATH": path, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("VIRTUAL_ENV", None)
    bare = subprocess.run(["bash", "-c", "command -v colorize-train"], cwd=session, env=env, capture_output=True)
    assert bare.returncode != 0, "the venv is already on PATH: the test would not show that the README's line works"

    ran = 0
    for command in commands[commands.index(activate) + 1 :]:
        if not_run_reason(command):
            continue
        result = subprocess.run(
            ["bash", "-c", f"set -e; {activate}; {command}"],
            cwd=session,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        assert "Traceback" not in result.stderr, f"{command}\n{result.stderr[-3000:]}"
        ran += 1
    assert ran >= 10
    # What the session made: shards, a trained and exported generator, colourised photos.
    assert (session / "demo-data" / "shards" / "manifest.json").is_file()
    assert (session / "runs" / "demo" / "generator.safetensors").is_file()
    assert (session / "runs" / "demo-2.old-1" / "generator.safetensors").is_file()
    assert list((session / "colorized").glob("*.png"))
