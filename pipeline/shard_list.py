"""Which shard files make up a split: read from the shards directory's manifest.json, never globbed.

The manifest (written by `colorize-shards build`) lists every shard as
`{"name": "train-000000.tar", "split": "train", "samples": n, "bytes": n, "sha256": "..."}`; each
tar has its DALI index `<name>.idx` beside it. Reading the list from the manifest keeps the order
stable across ranks and machines and catches a shard that was deleted or never finished.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MANIFEST_FILE = "manifest.json"
FORMAT_NAME = "colorization-shards"
FORMAT_VERSION = 1


class ShardsDirError(RuntimeError):
    """A shards directory, its manifest, or a shard or index it lists, that cannot be used; the message
    names the file."""


@dataclass(frozen=True)
class Shard:
    """One WebDataset tar of a split, its DALI index and its sample count from the manifest."""

    path: Path
    index_path: Path
    samples: int

    @property
    def name(self) -> str:
        return self.path.name


def read_manifest(shards_dir: str | Path) -> dict:
    """The parsed, checked manifest.json of `shards_dir` (the loaders' and the shard builder's one
    reader); ShardsDirError naming the path when it is missing, unreadable, of another format or
    version, or has no shard list."""
    root = Path(shards_dir)
    if not root.is_dir():
        raise ShardsDirError(f"{root}: shards directory not found")
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ShardsDirError(
            f"{manifest_path}: no manifest (not a shards folder, or its build has not finished: "
            "build shards with `colorize-shards build`)"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ShardsDirError(f"{manifest_path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ShardsDirError(f"{manifest_path}: not a {FORMAT_NAME} manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise ShardsDirError(f"{manifest_path}: version {manifest.get('version')!r} is not {FORMAT_VERSION}")
    if not isinstance(manifest.get("shards"), list):
        raise ShardsDirError(f"{manifest_path}: has no 'shards' list")
    return manifest


def split_shards(shards_dir: str | Path, split: str, *, need_index: bool = True) -> list[Shard]:
    """The shards of `split` in manifest order, each checked to exist (with its .idx when asked).

    Raises ShardsDirError naming the manifest when the split has no shards, or naming the missing file.
    """
    root = Path(shards_dir)
    manifest = read_manifest(root)
    shards = []
    for i, entry in enumerate(manifest["shards"]):
        if not isinstance(entry, dict) or "name" not in entry or "split" not in entry:
            raise ShardsDirError(f"{root / MANIFEST_FILE}: shards[{i}] lacks 'name' or 'split'")
        if entry["split"] != split:
            continue
        path = root / entry["name"]
        if not path.is_file():
            raise ShardsDirError(f"{path}: shard listed in manifest.json is missing")
        index_path = path.with_name(path.name + ".idx")
        if need_index and not index_path.is_file():
            raise ShardsDirError(f"{index_path}: DALI index missing (make it with `wds2idx {path} {index_path}`)")
        shards.append(Shard(path=path, index_path=index_path, samples=int(entry.get("samples", 0))))
    if not shards:
        raise ShardsDirError(f"{root / MANIFEST_FILE}: no shards for split {split!r}")
    return shards
