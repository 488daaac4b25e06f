"""One W&B run per training run: its stable id, axes and summaries, lineage, the sample table, alerts.

Rank 0 only. The trainer starts W&B through Accelerate's tracker with `init_kwargs` below and wraps the
started run in `WandbRun`; `colorize-wandb sync` wraps the run it replays into in the same class, so an
offline run uploaded later logs exactly what an online run logs.

Files this module keeps in the run directory:

| file | what |
| --- | --- |
| `wandb-run-id` | the W&B run id, created once (a fresh start without `--resume` makes a new one) |
| `models.jsonl` | one line per exported generator logged as a `model` artifact: step, phase, aliases, eval figures |
| `models/<alias>.safetensors` | copies of the `nogan-final` and `best` exports (the latest is `generator.safetensors`) |
| `tables/step_<n>.png` + `.json` | each sample table: the grey \\| prediction \\| truth grid and per-image ab-L1 / PSNR |
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import string
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from configs import ConfigError
from configs.atomic import write_text_atomic
from launch.training import metric_keys as keys

RUN_ID_FILE = "wandb-run-id"
MODEL_LEDGER = "models.jsonl"
KEPT_ALIASES = ("nogan-final", "best")
"""Aliases whose export is copied to `models/<alias>.safetensors` (a later export overwrites
`generator.safetensors`), so `colorize-wandb sync` can still upload them."""


# --------------------------------------------------------------------------------------------------
# Identity and init


def stable_run_id(run_dir: Path, resume: bool) -> str:
    """The W&B run id of this training run: read from `<run_dir>/wandb-run-id` when resuming, else
    made and written there (a fresh start of a run name is a new W&B run). Under a W&B sweep agent the
    agent's id (`WANDB_RUN_ID`) is used and recorded."""
    path = Path(run_dir) / RUN_ID_FILE
    agent_id = os.environ.get("WANDB_RUN_ID") if os.environ.get("WANDB_SWEEP_ID") else None
    if agent_id:
        run_id = agent_id
    elif resume and path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    else:
        # W&B's own ids are 8 random lowercase letters and digits (wandb.sdk.lib.runid, not public API).
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, run_id + "\n")
    return run_id


def read_run_id(run_dir: Path) -> str:
    path = Path(run_dir) / RUN_ID_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no {RUN_ID_FILE} (not a training run directory, or W&B was disabled)")
    return path.read_text().strip()


