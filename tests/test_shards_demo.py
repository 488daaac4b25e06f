"""Demo photos (offline, deterministic, ImageNet-like sizes) and the `colorize-bench shards` command."""

from __future__ import annotations

import subprocess
import sys

from PIL import Image

from shards.demo_images import colour_sources, write_demo_images, write_heldout_photos


def test_demo_images_are_deterministic_class_folders_of_imagenet_sized_jpegs(tmp_path):
    first = write_demo_images(tmp_path / "a", count=18, seed=1)
    second = write_demo_images(tmp_path / "b", count=18, seed=1)
    assert [p.relative_to(tmp_path / "a") for p in first] == [p.relative_to(tmp_path / "b") for p in second]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, second, strict=True))
    classes = {p.parent.name for p in first}
    assert classes == set(colour_sources()) and len(classes) >= 8
    assert str(first[0].relative_to(tmp_path / "a")) == "astronaut/0000.jpg"
    sizes = [Image.open(p).size for p in first]
    assert all(300 <= max(s) <= 500 and Image.open(p).mode == "RGB" for s, p in zip(sizes, first, strict=True))
    assert len(set(sizes)) > 5  # varied crops, not one size
    other_seed = write_demo_images(tmp_path / "c", count=18, seed=2)
    assert first[0].read_bytes() != other_seed[0].read_bytes()


def test_heldout_photos_hold_a_colour_reference_and_true_black_and_white_pictures(tmp_path):
    paths = write_heldout_photos(tmp_path)
    modes = {p.name: Image.open(p).mode for p in paths}
    assert modes == {"stereo_motorcycle_right.jpg": "RGB", "camera.png": "L", "coins.png": "L", "moon.png": "L"}


def test_demo_images_cli_writes_the_set(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "shards.cli",
            "demo-images",
            str(tmp_path / "demo"),
            "--count",
            "9",
            "--heldout",
            str(tmp_path / "heldout"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "demo").rglob("*.jpg"))) == 9 and len(list((tmp_path / "heldout").iterdir())) == 4


def test_bench_shards_builds_generated_images_and_prints_a_rate():
    result = subprocess.run(
        [sys.executable, "-m", "launch.bench", "shards", "--images", "24", "--workers", "2"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "24 images → 24 kept" in result.stdout and "images/s" in result.stdout
