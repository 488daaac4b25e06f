"""Shards in an object store, end to end against a real S3 server (SeaweedFS on localhost, started
here): build into a bucket and resume a killed build, parts and merge, verify, the loaders through the
store stopping and coming back, training from `s3://` with each backend and resuming exactly,
evaluation, the W&B dataset artifact, and the faults a user meets (credentials, endpoint, bucket,
missing shard), each one line. No part of S3 is imitated."""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from configs import DataConfig
from launch.training.tracking import read_metrics
from pipeline import make_loader
from pipeline.shard_list import read_manifest
from shards.build import build_shards
from shards.demo_images import write_demo_images
from shards.options import BuildOptions
from shards.output_dir import SHARD_FILE

from _colorize_helpers import console_script
from _loader_helpers import sample_keys, write_test_shards
from _s3_helpers import BUCKET, SeaweedServer, free_ports, object_bytes, objects, upload_folder, with_env
from _shards_helpers import tree_digests
from _train_helpers import (
    REPO,
    TRAIN_SCRIPT,
    build_tiny_shards,
    kill_after_checkpoint,
    run_train,
    subprocess_env,
    tiny_config,
)

pytestmark = pytest.mark.s3

CPU = torch.device("cpu")
LOSS_KEYS = ("train/l1", "train/g_total", "train/g_adv", "train/d_real", "train/d_fake", "train/d_total")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One SeaweedFS for the module, with the bucket `shards`; stopped at the end, also on failure."""
    store = SeaweedServer(tmp_path_factory.mktemp("seaweedfs"))
    store.start()
    try:
        store.client().create_bucket(Bucket=BUCKET)
        yield store
    finally:
        store.stop()


@pytest.fixture
def aws(server):
    """This process's environment pointed at the server (the product reads only the standard AWS
    variables); a test that stopped the server leaves it running again for the next."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in server.env().items():
            patch.setenv(key, value)
        yield server.env()
    if server.process is None:
        server.start()


@pytest.fixture(scope="module")
def tiny(server, tmp_path_factory) -> tuple[Path, str]:
    """The training tests' tiny shards (5 train, 2 val), on local disk and copied to s3://shards/tiny."""
    local = build_tiny_shards(tmp_path_factory.mktemp("tiny"))
    return local, upload_folder(server, local, "tiny")


def _build_args(photos: Path, out: str, staging: Path, samples: int = 2) -> list[str]:
    return [
        console_script("colorize-shards"),
        "build",
        str(photos),
        out,
        "--shard-samples",
        str(samples),
        "--val-fraction",
        "0.25",
        "--workers",
        "1",
        "--quiet",
        "--staging",
        str(staging),
    ]


def _one_error_line(stderr: str) -> str:
    """The one `error:` line of a child's stderr (a progress bar may share its terminal line)."""
    errors = re.findall(r"error: [^\r\n]*", stderr)
    assert "Traceback" not in stderr and len(errors) == 1, stderr[-3000:]
    return errors[0]


# --------------------------------------------------------------------------------------------------
# Building into a bucket


