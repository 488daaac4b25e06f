"""Sample keys: a stable, unique, reader-safe `__key__` for every source path, and how paths are shown.

WebDataset (and DALI's reader) split a member name at the first '.' of its basename and treat '/'
as a directory, so a key may hold neither. A key is the relative path without its extension with
every character outside [A-Za-z0-9-] made '_', cut to 60 characters (readable:
`n01440764/n01440764_10026.JPEG` → `n01440764_n01440764_10026-…`), then '-' and 16 hex digits (64
bits) of the SHA-256 of the path's raw bytes, so two paths that read the same once made safe
(`a/b_c.jpg`, `a_b/c.jpg`, `x.jpg`, `x.png`, a million files sharing a long prefix) still get
different keys, and a key does not depend on which other files exist.

Names are bytes to a file system or a tar: a name that is not valid UTF-8 reaches Python with each
undecodable byte as a lone surrogate (`surrogateescape`, what `os.listdir` and `tarfile` do), and
`raw_path` gives the bytes back exactly. Keys hash those bytes, so every name a file system or an
archive can hold has a key.

`unique_keys` checks a whole listing: paths whose 64-bit keys collide (expected once in ~10¹¹ pairs)
get 128-bit keys instead; should even those collide, the build stops naming both paths. A sample is
never dropped for sharing a key. A key is at most 60 + 1 + 32 = 93 characters, so `<key>.jpg` fits a
USTAR member name (100 bytes) without extension headers.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import defaultdict
from collections.abc import Sequence

from shards.errors import BuildError

_UNSAFE = re.compile(r"[^A-Za-z0-9-]")
_MAX_READABLE = 60
KEY_HASH_DIGITS = 16
"""Hex digits of the path hash in a key (64 bits)."""
WIDE_KEY_HASH_DIGITS = 32
"""Hex digits for paths whose 64-bit keys collide (128 bits)."""


def raw_path(path: str) -> bytes:
    """The bytes of `path` as the file system or archive holds them (undoes `surrogateescape`)."""
    return os.fsencode(path)


def display_path(path: str) -> str:
    """`path` printable on any terminal: bytes that are not UTF-8 appear as `\\xNN`."""
    return raw_path(path).decode("utf-8", "backslashreplace")


def sample_key(relative_path: str, digits: int | None = None) -> str:
    """Key of the source file at `relative_path` (POSIX separators, relative to the source folder),
    with `digits` hex digits of hash (default `KEY_HASH_DIGITS`)."""
    stem = relative_path.rsplit(".", 1)[0] if "." in relative_path.rsplit("/", 1)[-1] else relative_path
    readable = _UNSAFE.sub("_", stem)[:_MAX_READABLE]
    digest = hashlib.sha256(raw_path(relative_path)).hexdigest()[: digits or KEY_HASH_DIGITS]
    return f"{readable}-{digest}"


def unique_keys(paths: Sequence[str]) -> list[str]:
    """The key of each of `paths` (distinct paths), in order, guaranteed distinct: `sample_key`, or
    its 128-bit form for paths whose keys collide; `BuildError` naming both paths if that collides too."""
    keys = [sample_key(path) for path in paths]
    holders: dict[str, list[int]] = defaultdict(list)
    for index, key in enumerate(keys):
        holders[key].append(index)
    for group in (indexes for indexes in holders.values() if len(indexes) > 1):
        for index in group:
            keys[index] = sample_key(paths[index], WIDE_KEY_HASH_DIGITS)
    if len(set(keys)) < len(keys):
        seen: dict[str, int] = {}
        for index, key in enumerate(keys):
            if key in seen:
                first, second = (display_path(paths[i]) for i in (seen[key], index))
                raise BuildError(
                    f"source files {first!r} and {second!r} get the same sample key {key!r}; rename one of them"
                )
            seen[key] = index
    return keys
