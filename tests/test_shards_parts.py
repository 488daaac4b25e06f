"""Shard builds split across machines: `--part K/N` in separate processes, then `merge`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shards.build import BuildOptions, build_shards
from shards.parts import merge_parts, part_shards
from shards.plan import plan_shards
from shards.scan import scan_source

from _shards_helpers import read_samples, tree_digests, write, write_class_tree, write_nested_tar

CLI = [sys.executable, "-m", "shards.cli"]
OPTIONS = dict(shard_samples=4, val_fraction=0.2, seed=3)
ARGS = ["--shard-samples", "4", "--val-fraction", "0.2", "--seed", "3", "--workers", "1", "--quiet"]


@pytest.fixture(scope="module")
def source(tmp_path_factory, colour_photos) -> Path:
    """ImageNet's train tar in small: 6 classes × 6 photos in per-class inner tars, one broken JPEG."""
    tree = tmp_path_factory.mktemp("tree")
    write_class_tree(tree, colour_photos, per_class=6)
    write(tree / "coffee" / "broken.jpg", (tree / "coffee" / "img_000.jpg").read_bytes()[:300])
    return write_nested_tar(tmp_path_factory.mktemp("archive") / "train.tar", tree)


@pytest.fixture(scope="module")
def one_machine(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("one_machine")
    return out, build_shards(source, out, BuildOptions(workers=1, **OPTIONS), progress=False)


def test_parts_are_disjoint_and_cover_the_plan_for_any_n(source):
    plan = plan_shards(scan_source(source), BuildOptions(workers=1, **OPTIONS))
    assert len(plan) >= 9
    for n in (1, 2, 3, 4, len(plan) + 2):
        names = [shard.name for k in range(1, n + 1) for shard in part_shards(plan, (k, n))]
        assert sorted(names) == sorted(shard.name for shard in plan) and len(set(names)) == len(names)


def test_three_parts_in_three_processes_merge_into_the_one_machine_build(source, one_machine, tmp_path):
    single_out, single = one_machine
    out = tmp_path / "shards"
    processes = [
        subprocess.Popen(
            [*CLI, "build", str(source), str(out), "--part", f"{k}/3", *ARGS],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in (1, 2, 3)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    assert sum("parts merged" in stdout for stdout, _ in outputs) >= 1  # the last one to finish merged
    assert sorted(p.name for p in (out / "parts").iterdir()) == [f"part-{k}-of-3.json" for k in (1, 2, 3)]

    merged = subprocess.run([*CLI, "merge", str(out)], capture_output=True, text=True)  # by hand: same result
    assert merged.returncode == 0, merged.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == single
    assert tree_digests(out) == tree_digests(single_out)  # every shard, index and the manifest
    samples = read_samples(out, manifest)
    assert samples == read_samples(single_out, single) and len(samples) == 36
    assert manifest["skipped"] == [{"path": "coffee.tar/broken.jpg", "reason": single["skipped"][0]["reason"]}]

    verify = subprocess.run([*CLI, "verify", str(out)], capture_output=True, text=True)
    assert verify.returncode == 0 and "all shards" in verify.stdout, verify.stderr

    from configs import DataConfig
    from pipeline import make_loader

    seen: set[bytes] = set()
    for split in ("train", "val"):  # one evaluation pass: every sample of the split, once
        cfg = DataConfig(
            shards=str(out), backend="dali", batch_size=4, shuffle_buffer=8, num_threads=1, compile_lab=False
        )
        loader = make_loader(cfg, 0, 1, torch.device("cpu"), split=split, endless=False)
        images = [image.numpy().tobytes() for L, _ in loader for image in L]  # the photos differ: so do these
        assert len(images) == len(set(images)) == manifest["splits"][split] > 0
        assert seen.isdisjoint(images)  # and no sample of one split in the other
        seen.update(images)


def _merge_error(out: Path) -> str:
    result = subprocess.run([*CLI, "merge", str(out)], capture_output=True, text=True)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_merge_names_a_missing_part_and_a_part_built_with_other_options(source, tmp_path):
    out = tmp_path / "shards"
    for k in (1, 3):
        part = build_shards(source, out, BuildOptions(workers=1, **OPTIONS), progress=False, part=(k, 3))
        assert part["missing"] == [2] if k == 3 else [2, 3]
    assert not (out / "manifest.json").exists()
    assert "part 2 of 3 is missing" in _merge_error(out)

    other = tmp_path / "other-seed"
    build_shards(source, other, BuildOptions(workers=1, **{**OPTIONS, "seed": 4}), progress=False, part=(2, 3))
    shutil.copy(other / "parts" / "part-2-of-3.json", out / "parts")
    line = _merge_error(out)
    assert "part-2-of-3.json: part 2 of 3 was built with other options (seed: 3 → 4)" in line
    assert not (out / "manifest.json").exists()

    build_shards(source, out, BuildOptions(workers=1, **OPTIONS), progress=False, part=(2, 3))  # redo it right
    assert merge_parts(out)["totals"]["kept"] == 36
    (out / "val-000000.tar").unlink()
    assert "val-000000.tar: shard of part" in _merge_error(out)


def test_part_option_is_checked(source, tmp_path):
    for bad in ("0/3", "4/3", "three"):
        result = subprocess.run(
            [*CLI, "build", str(source), str(tmp_path / "o"), "--part", bad], capture_output=True, text=True
        )
        assert result.returncode == 2 and result.stderr.startswith("error: --part must be K/N"), result.stderr
    assert "no part manifests" in _merge_error(tmp_path)
