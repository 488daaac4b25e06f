"""Images read straight out of a tar or zip archive, in place: nothing extracted is written to disk.

Listing reads only headers (a tar's member headers, a zip's central directory) and records where
each file's bytes lie in the archive (`Member`); a reader then fetches any member by offset with
`os.pread`, so pool workers read their own images in parallel, exactly as they read files of a
folder, and the global shuffle costs no more than it does for a folder.

Paths are those of the archive's extraction, so a build reads the same relative paths, keys and
classes as a build of the extracted folder:
- a tar member `a/b.jpg` (or `./a/b.jpg`) is `a/b.jpg`;
- a tar member that is itself a tar, `n01440764.tar`, is read as the folder `n01440764/` holding
  its members (`n01440764.tar` member `n01440764_10026.JPEG` → `n01440764/n01440764_10026.JPEG`):
  ILSVRC2012_img_train.tar is 1,000 such per-class tars;
- a zip member `ILSVRC/Data/CLS-LOC/train/n01440764/x.JPEG` is that path; `inside` picks a folder of
  the archive to build from (Kaggle's ImageNet zip: `ILSVRC/Data/CLS-LOC/train`).
Damage never raises for one image: a cut member or a bad CRC is reported when the member is read
(`UnreadableMember`), a truncated or unreadable tar inside the archive is a listing problem.
"""

from __future__ import annotations

import io
import os
import posixpath
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

from shards.errors import BuildError

ZIP_STORED, ZIP_DEFLATED = 0, 8
_ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, 22 bytes we do not need, name and extra lengths
_COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


class UnreadableMember(Exception):
    """A listed member whose bytes cannot be had (cut off, bad CRC, …); the message is the reason."""


class Member(NamedTuple):
    """Where one file's bytes lie in the archive (small: it travels to a pool worker per image)."""

    name: str
    """Its path in the archive, as the manifest reports it (`n01440764.tar/n01440764_10026.JPEG`)."""
    offset: int
    """Tar: first byte of the data. Zip: first byte of the member's local header."""
    size: int
    """Stored bytes (compressed size for a deflated zip member)."""
    zipped: bool = False
    method: int = ZIP_STORED
    length: int = -1
    """Bytes once inflated (zip)."""
    crc: int = 0
    """CRC-32 of the inflated bytes (zip)."""


class ArchiveReader:
    """Reads members of one archive file by offset; picklable (each process opens its own handle)."""

    cheap_reread = True  # a stored member is one pread from the page cache

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "_fd": None}

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)  # absent when __init__ did not run
        if fd is not None:
            os.close(fd)

    def _pread(self, size: int, offset: int) -> bytes:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        chunks, done = [], 0
        while done < size:  # pread may return less than asked for large reads
            chunk = os.pread(self._fd, size - done, offset + done)
            if not chunk:
                break
            chunks.append(chunk)
            done += len(chunk)
        return b"".join(chunks)

    def read(self, member: Member) -> bytes:
        """The member's file bytes; `UnreadableMember` (with the reason) or `OSError` when impossible."""
        offset = member.offset
        if member.zipped:
            header = self._pread(_ZIP_LOCAL_HEADER.size, offset)
            if len(header) < _ZIP_LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
                raise UnreadableMember("bad zip member: no local header where the central directory says")
            _, name_length, extra_length = _ZIP_LOCAL_HEADER.unpack(header)
            offset += _ZIP_LOCAL_HEADER.size + name_length + extra_length
        data = self._pread(member.size, offset)
        if len(data) < member.size:
            raise UnreadableMember(f"truncated: {len(data)} of {member.size} bytes in the archive")
        if not member.zipped:
            return data
        if member.method == ZIP_DEFLATED:
            try:
                data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data)
            except zlib.error as error:
                raise UnreadableMember(f"bad zip member: {error}") from None
        elif member.method != ZIP_STORED:
            raise UnreadableMember(f"zip compression method {member.method} not supported (only stored and deflate)")
        if len(data) != member.length or zlib.crc32(data) != member.crc:
            raise UnreadableMember("bad zip member: CRC-32 mismatch (corrupt data)")
        return data


class _Window(io.RawIOBase):
    """A read-only, seekable view of bytes [start, start + size) of an open file (reads by pread)."""

    def __init__(self, fd: int, start: int, size: int) -> None:
        self._fd, self._start, self._size, self._position = fd, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + position)
        return self._position

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self._size - self._position))
        data = os.pread(self._fd, count, self._start + self._position) if count else b""
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)