@pytest.mark.slow
def test_build_into_s3_resumes_a_killed_build_byte_identically_and_verifies(aws, server, tmp_path):
    """A build killed after its first shards were uploaded, resumed from an empty staging folder
    (another machine): every object equals a local build's file, the shards uploaded before the kill
    are not uploaded again, `verify` re-hashes from the store and catches a replaced object, and a
    build with other options into the same prefix is refused."""
    photos = tmp_path / "photos"
    write_demo_images(photos, count=40, seed=1)
    local = tmp_path / "local"
    build_shards(photos, local, BuildOptions(shard_samples=2, val_fraction=0.25, workers=1), progress=False)

    url = f"s3://{BUCKET}/built"
    first_stage = tmp_path / "stage-a"
    child = subprocess.Popen(_build_args(photos, url, first_stage), env=with_env(aws), stderr=subprocess.PIPE)
    record = first_stage / ".progress" / "train-000001.tar.json"
    deadline = time.monotonic() + 120
    while not record.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    before = objects(server, "built")
    assert "manifest.json" not in before, "the kill landed after the build had finished"
    uploaded = {name: item for name, item in before.items() if SHARD_FILE.match(name)}
    assert {"train-000000.tar", "train-000001.tar"} <= set(uploaded)

    # A kill between a shard's upload and its record's: the resumed build rebuilds that shard but
    # must find its bytes in the store and not send them again.
    server.client().delete_object(Bucket=BUCKET, Key="built/.progress/train-000000.tar.json")
    time.sleep(1.1)  # LastModified has one-second resolution: a re-upload would show
    resumed = subprocess.run(_build_args(photos, url, tmp_path / "stage-b"), env=with_env(aws), capture_output=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = objects(server, "built")
    for name, item in uploaded.items():
        assert after[name]["LastModified"] == item["LastModified"], f"{name} was uploaded again"
    expected = tree_digests(local)
    assert {name for name in after if SHARD_FILE.match(name) or name == "manifest.json"} == set(expected)
    for name in expected:
        assert object_bytes(server, "built", name) == (local / name).read_bytes(), name

    verify = [console_script("colorize-shards"), "verify", url]
    good = subprocess.run(verify, env=with_env(aws), capture_output=True, text=True)
    assert good.returncode == 0 and "all shards and indexes match" in good.stdout, good.stderr
    # Same size, same metadata, other bytes: only re-hashing the object finds it.
    head = server.client().head_object(Bucket=BUCKET, Key="built/train-000002.tar")
    data = bytearray(object_bytes(server, "built", "train-000002.tar"))
    data[1000] ^= 0xFF
    server.client().put_object(Bucket=BUCKET, Key="built/train-000002.tar", Body=bytes(data), Metadata=head["Metadata"])
    bad = subprocess.run(verify, env=with_env(aws), capture_output=True, text=True)
    assert bad.returncode == 1
    assert "train-000002.tar: sha256 differs from the manifest" in _one_error_line(bad.stderr)

    other = subprocess.run(
        _build_args(photos, url, tmp_path / "stage-c", samples=3), env=with_env(aws), capture_output=True, text=True
    )
    assert other.returncode == 2
    assert f"{url} holds shards built with other options (shard_samples: 2 → 3)" in _one_error_line(other.stderr)


@pytest.mark.slow
def test_parts_into_s3_merge_into_the_one_machine_manifest(aws, server, tiny, tmp_path):
    """`--part 1/2` and `--part 2/2` into one prefix, each with its own staging folder (two machines):
    the last part merges, and the store holds exactly the shards and manifest of a one-machine build;
    a hand-run `merge` from a third machine writes the same manifest."""
    local, _ = tiny
    photos = local.parent / "photos"
    url = f"s3://{BUCKET}/parts"
    options = BuildOptions(shard_samples=4, val_fraction=0.25, workers=1)
    first = build_shards(photos, url, options, progress=False, part=(1, 2), staging=tmp_path / "a")
    assert first["missing"] == [2]
    assert "manifest.json" not in objects(server, "parts")
    build_shards(photos, url, options, progress=False, part=(2, 2), staging=tmp_path / "b")
    for name in tree_digests(local):
        assert object_bytes(server, "parts", name) == (local / name).read_bytes(), name
    server.client().delete_object(Bucket=BUCKET, Key="parts/manifest.json")
    merged = subprocess.run(
        [console_script("colorize-shards"), "merge", url, "--staging", str(tmp_path / "c")],
        env=with_env(aws),
        capture_output=True,
        text=True,
    )
    assert merged.returncode == 0, merged.stderr
    assert object_bytes(server, "parts", "manifest.json") == (local / "manifest.json").read_bytes()


# --------------------------------------------------------------------------------------------------
# Reading through an outage


# The remote loader runs in a child process started with the AWS environment: DataLoader workers come
# from a fork server, which keeps the environment of the moment it started (possibly before this test).
# It reads 3 batches, says so, waits for a line on stdin (the store is killed meanwhile), reads on
# and saves every batch and the seconds the batches after the kill took.
READ_THROUGH_OUTAGE = """
import sys, time, torch
from configs import DataConfig
from pipeline import make_loader

def main():
    shards, backend, out = sys.argv[1:4]
    cfg = DataConfig(shards=shards, backend=backend, batch_size=2, num_threads=1, shuffle_buffer=8,
                     compile_lab=False, read_retry_seconds=120)
    batches = iter(make_loader(cfg, 0, 1, torch.device("cpu"), split="train", seed=0))
    got = [next(batches) for _ in range(3)]
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.monotonic()
    got += [next(batches) for _ in range(27)]
    torch.save({"batches": got, "waited": time.monotonic() - start}, out)

if __name__ == "__main__":
    main()
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_loader_waits_for_a_restarted_store_and_goes_on_exactly(aws, server, colour_photos, tmp_path, backend):
    """The store killed mid-epoch and started again ~10 s later: the loader retries, waits, and yields
    exactly the batches a loader of the same shards on local disk yields."""
    local = tmp_path / "coded"
    write_test_shards(local, colour_photos)
    url = upload_folder(server, local, f"coded-{backend}")
    script, out = tmp_path / "read_through_outage.py", tmp_path / "batches.pt"
    script.write_text(READ_THROUGH_OUTAGE)
    child = subprocess.Popen(
        [sys.executable, str(script), url, backend, str(out)],
        cwd=REPO,
        env=subprocess_env(**aws),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdin is not None
    assert child.stdout.readline().strip() == "ready"
    server.kill()
    restart = threading.Thread(target=server.start)
    restart.start()
    child.stdin.write("go\n")
    child.stdin.flush()
    assert child.wait(timeout=300) == 0
    restart.join()

    # 30 batches of 2 from 48 samples: past what the readers hold ahead when the store is killed
    # after 3 (DALI's read-ahead and shuffle buffer, the torch worker's shard and prefetch).
    cfg = DataConfig(
        shards=str(local), backend=backend, batch_size=2, num_threads=1, shuffle_buffer=8, compile_lab=False
    )
    expected = [
        next(batches) for batches in [iter(make_loader(cfg, 0, 1, CPU, split="train", seed=0))] for _ in range(30)
    ]
    saved = torch.load(out, weights_only=True)
    assert saved["waited"] > 3, f"the batches after the kill came in {saved['waited']:.1f} s: no outage read through"
    for i, ((L, ab), (L2, ab2)) in enumerate(zip(expected, saved["batches"], strict=True)):
        assert torch.equal(L, L2) and torch.equal(ab, ab2), f"batch {i}"


# --------------------------------------------------------------------------------------------------
# Training and evaluation


def _losses(run_dir: Path, steps: range) -> dict[int, dict[str, float]]:
    by_step = {r["step"]: r for r in read_metrics(run_dir / "metrics.jsonl") if "train/l1" in r}
    return {s: {k: by_step[s][k] for k in LOSS_KEYS if k in by_step[s]} for s in steps}


def _assert_same_losses(straight: Path, resumed: Path, steps: range) -> None:
    expected, got = _losses(straight, steps), _losses(resumed, steps)
    for step in steps:
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), f"step {step}"


@pytest.mark.slow
def test_dali_training_stops_when_the_store_stays_down_and_resumes_exactly(aws, server, tiny, tmp_path):
    """Training from s3:// with `dali`: the store killed after the checkpoint at step 3 and not back
    within data.read_retry_seconds stops the run with one line naming the object (exit 1, nothing
    saved); once the store is back, --resume continues exactly as a run on local disk."""
    local, url = tiny
    config = tiny_config(
        tmp_path / "tiny.yaml",
        url,
        tmp_path / "runs",
        data={"backend": "dali", "read_retry_seconds": 3, "compile_lab": False},
        schedule={"nogan_steps": 6, "gan_steps": 6},
        checkpoint={"every_steps": 3, "keep_last": 5},
    )
    env = subprocess_env(**aws)
    straight = run_train(["--config", str(config), "run.name=straight", f"data.shards={local}"], env=env)
    assert straight.returncode == 0, straight.stderr[-3000:]

    run_dir = tmp_path / "runs" / "cut"
    with open(tmp_path / "cut.err", "w+") as err:
        child = subprocess.Popen(
            [sys.executable, str(TRAIN_SCRIPT), "--config", str(config), "run.name=cut"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        deadline = time.monotonic() + 300
        while not (run_dir / "checkpoints" / "step_3").is_dir() and child.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        server.kill()
        assert child.wait(timeout=300) == 1
        err.seek(0)
        line = _one_error_line(err.read())
    # The shard named is the one being read when the retries ran out: a train shard, or a val shard
    # when the kill lands during the evaluation that follows the checkpoint.
    assert re.match(rf"error: {re.escape(url)}/(train|val)-\d+\.tar: cannot reach the object store", line), line
    assert "gave up after" in line
    saved = sorted(int(p.name.split("_")[1]) for p in (run_dir / "checkpoints").iterdir() if "tmp" not in p.name)
    assert saved and saved[-1] < 12, saved

    server.start()
    resumed = run_train(["--config", str(config), "run.name=cut", "--resume"], env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"(step {saved[-1]}," in resumed.stderr
    _assert_same_losses(tmp_path / "runs" / "straight", run_dir, range(saved[-1] + 1, 13))


@pytest.mark.slow
def test_torch_training_from_s3_resumes_exactly_and_evaluates_as_local(aws, server, tiny, tmp_path):
    """Training from s3:// with `torch`: killed after a checkpoint and resumed, the losses equal a run
    on local disk; `colorize-eval --shards s3://…` scores the export as the run's own evaluation did."""
    local, url = tiny
    config = tiny_config(
        tmp_path / "tiny.yaml",
        url,
        tmp_path / "runs",
        data={"backend": "torch", "compile_lab": False},
        schedule={"nogan_steps": 3, "gan_steps": 3},
        checkpoint={"every_steps": 3, "keep_last": 2},
    )
    env = subprocess_env(**aws)
    straight = run_train(["--config", str(config), "run.name=straight", f"data.shards={local}"], env=env)
    assert straight.returncode == 0, straight.stderr[-3000:]
    run_dir = tmp_path / "runs" / "cut"
    killed = kill_after_checkpoint(["--config", str(config), "run.name=cut"], run_dir / "checkpoints" / "step_3", env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = run_train(["--config", str(config), "run.name=cut", "--resume"], env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_losses(tmp_path / "runs" / "straight", run_dir, range(4, 7))

    # The run's own last evaluation (eval_batches 1: the first 2 val images) and `colorize-eval` of
    # the same export on the same images, read from the store, agree.
    out = tmp_path / "eval.json"
    command = [console_script("colorize-eval"), "--weights", str(run_dir / "generator.safetensors"), "--shards", url]
    done = subprocess.run(
        [*command, "--limit", "2", "--batch-size", "2", "--workers", "1", "--json", str(out)],
        env=env,
        capture_output=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    scored = json.loads(out.read_text())
    assert scored["images"] == 2
    last_eval = [r for r in read_metrics(run_dir / "metrics.jsonl") if "eval/ab_l1" in r][-1]
    assert last_eval["step"] == 6
    assert scored["metrics"]["ab_l1"]["model"] == pytest.approx(last_eval["eval/ab_l1"], rel=1e-3)


# --------------------------------------------------------------------------------------------------
# The dali backend's node-local copies (data.cache_dir)


def _cached(cache: Path, url: str) -> dict[str, bytes]:
    """name → bytes of the shard copies under the cache (digest files aside)."""
    folder = cache / url.removeprefix("s3://")
    return {p.name: p.read_bytes() for p in folder.glob("*.tar")} if folder.is_dir() else {}


@pytest.mark.slow
def test_cached_dali_ranks_copy_only_their_part_and_read_it_from_disk(aws, server, colour_photos, tmp_path, capfd):
    """With data.cache_dir, each of two ranks copies only the shards that hold its part of the split,
    byte-identical to the store's, and reads exactly the samples it reads without the cache, again
    every epoch (so its position cannot be resumed without the cache); a later loader re-uses the copies (and reads on with the store killed), and downloads
    again a copy whose recorded digest is not the manifest's."""
    local = tmp_path / "coded"
    write_test_shards(local, colour_photos, train=(16, 16, 16))
    url = upload_folder(server, local, "coded-cached")
    cache = tmp_path / "cache"
    cfg = DataConfig(shards=url, backend="dali", batch_size=4, num_threads=1, shuffle_buffer=8, compile_lab=False)
    cached = dataclasses.replace(cfg, cache_dir=str(cache))
    parts = {0: [f"img-{n:05d}" for n in range(24)], 1: [f"img-{n:05d}" for n in range(24, 48)]}
    needs = {0: {"train-000000.tar", "train-000001.tar"}, 1: {"train-000001.tar", "train-000002.tar"}}

    def epochs(loader, count: int = 2) -> list[list[str]]:
        """The sorted keys of each of the loader's next `count` epochs (12 batches of 2 samples)."""
        batches = iter(loader)
        return [sorted(key for _ in range(12) for key in sample_keys(*next(batches))) for _ in range(count)]

    for rank in (0, 1):
        uncached = make_loader(cfg, rank, 2, CPU, split="train", seed=0)
        assert epochs(uncached, 1) == [parts[rank]]
        before = set(_cached(cache, url))
        loader = make_loader(cached, rank, 2, CPU, split="train", seed=0)
        assert f"rank {rank}: copied {len(needs[rank] - before)} of 2 shards" in capfd.readouterr().err
        copies = _cached(cache, url)
        assert set(copies) == needs[0] | needs[rank]
        assert all(copies[name] == (local / name).read_bytes() for name in copies)
        assert epochs(loader) == [parts[rank], parts[rank]]
        with pytest.raises(ValueError, match="saved with data.cache_dir"):  # it would read other samples
            uncached.load_state_dict(loader.state_dict())
        loader.close()

    digest = cache / url.removeprefix("s3://") / "train-000002.tar.sha256"
    digest.write_text("0" * 64 + "\n")
    make_loader(cached, 1, 2, CPU, split="train", seed=0).close()
    assert "rank 1: copied 1 of 2 shards" in capfd.readouterr().err
    loader = make_loader(cached, 0, 2, CPU, split="train", seed=0)
    assert "copied" not in capfd.readouterr().err  # rank 0's copies are current
    server.kill()  # the copies are all the loader reads
    assert epochs(loader) == [parts[0], parts[0]]


@pytest.mark.slow
def test_cached_dali_training_from_s3_equals_local_and_resumes_exactly(aws, server, tiny, tmp_path):
    """One rank training from s3:// with data.cache_dir reads the same batches as from local disk
    (its part is the whole split): the losses equal a local run's, killed after a checkpoint and
    resumed too; the resumed run re-uses the copies."""
    local, url = tiny
    cache = tmp_path / "cache"
    config = tiny_config(
        tmp_path / "tiny.yaml",
        url,
        tmp_path / "runs",
        data={"backend": "dali", "compile_lab": False, "cache_dir": str(cache)},
        schedule={"nogan_steps": 3, "gan_steps": 3},
        checkpoint={"every_steps": 3, "keep_last": 2},
    )
    env = subprocess_env(**aws)
    straight = run_train(["--config", str(config), "run.name=straight", f"data.shards={local}"], env=env)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert not cache.exists()  # local shards are read in place
    run_dir = tmp_path / "runs" / "cut"
    killed = kill_after_checkpoint(["--config", str(config), "run.name=cut"], run_dir / "checkpoints" / "step_3", env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    train_shards = {s["name"] for s in read_manifest(local)["shards"] if s["split"] == "train"}
    assert set(_cached(cache, url)) == train_shards
    resumed = run_train(["--config", str(config), "run.name=cut", "--resume"], env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "copied" not in resumed.stderr
    _assert_same_losses(tmp_path / "runs" / "straight", run_dir, range(1, 7))


@pytest.mark.slow
def test_bench_times_dali_on_s3_with_and_without_copies_beside_local_disk(aws, tiny, tmp_path, capfd):
    """`colorize-bench loader --also-shards s3://… --cache-dir D`: dali on local disk, straight from the
    store and from node-local copies, in one run; the copies are made afresh inside D, and D is left
    as it was."""
    from launch.bench import main as bench

    local, url = tiny
    cache, out = tmp_path / "cache", tmp_path / "loader.json"
    kept = cache / url.removeprefix("s3://") / "train-000000.tar"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"someone's copy")
    common = ["--backends", "dali", "--batch-size", "2", "--threads", "1", "--device", "cpu"]
    timing = ["--seconds", "1", "--rounds", "1", "--warmup", "1", "--json", str(out)]
    assert (
        bench(["loader", "--shards", str(local), "--also-shards", url, "--cache-dir", str(cache), *common, *timing])
        == 0
    )
    report = json.loads(out.read_text())
    assert set(report["backends"]) == {"dali", "dali@s3", "dali@s3+cache"}
    for name, figures in report["backends"].items():
        assert figures["images_per_s"] > 0 and figures["startup_s"] >= 0, name
    assert report["settings"]["cache_dir"] == str(cache)
    train = [s for s in read_manifest(local)["shards"] if s["split"] == "train"]
    copied = f"copied {len(train)} of {len(train)} shards ({sum(s['bytes'] for s in train) / 1e6:,.1f} MB)"
    assert copied in capfd.readouterr().err
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == [
        Path(BUCKET),
        Path(BUCKET, "tiny"),
        kept.relative_to(cache),
    ]
    assert kept.read_bytes() == b"someone's copy"


def test_dataset_artifact_records_bucket_prefix_and_checksums(aws, tiny):
    """The W&B dataset artifact of s3:// shards: the manifest, one s3:// reference per shard with its
    SHA-256 and size from the manifest (nothing read from the shards), bucket and prefix."""
    from launch.training.wandb_run import dataset_artifact

    _, url = tiny
    artifact = dataset_artifact(url)
    manifest = read_manifest(url)
    assert artifact.metadata["bucket"] == BUCKET and artifact.metadata["prefix"] == "tiny"
    entries = artifact.manifest.entries
    assert set(entries) == {"manifest.json", *(s["name"] for s in manifest["shards"])}
    for shard in manifest["shards"]:
        entry = entries[shard["name"]]
        assert entry.ref == f"{url}/{shard['name']}"
        assert (entry.size, entry.extra["sha256"]) == (shard["bytes"], shard["sha256"])


# --------------------------------------------------------------------------------------------------
# Faults: one line naming the object


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, expected",
    [
        (
            "train: wrong secret",
            r"tiny/manifest.json: the object store at http://127\.0\.0\.1:\d+ refused the credentials",
        ),
        ("verify: no credentials", r"tiny/manifest.json: no AWS credentials found"),
        (
            "build: wrong endpoint",
            r"cannot reach the object store at http://127\.0\.0\.1:\d+ \(check AWS_ENDPOINT_URL\)",
        ),
        ("verify: no bucket", r"s3://no-such-bucket/tiny/manifest.json: no bucket 'no-such-bucket'"),
        ("train: shard missing", r"s3://shards/holed/train-000001.tar: shard listed in manifest.json is missing"),
        (
            "train: shard rewritten after the build, cached",
            r"s3://shards/rewritten/train-000001.tar: the downloaded copy \(\d+ bytes, SHA-256 [0-9a-f]{12}…\) "
            r"does not match manifest.json",
        ),
    ],
)
def test_store_faults_are_one_line_naming_the_object(aws, server, tiny, tmp_path, case, expected):
    local, url = tiny
    config = tiny_config(tmp_path / "tiny.yaml", url, tmp_path / "runs")
    env = subprocess_env(**aws)
    command = {
        "train": [sys.executable, str(TRAIN_SCRIPT), "--config", str(config)],
        "build": _build_args(local.parent / "photos", f"s3://{BUCKET}/elsewhere", tmp_path / "stage"),
        "verify": [console_script("colorize-shards"), "verify"],
    }[case.split(":")[0]]
    if case == "train: wrong secret":
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
    elif case == "verify: no credentials":
        del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
        command += [url]
    elif case == "verify: no bucket":
        command += ["s3://no-such-bucket/tiny"]
    elif case == "build: wrong endpoint":
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{free_ports(1)[0]}"  # nothing listens there
    elif case == "train: shard missing":
        holed = upload_folder(server, local, "holed")
        server.client().delete_object(Bucket=BUCKET, Key="holed/train-000001.tar")
        command += [f"data.shards={holed}"]
    elif case == "train: shard rewritten after the build, cached":
        rewritten = upload_folder(server, local, "rewritten")
        changed = bytearray((local / "train-000001.tar").read_bytes())
        changed[len(changed) // 2] ^= 0xFF  # one byte of a JPEG: the size and the index still fit
        server.client().put_object(Bucket=BUCKET, Key="rewritten/train-000001.tar", Body=bytes(changed))
        command += [f"data.shards={rewritten}", f"data.cache_dir={tmp_path / 'cache'}"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode in (1, 2), done.stderr[-3000:]
    assert re.search(expected, _one_error_line(done.stderr)), done.stderr[-3000:]
