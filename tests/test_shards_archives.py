"""Shards built straight from archives: ImageNet's nested tar, Kaggle's zip, a plain tar, a flat val tar.

The archive build must write the very shards of a build from the extracted folder (same keys,
shuffle, split, bytes), and damage in an archive must cost only the images it damaged.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from shards.build import BuildOptions, build_shards
from shards.keys import sample_key

from _shards_helpers import (
    crops,
    jpeg_bytes,
    read_samples,
    shard_digests,
    tar_bytes,
    write,
    write_class_tree,
    write_nested_tar,
)

CLI = [sys.executable, "-m", "shards.cli"]
OPTIONS = dict(shard_samples=8, val_fraction=0.2, seed=3)
KAGGLE_TRAIN = "ILSVRC/Data/CLS-LOC/train"


@pytest.fixture(scope="module")
def tree(tmp_path_factory, colour_photos) -> Path:
    """6 class folders × 5 photos, a truncated JPEG and a text file: an extracted ImageNet in small."""
    root = tmp_path_factory.mktemp("tree") / "train"
    write_class_tree(root, colour_photos, per_class=5)
    write(root / "coffee" / "broken.jpg", (root / "coffee" / "img_000.jpg").read_bytes()[:300])
    write(root / "rocket" / "notes.txt", b"not an image, ignored by every build")
    return root


@pytest.fixture(scope="module")
def folder_build(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("folder_build")
    return out, build_shards(tree, out, BuildOptions(workers=1, **OPTIONS), progress=False)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _archive(kind: str, tree: Path, tmp_path: Path) -> tuple[Path, str | None]:
    """The extracted `tree` packed as `kind`; returns (archive, folder inside it to build from)."""
    if kind == "nested tar":  # ILSVRC2012_img_train.tar: one tar per class
        return write_nested_tar(tmp_path / "ILSVRC2012_img_train.tar", tree), None
    if kind == "plain tar":  # `tar cf train.tar -C train .`
        with tarfile.open(tmp_path / "train.tar", "w") as tar:
            tar.add(tree, arcname=".")
        return tmp_path / "train.tar", None
    # Kaggle's zip: train/ deep inside, beside other folders and files; JPEGs stored or deflated
    path = tmp_path / "imagenet-object-localization-challenge.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("LOC_synset_mapping.txt", "n01440764 tench\n")
        archive.writestr("ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_00000001.JPEG", b"not in train")
        for i, file in enumerate(_files(tree)):
            method = zipfile.ZIP_DEFLATED if i % 2 else zipfile.ZIP_STORED
            archive.write(file, f"{KAGGLE_TRAIN}/{file.relative_to(tree).as_posix()}", compress_type=method)
    return path, KAGGLE_TRAIN


@pytest.mark.parametrize("kind", ["nested tar", "zip", "plain tar"])
def test_archive_builds_the_shards_of_its_extracted_folder(kind, tree, folder_build, tmp_path):
    folder_out, folder_manifest = folder_build
    archive, inside = _archive(kind, tree, tmp_path)
    out = tmp_path / "out"
    manifest = build_shards(archive, out, BuildOptions(workers=2, **OPTIONS), progress=False, inside=inside)

    assert shard_digests(out) == shard_digests(folder_out)  # every tar and index, byte for byte
    assert len(shard_digests(out)) == 2 * len(manifest["shards"]) >= 8
    assert manifest["source"] == str(archive) + (f"/{inside}" if inside else "")
    # The plan digest covers each file's size and mtime: `tar.add` keeps them (whole seconds, what
    # `tar -x` restores), the other two packers here give their members other times.
    differs = ("source", "skipped") + (() if kind == "plain tar" else ("plan_sha256",))
    assert {k: v for k, v in manifest.items() if k not in differs} == {
        k: v for k, v in folder_manifest.items() if k not in differs
    }
    archive_name = {
        "nested tar": "coffee.tar/broken.jpg",
        "plain tar": "./coffee/broken.jpg",
        "zip": f"{KAGGLE_TRAIN}/coffee/broken.jpg",
    }[kind]
    assert manifest["skipped"] == [{"path": archive_name, "reason": folder_manifest["skipped"][0]["reason"]}]


def _member_ends(tar_data: bytes) -> dict[str, int]:
    """name → offset just past its data, for each member of a tar held in memory."""
    with tarfile.open(fileobj=io.BytesIO(tar_data)) as tar:
        return {m.name: m.offset_data + m.size for m in tar}


def test_damaged_archive_loses_only_what_is_damaged(tree, tmp_path):
    """Not an image inside an inner tar, a truncated inner tar, an outer tar cut inside its last
    inner tar: the build goes on, lists each with its archive path, and keeps every intact image."""
    inner = {cls.name: {p.name: p.read_bytes() for p in sorted(cls.iterdir())} for cls in sorted(tree.iterdir())}
    inner["chelsea"]["readme.JPEG"] = b"this inner member is text, not an image"
    tars = {cls: tar_bytes(files) for cls, files in inner.items()}
    ends = {cls: _member_ends(data) for cls, data in tars.items()}
    # hubble_deep_field.tar is complete in the outer tar, but was itself cut inside its 3rd image
    hubble_cut = ends["hubble_deep_field"]["img_002.jpg"] - 2000
    tars["hubble_deep_field"] = tars["hubble_deep_field"][:hubble_cut]
    whole = tar_bytes({f"{cls}.tar": data for cls, data in tars.items()})
    rocket_start = _member_ends(whole)["rocket.tar"] - len(tars["rocket"])
    outer_cut = rocket_start + ends["rocket"]["img_001.jpg"] - 1000  # inside rocket's 2nd image
    archive = write(tmp_path / "cut.tar", whole[:outer_cut])

    manifest = build_shards(archive, tmp_path / "out", BuildOptions(workers=2, **OPTIONS), progress=False)

    intact = {
        f"{cls}/{name}"
        for cls, files in inner.items()
        for name in files
        if name.endswith(".jpg")
        and name != "broken.jpg"
        and not (cls == "hubble_deep_field" and ends[cls][name] > hubble_cut)
        and not (cls == "rocket" and rocket_start + ends[cls][name] > outer_cut)
    }
    assert len(intact) == 30 - 3 - 4  # hubble loses 3 of 5, rocket 4 of 5
    assert set(read_samples(tmp_path / "out", manifest)) == {sample_key(path) for path in intact}
    reasons = {item["path"]: item["reason"] for item in manifest["skipped"]}
    assert reasons["chelsea.tar/readme.JPEG"].startswith("undecodable: ")
    assert reasons["coffee.tar/broken.jpg"].startswith("undecodable: ")
    assert reasons["hubble_deep_field.tar/img_002.jpg"].startswith("truncated: ")
    rocket_size = len(inner["rocket"]["img_001.jpg"])
    assert reasons["rocket.tar/img_001.jpg"] == f"truncated: {rocket_size - 1000} of {rocket_size} bytes in the archive"
    for broken_tar in ("hubble_deep_field.tar", "rocket.tar", "cut.tar"):
        assert reasons[broken_tar].startswith("truncated tar: "), broken_tar
    assert "after member 'img_002.jpg'" in reasons["hubble_deep_field.tar"]
    assert len(reasons) == 7
    assert manifest["totals"]["skipped"] == 7 and manifest["totals"]["kept"] == len(intact)


def test_zip_member_with_a_bad_crc_is_skipped_and_the_rest_kept(tree, tmp_path):
    path = tmp_path / "train.zip"
    files = _files(tree)
    with zipfile.ZipFile(path, "w") as archive:
        for file in files:
            archive.write(file, file.relative_to(tree).as_posix(), compress_type=zipfile.ZIP_STORED)
    with zipfile.ZipFile(path) as archive:
        victim = archive.getinfo("chelsea/img_003.jpg")
    data = bytearray(path.read_bytes())
    data[victim.header_offset + 30 + len(victim.filename) + len(victim.extra) + 500] ^= 0x10
    path.write_bytes(bytes(data))

    manifest = build_shards(path, tmp_path / "out", BuildOptions(workers=1, **OPTIONS), progress=False)
    assert {"path": "chelsea/img_003.jpg", "reason": "bad zip member: CRC-32 mismatch (corrupt data)"} in manifest[
        "skipped"
    ]
    assert manifest["totals"]["kept"] == 30 - 1 and manifest["totals"]["skipped"] == 2  # and coffee/broken.jpg


def test_flat_val_tar_builds_val_shards_only(tmp_path, colour_photos):
    """ILSVRC2012_img_val.tar: 50,000 JPEGs side by side, no classes → `--split val`."""
    images = {
        f"ILSVRC2012_val_{i:08d}.JPEG": jpeg_bytes(c)
        for i, c in enumerate(crops(colour_photos["chelsea"], 12, seed=4, size=(64, 48)), start=1)
    }
    archive = write(tmp_path / "ILSVRC2012_img_val.tar", tar_bytes(images))
    out = tmp_path / "val-shards"
    result = subprocess.run(
        [*CLI, "build", str(archive), str(out), "--split", "val", "--shard-samples", "5", "--workers", "1", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"] == {"train": 0, "val": 12} and manifest["classes"] is None
    assert [e["name"] for e in manifest["shards"]] == ["val-000000.tar", "val-000001.tar", "val-000002.tar"]
    assert manifest["options"]["split"] == "val"
    samples = read_samples(out, manifest)
    assert set(samples) == {sample_key(name) for name in images}
    assert all(set(sample) == {"jpg"} for sample in samples.values())


def _cli_error(*argv: str) -> str:
    result = subprocess.run([*CLI, *argv], capture_output=True, text=True)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_missing_or_unreadable_archive_is_one_error_line(tree, tmp_path):
    out = str(tmp_path / "out")
    assert _cli_error("build", str(tmp_path / "ILSVRC2012_img_train.tar"), out) == (
        f"error: source {str(tmp_path / 'ILSVRC2012_img_train.tar')!r} does not exist"
    )
    garbage = write(tmp_path / "garbage.tar", b"\x01" * 5000)
    assert "garbage.tar' is not a readable tar archive" in _cli_error("build", str(garbage), out)
    gz = write(tmp_path / "train.tar.gz", b"\x1f\x8b\x08" + b"\x00" * 600)
    assert "is a gzip-compressed tar" in _cli_error("build", str(gz), out)
    zip_path = tmp_path / "cut.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr("a/x.jpg", b"x" * 3000)
    zip_path.write_bytes(zip_path.read_bytes()[:2000])  # the central directory is at the end
    assert "cut.zip' is not a readable zip archive" in _cli_error("build", str(zip_path), out)
    tar = write_nested_tar(tmp_path / "n.tar", tree)
    assert "has nothing under 'ILSVRC/Data'" in _cli_error("build", str(tar), out, "--inside", "ILSVRC/Data")
    assert not (tmp_path / "out").exists()