def _clean(name: str) -> str | None:
    """`name` as a relative POSIX path (`./a//b` → `a/b`); None for names outside the archive root."""
    path = posixpath.normpath(name.lstrip("/"))
    return None if path == "." or path == ".." or path.startswith("../") else path


class ArchiveListing(NamedTuple):
    """Every regular file of an archive: relative path → `Member`, and problems found while listing."""

    members: dict[str, Member]
    problems: list[dict]


def _list_tar(
    fd: int, start: int, size: int, available: int, prefix: str, display: str, listing: ArchiveListing, nested: bool
) -> None:
    """Add the members of the tar in bytes [start, start + size) of `fd` (of which `available` exist).

    `prefix`: folder their paths go in; `display`: how the manifest names this tar; `nested`: expand
    member tars into folders (only one level: ImageNet's layout).
    """
    window = _Window(fd, start, available)
    last = None
    try:
        tar = tarfile.open(fileobj=window, mode="r:")
        while True:
            info = tar.next()
            if info is None:
                break
            last = info.name
            path = _clean(info.name)
            if path is None or not info.isreg():
                continue
            if info.issparse():
                listing.problems.append({"path": f"{display}{info.name}", "reason": "sparse tar member not supported"})
                continue
            present = max(0, min(info.size, available - info.offset_data))
            if nested and path.lower().endswith(".tar"):
                _list_tar(
                    fd,
                    start + info.offset_data,
                    info.size,
                    present,
                    f"{prefix}{path[:-4]}/",
                    f"{display}{info.name}/",
                    listing,
                    nested=False,
                )
            elif present < info.size:  # cut off: what follows in the file belongs to something else
                listing.problems.append(
                    {
                        "path": f"{display}{info.name}",
                        "reason": f"truncated: {present} of {info.size} bytes in the archive",
                    }
                )
            else:
                listing.members[f"{prefix}{path}"] = Member(
                    f"{display}{info.name}", start + info.offset_data, info.size
                )
        complete = tar.offset + 2 * tarfile.BLOCKSIZE <= available  # room for the end-of-archive blocks
    except tarfile.ReadError as error:
        if last is None and available == size:
            listing.problems.append({"path": display.rstrip("/") or ".", "reason": f"not a readable tar: {error}"})
            return
        complete = False
    if not complete or available < size:
        where = f"after member {last!r}" if last is not None else "before its first member"
        listing.problems.append(
            {
                "path": display.rstrip("/") or ".",
                "reason": f"truncated tar: ends {where} ({available} bytes); members after that are lost",
            }
        )


def _open_readable(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY)
    except OSError as error:
        raise BuildError(f"source archive {str(path)!r} is not readable: {error.strerror or error}") from None


def list_tar(path: Path) -> ArchiveListing:
    """List a tar archive (member tars read as folders); `BuildError` when it is not a plain tar."""
    fd = _open_readable(path)
    try:
        if hasattr(os, "posix_fadvise"):  # headers only: read-ahead would pull in the whole archive
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        head = os.pread(fd, 6, 0)
        for magic, kind in _COMPRESSED_MAGIC.items():
            if head.startswith(magic):
                raise BuildError(
                    f"source {str(path)!r} is a {kind}-compressed tar: images cannot be read in "
                    f"place; decompress it once (e.g. `{kind} -d`) or unpack it into a folder"
                )
        size = os.fstat(fd).st_size
        try:
            tarfile.open(fileobj=_Window(fd, 0, size), mode="r:")
        except tarfile.ReadError as error:
            raise BuildError(f"source {str(path)!r} is not a readable tar archive ({error})") from None
        listing = ArchiveListing({}, [])
        _list_tar(fd, 0, size, size, "", "", listing, nested=True)
        for problem in listing.problems:
            if problem["path"] == ".":
                problem["path"] = path.name
        return listing
    finally:
        os.close(fd)


def list_zip(path: Path) -> ArchiveListing:
    """List a zip archive from its central directory; `BuildError` when that cannot be read."""
    os.close(_open_readable(path))
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise BuildError(f"source {str(path)!r} is not a readable zip archive ({error})") from None
    listing = ArchiveListing({}, [])
    for info in infos:
        name = _clean(info.filename)
        if name is None or info.is_dir():
            continue
        if info.flag_bits & 0x1:
            listing.problems.append({"path": info.filename, "reason": "encrypted zip member"})
            continue
        listing.members[name] = Member(
            info.filename, info.header_offset, info.compress_size, True, info.compress_type, info.file_size, info.CRC
        )
    return listing
