"""One W&B run per training run: its stable id, axes and summaries, lineage, the sample table, alerts.

Rank 0 only. The trainer starts W&B with `start` below (plain `wandb.init`: the project logs artifacts,
tables, alerts and metric definitions, which Accelerate's tracker does not wrap, so there is one path to
W&B) and wraps the run in `WandbRun`; `colorize-wandb sync` wraps the run it replays into in the same
class, so an offline run uploaded later logs exactly what an online run logs.

W&B never stops training: every call to W&B's service goes through `WandbRun`, which notices when the
service process has gone (Slurm signals every process of a job step, and `wandb-core` exits at once on
SIGTERM) or a call fails, says so once, and carries on without W&B; `metrics.jsonl` and the files below
still hold everything for `colorize-wandb sync`. During a stop, calls are held until the checkpoint is
saved (`hold` / `release`).

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
from launch.training.tracking import read_jsonl

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


def start(logging_cfg, run_name: str, run_dir: Path, run_id: str, mode: str, project: str, config: dict[str, Any]):
    """`wandb.init` for a training run (or its replay): the stable id, the flat config, `job_type`
    train. W&B's own banner is kept short: offline it is silenced (the project prints how to upload
    with `colorize-wandb sync`; W&B's hint would name `wandb sync`, which does not replay fragments,
    see `launch/apps/wandb_cli.py`), online it keeps only the run's links."""
    import wandb

    settings = wandb.Settings(silent=True) if mode == "offline" else wandb.Settings(quiet=True)
    kwargs = init_kwargs(logging_cfg, run_name, run_dir, run_id, mode)
    return wandb.init(project=project, config=config, job_type="train", settings=settings, **kwargs)


def open_run(cfg, config: dict[str, Any], run_id: str, mode: str, start_step: int, write: Callable[[str], None]):
    """The training run's `WandbRun` (rank 0): W&B started with the stable id, metrics defined, the
    dataset recorded, the model ledger read. None, after one line saying so, when W&B cannot start:
    training never depends on it."""
    try:
        run = start(cfg.logging, cfg.run.name, cfg.run_dir, run_id, mode, cfg.logging.project, config)
    except Exception as exc:  # whatever W&B raises, training goes on without it
        write(f"W&B did not start ({type(exc).__name__}: {exc}); training goes on without it")
        quiet_teardown()
        return None
    wb = WandbRun(
        run,
        mode=mode,
        run_dir=cfg.run_dir,
        global_batch=cfg.data.batch_size,
        start_step=start_step,
        alert_wait_fraction=cfg.logging.alert_wait_fraction,
        alert_wait_logs=cfg.logging.alert_wait_logs,
        write=write,
    )
    wb.ledger = ModelLedger(cfg.run_dir, start_step)
    wb.define_metrics()
    wb.use_dataset(cfg.data.shards)
    wb.backfill(read_jsonl(cfg.run_dir / "metrics.jsonl"))
    return wb


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


def exported_ab_l1(eval_values: dict[str, float]) -> float | None:
    """The val ab-L1 of what was exported: the generator's average (`eval/ema/ab_l1`) when the run
    keeps one (it is then the export), else the generator's (`eval/ab_l1`)."""
    return eval_values.get("eval/ema/ab_l1", eval_values.get("eval/ab_l1"))


