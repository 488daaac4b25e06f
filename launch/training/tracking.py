"""Where the numbers go: `metrics.jsonl`, W&B (`wandb_run.WandbRun`), and a progress bar — rank 0 only.

The loop hands `RunLogger.log` numbers that are already reduced across ranks; every rank may call it
and only the main process writes. `metrics.jsonl` holds one JSON object per logged step with "step"
and "phase" beside the same keys that go to W&B; it is written before W&B hears of a step, so it is
the run's own record whatever happens to W&B.
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

from configs.atomic import write_text_atomic
from configs.progress_bar import progress_bar
from launch.training.errors import TrainingError

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
    dropped (they came from steps the killed run did after its last checkpoint, which run again), and
    so is a torn last line (see `read_jsonl`)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        kept = [record for record in read_jsonl(self.path) if record["step"] <= step]
        write_text_atomic(self.path, "".join(json.dumps(record) + "\n" for record in kept))

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every record of an append-only JSON-lines file (`metrics.jsonl`, `models.jsonl`), in file order;
    [] when the file does not exist.

    A last line that is not a whole JSON object is what a crash in the middle of an append leaves: it
    is dropped with a warning naming the file. A bad line anywhere else means the file was damaged
    otherwise, and raises TrainingError naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if number == len(lines):
                print(
                    f"warning: {path}: dropped a torn last line (a crash in the middle of a write): {line[:80]!r}",
                    file=sys.stderr,
                )
                break
            raise TrainingError(f"{path} line {number} is not a JSON object ({exc}); the file was damaged") from None
        records.append(record)
    return records


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a `metrics.jsonl`, in file order (a torn last line dropped, see `read_jsonl`)."""
    return read_jsonl(path)


class RunLogger:
    """Rank-0 sink for scalars, images and progress of one run. Built before W&B starts (so a resumed
    run's `metrics.jsonl` is put right first); `wandb` is attached afterwards on rank 0."""

    def __init__(self, accelerator: Accelerator, run_dir: Path, total_steps: int, start_step: int) -> None:
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.metrics = MetricsFile(run_dir / "metrics.jsonl")
        self.wandb = None
        """The `launch.training.wandb_run.WandbRun` on rank 0 when W&B is on, else None."""
        self.bar = None
        if self.main:
            self.metrics.truncate_after(start_step)
            self.bar = progress_bar(total=total_steps, initial=start_step, desc="train", unit="step")

    def log(self, step: int, phase: str, values: dict[str, float]) -> None:
        """Record `values` (already reduced across ranks) for completed step `step` in `phase`:
        `metrics.jsonl` first, then W&B."""
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

    def hold_wandb(self) -> None:
        """Queue what goes to W&B until `release_wandb()`: a stop's checkpoint is saved first."""
        if self.wandb is not None:
            self.wandb.hold()

    def release_wandb(self) -> None:
        if self.wandb is not None:
            self.wandb.release()

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

    def close(self, preempted: bool = False) -> None:
        """Close the bar, then finish the W&B run (which may wait for its uploads); `preempted`: the run
        stopped early on a signal and a resumed job continues it."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.wandb is not None:
            self.wandb.finish(preempted=preempted)
