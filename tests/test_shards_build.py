"""Shard builds end to end: manifest, keys through webdataset and DALI, determinism, resume, verify, errors."""

from __future__ import annotations

import collections
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shards.build import BuildOptions, build_shards
from shards.keys import sample_key
from shards.plan import first_difference, plan_shards, split_of
from shards.scan import scan_source
from shards.verify import verify_shards

from _shards_helpers import (
    crops,
    jpeg_bytes,
    read_samples,
    shard_digests,
    tar_bytes,
    tree_digests,
    write,
    write_class_tree,
)

CLI = [sys.executable, "-m", "shards.cli"]
OPTIONS = dict(shard_samples=8, val_fraction=0.2, seed=3)


@pytest.fixture(scope="module")
def class_source(tmp_path_factory, colour_photos) -> Path:
    """6 class folders × 10 photos, plus files that must be converted, one of each in `rocket/`."""
    root = tmp_path_factory.mktemp("classes")
    write_class_tree(root, colour_photos, per_class=10)
    rgb = crops(colour_photos["rocket"], 1, seed=9)[0]
    write(root / "rocket" / "cmyk.jpg", jpeg_bytes(Image.fromarray(rgb).convert("CMYK")))
    exif = Image.Exif()
    exif[0x0112] = 8
    write(root / "rocket" / "rotated.jpg", jpeg_bytes(rgb, exif=exif.tobytes()))
    write(root / "rocket" / "notes.txt", b"ignored")
    write(root / "coffee" / "broken.jpg", jpeg_bytes(rgb)[:300])
    return root


@pytest.fixture(scope="module")
def built(class_source, tmp_path_factory):
    out = tmp_path_factory.mktemp("built")
    manifest = build_shards(class_source, out, BuildOptions(workers=1, **OPTIONS), progress=False)
    return out, manifest


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_lists_every_shard_with_true_sizes_hashes_and_counts(class_source, built):
    out, manifest = built
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == str(class_source.absolute())
    assert manifest["options"] == {
        "shard_samples": 8,
        "val_fraction": 0.2,
        "seed": 3,
        "short_side": None,
        "quality": 95,
        "keep_colourless": False,
    }
    assert manifest["classes"] == sorted(
        ["astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "rocket"]
    )
    assert manifest["skipped"][0]["path"] == "coffee/broken.jpg" and len(manifest["skipped"]) == 1
    assert manifest["totals"]["images"] == 63 and manifest["totals"]["kept"] == 62
    assert manifest["totals"]["converted"] == 2
    assert sum(manifest["splits"].values()) == 62 and manifest["splits"]["val"] > 0
    samples = read_samples(out, manifest)
    assert len(samples) == 62
    for entry in manifest["shards"]:
        tar = out / entry["name"]
        assert entry["bytes"] == tar.stat().st_size and entry["sha256"] == _sha256(tar)
        index = out / (entry["name"] + ".idx")
        assert index.read_text().splitlines()[0] == f"v1.2 {entry['samples']}"
        assert entry["name"].startswith(entry["split"] + "-")
    assert sum(e["samples"] for e in manifest["shards"] if e["split"] == "val") == manifest["splits"]["val"]
    assert {e["name"] for e in manifest["shards"]} >= {"train-000000.tar", "val-000000.tar"}


def test_keys_and_classes_round_trip_through_webdataset(class_source, built):
    import webdataset as wds

    out, manifest = built
    listing = scan_source(class_source)
    expected = {image.key: image.cls for image in listing.images if image.path != "coffee/broken.jpg"}
    urls = [str(out / e["name"]) for e in manifest["shards"]]
    seen = {}
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        assert set(sample) >= {"__key__", "jpg", "cls"}
        seen[sample["__key__"]] = int(sample["cls"])
    assert seen == expected
    assert sample_key("n01440764/n01440764_10026.JPEG").startswith("n01440764_n01440764_10026-")


def test_shard_members_carry_no_time_owner_or_mode_of_the_machine_that_built_them(built):
    # What makes shards byte-identical across machines and runs: USTAR members, time 0, owner 0 and
    # no owner names, mode 0644, plain files.
    out, manifest = built
    for entry in manifest["shards"]:
        with tarfile.open(out / entry["name"]) as tar:
            members = tar.getmembers()
        assert members and all(m.isreg() for m in members)
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o644)}
        assert (out / entry["name"]).read_bytes()[257:263] == b"ustar\x00"  # the first header's format


def test_a_key_is_the_safe_path_without_extension_cut_to_60_and_64_bits_of_its_hash():
    # Keys are stable: shards built by another version of the builder must carry the same keys.
    def key(readable: str, path: str) -> str:
        return f"{readable}-{hashlib.sha256(path.encode()).hexdigest()[:16]}"

    for path, readable in (
        ("n01440764/n01440764_10026.JPEG", "n01440764_n01440764_10026"),
        ("img.v2.final.jpg", "img_v2_final"),  # only the last extension goes
        ("dir.v1/readme", "dir_v1_readme"),  # a dot in a folder's name is no extension
        ("x" * 80 + "/photo.jpg", "x" * 60),
    ):
        assert sample_key(path) == key(readable, path), path


