"""Scan a source (folder, or tar / zip archive: `shards.sources`): every image file (by extension),
its relative path and its class.

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

from pipeline.image_io import IMAGE_EXTENSIONS
from shards.keys import sample_key
from shards.sources import Source, open_source


@dataclass(frozen=True)
class SourceImage:
    """One image file of the source: `path` relative to the source folder (POSIX), its key and class."""

    path: str
    key: str
    cls: int | None


@dataclass(frozen=True)
class SourceListing:
    """The images of a source, sorted by path, the class names (None without classes), the source
    itself (to read them) and what its listing found broken (manifest `skipped` entries)."""

    root: Path
    images: tuple[SourceImage, ...]
    classes: tuple[str, ...] | None
    source: Source | None = None
    problems: tuple[dict, ...] = ()


def is_image_path(path: str) -> bool:
    """True for a relative path with an image extension and no hidden part (`.cache/x.jpg`)."""
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS and not any(
        part.startswith(".") for part in path.split("/")
    )


def scan_source(src: str | os.PathLike | Source, inside: str | None = None) -> SourceListing:
    """List the image files of `src` (a folder or archive path, or an opened `Source`); raise
    `BuildError` when it is missing or unreadable. `inside`: see `sources.open_source`."""
    source = src if isinstance(src, Source) else open_source(src, inside)
    paths = sorted(path for path in source.files if is_image_path(path))

    all_in_subfolders = bool(paths) and all("/" in p for p in paths)
    classes = tuple(sorted({p.split("/", 1)[0] for p in paths})) if all_in_subfolders else None
    class_index = {name: i for i, name in enumerate(classes or ())}
    images = tuple(
        SourceImage(path=p, key=sample_key(p), cls=class_index[p.split("/", 1)[0]] if classes else None) for p in paths
    )
    return SourceListing(Path(source.location), images, classes, source, tuple(source.problems))
