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
  the archive to build from (Kaggle's ImageNet zip: `ILSVRC/Data/CLS-LOC/train`);
- names are bytes: a tar name that is not UTF-8 comes with surrogate escapes (`tarfile` decodes with
  `surrogateescape`, as `os.listdir` does); a zip name without the UTF-8 flag is taken as the raw
  bytes `unzip` writes on Linux (UTF-8 when they decode as such, else surrogate escapes), except in
  archives made on MS-DOS/Windows, whose names are code page 437 as the zip format says;
- links, as `tar -x` (or `unzip`) and then a build of the extracted folder would read them: a hard
  link is the member it links to; a symbolic link (tar, or zip made on Unix) is the member its target
  names, through further links (at most 16); the sample's path is the link's own.

Every file gets its size and modification time (whole seconds: tar headers carry them, a zip its
DOS time), which identify the source's content in the build's plan digest.

Damage never raises for one image, and nothing is lost silently:
- a cut member or a bad CRC is reported when the member is read (`UnreadableMember`);
- a truncated tar, outer or inner, is a listing problem naming the member it ends after;
- a damaged header in the middle of a tar is a listing problem giving its byte offset in the archive
  file; listing resynchronises at the next block that is a valid header, as GNU tar does ("Skipping to
  next header"), so only the member(s) whose header is damaged are lost; after that, zero blocks are
  skipped too (`tar -i`), since the end-of-archive marker found may be that of a tar inside the lost member;
- link members whose target lies outside the archive, is missing or is a folder, and members that are
  not regular files (FIFOs, devices) are `unusable` with a reason (`shards.scan` lists those named like
  images, and every link to a folder, as skipped).
"""

from __future__ import annotations

import calendar
import io
import os
import posixpath
import stat
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

from shards.errors import BuildError

ZIP_STORED, ZIP_DEFLATED = 0, 8
_ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, 22 bytes we do not need, name and extra lengths
_ZIP_UTF8_FLAG = 0x800
_ZIP_MADE_ON_MSDOS = 0
_ZIP_MADE_ON_UNIX = 3
_COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
_MAX_LINK_HOPS = 16
_RESYNC_CHUNK = 1 << 20
FOLDER_LINK = "symbolic link to a folder: not followed"
"""Reason given for a link to a folder (a build reads files; `os.walk` does not follow such links)."""
_SPECIAL_KINDS = {
    tarfile.FIFOTYPE: "FIFO",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
}


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


def open_nonblocking(path) -> int:
    """A read-only descriptor of `path` that never blocks on a FIFO (a regular file reads as usual)."""
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK)


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
            self._fd = open_nonblocking(self.path)
        return _pread_all(self._fd, size, offset)

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


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    chunks, done = [], 0
    while done < size:  # pread may return less than asked for large reads
        chunk = os.pread(fd, size - done, offset + done)
        if not chunk:
            break
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


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


class _Link(NamedTuple):
    name: str
    """As the manifest names it."""
    target: str | None
    """The path (in the listing) it points at; None when that lies outside the archive."""
    symbolic: bool


class ArchiveListing(NamedTuple):
    """Every regular file of an archive: relative path → `Member`, its (size, mtime), the entries that
    cannot be read as files (path → (manifest name, reason)) and problems found while listing."""

    members: dict[str, Member]
    stats: dict[str, tuple[int, int]]
    unusable: dict[str, tuple[str, str]]
    problems: list[dict]
    links: dict[str, _Link]


def _new_listing() -> ArchiveListing:
    return ArchiveListing({}, {}, {}, [], {})


def _is_header(block: bytes) -> bool:
    """True for a 512-byte block that is a valid ustar/GNU tar header (magic and checksum)."""
    if block[257:262] != b"ustar":
        return False
    try:
        tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def _next_header(fd: int, begin: int, end: int) -> int | None:
    """File offset of the first valid tar header in blocks begin, begin + 512, … below `end`."""
    base = begin
    while base + tarfile.BLOCKSIZE <= end:
        chunk = os.pread(fd, min(_RESYNC_CHUNK, end - base), base)
        if not chunk:
            return None
        hit = chunk.find(b"ustar", 257)
        while hit != -1:
            start = hit - 257
            if start % tarfile.BLOCKSIZE == 0 and _is_header(chunk[start : start + tarfile.BLOCKSIZE]):
                return base + start
            hit = chunk.find(b"ustar", hit + 1)
        base += len(chunk) - len(chunk) % tarfile.BLOCKSIZE
    return None


def _list_tar(
    fd: int, start: int, size: int, available: int, prefix: str, display: str, listing: ArchiveListing, nested: bool
) -> None:
    """Add the members of the tar in bytes [start, start + size) of `fd` (of which `available` exist).

    `prefix`: folder their paths go in; `display`: how the manifest names this tar; `nested`: expand
    member tars into folders (only one level: ImageNet's layout).
    """
    here = display.rstrip("/") or "."
    position, last, recovering = 0, None, False  # position: where this pass's first header lies
    while True:
        tar = None
        try:
            tar = tarfile.open(fileobj=_Window(fd, start + position, available - position), mode="r:")
            while (info := tar.next()) is not None:
                # tarfile keeps every member it reads (~0.4 KB each): a plain ImageNet tar has 1.28 M
                tar.members.clear()  # type: ignore[attr-defined]  # CPython attribute, not in typeshed
                last = info.name
                _add_member(fd, start + position, available - position, info, prefix, display, listing, nested)
        except tarfile.ReadError as error:
            if tar is None and position == 0 and available == size:
                listing.problems.append({"path": here, "reason": f"not a readable tar: {error}"})
                return
        stop = position + (tar.offset if tar is not None else 0)  # where the next header was expected
        block = os.pread(fd, tarfile.BLOCKSIZE, start + stop) if stop + tarfile.BLOCKSIZE <= available else b""
        damaged = len(block) == tarfile.BLOCKSIZE and block.count(0) < tarfile.BLOCKSIZE
        if damaged or (recovering and block):
            resume = _next_header(fd, start + stop + tarfile.BLOCKSIZE, start + available)
            if damaged:
                after = f"after member {last!r}" if last is not None else "before its first member"
                then = (
                    f"skipped to the next valid header at byte {resume}; the member(s) in between are lost"
                    if resume is not None
                    else "no valid header follows it: the rest of this tar is lost"
                )
                listing.problems.append(
                    {"path": here, "reason": f"damaged tar header at byte {start + stop} ({after}): {then}"}
                )
            if resume is not None:
                position, recovering = resume - start, True
                continue
            if recovering and not damaged:
                return  # only zero blocks after the last member found: a normal end
        break
    complete = stop + 2 * tarfile.BLOCKSIZE <= available  # room for the end-of-archive blocks
    if not complete or available < size:
        where = f"after member {last!r}" if last is not None else "before its first member"
        listing.problems.append(
            {
                "path": here,
                "reason": f"truncated tar: ends {where} ({available} bytes); members after that are lost",
            }
        )


def _add_member(
    fd: int,
    start: int,
    available: int,
    info: tarfile.TarInfo,
    prefix: str,
    display: str,
    listing: ArchiveListing,
    nested: bool,
) -> None:
    """Record one tar header read from the window [start, start + available) of `fd`."""
    path = _clean(info.name)
    if path is None or info.isdir():
        return
    full, name = f"{prefix}{path}", f"{display}{info.name}"
    if info.issym() or info.islnk():
        if info.issym():  # relative to the link's folder, in the extracted tree
            target = None if info.linkname.startswith("/") else posixpath.join(posixpath.dirname(full), info.linkname)
        else:  # a hard link names a member of its own tar
            target = f"{prefix}{info.linkname}"
        target = _clean(target) if target is not None else None
        listing.links[full] = _Link(name, target, info.issym())
        return
    if not info.isreg():
        kind = _SPECIAL_KINDS.get(info.type)
        if kind is not None:
            listing.unusable[full] = (name, f"not a regular file ({kind})")
        return
    if info.issparse():
        listing.problems.append({"path": name, "reason": "sparse tar member not supported"})
        return
    present = max(0, min(info.size, available - info.offset_data))
    if nested and path.lower().endswith(".tar"):
        _list_tar(fd, start + info.offset_data, info.size, present, f"{full[:-4]}/", f"{name}/", listing, nested=False)
    elif present < info.size:  # cut off: what follows in the file belongs to something else
        listing.problems.append({"path": name, "reason": f"truncated: {present} of {info.size} bytes in the archive"})
    else:
        _add_regular(listing, full, Member(name, start + info.offset_data, info.size), (info.size, int(info.mtime)))


def _add_regular(listing: ArchiveListing, path: str, member: Member, stats: tuple[int, int]) -> None:
    """Record a regular file; an earlier member of the same path is replaced, as extraction would."""
    if path in listing.members:
        earlier = listing.members[path].name
        listing.problems.append({"path": earlier, "reason": "replaced by a later member of the same path"})
    listing.members[path] = member
    listing.stats[path] = stats


def _folders(paths) -> set[str]:
    """Every folder that holds one of `paths`, at any depth ('' for the root)."""
    folders: set[str] = set()
    for path in paths:
        while (path := posixpath.dirname(path)) not in folders:
            folders.add(path)
            if not path:
                break
    return folders


def _resolve_links(listing: ArchiveListing) -> None:
    """Turn each link into the member it reaches (as extraction then reading would), or `unusable`."""
    if not listing.links:
        return
    folders = _folders([*listing.members, *listing.links])
    for path, link in listing.links.items():
        target: str | None = link.target
        hops, reason = 0, None
        while reason is None and target not in listing.members:
            if target is None:
                reason = "link to a path outside the archive: not followed"
            elif target in listing.links:
                hops += 1
                target = listing.links[target].target
                if hops > _MAX_LINK_HOPS:
                    reason = "too many levels of symbolic links"
            elif target in folders:
                reason = FOLDER_LINK
            else:
                kind = "symbolic" if link.symbolic else "hard"
                reason = f"broken {kind} link: nothing at its target in the archive"
        if reason is not None:
            listing.unusable[path] = (link.name, reason)
            continue
        assert target is not None
        listing.members[path] = listing.members[target]._replace(name=link.name)
        listing.stats[path] = listing.stats[target]


def _open_readable(path: Path) -> int:
    try:
        return open_nonblocking(path)
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
        listing = _new_listing()
        _list_tar(fd, 0, size, size, "", "", listing, nested=True)
        for problem in listing.problems:
            if problem["path"] == ".":
                problem["path"] = path.name
        _resolve_links(listing)
        return listing
    finally:
        os.close(fd)


def _zip_name(info: zipfile.ZipInfo) -> str:
    """The member's name as extraction on Linux writes it (see the module docstring)."""
    if info.flag_bits & _ZIP_UTF8_FLAG:
        return info.orig_filename
    raw = info.orig_filename.encode("cp437")  # zipfile decoded the stored bytes as cp437: undo it
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return (
            info.orig_filename if info.create_system == _ZIP_MADE_ON_MSDOS else raw.decode("utf-8", "surrogateescape")
        )


def _zip_mtime(info: zipfile.ZipInfo) -> int:
    try:
        return calendar.timegm((*info.date_time, 0, 0, 0))
    except (OverflowError, ValueError):
        return 0


def list_zip(path: Path) -> ArchiveListing:
    """List a zip archive from its central directory; `BuildError` when that cannot be read."""
    os.close(_open_readable(path))
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            link_targets = {
                info.orig_filename: archive.read(info).decode("utf-8", "surrogateescape")
                for info in infos
                if info.create_system == _ZIP_MADE_ON_UNIX and stat.S_ISLNK(info.external_attr >> 16)
            }
    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError) as error:
        raise BuildError(f"source {str(path)!r} is not a readable zip archive ({error})") from None
    listing = _new_listing()
    for info in infos:
        original = _zip_name(info)
        name = _clean(original)
        if name is None or info.is_dir():
            continue
        if info.orig_filename in link_targets:
            target = link_targets[info.orig_filename]
            resolved = None if target.startswith("/") else _clean(posixpath.join(posixpath.dirname(name), target))
            listing.links[name] = _Link(original, resolved, True)
            continue
        if info.flag_bits & 0x1:
            listing.problems.append({"path": original, "reason": "encrypted zip member"})
            continue
        member = Member(
            original, info.header_offset, info.compress_size, True, info.compress_type, info.file_size, info.CRC
        )
        _add_regular(listing, name, member, (info.file_size, _zip_mtime(info)))
    _resolve_links(listing)
    return listing