def test_keys_are_unique_and_safe_even_for_look_alike_paths():
    paths = ["a/b_c.jpg", "a_b/c.jpg", "x.jpg", "x.png", "img.v2.final.jpg", "ünï cödé/ph oto.JPEG"]
    keys = [sample_key(p) for p in paths]
    assert len(set(keys)) == len(keys)
    assert all("." not in k and "/" not in k and k.isascii() for k in keys)
    assert sample_key("x.jpg") == sample_key("x.jpg")  # a pure function of the path


def test_samples_are_shuffled_across_classes(built):
    out, manifest = built
    first = read_samples(out, {"shards": [manifest["shards"][0]]})
    assert len({sample["cls"] for sample in first.values()}) >= 3


def test_split_stays_put_when_files_are_added(class_source, tmp_path, colour_photos):
    before = {i.path: split_of(i.key, 0.2) for i in scan_source(class_source).images}
    grown = tmp_path / "grown"
    shutil.copytree(class_source, grown)
    write_class_tree(grown, colour_photos, per_class=4, start=10)
    listing = scan_source(grown)
    plan = plan_shards(listing, BuildOptions(workers=1, **OPTIONS))
    after = {image.path: shard.split for shard in plan for image in shard.images}
    assert len(after) == len(before) + 24
    assert {path: after[path] for path in before} == before


def test_the_val_split_takes_val_fraction_of_the_keys():
    keys = [f"n{i:05d}/img_{i}.jpg" for i in range(20_000)]
    for fraction in (0.0, 0.05, 0.2, 0.5, 1.0):
        share = sum(split_of(key, fraction) == "val" for key in keys) / len(keys)
        assert share == pytest.approx(fraction, abs=0.01), fraction


def test_first_difference_names_the_first_file_added_gone_or_changed():
    recorded = [["a.jpg", 10, 0], ["b.jpg", 2_000, 86_400], ["c.jpg", 30, 0]]
    assert first_difference(recorded, [list(row) for row in recorded]) is None
    gone = "'b.jpg' was in the source when that build began but is gone"
    assert first_difference(recorded, [recorded[0], recorded[2]]) == gone
    added = "'a2.jpg' is in the source but was not when that build began"
    assert first_difference(recorded, [recorded[0], ["a2.jpg", 5, 0], *recorded[1:]]) == added
    changed = [recorded[0], ["b.jpg", 1_500, 3_600], recorded[2]]
    assert first_difference(recorded, changed) == (
        "'b.jpg' is 1,500 bytes modified 1970-01-01 01:00:00 UTC but was 2,000 bytes modified "
        "1970-01-02 00:00:00 UTC when that build began"
    )


def test_output_is_identical_with_any_worker_count(class_source, built, tmp_path):
    out, _ = built
    build_shards(class_source, tmp_path, BuildOptions(workers=2, **OPTIONS), progress=False)
    assert tree_digests(tmp_path) == tree_digests(out)
    other_seed = build_shards(
        class_source, tmp_path / "s", BuildOptions(workers=1, **{**OPTIONS, "seed": 4}), progress=False
    )
    assert other_seed["shards"][0]["sha256"] != json.loads((out / "manifest.json").read_text())["shards"][0]["sha256"]


def test_rerun_of_a_finished_build_rewrites_no_shard(class_source, built):
    out, manifest = built
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    again = build_shards(class_source, out, BuildOptions(workers=1, **OPTIONS), progress=False)
    assert again == manifest
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == stamps


