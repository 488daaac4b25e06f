"""Tiny WebDataset shards from real photos, in the shards/ format, for the loader tests.

`write_test_shards` writes `train-*.tar`, `val-*.tar`, a DALI `.idx` beside each (made by the
`wds2idx` console script, as the shard builder does) and a manifest.json in the builder's format.
Each sample is a random 300–500 px crop of one of the skimage photos, saved as a quality-90 JPEG,
under the key `img-NNNNN`.

Sample identity travels in the pixels, so the tests read what a loader yields without any switch
in the loader: sample n keeps its photo's luma texture and carries one flat chroma everywhere, a
point of an 8×8 grid of (Cb, Cr). A crop, flip, resize or decoder keeps that chroma, so
`sample_keys` names every image of a batch from its median Cb, Cr.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from skimage.color import lab2rgb

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


# Chroma codes, in JPEG's own YCbCr (full-range BT.601, code values / 255): sample n gets
# (Cb, Cr) = (CODES[n % 8], CODES[n // 8 % 8]), 12 code values apart, far beyond what JPEG, chroma
# subsampling, resampling or a decoder moves a flat chroma. With Y in [0.35, 0.65] and |Cb|, |Cr| ≤
# 42/255 every pixel stays inside the sRGB cube, so nothing is clipped.
CODES = np.arange(-42.0, 43.0, 12.0) / 255.0
CODED = len(CODES) ** 2


def coded(rgb: np.ndarray, n: int) -> np.ndarray:
    """H×W×3 uint8 sRGB → its luma texture squeezed into Y ∈ [0.35, 0.65] with sample n's flat chroma."""
    luma = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255.0
    y = 0.35 + 0.3 * luma
    cb, cr = CODES[n % len(CODES)], CODES[n // len(CODES) % len(CODES)]
    out = np.stack((y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb), axis=-1)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def sample_keys(L, ab) -> list[str]:
    """Network Lab batch (L B×1×S×S, ab B×2×S×S; any device) of shards written with `coded` → each
    image's sample key `img-NNNNN`, from its median Cb, Cr (skimage's Lab → sRGB, not the product's)."""
    lab = torch.cat(((L.detach().float().cpu() + 1.0) * 50.0, ab.detach().float().cpu() * 128.0), dim=1)
    keys = []
    for image in lab.permute(0, 2, 3, 1).numpy():
        r, g, b = np.moveaxis(lab2rgb(image.astype(np.float64)), -1, 0)
        cb = np.median(-0.168736 * r - 0.331264 * g + 0.5 * b)
        cr = np.median(0.5 * r - 0.418688 * g - 0.081312 * b)
        i, j = (int(np.abs(CODES - c).argmin()) for c in (cb, cr))
        keys.append(f"img-{i + len(CODES) * j:05d}")
    return keys


def keys_of(loader, batches: int | None = None) -> list[str]:
    """Sample keys of the first `batches` batches of one pass over `loader` (all of them by default)."""
    keys: list[str] = []
    for i, (L, ab) in enumerate(loader):
        if i == batches:
            break
        keys += sample_keys(L, ab)
    return keys


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
    code: bool = True,
) -> dict:
    """Write shards with the given per-shard sample counts; returns the manifest written.

    `bad_keys` maps a sample key to the bytes stored as its `jpg` instead of a real JPEG (to test
    undecodable samples). Keys run `img-00000`… across train then val shards; with `code` (at most
    64 samples) each image carries its number as chroma (`coded`), else the photo crop as it is.
    """
    out.mkdir(parents=True, exist_ok=True)
    bad_keys = bad_keys or {}
    total = sum(train) + sum(val)
    assert not code or total <= CODED, f"{total} samples: only {CODED} chroma codes"
    views = random_views(photos, total, seed)
    if code:
        views = [coded(view, n) for n, view in enumerate(views)]
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
                {
                    "name": name,
                    "split": split,
                    "samples": count,
                    "bytes": (out / name).stat().st_size,
                    "sha256": hashlib.sha256((out / name).read_bytes()).hexdigest(),
                }
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