def flat_config(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dict → one level with dotted keys (`optim.nogan.lr`), as W&B filters and sweeps
    name them; lists become their string form so every value is searchable."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, name + "."))
        elif isinstance(value, (list, tuple)):
            flat[name] = str(list(value))
        else:
            flat[name] = value
    return flat


def init_kwargs(logging_cfg, run_name: str, run_dir: Path, run_id: str, mode: str) -> dict[str, Any]:
    """`wandb.init` arguments (without project/config): the stable id with `resume="allow"`, so an
    online resume continues the run and an offline fragment carries the same id."""
    kwargs: dict[str, Any] = {
        "id": run_id,
        "resume": "allow",
        "name": run_name,
        "dir": str(run_dir),
        "mode": mode,
        "tags": [t.strip() for t in logging_cfg.tags.split(",") if t.strip()] or None,
        "group": logging_cfg.group,
        "notes": logging_cfg.notes,
    }
    if logging_cfg.entity:
        kwargs["entity"] = logging_cfg.entity
    return {k: v for k, v in kwargs.items() if v is not None}


def agent_overrides(extra_args: list[str]) -> list[str]:
    """The `--key=value` arguments a W&B sweep agent appends (`${args}`) → `key=value` overrides.

    Only dotted config keys are accepted (`--optim.nogan.lr=0.0002`); anything else is a mistake named
    in a ConfigError. Under an agent (`WANDB_SWEEP_ID` set) each trial gets its own run directory:
    `run.name=<sweep id>-<run id>` is added unless the arguments name one."""
    overrides = []
    for arg in extra_args:
        if not (arg.startswith("--") and "=" in arg and "." in arg.split("=", 1)[0]):
            raise ConfigError(f"unrecognised argument {arg!r} (config overrides are key=value or --key=value)")
        overrides.append(arg[2:])
    sweep, agent_run = os.environ.get("WANDB_SWEEP_ID"), os.environ.get("WANDB_RUN_ID")
    if sweep and agent_run and not any(o.startswith("run.name=") for o in overrides):
        overrides.append(f"run.name=sweep-{sweep}-{agent_run}")
    return overrides


# --------------------------------------------------------------------------------------------------
# Artifacts


def dataset_artifact(shards_dir: str | Path):
    """A `dataset` artifact for the shards in `shards_dir` (a folder or an `s3://` prefix), by
    reference: `manifest.json` is its one uploaded file; every shard is a `file://` (or `s3://`)
    reference carrying the manifest's SHA-256 and size (W&B does not read or upload the shards). Counts,
    and an object store's bucket and prefix, go to the metadata."""
    import wandb

    from pipeline.location import ObjectUrl, ShardsDirError, base_name, is_remote, join, read_bytes

    remote = is_remote(shards_dir)
    shards_dir = str(shards_dir).rstrip("/") if remote else Path(shards_dir).resolve()
    try:
        manifest_bytes = read_bytes(join(shards_dir, "manifest.json"))
    except (OSError, ShardsDirError):
        return None
    manifest = json.loads(manifest_bytes)
    totals = manifest.get("totals", {})
    metadata = {
        "source": manifest.get("source"),
        "splits": manifest.get("splits", {}),
        "shards": len(manifest.get("shards", [])),
        "bytes": totals.get("bytes"),
        "colourless": totals.get("colourless", len(manifest.get("colourless", []))),
        "skipped": totals.get("skipped", len(manifest.get("skipped", []))),
        "keep_colourless": manifest.get("options", {}).get("keep_colourless"),
    }
    if remote:
        url = ObjectUrl.parse(shards_dir)
        metadata |= {"bucket": url.bucket, "prefix": url.key}
    artifact = wandb.Artifact(
        f"shards-{_safe_name(base_name(shards_dir))}",
        type="dataset",
        metadata=metadata,
        description=f"WebDataset shards in {shards_dir} (by reference)",
    )
    with artifact.new_file("manifest.json", mode="wb") as file:
        file.write(manifest_bytes)
    for shard in manifest.get("shards", []):
        # checksum=False: W&B would otherwise read every byte; the manifest's SHA-256 is the checksum.
        ref = join(shards_dir, shard["name"]) if remote else f"file://{join(shards_dir, shard['name'])}"
        (entry,) = artifact.add_reference(str(ref), name=shard["name"], checksum=False)
        entry.size = shard.get("bytes")
        entry.extra["sha256"] = shard.get("sha256")
        entry.extra["split"] = shard.get("split")
        entry.extra["samples"] = shard.get("samples")
    return artifact


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text) or "shards"


def model_artifact_name(run_id: str) -> str:
    return f"generator-{run_id}"


class ModelLedger:
    """`models.jsonl`: which exports were logged with which aliases. Decides `best` (lowest
    `eval/ab_l1` of an export) across resumes: lines past the resumed step are dropped like
    `metrics.jsonl`'s."""

    def __init__(self, run_dir: Path, start_step: int) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / MODEL_LEDGER
        self.entries = read_jsonl(self.path)
        kept = [e for e in self.entries if e["step"] <= start_step]
        if len(kept) != len(self.entries):
            write_text_atomic(self.path, "".join(json.dumps(e) + "\n" for e in kept))
        self.entries = kept

    def best_ab_l1(self) -> float:
        values = [e["eval"]["eval/ab_l1"] for e in self.entries if "eval/ab_l1" in e.get("eval", {})]
        return min(values, default=math.inf)

    def aliases(self, eval_values: dict[str, float], nogan_final: bool, final: bool) -> list[str]:
        aliases = ["latest"]
        if nogan_final:
            aliases.append("nogan-final")
        if final:
            aliases.append("final")
        ab_l1 = eval_values.get("eval/ab_l1")
        if ab_l1 is not None and ab_l1 < self.best_ab_l1():
            aliases.append("best")
        return aliases

    def record(self, weights: Path, step: int, phase: str, aliases: list[str], eval_values: dict[str, float]) -> dict:
        entry = {"step": step, "phase": phase, "aliases": aliases, "eval": eval_values}
        for alias in KEPT_ALIASES:
            if alias in aliases:
                kept = self.run_dir / "models" / f"{alias}.safetensors"
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(weights, kept)
        with self.path.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")
        self.entries.append(entry)
        return entry


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------------
# The sample table


