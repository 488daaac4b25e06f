"""Where the numbers go: W&B (through Accelerate's tracker), `metrics.jsonl`, and a tqdm bar — rank 0 only.

The loop hands `RunLogger.log` numbers that are already reduced across ranks; every rank may call it
and only the main process writes. `metrics.jsonl` holds one JSON object per logged step with "step"
and "phase" beside the same keys that go to W&B.
"""

from __future__ import annotations

import json
import os
import sys
from netrc import NetrcParseError, netrc
from pathlib import Path
from typing import Any

import numpy as np
from accelerate import Accelerator
from tqdm import tqdm

from configs.atomic import write_text_atomic

WANDB_HOST = "api.wandb.ai"


def has_wandb_credentials() -> bool:
    """True when W&B could log online: `WANDB_API_KEY` is set or ~/.netrc has an api.wandb.ai entry."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return path.is_file() and netrc(str(path)).authenticators(WANDB_HOST) is not None
    except (NetrcParseError, OSError):
        return False


def resolve_wandb_mode(setting: str) -> str:
    """`logging.wandb` → the W&B mode to run in: online | offline | disabled (`auto` checks credentials)."""
    if setting == "auto":
        return "online" if has_wandb_credentials() else "offline"
    return setting


_SET_BY_US: set[str] = set()


def keep_wandb_files_in(run_dir: Path) -> None:
    """Point W&B's cache, staging and settings folders into the run directory (unless the user set
    them), so an offline run writes nothing under the home directory. (The run files themselves go to
    `<run_dir>/wandb/` through `init(dir=run_dir)`.)"""
    wandb_dir = run_dir / "wandb"
    wandb_dir.mkdir(parents=True, exist_ok=True)
    for name, value in (
        ("WANDB_CACHE_DIR", wandb_dir / ".cache"),
        ("WANDB_DATA_DIR", wandb_dir / ".data"),
        ("WANDB_CONFIG_DIR", wandb_dir / ".config"),
    ):
        # Ours from an earlier run in this process may be replaced; the user's own setting never is.
        if name not in os.environ or name in _SET_BY_US:
            os.environ[name] = str(value)
            _SET_BY_US.add(name)


class MetricsFile:
    """`metrics.jsonl`: appended one line per logged step; on resume, lines past the resumed step are
    dropped (they came from steps the killed run did after its last checkpoint, which run again)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        kept = [
            line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step
        ]
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a `metrics.jsonl`, in file order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class RunLogger:
    """Rank-0 sink for scalars, images and progress of one run."""

    def __init__(
        self,
        accelerator: Accelerator,
        run_dir: Path,
        total_steps: int,
        start_step: int,
        wandb_mode: str,
        wandb_run=None,
    ) -> None:
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.metrics = MetricsFile(run_dir / "metrics.jsonl")
        self.uses_wandb = wandb_mode != "disabled"
        self.wandb = wandb_run if self.main else None
        """The `launch.training.wandb_run.WandbRun` on rank 0 when W&B is on, else None."""
        self.bar = None
        if self.main:
            self.metrics.truncate_after(start_step)
            self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, file=sys.stderr, desc="train")

    def log(self, step: int, phase: str, values: dict[str, float]) -> None:
        """Record `values` (already reduced across ranks) for completed step `step` in `phase`."""
        if not self.main:
            return
        self.metrics.append({"step": step, "phase": phase, **values})
        if self.wandb is not None:
            self.wandb.log(step, values)

    def log_image(self, step: int, key: str, image: np.ndarray) -> None:
        """Send an H×W×3 uint8 sRGB picture to W&B under `key` (files on disk are the caller's)."""
        if self.wandb is not None:
            self.wandb.log(step, {key: self.wandb.image(image)})

    def alert(self, title: str, text: str) -> None:
        """`wandb.alert` from rank 0 when the run is online (see WandbRun.alert)."""
        if self.wandb is not None:
            self.wandb.alert(title, text, level="ERROR")

    def progress(self, step: int, phase: str, values: dict[str, float] | None = None) -> None:
        """Move the bar to `step`; with `values` (read at a sync point) also show the phase, the main
        losses and images/s."""
        if self.bar is None:
            return
        if values is not None:
            shown = {"phase": phase}
            for key in ("train/l1", "train/g_adv", "train/d_total", "perf/images_per_s"):
                if key in values:
                    shown[key.split("/")[1]] = f"{values[key]:.4g}"
            self.bar.set_postfix(shown, refresh=False)
        self.bar.update(step - self.bar.n)

    def write(self, message: str) -> None:
        """One line to the user from rank 0, without breaking the bar."""
        if self.main:
            (self.bar.write if self.bar is not None else print)(message, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
