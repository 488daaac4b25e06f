"""W&B as a team uses it, offline: one run id across resumed fragments, `colorize-wandb sync` replaying
the run once per step, dataset → model lineage with aliases, the sample table, the dashboard's keys,
sweeps, alerts. W&B's files are read with W&B's own reader (`wandb leet inspect --json`)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from launch.training import metric_keys
from models.export import read_metadata

from _train_helpers import (
    REPO,
    TRAIN_SCRIPT,
    build_tiny_shards,
    run_train,
    subprocess_env,
    tiny_config,
    wandb_history,
    wandb_records,
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return build_tiny_shards(tmp_path_factory.mktemp("wandb_data"))


def _artifacts(records: list[dict]) -> list[dict]:
    return [r["artifact"] for r in records if r["type"] == "artifact"]


def _run_record(records: list[dict]) -> dict:
    return next(r["run"] for r in records if r["type"] == "run")


def _start_train(args: list[str]) -> subprocess.Popen:
    """`python launch/train.py ARGS` in the background (one rank, W&B offline), stdout and stderr to pipes."""
    return subprocess.Popen(
        [sys.executable, str(TRAIN_SCRIPT), *args],
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(proc: subprocess.Popen, ready, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"training ended before {what}: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.02)


def _logged_steps(metrics: Path) -> list[int]:
    if not metrics.is_file():
        return []
    return [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.endswith("}")]


TORN = '{"step": 5, "phase": "nogan", "train/l1": 0.1'  # what a crash in the middle of an append leaves


@pytest.mark.slow
def test_killed_run_fragments_share_one_id_and_sync_replays_each_step_once(shards, tmp_path, monkeypatch, capsys):
    """SIGKILLed right after the checkpoint of step 4, with a torn last line in metrics.jsonl, then
    treated as killed before that checkpoint completed (it is removed): resumed from step 3, the torn
    line dropped with a warning, the two offline fragments share the run id, and the replay into one run
    holds steps 1…6 exactly once, in order, with the dataset and model artifacts and the table."""
    config = tiny_config(
        tmp_path / "tiny.yaml",
        shards,
        tmp_path / "runs",
        schedule={"nogan_steps": 4, "gan_steps": 2},
        checkpoint={"every_steps": 3, "keep_last": 3},
        logging={
            "wandb": "offline",
            "every_steps": 1,
            "sample_every_steps": 3,
            "eval_every_steps": 3,
            "tags": "tiny,test",
            "group": "g1",
            "notes": "offline test",
        },
    )
    run_dir = tmp_path / "runs" / "tiny"
    killed = _start_train(["--config", str(config)])
    _wait_for(killed, (run_dir / "checkpoints" / "step_4").is_dir, "checkpoint of step 4")
    killed.kill()
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    for checkpoint in (run_dir / "checkpoints").iterdir():
        if checkpoint.name != "step_3":  # the kill came before step 4's checkpoint was complete
            shutil.rmtree(checkpoint)
    metrics_file = run_dir / "metrics.jsonl"
    with metrics_file.open("a") as handle:
        handle.write(TORN)
    resumed = run_train(["--config", str(config), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"warning: {metrics_file}: dropped a torn last line" in resumed.stderr
    assert f"colorize-wandb sync {run_dir}" in resumed.stderr
    # stderr is a pipe here, not a terminal: the progress bar prints whole lines, no carriage returns.
    assert "\r" not in resumed.stderr and "train: 6/6 (100%)" in resumed.stderr

    run_id = (run_dir / "wandb-run-id").read_text().strip()
    fragments = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(fragments) == 2 and all(f.name.endswith(run_id) for f in fragments)
    # wandb 0.31 buffers its transaction log in the wandb-core process: after a SIGKILL of this short
    # run the killed fragment's .wandb holds at most what was flushed (here often only the header).
    # metrics.jsonl is complete, which is one reason `colorize-wandb sync` replays it.
    killed_rows = wandb_history(fragments[0])
    assert [r["_step"] for r in killed_rows] == list(range(1, len(killed_rows) + 1))
    second = wandb_records(fragments[1])
    run = _run_record(second)
    assert run["run_id"] == run_id and run["tags"] == ["tiny", "test"] and run["run_group"] == "g1"
    assert run["notes"] == "offline test"
    config_updates = [run["config"], *(r["config"] for r in second if r["type"] == "config")]
    flat = {k: v for update in config_updates for k, v in update.get("update", {}).items()}
    assert flat["schedule.nogan_steps"] == 4 and flat["logging.group"] == "g1" and "optim.nogan.lr" in flat  # flat
    assert [r["_step"] for r in wandb_history(fragments[1])] == [4, 5, 6]  # step 4 redone

    # Axes and summaries.
    metrics = {r["metric"].get("name"): r["metric"] for r in second if r["type"] == "metric"}
    assert metrics["eval/ab_l1"]["summary"] == {"min": True} and metrics["eval/psnr"]["summary"] == {"max": True}
    assert metrics["perf/images_per_s"]["summary"] == {"mean": True}
    assert metrics["train/l1"]["step_metric"] == "step"

    # Lineage: the shards by reference with their SHA-256s, the exports with their aliases.
    manifest = json.loads((shards / "manifest.json").read_text())
    (dataset,) = [a for a in _artifacts(second) if a["type"] == "dataset"]
    entries = {e["path"]: e for e in dataset["manifest"]["contents"]}
    for shard in manifest["shards"]:
        entry = entries[shard["name"]]
        assert entry["ref"] == f"file://{(shards / shard['name']).resolve()}"
        assert (
            json.loads(entry["extra"])["sha256"] == shard["sha256"]
            if isinstance(entry.get("extra"), str)
            else entry["extra"]["sha256"] == shard["sha256"]
        )
    assert "manifest.json" in entries and "local_path" in entries["manifest.json"]
    assert all("local_path" not in entries[s["name"]] for s in manifest["shards"])  # never uploaded
    assert json.loads(dataset["metadata"])["splits"] == manifest["splits"]
    models = [a for a in _artifacts(second) if a["type"] == "model"]
    assert [json.loads(m["metadata"])["step"] for m in models] == [4, 6]
    assert {"latest", "nogan-final"} <= set(models[0]["aliases"]) and {"latest", "final"} <= set(models[1]["aliases"])
    final = models[1]
    assert json.loads(final["metadata"])["step"] == 6 and json.loads(final["metadata"])["phase"] == "gan"
    ledger = [json.loads(line) for line in (run_dir / "models.jsonl").read_text().splitlines()]
    assert [e["step"] for e in ledger] == [3, 4, 6]  # the killed job's step-4 line was dropped

    # The replay: one run, every step once, in order, media at their steps, the artifacts.
    from launch.apps.wandb_cli import sync

    monkeypatch.setenv("WANDB_MODE", "offline")
    with metrics_file.open("a") as handle:
        handle.write(TORN)  # a later crash mid-write: sync leaves the torn line out, with a warning
    assert sync(run_dir) == run_id
    assert f"warning: {metrics_file}: dropped a torn last line" in capsys.readouterr().err
    (replay,) = (run_dir / "wandb-sync" / "wandb").glob(f"offline-run-*-{run_id}")
    rows = wandb_history(replay)
    assert [r["_step"] for r in rows] == [r["step"] for r in rows] == list(range(1, 7))
    jsonl = [json.loads(line) for line in metrics_file.read_text().splitlines()[:-1]]  # the torn line left out
    assert [r["train/l1"] for r in rows] == pytest.approx([r["train/l1"] for r in jsonl])
    assert [r["_step"] for r in rows if "samples/grid.path" in r] == [3, 6]
    assert [r["_step"] for r in rows if "samples/table.path" in r] == [3, 6]
    replayed = _artifacts(wandb_records(replay))
    assert {a["type"] for a in replayed} == {"dataset", "model", "run_table"}  # W&B keeps tables as artifacts too
    replayed_models = [a for a in replayed if a["type"] == "model"]
    assert {"latest", "nogan-final", "final"} <= set().union(*(a["aliases"] for a in replayed_models))
    # `best` is the export with the lowest eval/ab_l1 (evals at steps 3 and 6), on one version only.
    best_step = min((e for e in ledger if e["eval"]), key=lambda e: e["eval"]["eval/ab_l1"])["step"]
    assert [json.loads(a["metadata"])["step"] for a in replayed_models if "best" in a["aliases"]] == [best_step]

    # The sample table: the right columns, one row per fixed val image.
    (table_row,) = [r for r in rows if r["_step"] == 6 and "samples/table.path" in r]
    assert table_row["samples/table.ncols"] == len(metric_keys.SAMPLE_TABLE_COLUMNS)
    assert table_row["samples/table.nrows"] == 2
    table = json.loads((replay / "files" / table_row["samples/table.path"]).read_text())
    assert table["columns"] == list(metric_keys.SAMPLE_TABLE_COLUMNS)
    assert [row[0] for row in table["data"]] == [0, 1]
    assert all(row[1:4] == ["Image"] * 3 for row in table["data"])
    # The pictures themselves travel in the table's `run_table` artifact: 3 per row.
    (table_artifact,) = [
        a
        for a in replayed
        if a["type"] == "run_table" and any(c["path"] == "samples/table.table.json" for c in a["manifest"]["contents"])
    ][-1:]
    assert sum(c["path"].startswith("media/images/") for c in table_artifact["manifest"]["contents"]) == 6
    saved = json.loads((run_dir / "tables" / "step_6.json").read_text())["rows"]
    assert [row[4] for row in table["data"]] == pytest.approx([r["ab_l1"] for r in saved])


def _long_offline_run(shards, tmp_path):
    """A tiny run of 500 NoGAN steps logging every step to offline W&B: long enough to be stopped."""
    return tiny_config(
        tmp_path / "tiny.yaml",
        shards,
        tmp_path / "runs",
        schedule={"nogan_steps": 500, "gan_steps": 0},
        logging={"wandb": "offline", "every_steps": 1},
    )


@pytest.mark.slow
def test_a_stop_signal_to_every_process_still_saves_and_exits_143(shards, tmp_path):
    """SIGTERM to the trainer and all its children at once (W&B's service included), as Slurm signals a
    job step, W&B offline: the checkpoint of the stop step is saved, W&B's loss is one line (no
    traceback), and the exit status is the stop's, 143."""
    import psutil

    config = _long_offline_run(shards, tmp_path)
    run_dir = tmp_path / "runs" / "tiny"
    proc = _start_train(["--config", str(config)])
    _wait_for(proc, lambda: len(_logged_steps(run_dir / "metrics.jsonl")) >= 2, "two logged steps")
    trainer = psutil.Process(proc.pid)
    tree = [trainer, *trainer.children(recursive=True)]
    assert "wandb-core" in {p.name() for p in tree}
    for process in tree:
        process.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    step = _logged_steps(run_dir / "metrics.jsonl")[-1]
    assert f"step {step}: stopped by SIGTERM; checkpoint saved" in stderr
    assert (run_dir / "checkpoints" / f"step_{step}" / "loader_rank0.pt").is_file()
    assert read_metadata(run_dir / "generator.safetensors")["step"] == step
    assert stderr.count("W&B stopped working") == 1 and "Traceback" not in stderr


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_keeps_its_wandb_run_id(shards, tmp_path):
    """The W&B run id is made with the run directory, before the first step: a run SIGKILLed before any
    checkpoint and started again with --resume (from step 0) logs to the same W&B run."""
    config = _long_offline_run(shards, tmp_path)
    run_dir = tmp_path / "runs" / "tiny"
    killed = _start_train(["--config", str(config)])
    _wait_for(killed, lambda: len(_logged_steps(run_dir / "metrics.jsonl")) >= 1, "a logged step")
    killed.kill()
    killed.communicate(timeout=60)
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())
    run_id = (run_dir / "wandb-run-id").read_text().strip()

    env = subprocess_env()
    del env["WANDB_SILENT"]  # W&B as a user sees it: its own "run `wandb sync`" hint is not printed, ours is
    resumed = run_train(["--config", str(config), "--resume", "schedule.nogan_steps=2"], env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "no checkpoint under" in resumed.stderr
    assert not re.search(r"^wandb: ", resumed.stderr, flags=re.M)  # no W&B banner, so no "wandb sync" hint
    assert f"colorize-wandb sync {run_dir}" in resumed.stderr
    assert (run_dir / "wandb-run-id").read_text().strip() == run_id
    fragments = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(fragments) == 2 and all(f.name.endswith(f"-{run_id}") for f in fragments)


def test_dashboard_panels_reference_only_trainer_keys():
    pytest.importorskip("wandb_workspaces")
    from launch.apps.wandb_cli import build_workspace

    workspace = build_workspace("some-entity", "colorization")  # built offline, never saved
    by_section = panel_keys(workspace)
    assert list(by_section) == ["train/", "perf/ + data/", "eval/", "samples/"]
    for section, found in by_section.items():
        assert set(found) <= set(metric_keys.ALL), (section, set(found) - set(metric_keys.ALL))
    assert set(by_section["train/"]) - {"step"} == set(metric_keys.TRAIN)
    assert set(by_section["perf/ + data/"]) - {"step"} == {*metric_keys.PERF, *metric_keys.DATA}
    assert set(by_section["eval/"]) - {"step"} == set(metric_keys.EVAL)  # each beside its grey baseline
    assert set(by_section["samples/"]) == set(metric_keys.MEDIA)


def test_agent_arguments_become_overrides(monkeypatch, tmp_path, capsys):
    from launch.train import main, parse_args

    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    args = parse_args(
        ["--config", "c.yaml", "data.size=256", "--optim.nogan.lr=0.0001", "--data.batch_size=32", "--resume"]
    )
    assert args.resume and args.overrides == ["data.size=256", "optim.nogan.lr=0.0001", "data.batch_size=32"]
    monkeypatch.setenv("WANDB_SWEEP_ID", "sw1")
    monkeypatch.setenv("WANDB_RUN_ID", "ab12cd34")
    assert parse_args(["--config", "c.yaml", "--optim.generator.lr=1e-4"]).overrides == [
        "optim.generator.lr=1e-4",
        "run.name=sweep-sw1-ab12cd34",
    ]
    assert main(["--config", "c.yaml", "--learning-rate=3"]) == 2
    assert "unrecognised argument '--learning-rate=3'" in capsys.readouterr().err


def test_sweep_config_is_a_valid_wandb_sweep():
    from configs import load_config

    for path in sorted((REPO / "configs" / "sweeps").glob("*.yaml")):
        sweep = yaml.safe_load(path.read_text())
        assert (REPO / sweep["program"]).is_file()
        assert sweep["method"] in ("grid", "random", "bayes")
        assert sweep["metric"]["name"] in metric_keys.SCALARS and sweep["metric"]["goal"] in ("minimize", "maximize")
        assert "${args}" in sweep["command"] and "${program}" in sweep["command"]
        config = sweep["command"][sweep["command"].index("--config") + 1]
        for key, spec in sweep["parameters"].items():
            assert set(spec) <= {"values", "value", "distribution", "min", "max", "mu", "sigma", "q", "probabilities"}
            sample = spec["values"][0] if "values" in spec else spec["min"]
            load_config(REPO / config, [f"{key}={sample}"])  # each parameter is a config key of the right type


class _FakeRun:
    id, starting_step = "x1", 0

    def __init__(self):
        self.alerts, self.rows = [], []

    def alert(self, **kwargs):
        self.alerts.append(kwargs)

    def log(self, row, step):
        self.rows.append((step, row))


@pytest.mark.parametrize("mode, expected", [("online", 1), ("offline", 0)])
def test_data_wait_alert_once_after_a_streak(tmp_path, mode, expected):
    from launch.training.wandb_run import WandbRun

    run = _FakeRun()
    wb = WandbRun(run, mode=mode, run_dir=tmp_path, global_batch=4, alert_wait_fraction=0.5, alert_wait_logs=3)
    for step, wait in enumerate([0.9, 0.9, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9], start=1):
        wb.log(step, {"data/wait_fraction": wait})
    assert len(run.alerts) == expected
    assert run.rows[1] == (2, {"step": 2, "samples_seen": 8, "data/wait_fraction": 0.9})


def test_resumed_online_run_skips_steps_wandb_already_holds(tmp_path):
    from launch.training.wandb_run import WandbRun, stable_run_id

    run = _FakeRun()
    run.starting_step = 6  # W&B held steps 1…5 when the job resumed from step 3
    wb = WandbRun(run, mode="online", run_dir=tmp_path, global_batch=1, start_step=3, write=lambda m: None)
    for step in range(4, 8):
        wb.log(step, {"train/l1": 1.0})
    assert [s for s, _ in run.rows] == [6, 7]
    first = stable_run_id(tmp_path, resume=False)
    assert stable_run_id(tmp_path, resume=True) == first != stable_run_id(tmp_path, resume=False)


def test_resumed_online_run_gets_the_steps_wandb_lost_from_metrics_jsonl(tmp_path):
    """W&B holds steps 1…2 of a run whose last job saved step 5 (its service died with the job before
    sending 3…5): the resumed job sends 3…5 from metrics.jsonl, then its own steps from 6."""
    from launch.training.tracking import MetricsFile, read_metrics
    from launch.training.wandb_run import WandbRun

    metrics = MetricsFile(tmp_path / "metrics.jsonl")
    for step in range(1, 6):
        metrics.append({"step": step, "phase": "nogan", "train/l1": 0.1 * step})
    run = _FakeRun()
    run.starting_step = 3
    wb = WandbRun(run, mode="online", run_dir=tmp_path, global_batch=2, start_step=5, write=lambda m: None)
    wb.backfill(read_metrics(metrics.path))
    wb.log(6, {"train/l1": 0.6})
    assert [s for s, _ in run.rows] == [3, 4, 5, 6]
    assert run.rows[0] == (3, {"step": 3, "samples_seen": 6, "train/l1": pytest.approx(0.3)})
    empty = _FakeRun()  # W&B lost everything (starting_step 0): steps 1…5 are sent
    WandbRun(empty, mode="online", run_dir=tmp_path, global_batch=2, start_step=5).backfill(read_metrics(metrics.path))
    assert [s for s, _ in empty.rows] == [1, 2, 3, 4, 5]
    for mode, start_step in (("online", 0), ("offline", 5)):  # a fresh run; an offline one (sync replays it)
        other = _FakeRun()
        WandbRun(other, mode=mode, run_dir=tmp_path, global_batch=2, start_step=start_step).backfill(
            read_metrics(metrics.path)
        )
        assert other.rows == []


def test_wandb_that_cannot_start_is_one_line_and_no_run(tmp_path, monkeypatch):
    import wandb

    from configs import load_config
    from launch.training import wandb_run

    def refuse(**kwargs):
        raise wandb.errors.CommError("could not reach api.wandb.ai")

    monkeypatch.setattr(wandb, "init", refuse)
    cfg = load_config(None, [f"run.out_dir={tmp_path}"])
    said: list[str] = []
    assert wandb_run.open_run(cfg, {}, "abc12345", "online", 0, said.append) is None
    assert said == ["W&B did not start (CommError: could not reach api.wandb.ai); training goes on without it"]


def panel_keys(workspace) -> dict[str, list[str]]:
    """Section name → every metric key its panels reference (x-axes included)."""
    out: dict[str, list[str]] = {}
    for section in workspace.sections:
        found: list[str] = []
        for panel in section.panels:
            if hasattr(panel, "y"):
                found += [panel.x, *panel.y]
            if hasattr(panel, "media_keys"):
                found += list(panel.media_keys)
            if hasattr(panel, "table_name"):
                found.append(panel.table_name)
        out[section.name] = found
    return out


# --------------------------------------------------------------------------------------------------
# log-eval