def sample_table_rows(
    L, fake_ab, real_ab
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[float], list[float]]:
    """Per image of the fixed val batch: grey, prediction, truth (H×W×3 uint8 sRGB) and its ab-L1
    (CIELAB units) and PSNR (dB). L: N×1×S×S, fake_ab / real_ab: N×2×S×S, network scaling."""
    import torch

    from launch.eval.metrics import ab_l1_lab_units, psnr_rgb
    from pipeline.lab import network_to_rgb

    L, fake_ab, real_ab = L.float().cpu(), fake_ab.float().cpu(), real_ab.float().cpu()
    truth = network_to_rgb(L, real_ab)
    pred = network_to_rgb(L, fake_ab)
    grey = network_to_rgb(L, torch.zeros_like(real_ab))
    ab_l1 = ab_l1_lab_units(fake_ab, real_ab, reduction="none").tolist()
    psnr = psnr_rgb(pred, truth, reduction="none").tolist()

    def images(batch):
        return [(x.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8) for x in batch]

    return images(grey), images(pred), images(truth), ab_l1, psnr


def save_table_files(run_dir: Path, step: int, grey, pred, truth, ab_l1, psnr) -> None:
    """`tables/step_<n>.png` (rows of grey | prediction | truth, no padding) and `.json` (metrics)."""
    from launch.training.samples import save_png

    grid = np.concatenate([np.concatenate(row, axis=1) for row in zip(grey, pred, truth, strict=False)], axis=0)
    base = Path(run_dir) / "tables" / f"step_{step}"
    save_png(grid, base.with_suffix(".png"))
    rows = [{"index": i, "ab_l1": a, "psnr": p} for i, (a, p) in enumerate(zip(ab_l1, psnr, strict=False))]
    write_text_atomic(base.with_suffix(".json"), json.dumps({"step": step, "rows": rows}) + "\n")


def load_table_files(png: Path) -> tuple[list, list, list, list[float], list[float]]:
    """Inverse of `save_table_files`: the images and metrics of one saved table."""
    from PIL import Image

    grid = np.asarray(Image.open(png).convert("RGB"))
    rows = json.loads(png.with_suffix(".json").read_text())["rows"]
    height = grid.shape[0] // len(rows)
    width = grid.shape[1] // 3
    tiles = [
        [grid[r * height : (r + 1) * height, c * width : (c + 1) * width] for c in range(3)] for r in range(len(rows))
    ]
    return (
        [t[0] for t in tiles],
        [t[1] for t in tiles],
        [t[2] for t in tiles],
        [r["ab_l1"] for r in rows],
        [r["psnr"] for r in rows],
    )


# --------------------------------------------------------------------------------------------------
# The run


