"""`colorize-wandb`: upload a training run to W&B as one run, save the ready dashboard, log eval results.

    colorize-wandb sync runs/<name> [--project P] [--entity E]
    colorize-wandb dashboard --entity E --project P [--name "Colorization"]
    colorize-wandb log-eval eval.json --model generator-<run id>:best --project P [--entity E]

`sync` replays a run directory into ONE W&B run with the run's stable id (`runs/<name>/wandb-run-id`):
`metrics.jsonl` (each step once, in step order — lines the killed job wrote after its last checkpoint
were dropped on resume), the sample grids `samples/step_<n>.png`, the sample tables `tables/step_<n>.*`,
the dataset artifact (from the shards' `manifest.json`) and the model artifacts recorded in
`models.jsonl`, each at its step. Why a replay instead of `wandb sync` of the offline fragments: every
fragment after a kill re-logs the steps between the last checkpoint and the kill, and W&B keeps the
first value of a step (it refuses lower steps once a higher one is in), so the killed job's rows would
stand instead of the resumed ones; a replay of the run's own record has each step exactly once.

`dashboard` saves a workspace (wandb-workspaces, `pip install -e '.[wandb]'`) with sections `train/`,
`perf/` + `data/`, `eval/` beside the grey baseline, and `samples/`; every panel names a key from
`launch/training/metric_keys.py`, the list the trainer logs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from configs import ConfigError, load_config
from launch.training import metric_keys as keys
from launch.training.errors import TrainingError
from launch.training.tracking import keep_wandb_files_in, read_jsonl, read_metrics
from launch.training.wandb_run import WandbRun, flat_config, load_table_files, read_run_id, start

# --------------------------------------------------------------------------------------------------
# sync: replay a run directory into one W&B run


def replay_plan(run_dir: Path) -> list[tuple[int, dict]]:
    """(step, what to log at that step) in step order, one entry per step: scalars from
    `metrics.jsonl`, and `grid` / `table` / `models` file references where they exist. A torn last
    line of `metrics.jsonl` or `models.jsonl` (a crash in the middle of a write) is left out with a
    warning naming the file."""
    run_dir = Path(run_dir)
    plan: dict[int, dict] = {}
    metrics = run_dir / "metrics.jsonl"
    for record in read_metrics(metrics):
        values = {k: v for k, v in record.items() if k not in ("step", "phase")}
        plan.setdefault(record["step"], {})["values"] = values
    for png in (run_dir / "samples").glob("step_*.png"):
        plan.setdefault(_step_of(png), {})["grid"] = png
    for png in (run_dir / "tables").glob("step_*.png"):
        plan.setdefault(_step_of(png), {})["table"] = png
    for entry in read_jsonl(run_dir / "models.jsonl"):
        plan.setdefault(entry["step"], {}).setdefault("models", []).append(entry)
    last = max((s for s, item in plan.items() if "values" in item), default=0)
    # Grids/tables of steps past the run's last logged step belong to a killed job's redone steps.
    return [(step, plan[step]) for step in sorted(plan) if step <= last]


def _step_of(path: Path) -> int:
    match = re.fullmatch(r"step_(\d+)", path.stem)
    if match is None:
        raise ValueError(f"{path}: not a step_<n> file")
    return int(match.group(1))


def model_file(run_dir: Path, entry: dict, last_step: int) -> Path | None:
    """The weights still on disk for a ledger entry: the kept copy of its alias, or the latest export."""
    for alias in ("best", "nogan-final"):
        kept = run_dir / "models" / f"{alias}.safetensors"
        if alias in entry["aliases"] and kept.is_file() and _sidecar_step(kept) == entry["step"]:
            return kept
    latest = run_dir / "generator.safetensors"
    if entry["step"] == last_step and latest.is_file() and _sidecar_step(latest) == entry["step"]:
        return latest
    return None


def _sidecar_step(weights: Path) -> int | None:
    from models.export import read_metadata

    try:
        return read_metadata(weights).get("step")
    except Exception:  # noqa: BLE001 - an unreadable file is simply not the one looked for
        return None


def sync(run_dir: Path, project: str | None = None, entity: str | None = None, mode: str | None = None) -> str:
    """Replay `run_dir` into one W&B run (id from `wandb-run-id`); returns the id. `mode` defaults to
    WANDB_MODE or online. W&B's files for the replay go to `<run_dir>/wandb-sync/wandb/`."""
    from configs import config_to_dict

    run_dir = Path(run_dir)
    run_id = read_run_id(run_dir)
    cfg = load_config(run_dir / "config.yaml", [])
    mode = mode or os.environ.get("WANDB_MODE") or "online"
    logging_cfg = cfg.logging if entity is None else _with_entity(cfg.logging, entity)
    plan = replay_plan(run_dir)  # before W&B starts: a damaged run directory opens no W&B run
    out = run_dir / "wandb-sync"
    keep_wandb_files_in(out)  # W&B's cache and staging inside the run dir, not under $HOME
    config = flat_config(config_to_dict(cfg))
    run = start(logging_cfg, cfg.run.name, out, run_id, mode, project or cfg.logging.project, config)
    wb = WandbRun(run, mode=mode, run_dir=run_dir, global_batch=cfg.data.batch_size)
    try:
        wb.define_metrics()
        wb.use_dataset(cfg.data.shards)
        last_step = max((s for s, item in plan if "values" in item), default=0)
        for step, item in plan:
            row = dict(item.get("values", {}))
            if "grid" in item:
                import numpy as np
                from PIL import Image

                row[keys.SAMPLE_GRID] = wb.image(np.asarray(Image.open(item["grid"]).convert("RGB")))
            if "table" in item:
                row[keys.SAMPLE_TABLE] = wb.table(*load_table_files(item["table"]))
            wb.log(step, row)
            for entry in item.get("models", []):
                weights = model_file(run_dir, entry, last_step)
                if weights is None:
                    print(f"step {step}: export {entry['aliases']} no longer on disk; not uploaded", file=sys.stderr)
                    continue
                wb.log_model(weights, entry["step"], entry["phase"], entry["aliases"], entry.get("eval", {}))
    finally:
        wb.finish()
    if wb.failed:  # WandbRun said what failed
        raise TrainingError(f"{run_dir} was not fully uploaded; run `colorize-wandb sync {run_dir}` again")
    print(f"replayed {len(plan)} steps of {run_dir} into W&B run {run_id} ({mode})", file=sys.stderr)
    return run_id