@pytest.mark.parametrize("kind", ["folder", "tar"])
def test_killed_build_resumes_to_byte_identical_shards(tmp_path, colour_photos, kind):
    src = tmp_path / "src"
    for i, crop in enumerate(crops(colour_photos["coffee"], 300, seed=5, size=(64, 48))):
        write(src / f"c{i:03d}.jpg", jpeg_bytes(crop))
    built_from = src
    if kind == "tar":  # read in place; its shards must be those of the folder build below
        built_from = write(tmp_path / "src.tar", tar_bytes({p.name: p.read_bytes() for p in sorted(src.iterdir())}))
    args = ["--workers", "1", "--shard-samples", "10", "--val-fraction", "0.1", "--quiet"]
    killed = tmp_path / "killed"
    process = subprocess.Popen([*CLI, "build", str(built_from), str(killed), *args], stdout=subprocess.DEVNULL)
    first = killed / "train-000000.tar"
    first_done = killed / ".progress" / "train-000000.tar.json"  # written right after the rename
    deadline = time.monotonic() + 60
    while not first_done.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)  # poll: kill as soon as the first shard is finished
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert first.exists() and not (killed / "manifest.json").exists(), "the build was not killed partway"
    first_stamp = first.stat().st_mtime_ns

    rerun = subprocess.run([*CLI, "build", str(built_from), str(killed), *args], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert len(rerun.stdout.splitlines()) == 1, rerun.stdout  # --quiet: the summary line alone
    assert first.stat().st_mtime_ns == first_stamp  # a finished shard is not redone
    assert not [p for p in killed.iterdir() if p.name.endswith(".tmp")]

    whole = tmp_path / "whole"
    manifest = build_shards(src, whole, BuildOptions(workers=2, shard_samples=10, val_fraction=0.1), progress=False)
    assert shard_digests(killed) == shard_digests(whole)
    assert len(tree_digests(whole)) == 2 * len(manifest["shards"]) + 1 > 50  # tars, indexes, manifest
    if kind == "folder":
        assert tree_digests(killed) == tree_digests(whole)


def test_verify_passes_then_names_a_shard_with_a_flipped_byte(class_source, tmp_path):
    out = tmp_path / "out"
    build_shards(class_source, out, BuildOptions(workers=1, **OPTIONS), progress=False)
    ok = subprocess.run([*CLI, "verify", str(out)], capture_output=True, text=True)
    assert ok.returncode == 0 and "all shards" in ok.stdout
    target = out / "train-000001.tar"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    bad = subprocess.run([*CLI, "verify", str(out)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: train-000001.tar: sha256 differs")
    assert verify_shards(out) == ["train-000001.tar: sha256 differs from the manifest (file corrupted or replaced)"]


def test_verify_catches_an_index_that_does_not_match_its_tar(built, tmp_path):
    out, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.copy(copy / "train-000001.tar.idx", copy / "train-000000.tar.idx")
    assert verify_shards(copy) == ["train-000000.tar.idx: does not match its tar (regenerate with wds2idx)"]
    (copy / "val-000000.tar").unlink()
    assert "val-000000.tar: missing" in verify_shards(copy)


def _cli_error(*argv: str) -> str:
    result = subprocess.run([*CLI, *argv], capture_output=True, text=True)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_out_built_with_other_options_is_refused_untouched(class_source, built):
    out, _ = built
    before = tree_digests(out)
    line = _cli_error(
        "build", str(class_source), str(out), "--shard-samples", "8", "--val-fraction", "0.2", "--seed", "4", "--quiet"
    )
    assert "other options" in line and "seed: 3 → 4" in line
    assert tree_digests(out) == before


def test_out_from_another_source_or_foreign_shards_is_refused(class_source, built, tmp_path):
    out, _ = built
    other = tmp_path / "other"
    write(other / "a" / "x.jpg", (class_source / "rocket" / "cmyk.jpg").read_bytes())
    line = _cli_error("build", str(other), str(out), "--shard-samples", "8", "--val-fraction", "0.2", "--seed", "3")
    assert "other source files (first difference: 'a/x.jpg' is in the source but was not when that build began)" in line
    foreign = tmp_path / "foreign"
    write(foreign / "train-000000.tar", b"x" * 1024)
    assert "something else" in _cli_error("build", str(class_source), str(foreign))
    assert (foreign / "train-000000.tar").read_bytes() == b"x" * 1024


def test_missing_source_and_unusable_output_are_one_line_errors(class_source, tmp_path):
    assert "does not exist" in _cli_error("build", str(tmp_path / "nope"), str(tmp_path / "out"))
    a_file = write(tmp_path / "file", b"")
    assert "not a folder" in _cli_error("build", str(class_source), str(a_file))
    assert "cannot create output folder" in _cli_error("build", str(class_source), str(a_file / "sub"))
    result = subprocess.run([*CLI, "verify", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1 and "no manifest" in result.stderr


def test_dali_reads_every_sample_through_the_written_indexes(class_source, built):
    from nvidia.dali import fn, pipeline_def, types

    out, manifest = built
    listing = {image.key: image.cls for image in scan_source(class_source).images}
    for split in ("train", "val"):
        entries = [e for e in manifest["shards"] if e["split"] == split]
        expected = collections.Counter(listing[key] for e in entries for key in read_samples(out, {"shards": [e]}))

        @pipeline_def(batch_size=8, num_threads=1, device_id=None)
        def reader(entries):
            jpg, cls = fn.readers.webdataset(
                paths=[str(out / e["name"]) for e in entries],
                index_paths=[str(out / (e["name"] + ".idx")) for e in entries],
                ext=["jpg", "cls"],
                missing_component_behavior="error",
                random_shuffle=False,
                pad_last_batch=True,
                name="Reader",
            )
            return fn.decoders.image(jpg, device="cpu", output_type=types.RGB), cls

        pipe = reader(entries)
        pipe.build()
        count = manifest["splits"][split]
        assert pipe.reader_meta("Reader")["epoch_size"] == count
        classes = []
        for _ in range(-(-count // 8)):
            images, cls = pipe.run()
            for i in range(len(cls)):
                assert images.at(i).shape[2] == 3
                classes.append(int(bytes(np.asarray(cls.at(i))).decode()))
        assert collections.Counter(classes[:count]) == expected
