"""Sample keys: a stable, unique, reader-safe `__key__` for every source path.

WebDataset (and DALI's reader) split a member name at the first '.' of its basename and treat '/'
as a directory, so a key may hold neither. A key is the relative path without its extension with
every character outside [A-Za-z0-9-] made '_' (readable: `n01440764/n01440764_10026.JPEG` →
`n01440764_n01440764_10026-…`), then '-' and 8 hex digits of the SHA-1 of the exact relative path,
so two paths that read the same once made safe (`a/b_c.jpg`, `a_b/c.jpg`, `x.jpg`, `x.png`) still get
different keys, and a key never depends on which other files exist.
"""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9-]")
# USTAR names hold 100 bytes; keep room for the 9-character suffix and the ".jpg"/".cls" extension.
_MAX_READABLE = 80


def sample_key(relative_path: str) -> str:
    """Key of the source file at `relative_path` (POSIX separators, relative to the source folder)."""
    stem = relative_path.rsplit(".", 1)[0] if "." in relative_path.rsplit("/", 1)[-1] else relative_path
    readable = _UNSAFE.sub("_", stem)[:_MAX_READABLE]
    digest = hashlib.sha1(relative_path.encode("utf-8")).hexdigest()[:8]
    return f"{readable}-{digest}"
