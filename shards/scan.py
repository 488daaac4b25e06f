"""Scan a source (folder, or tar / zip archive: `shards.sources`): every image file (by extension),
its relative path, key, class, size and modification time.

Classes: when every image lies inside a top-level subfolder (ImageNet's `n01440764/…` synset layout,
or any `class_name/…` tree), class index = position of that subfolder in the sorted list of
subfolders holding images (for ImageNet: the standard synset order). When some image lies directly in
the source folder, there are no classes. Hidden files and folders (leading '.') are ignored, and so are
files whose extension is not an image extension (`.txt`, `.csv`, …): they are not images.

Entries named like images that cannot be read as files (a FIFO, a device, a broken link, a link out of
an archive), and links to folders, are listed as problems (manifest `skipped`). A source without a
single image file is a `BuildError`: a build of it would "succeed" with nothing in it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.image_io import IMAGE_EXTENSIONS
from shards.archives import FOLDER_LINK
from shards.errors import BuildError
from shards.keys import display_path, unique_keys
from shards.sources import Source, open_source


@dataclass(frozen=True)
class SourceImage:
    """One image file of the source: `path` relative to the source folder (POSIX), its key, class,
    size in bytes and modification time (whole seconds)."""

    path: str
    key: str
    cls: int | None
    size: int = 0
    mtime: int = 0


@dataclass(frozen=True)
class SourceListing:
    """The images of a source, sorted by path, the class names (None without classes), the source
    itself (to read them) and what its listing found broken (manifest `skipped` entries)."""

    root: Path
    images: tuple[SourceImage, ...]
    classes: tuple[str, ...] | None
    source: Source | None = None
    problems: tuple[dict, ...] = ()


def _visible(path: str) -> bool:
    return not any(part.startswith(".") for part in path.split("/"))


def is_image_path(path: str) -> bool:
    """True for a relative path with an image extension and no hidden part (`.cache/x.jpg`)."""
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS and _visible(path)


def _nothing_to_build(source: Source, problems: list[dict]) -> BuildError:
    files = len(source.files)
    if problems:
        first = problems[0]
        found = f"; {len(problems)} problem(s), first {display_path(first['path'])!r}: {first['reason']}"
    else:
        found = ""
    what = f"{files} file(s), none with an image extension ({' '.join(IMAGE_EXTENSIONS)})" if files else "it is empty"
    return BuildError(f"source {source.location!r} holds no image files: {what}{found}")


def scan_source(src: str | os.PathLike | Source, inside: str | None = None) -> SourceListing:
    """List the image files of `src` (a folder or archive path, or an opened `Source`); raise
    `BuildError` when it is missing, unreadable or holds no image file. `inside`: see `sources.open_source`."""
    source = src if isinstance(src, Source) else open_source(src, inside)
    paths = sorted(path for path in source.files if is_image_path(path))
    problems = list(source.problems) + [
        {"path": name, "reason": reason}
        for path, (name, reason) in sorted(source.unusable.items())
        if is_image_path(path) or (reason == FOLDER_LINK and _visible(path))
    ]
    if not paths:
        raise _nothing_to_build(source, problems)

    all_in_subfolders = all("/" in p for p in paths)
    classes = tuple(sorted({p.split("/", 1)[0] for p in paths})) if all_in_subfolders else None
    class_index = {name: i for i, name in enumerate(classes or ())}
    images = tuple(
        SourceImage(p, key, class_index[p.split("/", 1)[0]] if classes else None, *source.stats.get(p, (0, 0)))
        for p, key in zip(paths, unique_keys(paths), strict=True)
    )
    return SourceListing(Path(source.location), images, classes, source, tuple(problems))
