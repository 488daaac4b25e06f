"""Write one WebDataset shard deterministically and atomically, with its DALI index `<shard>.idx` beside it.

Byte-identical output for equal input: USTAR members with mtime 0, uid/gid 0, empty user/group names,
mode 0o644, and a fixed member order per sample (`<key>.jpg`, then `<key>.cls` when the source has
classes). The tar and its index are written under `<name>.tmp` and renamed into place only when
complete (index first, tar last), so a killed build never leaves a half shard under a final name.
The index is made by DALI's own `wds2idx` tool (`wds2idx.IndexCreator`, the module behind the
`wds2idx` console script), so it is exactly what `fn.readers.webdataset(index_paths=…)` expects.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from wds2idx import IndexCreator

TEMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class WrittenShard:
    """A finished shard: file name, sample count, size in bytes and SHA-256 (hex) of the tar."""

    name: str
    samples: int
    bytes: int
    sha256: str


def index_path(tar_path: Path) -> Path:
    """The DALI index file beside a shard: `train-000000.tar` → `train-000000.tar.idx`."""
    return tar_path.with_name(tar_path.name + ".idx")


def make_index(tar_path: Path, idx_path: Path) -> None:
    """Write the DALI index of the tar at `tar_path` to `idx_path` (overwritten, not atomically)."""
    with IndexCreator(str(tar_path), str(idx_path), verbose=False) as creator:
        creator.create_index()


class _HashingFile(io.RawIOBase):
    """Write-only file that hashes what passes through (tarfile needs `write` and `tell`)."""

    def __init__(self, file) -> None:
        self._file = file
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._file.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size


class ShardWriter:
    """Collects samples into `<final_path>.tmp`; `commit()` adds the index and renames both into place."""

    def __init__(self, final_path: Path) -> None:
        self.final_path = Path(final_path)
        self.temp_path = self.final_path.with_name(self.final_path.name + TEMP_SUFFIX)
        self._file = open(self.temp_path, "wb")
        self._hashing = _HashingFile(self._file)
        self._tar = tarfile.open(fileobj=self._hashing, mode="w", format=tarfile.USTAR_FORMAT)
        self.samples = 0

    def add(self, key: str, jpeg: bytes, cls: int | None) -> None:
        """Append one sample: `<key>.jpg` (JPEG bytes) and, when given, `<key>.cls` (decimal text)."""
        self._add_member(f"{key}.jpg", jpeg)
        if cls is not None:
            self._add_member(f"{key}.cls", str(cls).encode("ascii"))
        self.samples += 1

    def _add_member(self, name: str, payload: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        info.mtime = 0
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.type = tarfile.REGTYPE
        self._tar.addfile(info, io.BytesIO(payload))

    def commit(self) -> WrittenShard:
        """Finish the tar, write its index, rename both to their final names; return what was written."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        idx_final = index_path(self.final_path)
        idx_temp = idx_final.with_name(idx_final.name + TEMP_SUFFIX)
        make_index(self.temp_path, idx_temp)
        os.replace(idx_temp, idx_final)
        os.replace(self.temp_path, self.final_path)
        return WrittenShard(self.final_path.name, self.samples, self._hashing.size, self._hashing.sha256.hexdigest())

    def abort(self) -> None:
        """Drop the unfinished temporary tar."""
        self._file.close()
        self.temp_path.unlink(missing_ok=True)
