"""Builders of small source folders for the shard-builder tests: real photos, every awkward format."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

PHOTO_SIZE = (160, 120)


def jpeg_bytes(rgb: np.ndarray | Image.Image, quality: int = 90, **save_args) -> bytes:
    image = rgb if isinstance(rgb, Image.Image) else Image.fromarray(rgb)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, **save_args)
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def crops(photo: np.ndarray, count: int, seed: int, size=PHOTO_SIZE) -> list[np.ndarray]:
    """`count` different H×W×3 uint8 crops of `photo`, resized to `size` (width, height)."""
    rng = np.random.default_rng(seed)
    height, width = photo.shape[:2]
    out = []
    for _ in range(count):
        h, w = int(height * rng.uniform(0.4, 0.9)), int(width * rng.uniform(0.4, 0.9))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        crop = Image.fromarray(photo[top : top + h, left : left + w]).resize(size, Image.Resampling.BILINEAR)
        out.append(np.asarray(crop))
    return out


def write_class_tree(root: Path, colour_photos: dict, per_class: int, size=PHOTO_SIZE, start: int = 0) -> list[Path]:
    """`root/<photo name>/img_<n>.jpg`: `per_class` crops of each colour photo (numbers from `start`)."""
    paths = []
    for seed, (name, photo) in enumerate(sorted(colour_photos.items())):
        for i, crop in enumerate(crops(photo, per_class + start, seed, size)[start:], start=start):
            paths.append(write(root / name / f"img_{i:03d}.jpg", jpeg_bytes(crop)))
    return paths


def tree_digests(out: Path) -> dict[str, str]:
    """SHA-256 of every shard, index and the manifest in a shards folder (hidden progress files aside)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.iterdir())
        if p.is_file() and not p.name.startswith(".")
    }


def read_samples(out: Path, manifest: dict) -> dict[str, dict[str, bytes]]:
    """key → {extension: bytes} for every sample of every shard of `manifest`, read with tarfile."""
    samples: dict[str, dict[str, bytes]] = {}
    for entry in manifest["shards"]:
        with tarfile.open(out / entry["name"]) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def png16_bytes(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-channel PNG (greyscale H×W or RGB H×W×3 uint16), written by hand: PIL cannot
    write 48-bit RGB PNGs, and such files do turn up in photo collections."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    height, width = pixels.shape[:2]
    colour_type = 2 if pixels.ndim == 3 else 0
    rows = pixels.astype(">u2").reshape(height, -1).tobytes()
    stride = len(rows) // height
    raw = b"".join(b"\x00" + rows[i * stride : (i + 1) * stride] for i in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def tar_bytes(files: dict[str, bytes]) -> bytes:
    """A plain tar holding `files` (name → bytes), in the given order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in files.items():
            _tar_member(tar, name, data)
    return buffer.getvalue()


def write_nested_tar(path: Path, root: Path, extra: dict[str, dict[str, bytes]] | None = None) -> Path:
    """ILSVRC2012_img_train.tar's layout: one inner `<class>.tar` per subfolder of `root`, members
    named by file name alone; `extra` adds members to the inner tars (class → {name: bytes})."""
    extra = extra or {}
    classes = sorted({p.name for p in root.iterdir() if p.is_dir()} | set(extra))
    with tarfile.open(path, "w") as outer:
        for cls in classes:
            files = {p.name: p.read_bytes() for p in sorted((root / cls).iterdir())} if (root / cls).is_dir() else {}
            _tar_member(outer, f"{cls}.tar", tar_bytes({**files, **extra.get(cls, {})}))
    return path


def shard_digests(out: Path) -> dict[str, str]:
    """`tree_digests` of the shards and their indexes only (the manifest names the source)."""
    return {name: digest for name, digest in tree_digests(out).items() if name != "manifest.json"}
