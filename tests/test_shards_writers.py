"""Shard builds against dead workers, concurrent writers and changed content: real processes, real
signals (SIGKILL of a decode worker, SIGSTOP/SIGCONT/SIGKILL of a build holding OUT), real corrupt
shards and real copies of the source. Each test names the fault of issue #21 it covers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shards.build import KILLED_TWICE, BuildOptions, build_shards
from shards.verify import verify_shards

from _shards_helpers import crops, jpeg_bytes, shard_digests, tree_digests, write, write_class_tree

CLI = [sys.executable, "-m", "shards.cli"]


def _cli(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=timeout)


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result
    return lines[0]


def _finish(process: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    """Wait for `process` (never forever: a hang fails the test) → (returncode, stderr)."""
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(f"{process.args} still running after {timeout} s: it hangs") from None
    return process.returncode, stderr


# Fault 1: a decode worker that dies -----------------------------------------------------------------


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), None)


def _kill_the_worker_on_the_big_image(build: subprocess.Popen, growth_mb: float = 30) -> None:
    """SIGKILL the decode worker of `build` whose memory grows by `growth_mb`: the one decoding the
    12-megapixel PNG (what the out-of-memory killer would pick)."""
    lowest: dict[int, float] = {}
    while build.poll() is None:
        for pid in _children(build.pid):
            rss = _rss_mb(pid)
            if rss is None:
                continue
            lowest[pid] = min(lowest.get(pid, rss), rss)
            if rss - lowest[pid] > growth_mb:
                os.kill(pid, signal.SIGKILL)
                return
        time.sleep(0.002)
    raise AssertionError(f"the build ended before a worker took on the big image: {build.communicate()}")


@pytest.fixture(scope="module")
def with_big_image(tmp_path_factory, colour_photos) -> Path:
    """16 small colour JPEGs and one 4000×3000 colour PNG that takes a worker ~50 MB and ~0.5 s."""
    src = tmp_path_factory.mktemp("big")
    for i, crop in enumerate(crops(colour_photos["chelsea"], 16, seed=2, size=(64, 48))):
        write(src / f"small_{i:02d}.jpg", jpeg_bytes(crop))
    ramp = np.linspace(0, 255, 4000, dtype=np.float32)
    rows = np.linspace(0, 255, 3000, dtype=np.float32)[:, None]
    big = np.dstack([np.broadcast_to(ramp, (3000, 4000)), np.broadcast_to(rows, (3000, 4000)), (ramp + rows) / 2])
    Image.fromarray(big.astype(np.uint8)).save(src / "big.png", compress_level=1)
    return src


BUILD_ARGS = ["--workers", "2", "--shard-samples", "4", "--val-fraction", "0", "--quiet"]


def test_a_dead_worker_stops_the_build_naming_its_image_and_the_build_resumes(with_big_image, tmp_path):
    """#21 fault 1: a decode worker that died (OOM killer, kill -9) hung the build forever:
    multiprocessing.Pool replaced the worker, lost its task, and the parent waited. Now the build
    stops at once with one line naming the image, and a rerun resumes to the uninterrupted bytes."""
    out = tmp_path / "out"
    build = subprocess.Popen(
        [*CLI, "build", str(with_big_image), str(out), *BUILD_ARGS], stderr=subprocess.PIPE, text=True
    )
    _kill_the_worker_on_the_big_image(build)
    returncode, stderr = _finish(build)
    assert returncode == 2 and stderr.count("\n") == 1, stderr
    assert stderr.startswith("error: a decode worker died while decoding 'big.png' (killed, or out of memory")
    assert "run the same command again to resume" in stderr

    rerun = _cli("build", str(with_big_image), str(out), *BUILD_ARGS)
    assert rerun.returncode == 0, rerun.stderr
    whole = tmp_path / "whole"
    manifest = build_shards(
        with_big_image, whole, BuildOptions(workers=2, shard_samples=4, val_fraction=0.0), progress=False
    )
    assert manifest["totals"]["kept"] == 17 and manifest["skipped"] == []
    assert tree_digests(out) == tree_digests(whole)


def test_an_image_that_kills_its_worker_twice_is_skipped(with_big_image, tmp_path):
    """#21 fault 1: an image that kills its decode worker on two runs goes into `skipped`, and the
    second run finishes the build with a fresh pool."""
    out = tmp_path / "out"
    for attempt in (1, 2):
        build = subprocess.Popen(
            [*CLI, "build", str(with_big_image), str(out), *BUILD_ARGS], stderr=subprocess.PIPE, text=True
        )
        _kill_the_worker_on_the_big_image(build)
        returncode, stderr = _finish(build)
        assert returncode == (2 if attempt == 1 else 0), stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped"] == [{"path": "big.png", "reason": KILLED_TWICE}]
    assert manifest["totals"]["kept"] == 16 and verify_shards(out) == []


# Fault 3: two writers in one OUT ------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_source(tmp_path_factory, colour_photos) -> Path:
    """120 PNGs in 3 class folders: each is converted, so a one-worker build takes a little while."""
    src = tmp_path_factory.mktemp("pngs")
    for cls, name in enumerate(("astronaut", "coffee", "rocket")):
        for i, crop in enumerate(crops(colour_photos[name], 40, seed=cls, size=(96, 72))):
            Image.fromarray(crop).save(write(src / name / f"p{i:02d}.png", b""))
    return src


SLOW_ARGS = ["--workers", "1", "--shard-samples", "20", "--val-fraction", "0.1", "--quiet"]


def _start_and_freeze(src: Path, out: Path, *extra: str) -> subprocess.Popen:
    """Start a build, and SIGSTOP it while it is writing its first shard (holding OUT)."""
    build = subprocess.Popen([*CLI, "build", str(src), str(out), *SLOW_ARGS, *extra], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(out.glob("*.tar.tmp")) and build.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    build.send_signal(signal.SIGSTOP)
    assert build.poll() is None, "the build ended before it could be caught writing"
    return build


def test_a_second_build_into_the_same_out_is_refused_and_a_dead_ones_lock_taken_over(slow_source, tmp_path):
    """#21 fault 3: two builds into one OUT at once (a Slurm requeue while the first attempt still
    runs): one crashed with a traceback, the other reported success with an .idx indexing a fraction
    of its shard. Now the second stops with one line naming the first's host and PID; a lock left by
    a build killed with SIGKILL is taken over by the next run."""
    out = tmp_path / "out"
    first = _start_and_freeze(slow_source, out)
    try:
        line = _one_error_line(_cli("build", str(slow_source), str(out), *SLOW_ARGS))
        assert f"is being written by a build (pid {first.pid} on host {socket.gethostname()!r}" in line
        assert f"lock file {out / '.progress' / 'build.lock'}" in line
    finally:
        first.send_signal(signal.SIGCONT)
    returncode, stderr = _finish(first)
    assert returncode == 0, stderr
    assert verify_shards(out) == []

    killed = tmp_path / "killed"
    victim = _start_and_freeze(slow_source, killed)
    victim.kill()
    _finish(victim)
    assert json.loads((killed / ".progress" / "build.lock").read_text())["pid"] == victim.pid  # left behind
    rerun = _cli("build", str(slow_source), str(killed), *SLOW_ARGS)
    assert rerun.returncode == 0, rerun.stderr
    assert tree_digests(killed) == tree_digests(out)
    assert (killed / ".progress" / "build.lock").read_text() == ""  # emptied by the run that ended


@pytest.mark.slow
def test_a_part_excludes_every_writer_but_the_other_parts_of_its_split(slow_source, tmp_path):
    """#21 fault 3, per part: while part 1/2 runs, a whole build, a second attempt of part 1/2 and a
    part of another split (1/1) are each refused with one line; part 2/2 runs beside it, and the two
    merge into the one-machine build."""
    out = tmp_path / "out"
    part_one = _start_and_freeze(slow_source, out, "--part", "1/2")
    try:
        holder = f"part 1/2 (pid {part_one.pid} on host {socket.gethostname()!r}"
        for extra in ([], ["--part", "1/2"], ["--part", "1/1"]):
            assert holder in _one_error_line(_cli("build", str(slow_source), str(out), *SLOW_ARGS, *extra)), extra
        part_two = _cli("build", str(slow_source), str(out), *SLOW_ARGS, "--part", "2/2")
        assert part_two.returncode == 0 and "Waiting for part(s) 1" in part_two.stdout, part_two.stderr
    finally:
        part_one.send_signal(signal.SIGCONT)
    returncode, stderr = _finish(part_one)
    assert returncode == 0, stderr
    whole = tmp_path / "whole"
    build_shards(slow_source, whole, BuildOptions(workers=1, shard_samples=20, val_fraction=0.1), progress=False)
    assert tree_digests(out) == tree_digests(whole)


# Atomic writes: a build killed inside a shard ----------------------------------------------------


def _files(out: Path) -> dict[str, bytes]:
    """The bytes of every file at the top of `out` (progress records and the lock, hidden, aside)."""
    found = {}
    for path in out.iterdir() if out.is_dir() else ():
        if path.name.startswith("."):
            continue
        try:
            found[path.name] = path.read_bytes()
        except OSError:  # renamed away between listing and reading
            pass
    return found


def _caught_writing(files: dict[str, bytes], final: dict[str, bytes], finished: int) -> bool:
    """`finished` shards are done (tar and index), and some file is not (yet) what the finished build
    has there."""
    done = [
        name
        for name, data in files.items()
        if name.endswith(".tar") and final.get(name) == data and final.get(f"{name}.idx") == files.get(f"{name}.idx")
    ]
    return len(done) >= finished and any(final.get(name) != data for name, data in files.items())


@pytest.mark.parametrize("finished", [0, 2])
def test_a_build_killed_inside_a_shard_leaves_no_incomplete_file_under_a_final_name(slow_source, tmp_path, finished):
    """The build is stopped (SIGSTOP) while it writes a shard, after `finished` shards are done, and
    killed (SIGKILL): every file under a name the finished build has holds its finished bytes, and
    the rerun completes the same tree."""
    whole = tmp_path / "whole"
    build_shards(slow_source, whole, BuildOptions(workers=1, shard_samples=20, val_fraction=0.1), progress=False)
    final = _files(whole)
    out = tmp_path / "out"
    build = subprocess.Popen([*CLI, "build", str(slow_source), str(out), *SLOW_ARGS], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    files: dict[str, bytes] = {}
    while build.poll() is None and time.monotonic() < deadline:
        if _caught_writing(_files(out), final, finished):
            build.send_signal(signal.SIGSTOP)
            files = _files(out)  # what a kill now leaves behind
            if _caught_writing(files, final, finished):
                break
            build.send_signal(signal.SIGCONT)  # it moved on between the two looks
        time.sleep(0.001)
    build.kill()
    _finish(build)
    assert _caught_writing(files, final, finished), "the build was not caught writing a shard"
    torn = [name for name, data in files.items() if name in final and data != final[name]]
    assert torn == [], f"incomplete files under final names: {torn}"

    rerun = _cli("build", str(slow_source), str(out), *SLOW_ARGS)
    assert rerun.returncode == 0, rerun.stderr
    assert tree_digests(out) == tree_digests(whole)


# Faults 5 and 6: merge and resume check content, not sizes and names ------------------------------


@pytest.fixture(scope="module")
def tree(tmp_path_factory, colour_photos) -> Path:
    root = tmp_path_factory.mktemp("tree")
    write_class_tree(root, colour_photos, per_class=4, size=(64, 48))
    return root


OPTIONS = dict(shard_samples=4, val_fraction=0.2, seed=3, workers=1)
PART_ARGS = ["--shard-samples", "4", "--val-fraction", "0.2", "--seed", "3", "--workers", "1", "--quiet"]


def _two_parts(src: Path, out: Path) -> None:
    for k in (1, 2):
        build_shards(src, out, BuildOptions(**OPTIONS), progress=False, part=(k, 2))
    (out / "manifest.json").unlink()


def test_merge_refuses_a_same_size_bit_flip_or_an_edited_index(tree, tmp_path):
    """#21 fault 5: merge compared shard sizes only: a same-size bit flip in a shard, or an edited
    .idx, merged with exit 0. Now merge checks each part's shards against their records (SHA-256,
    samples, index) and names the shard."""
    out = tmp_path / "out"
    _two_parts(tree, out)
    shard = out / "train-000001.tar"
    original = shard.read_bytes()
    shard.write_bytes(original[:5000] + bytes([original[5000] ^ 1]) + original[5001:])
    line = _one_error_line(_cli("merge", str(out)))
    assert f"{shard}: shard of part 2 of 2 changed since that part finished (train-000001.tar: sha256 differs" in line
    shard.write_bytes(original)
    index = out / "train-000000.tar.idx"
    text = index.read_text()
    index.write_text(text.replace("jpg", "jpG", 1))  # same size, one letter edited
    assert "train-000000.tar.idx: does not match its tar" in _one_error_line(_cli("merge", str(out)))
    index.write_text(text)
    merged = _cli("merge", str(out))
    assert merged.returncode == 0, merged.stderr
    assert verify_shards(out) == []


def test_resume_redoes_a_finished_shard_whose_index_was_edited(tree, tmp_path):
    """#21 fault 5, resume: a finished shard is kept only when its tar and index match its record."""
    out = tmp_path / "out"
    build_shards(tree, out, BuildOptions(**OPTIONS), progress=False)
    index = out / "train-000000.tar.idx"
    index.write_text(index.read_text().replace("jpg", "jpG", 1))
    (out / "manifest.json").unlink()
    build_shards(tree, out, BuildOptions(**OPTIONS), progress=False)
    assert verify_shards(out) == []


