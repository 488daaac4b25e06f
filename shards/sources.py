"""What a build reads from: an image folder, or a tar / zip archive read in place (`shards.archives`).

Every kind of source answers the same questions, so scanning, planning, keys and shards do not
know which kind they read, and an archive builds exactly the shards of its extracted folder:
- `files`: every regular file's path relative to the source root (POSIX; for an archive, the path its
  extraction would have) → a small picklable *locator* of its bytes (folder: the path itself);
- `stats`: path → (size in bytes, modification time in whole seconds), the file's identity in the
  build's plan digest (whole seconds: what tar headers hold and `tar -x` restores);
- `reader()`: a picklable object whose `read(locator)` returns those bytes (raising `OSError` or
  `archives.UnreadableMember`), opened once per pool worker;
- `archive_path(path)`: how the manifest names a file (`n01440764.tar/n01440764_10026.JPEG`);
- `unusable`: path → (manifest name, reason) for entries that exist but cannot be read as a file: a
  FIFO, socket or device, a broken link, a link to a folder (not followed, as `os.walk` does not), a
  link in an archive pointing outside it;
- `problems`: what listing found broken (a truncated inner tar, an unreadable folder, …) as manifest
  `skipped` entries.
A source that is neither a folder nor a regular file (a FIFO named `x.tar`, a device) is refused
before anything reads it: opening a FIFO would wait for a writer forever.
"""

from __future__ import annotations

import os
import stat
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shards.archives import FOLDER_LINK, ArchiveReader, Member, list_tar, list_zip, open_nonblocking
from shards.errors import BuildError

_FILE_KINDS = {
    stat.S_IFIFO: "FIFO",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFDIR: "folder",
}


def file_kind(mode: int) -> str:
    """What a non-regular `st_mode` is, in words ("FIFO", "character device", …)."""
    return _FILE_KINDS.get(stat.S_IFMT(mode), "special file")


class FolderReader:
    """Reads files of a folder by relative path (the locator); nothing to open."""

    cheap_reread = True  # the parent re-reads kept files from the page cache

    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self, relative_path: str) -> bytes:
        fd = open_nonblocking(self.root / relative_path)  # a file swapped for a FIFO must not hang a worker
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise OSError(f"not a regular file ({file_kind(mode)})")
            with os.fdopen(fd, "rb", closefd=False) as file:
                return file.read()
        finally:
            os.close(fd)


@dataclass
class Source:
    """A listed source: `location` (what the manifest records), its files and listing problems."""

    location: str
    files: Mapping[str, str | Member]
    """path → locator: the path itself (folder) or its `Member` (archive)."""
    stats: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    """path → (size in bytes, modification time in whole seconds since the epoch)."""
    unusable: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    """path → (manifest name, reason) for entries that are not readable files."""
    problems: list[dict] = field(default_factory=list)
    _reader: object = None

    def reader(self):
        return self._reader

    def archive_path(self, path: str) -> str:
        locator = self.files.get(path, path)
        return locator if isinstance(locator, str) else locator.name


def _walk_folder(root: Path) -> Source:
    """Every file under `root` (hidden folders are not walked), with sizes, mtimes and unusable entries."""
    files: dict[str, str] = {}
    stats: dict[str, tuple[int, int]] = {}
    unusable: dict[str, tuple[str, str]] = {}
    problems: list[dict] = []
    pending = [("", str(root))]
    while pending:
        relative_dir, directory = pending.pop()
        try:
            with os.scandir(directory) as entries:
                found = list(entries)
        except OSError as error:
            problems.append({"path": relative_dir or ".", "reason": f"unreadable folder: {error.strerror or error}"})
            continue
        for entry in found:
            path = f"{relative_dir}/{entry.name}" if relative_dir else entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if not entry.name.startswith("."):  # hidden folders: not worth walking
                        pending.append((path, entry.path))
                    continue
                info = entry.stat()  # follows a symbolic link to what it names
            except OSError:
                unusable[path] = (path, "broken symbolic link: nothing at its target")
                continue
            if stat.S_ISREG(info.st_mode):
                files[path] = path
                stats[path] = (info.st_size, int(info.st_mtime))
            elif stat.S_ISDIR(info.st_mode):
                unusable[path] = (path, FOLDER_LINK)
            else:
                unusable[path] = (path, f"not a regular file ({file_kind(info.st_mode)})")
    return Source(str(root), files, stats, unusable, problems, FolderReader(root))


def _under(mapping: Mapping, inside: str) -> dict:
    """The entries of `mapping` under folder `inside`, with paths relative to it."""
    prefix = inside.strip("/") + "/"
    return {path[len(prefix) :]: value for path, value in mapping.items() if path.startswith(prefix)}


def open_source(src, inside: str | None = None) -> Source:
    """List the source at `src` (folder, `.tar` or `.zip`); `BuildError` naming it when unusable.

    `inside`: a folder of the source to build from instead of its root (same as building the folder
    `extraction/inside`).
    """
    root = Path(src).absolute()
    try:
        mode = root.stat().st_mode
    except FileNotFoundError:
        raise BuildError(f"source {str(src)!r} does not exist") from None
    except OSError as error:
        raise BuildError(f"source {str(src)!r} cannot be read: {error.strerror or error}") from None
    if stat.S_ISDIR(mode):
        if not os.access(root, os.R_OK | os.X_OK):
            raise BuildError(f"source folder {str(src)!r} is not readable")
        if inside:
            root = root / inside.strip("/")
            if not root.is_dir():
                raise BuildError(f"source {str(src)!r} has no folder {inside!r}")
        return _walk_folder(root)
    if not stat.S_ISREG(mode):
        raise BuildError(
            f"source {str(src)!r} is a {file_kind(mode)}, not a folder or an archive file (a tar or zip on disk)"
        )
    if root.suffix.lower() == ".zip" or (root.suffix.lower() != ".tar" and _is_zip(root)):
        listing = list_zip(root)
    else:
        listing = list_tar(root)
    files, stats, unusable, location = listing.members, listing.stats, listing.unusable, str(root)
    if inside:
        files, stats, unusable = (_under(mapping, inside) for mapping in (files, stats, unusable))
        if not files and listing.members:
            tops = sorted({path.split("/", 1)[0] for path in listing.members if "/" in path})[:8]
            raise BuildError(
                f"source {location!r} has nothing under {inside!r} (its top-level folders: {', '.join(tops) or 'none'})"
            )
        location = f"{location}/{inside.strip('/')}"
    return Source(location, files, stats, unusable, listing.problems, ArchiveReader(root))


def _is_zip(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False
