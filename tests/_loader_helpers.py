"""Tiny WebDataset shards from real photos, in the shards/ format, for the loader tests.

`write_test_shards` writes `train-*.tar`, `val-*.tar`, a DALI `.idx` beside each (made by the
`wds2idx` console script, as the shard builder does) and a manifest.json in the builder's format.
Each sample is a random 300–500 px crop of one of the skimage photos, saved as a quality-90 JPEG,
under the key `img-NNNNN`.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from pipeline.shard_list import FORMAT_NAME, FORMAT_VERSION

WDS2IDX = Path(sys.executable).with_name("wds2idx")


def jpeg_bytes(rgb: np.ndarray, quality: int = 90) -> bytes:
    """H×W×3 uint8 sRGB → baseline JPEG bytes."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def random_views(photos: dict[str, np.ndarray], count: int, seed: int) -> list[np.ndarray]:
    """`count` random crops (300–500 px a side, then resized ≤ 500 px) of the photos, H×W×3 uint8."""
    rng = np.random.default_rng(seed)
    names = sorted(photos)
    views = []
    for i in range(count):
        img = photos[names[i % len(names)]]
        h, w = img.shape[:2]
        ch, cw = int(rng.integers(min(300, h), min(500, h) + 1)), int(rng.integers(min(300, w), min(500, w) + 1))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        views.append(np.ascontiguousarray(img[y : y + ch, x : x + cw]))
    return views


def index_shard(tar: Path) -> None:
    """Write `<tar>.idx` with DALI's wds2idx tool."""
    subprocess.run([str(WDS2IDX), str(tar), str(tar) + ".idx"], check=True, capture_output=True)


def write_test_shards(
    out: Path,
    photos: dict[str, np.ndarray],
    *,
    train: tuple[int, ...] = (16, 16, 16),
    val: tuple[int, ...] = (12,),
    seed: int = 0,
    bad_keys: dict[str, bytes] | None = None,
) -> dict:
    """Write shards with the given per-shard sample counts; returns the manifest written.

    `bad_keys` maps a sample key to the bytes stored as its `jpg` instead of a real JPEG (to test
    undecodable samples). Keys run `img-00000`… across train then val shards.
    """
    out.mkdir(parents=True, exist_ok=True)
    bad_keys = bad_keys or {}
    total = sum(train) + sum(val)
    views = random_views(photos, total, seed)
    entries, n = [], 0
    for split, counts in (("train", train), ("val", val)):
        for shard_no, count in enumerate(counts):
            name = f"{split}-{shard_no:06d}.tar"
            with wds.TarWriter(str(out / name)) as sink:
                for _ in range(count):
                    key = f"img-{n:05d}"
                    data = bad_keys.get(key, None) or jpeg_bytes(views[n])
                    sink.write({"__key__": key, "jpg": data, "cls": str(n % 10)})
                    n += 1
            index_shard(out / name)
            entries.append(
                {"name": name, "split": split, "samples": count, "bytes": (out / name).stat().st_size, "sha256": ""}
            )
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "source": "tests",
        "options": {},
        "splits": {"train": sum(train), "val": sum(val)},
        "shards": entries,
        "skipped": [],
        "colourless": [],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def all_keys(manifest: dict, split: str) -> list[str]:
    """Every sample key of `split` in shard order, as `write_test_shards` names them."""
    start = 0
    keys = []
    for entry in manifest["shards"]:
        if entry["split"] == split:
            keys += [f"img-{start + i:05d}" for i in range(entry["samples"])]
        start += entry["samples"]
    return keys