def test_a_copy_of_the_source_with_other_content_is_refused_naming_the_file(tree, tmp_path, colour_photos):
    """#21 fault 6: the plan digest covered paths and classes only: a part built from a re-encoded
    copy of the folder merged cleanly under the original's name, and so did a resumed whole build.
    Now size and modification time of every file are in the digest, and the first differing file is
    named. A copy that keeps sizes and times (cp -a, rsync -a, shutil.copytree) is the same source."""
    same = tmp_path / "same"
    shutil.copytree(tree, same)  # copy2: same bytes, same mtimes
    out = tmp_path / "out"
    build_shards(tree, out, BuildOptions(**OPTIONS), progress=False, part=(1, 2))
    assert _cli("build", str(same), str(out), *PART_ARGS, "--part", "2/2").returncode == 0
    assert verify_shards(out) == []

    reencoded = tmp_path / "reencoded"
    shutil.copytree(tree, reencoded)
    victim = reencoded / "coffee" / "img_002.jpg"
    before = victim.stat()
    victim.write_bytes(jpeg_bytes(np.asarray(Image.open(victim)), quality=60))
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))  # even with the old time: the size differs
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(before.st_mtime))
    expected = (
        f"other source files (first difference: 'coffee/img_002.jpg' is {victim.stat().st_size:,} bytes modified "
        f"{when} but was {before.st_size:,} bytes modified {when} when that build began)"
    )
    for extra in (["--part", "2/2"], []):  # a part, and a whole build resumed, from the re-encoded copy
        assert expected in _one_error_line(_cli("build", str(reencoded), str(out), *PART_ARGS, *extra)), extra
    os.utime(same / "rocket" / "img_000.jpg", (1e9, 1e9))  # same bytes, another time: cannot be told apart
    line = _one_error_line(_cli("build", str(same), str(out), *PART_ARGS))
    assert "first difference: 'rocket/img_000.jpg' is" in line and "modified 2001-09-09 01:46:40 UTC" in line


