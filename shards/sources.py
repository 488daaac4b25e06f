"""What a build reads from: an image folder, or a tar / zip archive read in place (`shards.archives`).

Every kind of source answers the same three questions, so scanning, planning, keys and shards do not
know which kind they read, and an archive builds exactly the shards of its extracted folder:
- `files`: every file's path relative to the source root (POSIX; for an archive, the path its
  extraction would have) → a small picklable *locator* of its bytes (folder: the path itself);
- `reader()`: a picklable object whose `read(locator)` returns those bytes (raising `OSError` or
  `archives.UnreadableMember`), opened once per pool worker;
- `archive_path(path)`: how the manifest names a file (`n01440764.tar/n01440764_10026.JPEG`).
`problems` lists what listing found broken (a truncated inner tar, …) as manifest `skipped` entries.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shards.archives import ArchiveReader, Member, list_tar, list_zip
from shards.errors import BuildError


class FolderReader:
    """Reads files of a folder by relative path (the locator); nothing to open."""

    cheap_reread = True  # the parent re-reads kept files from the page cache

    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self, relative_path: str) -> bytes:
        return (self.root / relative_path).read_bytes()


@dataclass
class Source:
    """A listed source: `location` (what the manifest records), its files and listing problems."""

    location: str
    files: Mapping[str, str | Member]
    """path → locator: the path itself (folder) or its `Member` (archive)."""
    problems: list[dict] = field(default_factory=list)
    _reader: object = None

    def reader(self):
        return self._reader

    def archive_path(self, path: str) -> str:
        locator = self.files.get(path, path)
        return locator if isinstance(locator, str) else locator.name


def _walk_folder(root: Path) -> dict[str, str]:
    files: dict[str, str] = {}
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]  # hidden folders: not worth walking
        relative_dir = Path(directory).relative_to(root).as_posix()
        for name in names:
            path = name if relative_dir == "." else f"{relative_dir}/{name}"
            files[path] = path
    return files


def _inside(files: dict, inside: str, location: str) -> dict:
    """The files under folder `inside` of the source, with paths relative to it."""
    prefix = inside.strip("/") + "/"
    picked = {path[len(prefix) :]: locator for path, locator in files.items() if path.startswith(prefix)}
    if not picked:
        tops = sorted({path.split("/", 1)[0] for path in files if "/" in path})[:8]
        raise BuildError(
            f"source {location!r} has nothing under {inside!r} (its top-level folders: {', '.join(tops) or 'none'})"
        )
    return picked


def open_source(src, inside: str | None = None) -> Source:
    """List the source at `src` (folder, `.tar` or `.zip`); `BuildError` naming it when unusable.

    `inside`: a folder of the source to build from instead of its root (same as building the folder
    `extraction/inside`).
    """
    root = Path(src).absolute()
    if not root.exists():
        raise BuildError(f"source {str(src)!r} does not exist")
    if root.is_dir():
        if not os.access(root, os.R_OK | os.X_OK):
            raise BuildError(f"source folder {str(src)!r} is not readable")
        if inside:
            root = root / inside.strip("/")
            if not root.is_dir():
                raise BuildError(f"source {str(src)!r} has no folder {inside!r}")
        return Source(str(root), _walk_folder(root), [], FolderReader(root))
    if root.suffix.lower() == ".zip" or (root.suffix.lower() != ".tar" and _is_zip(root)):
        listing = list_zip(root)
    elif root.suffix.lower() == ".tar" or root.is_file():
        listing = list_tar(root)
    else:
        raise BuildError(f"source {str(src)!r} is not a folder, a tar or a zip archive")
    files, location = listing.members, str(root)
    if inside:
        files = _inside(files, inside, location)
        location = f"{location}/{inside.strip('/')}"
    return Source(location, files, listing.problems, ArchiveReader(root))


def _is_zip(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False
