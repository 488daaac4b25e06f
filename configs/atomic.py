"""Atomic file writes: a temporary name in the same folder, then `os.replace`.

Readers (and a rerun after a kill) see the old file or the new one, never a half-written one. Every
file the project keeps — shards' manifests and records, exported generators and their sidecars,
configs, pictures, metrics, benchmark JSON — is written through here. Plain-Python imports only, so
the shard builder's workers can use it without torch.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_FILE = re.compile(r"^\..+\.\d+\.tmp$")
"""Names of the temporary files below (`.<name>.<pid>.tmp`): what a killed write can leave behind."""


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to (by any library); on success it replaces
    `path`, on an error it is removed and `path` stays as it was. Creates missing parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data`, flushed to disk before the rename."""
    with atomic_path(path) as temp, open(temp, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace `path` with UTF-8 `text`."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, payload) -> None:
    """Atomically write `payload` as indented, key-sorted JSON (stable bytes for equal payloads)."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