# Issue #20: N is explicit; a stale part file from another N is named -------------------------------


def test_a_stale_part_file_of_another_n_is_named_and_any_part_reruns_alone(tree, tmp_path):
    """#20 item 6: rerunning one lost Slurm task as part 1/1 left `part-1-of-1.json`, which then broke
    the real merge without saying which file was wrong. Now merge and build name the file to delete,
    and a part can be rerun alone."""
    out, single = tmp_path / "out", tmp_path / "single"
    for k in (1, 2, 3):
        build_shards(tree, out, BuildOptions(**OPTIONS), progress=False, part=(k, 3))
    reference = tree_digests(out)
    build_shards(tree, single, BuildOptions(**OPTIONS), progress=False, part=(1, 1))
    stale = out / "parts" / "part-1-of-1.json"
    shutil.copy(single / "parts" / "part-1-of-1.json", stale)

    line = _one_error_line(_cli("merge", str(out)))
    assert "part-1-of-1.json is from another split into parts (3 of a split into 3)" in line
    assert f"(`rm {stale}`)" in line
    (out / "parts" / "part-2-of-3.json").unlink()  # a lost task: its part file and a shard are gone
    (out / "train-000001.tar").unlink()
    line = _one_error_line(_cli("build", str(tree), str(out), *PART_ARGS, "--part", "2/3"))
    assert "part-1-of-1.json is from another split into parts (this is part 2 of 3)" in line and f"`rm {stale}`" in line
    assert not (out / "train-000001.tar").exists()  # refused before building anything
    line = _one_error_line(_cli("build", str(tree), str(out), *PART_ARGS, "--part", "1/1"))
    assert "part-1-of-3.json, part-3-of-3.json are from another split into parts (this is part 1 of 1)" in line

    stale.unlink()
    rerun = _cli("build", str(tree), str(out), *PART_ARGS, "--part", "2/3")  # part 2 alone
    assert rerun.returncode == 0 and "all 3 parts merged" in rerun.stdout, rerun.stderr
    assert tree_digests(out) == reference
    assert shard_digests(out) == shard_digests(single)
