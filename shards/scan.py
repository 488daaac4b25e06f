"""Scan a source folder: every image file (by extension), its relative path and its class.

Classes: when every image lies inside a top-level subfolder (ImageNet's `n01440764/…` synset layout,
or any `class_name/…` tree), class index = position of that subfolder in the sorted list of
subfolders holding images (for ImageNet: the standard synset order). When some image lies directly in
the source folder, there are no classes. Hidden files and folders (leading '.') are ignored, and so are
files whose extension is not an image extension (`.txt`, `.csv`, …): they are not images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from shards.errors import ShardsError
from shards.keys import sample_key

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"}
)


@dataclass(frozen=True)
class SourceImage:
    """One image file of the source: `path` relative to the source folder (POSIX), its key and class."""

    path: str
    key: str
    cls: int | None


@dataclass(frozen=True)
class SourceListing:
    """The images of a source folder, sorted by path, and the class names (None without classes)."""

    root: Path
    images: tuple[SourceImage, ...]
    classes: tuple[str, ...] | None


def scan_source(root: str | os.PathLike) -> SourceListing:
    """List the image files under `root`; raise `ShardsError` when `root` is not a readable folder."""
    root = Path(root)
    if not root.exists():
        raise ShardsError(f"source folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise ShardsError(f"source {str(root)!r} is not a folder")
    if not os.access(root, os.R_OK | os.X_OK):
        raise ShardsError(f"source folder {str(root)!r} is not readable")

    paths: list[str] = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        relative_dir = Path(directory).relative_to(root).as_posix()
        for name in files:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            paths.append(name if relative_dir == "." else f"{relative_dir}/{name}")
    paths.sort()

    all_in_subfolders = bool(paths) and all("/" in p for p in paths)
    classes = tuple(sorted({p.split("/", 1)[0] for p in paths})) if all_in_subfolders else None
    class_index = {name: i for i, name in enumerate(classes or ())}
    images = tuple(
        SourceImage(path=p, key=sample_key(p), cls=class_index[p.split("/", 1)[0]] if classes else None)
        for p in paths
    )
    return SourceListing(root=root, images=images, classes=classes)
