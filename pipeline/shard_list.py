"""Which shard files make up a split: read from the shards directory's manifest.json, never globbed.

The shards directory is a local folder or an object-store prefix `s3://bucket/prefix`
(`pipeline.location`). The manifest (written by `colorize-shards build`) lists every shard as
`{"name": "train-000000.tar", "split": "train", "samples": n, "bytes": n, "sha256": "..."}`; each
tar has its DALI index `<name>.idx` beside it. Reading the list from the manifest keeps the order
stable across ranks and machines and catches a shard that was deleted or never finished.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.location import (
    NoSuchObject,
    ShardsDirError,
    StoreError,
    base_name,
    is_remote,
    join,
    list_sizes,
    read_bytes,
)

__all__ = ["MANIFEST_FILE", "Shard", "ShardsDirError", "StoreError", "read_manifest", "split_shards"]

MANIFEST_FILE = "manifest.json"
FORMAT_NAME = "colorization-shards"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Shard:
    """One WebDataset tar of a split, its DALI index and its sample count from the manifest.

    `path` and `index_path` are local paths, or `s3://` URLs when the shards are in an object store
    (`pipeline.location`); `bytes` is the tar's size in the store or on disk (None when not looked up);
    `sha256` the tar's hex digest as the manifest records it (None when it records none).
    """

    path: str | Path
    index_path: str | Path
    samples: int
    bytes: int | None = None
    sha256: str | None = None

    @property
    def name(self) -> str:
        return base_name(self.path)


def read_manifest(shards_dir: str | Path) -> dict:
    """The parsed, checked manifest.json of `shards_dir` (a folder or an `s3://` prefix; the loaders'
    and the shard builder's one reader); ShardsDirError naming the path when it is missing,
    unreadable, of another format or version, or has no shard list (StoreError, a ShardsDirError, when
    the store refuses or cannot be reached)."""
    manifest_path = join(shards_dir, MANIFEST_FILE)
    if is_remote(shards_dir):
        try:
            data = read_bytes(manifest_path)
        except NoSuchObject:
            raise ShardsDirError(
                f"{manifest_path}: no manifest (not a shards prefix, or its build has not finished: "
                "build shards with `colorize-shards build SRC s3://bucket/prefix`)"
            ) from None
    else:
        root = Path(shards_dir)
        if not root.is_dir():
            raise ShardsDirError(f"{root}: shards directory not found")
        if not Path(manifest_path).is_file():
            raise ShardsDirError(
                f"{manifest_path}: no manifest (not a shards folder, or its build has not finished: "
                "build shards with `colorize-shards build`)"
            )
        try:
            data = Path(manifest_path).read_bytes()
        except OSError as exc:
            raise ShardsDirError(f"{manifest_path}: cannot be read ({exc.strerror or exc})") from None
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ShardsDirError(f"{manifest_path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ShardsDirError(f"{manifest_path}: not a {FORMAT_NAME} manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise ShardsDirError(f"{manifest_path}: version {manifest.get('version')!r} is not {FORMAT_VERSION}")
    if not isinstance(manifest.get("shards"), list):
        raise ShardsDirError(f"{manifest_path}: has no 'shards' list")
    return manifest


def split_shards(shards_dir: str | Path, split: str, *, need_index: bool = True) -> list[Shard]:
    """The shards of `split` in manifest order, each checked to exist (with its .idx when asked) by
    one listing of the folder or prefix, with their sizes.

    Raises ShardsDirError naming the manifest when the split has no shards, or naming the missing file
    or object.
    """
    manifest = read_manifest(shards_dir)
    sizes = list_sizes(shards_dir)
    shards = []
    for i, entry in enumerate(manifest["shards"]):
        if not isinstance(entry, dict) or "name" not in entry or "split" not in entry:
            raise ShardsDirError(f"{join(shards_dir, MANIFEST_FILE)}: shards[{i}] lacks 'name' or 'split'")
        if entry["split"] != split:
            continue
        name = entry["name"]
        path, index_path = join(shards_dir, name), join(shards_dir, name + ".idx")
        if name not in sizes:
            raise ShardsDirError(f"{path}: shard listed in manifest.json is missing")
        if need_index and name + ".idx" not in sizes:
            local = "" if is_remote(shards_dir) else f" (make it with `wds2idx {path} {index_path}`)"
            raise ShardsDirError(f"{index_path}: DALI index missing{local}")
        shards.append(
            Shard(
                path=path,
                index_path=index_path,
                samples=int(entry.get("samples", 0)),
                bytes=sizes[name],
                sha256=entry.get("sha256") or None,
            )
        )
    if not shards:
        raise ShardsDirError(f"{join(shards_dir, MANIFEST_FILE)}: no shards for split {split!r}")
    return shards
