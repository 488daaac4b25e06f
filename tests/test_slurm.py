"""The project's Slurm scripts on a real two-node Slurm cluster started on this machine (tests/_slurm_cluster.py):
two-node CPU training with W&B offline, requeued mid-run (stop checkpoint at the signal, exact resume);
a run that outlives its time limit and requeues itself until the schedule is done; a shard build as a
job array with one lost task rerun alone. Jobs are submitted from a temporary folder, not the repository.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from launch.training.tracking import read_metrics

from _slurm_cluster import SlurmCluster, missing_daemons
from _train_helpers import REPO, build_tiny_shards, subprocess_env, tiny_config, wandb_history, wandb_records

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TRAIN_SCRIPT = REPO / "launch" / "slurm.sh"
SHARDS_SCRIPT = REPO / "launch" / "slurm_shards.sh"
LOSS_KEYS = ("train/l1", "train/g_total", "train/g_adv", "train/d_real", "train/d_fake", "train/d_total")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = missing_daemons()
    if missing:
        if shutil.which("apt-get") is None:
            pytest.skip(f"Slurm is not installed ({', '.join(missing)} missing) and apt-get is not available here")
        pytest.fail(f"{', '.join(missing)} not found: run `make install` (as root it installs slurm-wlm and munge)")
    slurm = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        slurm.start()
        yield slurm
    finally:
        slurm.stop()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """`photos/` (24 demo photos) and `shards/` built from them on one machine."""
    root = tmp_path_factory.mktemp("slurm_data")
    build_tiny_shards(root)
    return root


def _config(tmp_path: Path, data: Path, **sections) -> Path:
    logging = {"wandb": "offline", "every_steps": 1, "sample_every_steps": 1000, "eval_every_steps": 1000}
    return tiny_config(
        tmp_path / "tiny.yaml",
        data / "shards",
        tmp_path / "runs",
        logging=logging,
        checkpoint={"every_steps": 1000, "keep_last": 10},
        **sections,
    )


def _wait_for_step(metrics: Path, step: int, job: int, cluster: SlurmCluster, timeout: float = 240) -> int:
    """Poll `metrics.jsonl` until it holds `step`; the last step it holds then."""
    deadline = time.monotonic() + timeout
    while True:
        if metrics.is_file():
            steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.endswith("}")]
            if steps and steps[-1] >= step:
                return steps[-1]
        assert time.monotonic() < deadline, f"job {job} did not reach step {step}: {cluster.job(job)}"
        time.sleep(0.1)


def _attempts(log: str) -> list[str]:
    """The job log cut at each attempt header (launch/slurm.sh prints one per start)."""
    return re.split(r"^=== .* attempt \d+, .*===$", log, flags=re.M)[1:]


def _losses(records: list[dict]) -> dict[int, dict[str, float]]:
    return {r["step"]: {k: r[k] for k in LOSS_KEYS if k in r} for r in records}


def test_two_node_training_requeued_mid_run_saves_at_the_signal_and_resumes_exactly(cluster, data, tmp_path):
    """`scontrol requeue` signals every process of the step (W&B's service included) with SIGTERM: both
    ranks stop at the same step, save a checkpoint there and exit 143; W&B's loss is reported once; the
    requeued job resumes from that checkpoint and ends with exactly the losses of an uninterrupted job."""
    config = _config(tmp_path, data, schedule={"nogan_steps": 16, "gan_steps": 4})
    env = subprocess_env()
    jobs = {
        name: cluster.sbatch(
            "--nodes=2", "--mem=2000", str(TRAIN_SCRIPT), config.name, f"run.name={name}", cwd=tmp_path, env=env
        )
        for name in ("straight", "cut")
    }
    cut_dir = tmp_path / "runs" / "cut"
    signal_step = _wait_for_step(cut_dir / "metrics.jsonl", 5, jobs["cut"], cluster)
    cluster.run("scontrol", "requeue", str(jobs["cut"]))

    for name, job in jobs.items():
        record = cluster.wait_for(job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), timeout=400)
        assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), (name, record)
        assert record["Restarts"] == ("1" if name == "cut" else "0"), (name, record)

    log = (tmp_path / f"slurm-{jobs['cut']}.out").read_text()
    first, second = _attempts(log)
    stop = re.search(r"^step (\d+): stopped by SIGTERM; checkpoint saved", first, flags=re.M)
    assert stop, first[-3000:]
    stopped_at = int(stop.group(1))
    # Stopped mid-run, at or after the step seen before the requeue. How many more steps run before the
    # signal lands depends on how fast Slurm delivers it on a loaded machine (3 once in CI), so no
    # tighter bound; that the stop saved exactly where it stopped is the checkpoint and resume below.
    assert signal_step <= stopped_at < 16
    assert first.count("Exited with exit code 143") == 2  # both ranks: checkpoint saved, stopped by SIGTERM
    assert first.count("W&B stopped working") == 1  # wandb-core died with the step; said once, not raised
    assert "Traceback" not in log
    assert f"resumed from {cut_dir / 'checkpoints' / f'step_{stopped_at}'} (step {stopped_at}, phase nogan)" in second
    assert "schedule done" in second
    assert sorted(int(p.name.split("_")[1]) for p in (cut_dir / "checkpoints").iterdir()) == [stopped_at, 16, 20]
    print(
        f"requeue: signal after step {signal_step}, checkpoint and stop at step {stopped_at}, resumed at {stopped_at}"
    )

    straight = read_metrics(tmp_path / "runs" / "straight" / "metrics.jsonl")
    cut = read_metrics(cut_dir / "metrics.jsonl")
    assert [r["step"] for r in cut] == [r["step"] for r in straight] == list(range(1, 21))
    expected, got = _losses(straight), _losses(cut)
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), f"step {step}"

    # W&B offline: each attempt wrote a fragment under the one run id kept in the run directory.
    run_id = (cut_dir / "wandb-run-id").read_text().strip()
    fragments = sorted((cut_dir / "wandb").glob("offline-run-*"))
    assert len(fragments) == 2 and all(f.name.endswith(run_id) for f in fragments)
    assert [r["_step"] for r in wandb_history(fragments[1])] == list(range(stopped_at + 1, 21))


def test_time_limit_warning_stops_and_requeues_the_job_which_then_finishes(cluster, data, tmp_path):
    """--time=2 with the warning 60 s before the limit: the run stops on SIGUSR1 after a checkpoint
    (W&B's service is not hurt by it and uploads the attempt whole), exits 138, the script requeues the
    job, and the next attempt resumes from that checkpoint and finishes the schedule: exit 0.

    Slurm checks time limits every 30 s and signals at the first check less than lead + 30 s before
    the limit: here 30…60 s after the start, after the rank's start-up. How far the run gets by then
    depends on the machine, so the schedule starts out too long for one attempt; once the first attempt
    has stopped, the test shortens it to 5 more steps (each attempt reads the config when it starts) and
    lifts the time limit, so the test ends after exactly one requeue."""
    config = _config(tmp_path, data, schedule={"nogan_steps": 100_000, "gan_steps": 0})
    job = cluster.sbatch(
        "--nodes=1", "--time=2", "--signal=USR1@60", str(TRAIN_SCRIPT), config.name, cwd=tmp_path, env=subprocess_env()
    )
    log_file = tmp_path / f"slurm-{job}.out"
    deadline = time.monotonic() + 180
    while not (log_file.is_file() and f"requeueing job {job}" in log_file.read_text()):
        assert time.monotonic() < deadline, f"no time-limit requeue: {cluster.job(job)}"
        time.sleep(0.2)
    stopped_at = int(re.search(r"^step (\d+): stopped by SIGUSR1", log_file.read_text(), flags=re.M).group(1))
    _config(tmp_path, data, schedule={"nogan_steps": stopped_at + 5, "gan_steps": 0})
    cluster.run("scontrol", "update", f"JobId={job}", "TimeLimit=10")

    record = cluster.wait_for(job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), timeout=300)
    assert (record["JobState"], record["ExitCode"], record["Restarts"]) == ("COMPLETED", "0:0", "1"), record
    first, second = _attempts(log_file.read_text())
    assert "Exited with exit code 138" in first  # the rank: stopped by SIGUSR1, checkpoint saved
    run_dir = tmp_path / "runs" / "tiny"
    assert f"resumed from {run_dir / 'checkpoints' / f'step_{stopped_at}'} (step {stopped_at}, phase nogan)" in second
    assert "schedule done" in second
    print(f"time limit: stopped and checkpoint at step {stopped_at}, resumed at {stopped_at}, done at {stopped_at + 5}")
    assert "W&B stopped working" not in first + second and "Traceback" not in first + second
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == list(range(1, stopped_at + 6))

    # SIGUSR1 spares wandb-core: the first attempt's fragment holds every step up to the stop, and
    # the run is marked preempted (the next attempt continues it), not crashed.
    fragments = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(fragments) == 2
    assert [r["_step"] for r in wandb_history(fragments[0])] == list(range(1, stopped_at + 1))
    assert any(r["type"] == "preempting" for r in wandb_records(fragments[0]))


def test_shards_array_with_a_lost_task_rerun_alone(cluster, data, tmp_path):
    """Parts 1 and 3 of 3 as one array job, part 2 later as an array of its own (a lost task rerun):
    the last part merges, and the shards are those of a one-machine build, byte for byte."""
    photos, reference = data / "photos", data / "shards"
    args = [str(SHARDS_SCRIPT), str(photos), "out", "--parts", "3", "--shard-samples", "4", "--val-fraction", "0.25"]
    first = cluster.sbatch("--array=1,3", "--mem=500", *args, cwd=tmp_path)
    for task in (1, 3):
        record = cluster.wait_for(f"{first}_{task}", ("COMPLETED", "FAILED", "CANCELLED"), timeout=120)
        assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), record
    out = tmp_path / "out"
    assert not (out / "manifest.json").exists()

    rerun = cluster.sbatch("--array=2", "--mem=500", *args, cwd=tmp_path)
    record = cluster.wait_for(f"{rerun}_2", ("COMPLETED", "FAILED", "CANCELLED"), timeout=120)
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), record
    log = (tmp_path / f"slurm-shards-{rerun}_2.out").read_text()
    assert "part 2/3" in log and "all 3 parts merged" in log, log

    manifest = json.loads((out / "manifest.json").read_text())
    expected = json.loads((reference / "manifest.json").read_text())
    assert manifest["shards"] == expected["shards"] and manifest["splits"] == expected["splits"]
    for shard in expected["shards"]:
        assert (out / shard["name"]).read_bytes() == (reference / shard["name"]).read_bytes()