def _with_entity(logging_cfg, entity: str):
    import dataclasses

    return dataclasses.replace(logging_cfg, entity=entity)


# --------------------------------------------------------------------------------------------------
# dashboard


def build_workspace(entity: str, project: str, name: str = "Colorization"):
    """The ready workspace (not saved): one section per key prefix, every panel on the `step` axis."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    def line(title: str, ys, **extra):
        return wr.LinePlot(title=title, x=keys.STEP, y=list(ys), **extra)

    sections = [
        ws.Section(
            name="train/",
            is_open=True,
            panels=[
                line("NoGAN losses (G only)", keys.NOGAN_LOSSES),
                line("GAN: generator", ("train/g_adv", "train/l1", "train/g_total")),
                line("critic warm-up and GAN: discriminator", keys.CRITIC_LOSSES),
                line("D outputs (mean probability)", keys.D_OUTPUTS, range_y=(0.0, 1.0)),
                line("D accuracy (share of patches classified right)", keys.D_ACCURACY, range_y=(0.0, 1.0)),
                line("learning rates", keys.LEARNING_RATES),
            ],
        ),
        ws.Section(
            name="perf/ + data/",
            is_open=True,
            panels=[
                line("images/s", ("perf/images_per_s",)),
                line("step time (ms)", ("perf/step_ms",)),
                line("data wait (fraction of step time)", keys.DATA, range_y=(0.0, 1.0)),
                line("ETA (hours)", ("perf/eta_hours",)),
            ],
        ),
        ws.Section(
            name="eval/",
            is_open=True,
            panels=[
                line("ab-L1 (CIELAB units): generator, EMA, grey", ("eval/ab_l1", "eval/ema/ab_l1", "eval/ab_l1_grey")),
                line("PSNR (dB): generator, EMA, grey", ("eval/psnr", "eval/ema/psnr", "eval/psnr_grey")),
            ],
        ),
        ws.Section(
            name="samples/",
            is_open=True,
            panels=[
                wr.MediaBrowser(title="grey | prediction | truth", media_keys=[keys.SAMPLE_GRID]),
                wr.WeavePanelSummaryTable(table_name=keys.SAMPLE_TABLE),
            ],
        ),
    ]
    return ws.Workspace(entity=entity, project=project, name=name, sections=sections)


def log_eval(result_json: Path, model: str, project: str, entity: str | None = None, mode: str | None = None) -> None:
    """A `job_type="eval"` run that uses the model artifact `model` (`name:alias`) and holds the
    `colorize-eval --json` numbers as its summary (`eval/...`). Offline, W&B cannot use an artifact:
    the artifact name is kept in the config and the link is made when the run is synced."""
    import wandb

    result = json.loads(Path(result_json).read_text())
    mode = mode or os.environ.get("WANDB_MODE") or "online"
    run = wandb.init(
        project=project,
        entity=entity,
        job_type="eval",
        mode=mode,
        config={
            "model_artifact": model,
            **{f"eval_input.{k}": v for k, v in result.items() if not isinstance(v, (dict, list))},
        },
    )
    try:
        if mode == "online":
            run.use_artifact(model, type="model")
        run.summary.update({f"eval/{k}": v for k, v in flat_config(result).items() if isinstance(v, (int, float))})
    finally:
        run.finish()


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="colorize-wandb", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sync", help="upload runs/<name> (all its fragments) as one W&B run")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--project", default=None)
    p.add_argument("--entity", default=None)
    p = sub.add_parser("dashboard", help="save the ready workspace for a project")
    p.add_argument("--entity", required=True)
    p.add_argument("--project", required=True)
    p.add_argument("--name", default="Colorization")
    p = sub.add_parser("log-eval", help="log colorize-eval --json results against a model artifact")
    p.add_argument("result_json", type=Path)
    p.add_argument("--model", required=True, help="model artifact, e.g. generator-<run id>:best")
    p.add_argument("--project", required=True)
    p.add_argument("--entity", default=None)
    args = parser.parse_args(argv)
    try:
        if args.command == "sync":
            sync(args.run_dir, args.project, args.entity)
        elif args.command == "dashboard":
            try:
                workspace = build_workspace(args.entity, args.project, args.name)
            except ImportError:
                raise ConfigError("the dashboard needs wandb-workspaces: pip install -e '.[wandb]'") from None
            workspace.save()
            print(f"saved workspace {args.name!r}: {workspace.url}")
        else:
            log_eval(args.result_json, args.model, args.project, args.entity)
    except (ConfigError, TrainingError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