class ModelLedger:
    """`models.jsonl`: which exports were logged with which aliases. Decides `best` (lowest val
    ab-L1 of an export, `exported_ab_l1`) across resumes: lines past the resumed step are dropped like
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
        values = [exported_ab_l1(e.get("eval", {})) for e in self.entries]
        return min((v for v in values if v is not None), default=math.inf)

    def aliases(self, eval_values: dict[str, float], nogan_final: bool, final: bool) -> list[str]:
        aliases = ["latest"]
        if nogan_final:
            aliases.append("nogan-final")
        if final:
            aliases.append("final")
        ab_l1 = exported_ab_l1(eval_values)
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

    grid = np.concatenate([np.concatenate(row, axis=1) for row in zip(grey, pred, truth, strict=True)], axis=0)
    base = Path(run_dir) / "tables" / f"step_{step}"
    save_png(grid, base.with_suffix(".png"))
    rows = [{"index": i, "ab_l1": a, "psnr": p} for i, (a, p) in enumerate(zip(ab_l1, psnr, strict=True))]
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

    Every call to W&B's service goes through `_send`: held while `hold()` is on, skipped for good once
    W&B has failed (`failed`), and never raising.
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
        self.held_until = int(getattr(run, "starting_step", 0) or 0)
        """W&B's `starting_step` of a resumed online run: it holds the steps below this one."""
        self.first_step = max(self.held_until, start_step + 1)
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
        self.failed = False
        """Set once W&B failed or its service went away; nothing is sent after that."""
        self._held: list[tuple[str, Callable[[], object]]] | None = None
        self._service = service_process()

    # The one way to W&B -----------------------------------------------------------------------------

    def _send(self, what: str, call: Callable[[], object]) -> None:
        if self.failed:
            return
        if self._held is not None:
            self._held.append((what, call))
            return
        if service_gone(self._service):
            self._fail(what, "its service process (wandb-core) has exited")
            return
        try:
            call()
        except Exception as exc:  # whatever W&B raises, training goes on without it
            self._fail(what, f"{type(exc).__name__}: {exc}")

    def _fail(self, what: str, reason: str) -> None:
        self.failed = True
        self.write(
            f"W&B stopped working ({what}: {reason}); training goes on without it. metrics.jsonl keeps "
            f"every step: `colorize-wandb sync {self.run_dir}` uploads the run later"
        )
        quiet_teardown()

    def backfill(self, records: list[dict[str, Any]]) -> None:
        """Send the `metrics.jsonl` rows of the steps a resumed online run lacks: W&B holds the steps
        below `held_until`, training continues from `first_step`, and the steps between were lost with
        the previous job's W&B service (Slurm signals it with the job; it exits at once on SIGTERM)."""
        rows = [r for r in records if self.held_until <= r["step"] < self.first_step]
        if self.mode != "online" or not rows:  # offline fragments are replayed whole by `colorize-wandb sync`
            return
        self.write(
            f"W&B run {self.run.id} lacks steps {rows[0]['step']}…{rows[-1]['step']} (lost with the last job's "
            "W&B service): sent from metrics.jsonl"
        )
        for record in rows:
            self._send_row(record["step"], {k: v for k, v in record.items() if k not in ("step", "phase")})

    def hold(self) -> None:
        """Queue calls to W&B until `release()` (a stop saves its checkpoint before W&B is touched)."""
        if self._held is None:
            self._held = []

    def release(self) -> None:
        """Send what `hold()` queued, in order."""
        held, self._held = self._held or [], None
        for what, call in held:
            self._send(what, call)

    def finish(self, preempted: bool = False) -> None:
        """End the run, waiting for W&B's uploads. `preempted`: the run stopped early and a resumed
        job continues it (W&B shows it as preempted, not crashed)."""
        if preempted:
            self._send("mark_preempting", self.run.mark_preempting)
        self._send("finish", self.run.finish)

    def define_metrics(self) -> None:
        """`step` is the x-axis of everything (and `samples_seen` available); best eval and mean perf
        summaries."""

        def define() -> None:
            self.run.define_metric(keys.STEP)
            self.run.define_metric(keys.SAMPLES_SEEN, step_metric=keys.STEP)
            for key in (*keys.SCALARS, *keys.MEDIA):
                self.run.define_metric(key, step_metric=keys.STEP, summary=keys.SUMMARIES.get(key, "last"))

        self._send("define_metric", define)

    # Rows -----------------------------------------------------------------------------------------

    def log(self, step: int, values: dict[str, Any]) -> None:
        if step < self.first_step:
            return
        scalars = {k: v for k, v in values.items() if isinstance(v, (int, float))}
        if "eval/ab_l1" in scalars:
            self.last_eval = (step, {k: scalars[k] for k in keys.EVAL if k in scalars})
        self.check_data_wait(scalars.get("data/wait_fraction"))
        self._send_row(step, values)

    def _send_row(self, step: int, values: dict[str, Any]) -> None:
        row = {keys.STEP: step, keys.SAMPLES_SEEN: step * self.global_batch, **values}
        self._send("log", lambda: self.run.log(row, step=step))

    def image(self, picture: np.ndarray, caption: str | None = None):
        import wandb

        return wandb.Image(picture, caption=caption)

    def table(self, grey, pred, truth, ab_l1, psnr):
        """The sample table: one row per fixed val image, sortable by ab-L1 and PSNR."""
        import wandb

        table = wandb.Table(columns=list(keys.SAMPLE_TABLE_COLUMNS))
        for i, row in enumerate(zip(grey, pred, truth, ab_l1, psnr, strict=True)):
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
            self._send("use_artifact", lambda: self.run.use_artifact(artifact, aliases=["latest"]))
        else:
            self._send("log_artifact", lambda: self.run.log_artifact(artifact, aliases=["latest"]))

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
        self._send("log_artifact", lambda: self.run.log_artifact(artifact, aliases=aliases))

    # Alerts ---------------------------------------------------------------------------------------

    def alert(self, title: str, text: str, level: str = "WARN") -> None:
        """`wandb.alert` where it can reach anyone: online runs only."""
        if self.mode != "online":
            return
        import wandb

        self._send("alert", lambda: self.run.alert(title=title, text=text, level=getattr(wandb.AlertLevel, level)))

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


def service_process():
    """W&B's service process (`wandb-core`) when this process started it (a child), else None
    (for instance when `WANDB_SERVICE` points at a service someone else started)."""
    import psutil

    try:
        return next((p for p in psutil.Process().children() if p.name() == "wandb-core"), None)
    except psutil.Error:
        return None


def service_gone(process) -> bool:
    """True when `process` (from `service_process`) has exited; a child nobody has waited for yet is a
    zombie, which counts as exited."""
    if process is None:
        return False
    import psutil

    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def quiet_teardown() -> None:
    """Drop W&B's connection to a service that failed. `wandb.teardown()` unregisters W&B's exit hook
    first (which would otherwise print a traceback at exit); what it raises after that, and the
    `SystemExit` it raises for a service that exited non-zero, are W&B's failure already reported."""
    import logging

    import wandb

    # The dead socket also makes asyncio warn ("socket.send() raised exception."): said once above.
    asyncio_log = logging.getLogger("asyncio")
    was_disabled, asyncio_log.disabled = asyncio_log.disabled, True
    try:
        wandb.teardown()
    except (Exception, SystemExit):
        pass
    finally:
        asyncio_log.disabled = was_disabled