class WandbRun:
    """A started W&B run and everything this project logs to it (rank 0 only).

    `log` adds the `step` and `samples_seen` axes to every row and drops rows below the run's first
    new step: after an online resume W&B already holds the steps up to the killed job's last log and
    would refuse lower ones anyway, so the dashboard shows each step once.
    """

    def __init__(
        self,
        run,
        *,
        mode: str,
        run_dir: Path,
        global_batch: int,
        start_step: int = 0,
        alert_wait_fraction: float = 0.0,
        alert_wait_logs: int = 0,
        write: Callable[[str], None] | None = None,
    ) -> None:
        self.run = run
        self.mode = mode
        self.run_dir = Path(run_dir)
        self.global_batch = global_batch
        self.write = write or (lambda message: print(message, file=sys.stderr))
        self.first_step = max(int(getattr(run, "starting_step", 0) or 0), start_step + 1)
        if self.first_step > start_step + 1:
            self.write(
                f"W&B run {run.id} already holds steps up to {self.first_step - 1}: "
                f"steps {start_step + 1}…{self.first_step - 1} are not sent again"
            )
        self.alert_wait_fraction, self.alert_wait_logs = alert_wait_fraction, alert_wait_logs
        self._waits_above = 0
        self._wait_alerted = False
        self.last_eval: tuple[int, dict[str, float]] | None = None
        self.ledger: ModelLedger | None = None
        """The run's model aliases (latest, final, best…): set by training, which logs models."""

    def define_metrics(self) -> None:
        """`step` is the x-axis of everything (and `samples_seen` available); best eval and mean perf
        summaries."""
        self.run.define_metric(keys.STEP)
        self.run.define_metric(keys.SAMPLES_SEEN, step_metric=keys.STEP)
        for key in (*keys.SCALARS, *keys.MEDIA):
            self.run.define_metric(key, step_metric=keys.STEP, summary=keys.SUMMARIES.get(key, "last"))

    # Rows -----------------------------------------------------------------------------------------

    def log(self, step: int, values: dict[str, Any]) -> None:
        if step < self.first_step:
            return
        scalars = {k: v for k, v in values.items() if isinstance(v, (int, float))}
        if "eval/ab_l1" in scalars:
            self.last_eval = (step, {k: scalars[k] for k in keys.EVAL if k in scalars})
        self.check_data_wait(scalars.get("data/wait_fraction"))
        self.run.log({keys.STEP: step, keys.SAMPLES_SEEN: step * self.global_batch, **values}, step=step)

    def image(self, picture: np.ndarray, caption: str | None = None):
        import wandb

        return wandb.Image(picture, caption=caption)

    def table(self, grey, pred, truth, ab_l1, psnr):
        """The sample table: one row per fixed val image, sortable by ab-L1 and PSNR."""
        import wandb

        table = wandb.Table(columns=list(keys.SAMPLE_TABLE_COLUMNS))
        for i, row in enumerate(zip(grey, pred, truth, ab_l1, psnr, strict=False)):
            table.add_data(i, self.image(row[0]), self.image(row[1]), self.image(row[2]), float(row[3]), float(row[4]))
        return table

    # Lineage --------------------------------------------------------------------------------------

    def use_dataset(self, shards_dir: str | Path) -> None:
        """Record the shards as this run's input. W&B refuses `use_artifact` offline ("Cannot use
        artifact when in offline mode"), so an offline run logs the same artifact as its output instead;
        `colorize-wandb sync` then records it as an input."""
        artifact = dataset_artifact(shards_dir)
        if artifact is None:
            return
        if self.mode == "online":
            self.run.use_artifact(artifact, aliases=["latest"])
        else:
            self.run.log_artifact(artifact, aliases=["latest"])

    def log_model(
        self, weights: Path, step: int, phase: str, aliases: list[str], eval_values: dict[str, float]
    ) -> None:
        """The exported generator (safetensors, its metadata in the header) as a `model` artifact version."""
        import wandb

        weights = Path(weights)
        metadata = {"step": step, "phase": phase, **eval_values}
        artifact = wandb.Artifact(
            model_artifact_name(self.run.id),
            type="model",
            metadata=metadata,
            description="colorization generator (load with `colorize --weights`)",
        )
        artifact.add_file(str(weights), name="generator.safetensors")
        self.run.log_artifact(artifact, aliases=aliases)

    # Alerts ---------------------------------------------------------------------------------------

    def alert(self, title: str, text: str, level: str = "WARN") -> None:
        """`wandb.alert` where it can reach anyone: online runs only."""
        if self.mode != "online":
            return
        import wandb

        self.run.alert(title=title, text=text, level=getattr(wandb.AlertLevel, level))

    def check_data_wait(self, wait_fraction: float | None) -> None:
        """Alert once when `data/wait_fraction` stays above the threshold for `alert_wait_logs`
        logging steps in a row (0 disables)."""
        if wait_fraction is None or not (self.alert_wait_fraction > 0 and self.alert_wait_logs > 0):
            return
        self._waits_above = self._waits_above + 1 if wait_fraction > self.alert_wait_fraction else 0
        if self._waits_above >= self.alert_wait_logs and not self._wait_alerted:
            self._wait_alerted = True
            self.alert(
                "data loader too slow",
                f"data/wait_fraction above {self.alert_wait_fraction:.0%} for {self._waits_above} logging "
                f"steps in a row (last {wait_fraction:.0%}): the device waits for data; see perf/ and data/.",
            )
