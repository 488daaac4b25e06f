"""Checkpoints: `checkpoints/step_<n>/` written atomically, found again for `--resume`, pruned.

A checkpoint is Accelerate's `save_state` (both networks, the three optimisers, every rank's RNG
states, the registered `TrainingState` {step, phase} and, with `model.ema_decay`, the generator's
average, rank 0's) plus one `loader_rank<r>.pt` per rank with
that rank's data-loader position. Everything is written into `step_<n>.tmp/`; after all ranks are
done, rank 0 renames it to `step_<n>/`, so a killed run never leaves a half checkpoint under a final
name, and `--resume` ignores `*.tmp` folders. The directory must be visible to every rank (one node,
or a shared file system across nodes).

Not accelerate's `ProjectConfiguration(automatic_checkpoint_naming, total_limit)`: it writes straight
into the final `checkpoint_<i>` folder and prunes before saving, so a kill mid-save leaves a partial
checkpoint that a resume would load.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from launch.training.errors import TrainingError

_NAME = re.compile(r"^step_(\d+)$")


class TrainingState:
    """Progress of the run, saved with every checkpoint: completed steps and the phase they ended in."""

    def __init__(self, step: int = 0, phase: str = "nogan") -> None:
        self.step = step
        self.phase = phase

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "phase": self.phase}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.phase = str(state["phase"])


def checkpoint_name(step: int) -> str:
    return f"step_{step}"


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under `root` as (step, path), oldest first; `*.tmp` folders are ignored."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _NAME.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under `root`, or None."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def _loader_file(directory: Path, rank: int) -> Path:
    return directory / f"loader_rank{rank}.pt"


def save_checkpoint(accelerator: Accelerator, root: str | Path, step: int, loader: Any, keep_last: int) -> Path:
    """Write `root/step_<step>/` on all ranks (a collective: every rank must call it) and prune old ones.

    `loader` must offer `state_dict()`; each rank saves its own. Returns the final path.
    """
    root = Path(root)
    final = root / checkpoint_name(step)
    tmp = root / f"{checkpoint_name(step)}.tmp"
    if accelerator.is_main_process:
        if tmp.exists():  # left by a run killed while saving
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    torch.save(loader.state_dict(), _loader_file(tmp, accelerator.process_index))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # a re-run of the same step (resume after a crash past this point)
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def check_processes(directory: str | Path, processes: int) -> None:
    """TrainingError unless the checkpoint in `directory` was written by `processes` processes (one
    loader file per rank): the data position of each rank cannot be carried to another split."""
    saved = len(list(Path(directory).glob("loader_rank*.pt")))
    if saved != processes:
        raise TrainingError(
            f"{directory} was written by a run of {saved} processes, this run has {processes}: resume with {saved}"
        )


EMA_FILE = "custom_checkpoint_1.pkl"
"""The generator's average in a checkpoint: registered right after the `TrainingState` (file 0)."""


def check_ema(directory: str | Path, ema_decay: float) -> None:
    """TrainingError unless the checkpoint in `directory` holds the generator's average exactly when
    this run keeps one (`model.ema_decay` > 0): an average cannot be made up for steps already done."""
    saved = (Path(directory) / EMA_FILE).is_file()
    if saved != (ema_decay > 0):
        raise TrainingError(
            f"{directory} was written {'with' if saved else 'without'} an EMA generator and this run has "
            f"model.ema_decay = {ema_decay}: resume with model.ema_decay {'> 0' if saved else '= 0'}"
        )


def load_checkpoint(accelerator: Accelerator, directory: str | Path, loader: Any) -> None:
    """Restore everything `save_checkpoint` wrote (models, optimisers, RNG, training state, this rank's
    loader position). Raises TrainingError when the number of processes changed (`check_processes`)
    or the loader cannot take the saved position."""
    directory = Path(directory)
    check_processes(directory, accelerator.num_processes)
    accelerator.load_state(str(directory))
    try:
        loader.load_state_dict(torch.load(_loader_file(directory, accelerator.process_index), weights_only=True))
    except ValueError as exc:
        raise TrainingError(f"{directory}: {exc}") from None
