"""DALI webdataset index files (`<shard>.idx`, written by `wds2idx`): read, check, patch.

Format (v1.2): a header line `v1.2 <samples>`, then one line per sample listing its components
as `<ext> <offset> <size> <member name>` groups, e.g. `jpg 3584 57204 img-00000.jpg`.

The loaders use this to check a shard against its index before reading it (a truncated tar shows up
as components past the end of the file, whose size comes from the directory or bucket listing), and, when bad samples are to be skipped, to write a patched
copy of the index in which each bad sample's `jpg` points at a good neighbour's bytes. Substituting
rather than deleting keeps every position in the index where it was, so a DALI checkpoint taken
before the patch restores to exactly the same place afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from configs.atomic import write_text_atomic
from pipeline.location import ShardsDirError, read_bytes


@dataclass
class IndexEntry:
    """One sample of a shard: its key and its components as ext → (offset, size, member name)."""

    key: str
    components: dict[str, tuple[int, int, str]] = field(default_factory=dict)

    def line(self) -> str:
        return " ".join(f"{ext} {off} {size} {name}" for ext, (off, size, name) in self.components.items())


def read_index(index_path: str | Path, retry_seconds: float = 0.0) -> tuple[str, list[IndexEntry]]:
    """(version header, entries) of a DALI webdataset index, a local file or an `s3://` object;
    ShardsDirError naming the file when malformed (StoreError when the store cannot serve it)."""
    lines = read_bytes(index_path, retry_seconds).decode("utf-8", "replace").splitlines()
    if not lines or not lines[0].startswith("v"):
        raise ShardsDirError(f"{index_path}: not a DALI webdataset index (no version header)")
    version = lines[0].split()[0]
    entries = []
    for lineno, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if not parts:
            continue
        if len(parts) % 4:
            raise ShardsDirError(f"{index_path}: line {lineno} is malformed")
        entry = IndexEntry(key="")
        for i in range(0, len(parts), 4):
            ext, off, size, name = parts[i : i + 4]
            entry.components[ext] = (int(off), int(size), name)
            entry.key = name.rsplit(".", 1)[0] if "." in name else name
        entries.append(entry)
    return version, entries


def write_index(path: Path, version: str, entries: list[IndexEntry]) -> None:
    """Write an index in `wds2idx`'s format (atomically)."""
    write_text_atomic(path, "\n".join([f"{version} {len(entries)}", *(e.line() for e in entries)]) + "\n")


def entries_past_end(size: int, entries: list[IndexEntry]) -> list[int]:
    """Positions of samples whose bytes lie (partly) beyond the end of a tar of `size` bytes: a truncated shard."""
    return [i for i, e in enumerate(entries) if any(off + n > size for off, n, _ in e.components.values())]


def substitute(entries: list[IndexEntry], bad: set[int], ext: str = "jpg") -> list[IndexEntry]:
    """A copy of `entries` where each bad sample's `ext` component points at the nearest good one.

    Raises ShardsDirError when no sample of the shard is good.
    """
    good = [i for i in range(len(entries)) if i not in bad and ext in entries[i].components]
    if not good:
        raise ShardsDirError("every sample of the shard is bad")
    patched = []
    for i, entry in enumerate(entries):
        if i in bad:
            donor = min(good, key=lambda g: (abs(g - i), g))
            entry = IndexEntry(entry.key, dict(entry.components))
            entry.components[ext] = entries[donor].components[ext]
        patched.append(entry)
    return patched
