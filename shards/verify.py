"""`verify_shards`: check a shards folder, or an `s3://` prefix (each shard downloaded and re-hashed),
against its manifest; the same check of one shard (`verify_shard`) decides whether a resumed build
may keep a shard and whether `merge` accepts a part's.

For every shard in the manifest: the tar exists, has the recorded size and SHA-256, holds the
recorded number of samples (each with a `.jpg`, and a `.cls` when the build has classes), and its
`.idx` equals the index DALI's `wds2idx` makes from the tar now. Shard files the manifest does not
list are reported too, and so is a manifest that lists no shard at all (nothing to train on).
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

from pipeline.location import download, file_sha256, is_remote, join, list_sizes
from pipeline.shard_list import MANIFEST_FILE, ShardsDirError, read_manifest
from shards.output_dir import SHARD_FILE
from shards.progress import read_json, shard_record_path
from shards.tar_writer import index_path, make_index


def count_samples(tar_path: Path, needs_cls: bool) -> tuple[int, list[str]]:
    """Samples in a WebDataset tar (members grouped by key) and problems with their members."""
    members: dict[str, set[str]] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, extension = member.name.partition(".")
            members.setdefault(key, set()).add(extension)
    wanted = {"jpg", "cls"} if needs_cls else {"jpg"}
    problems = [
        f"sample {key!r} has {sorted(exts)}, expected {sorted(wanted)}"
        for key, exts in members.items()
        if exts != wanted
    ]
    return len(members), problems


def verify_shard(out: Path, entry: dict, needs_cls: bool) -> list[str]:
    """Problems of one manifest shard entry `{name, split, samples, bytes, sha256}` (empty = OK)."""
    tar = Path(out) / entry["name"]
    name = entry["name"]
    if not tar.is_file():
        return [f"{name}: missing"]
    if tar.stat().st_size != entry["bytes"]:
        return [f"{name}: {tar.stat().st_size} bytes, manifest says {entry['bytes']}"]
    if file_sha256(tar) != entry["sha256"]:
        return [f"{name}: sha256 differs from the manifest (file corrupted or replaced)"]
    try:
        samples, member_problems = count_samples(tar, needs_cls)
    except (tarfile.TarError, OSError) as error:
        return [f"{name}: unreadable tar: {error}"]
    problems = [f"{name}: {p}" for p in member_problems[:3]]
    if samples != entry["samples"]:
        problems.append(f"{name}: {samples} samples, manifest says {entry['samples']}")
    index = index_path(tar)
    if not index.is_file():
        problems.append(f"{index.name}: missing")
    else:
        with tempfile.TemporaryDirectory() as scratch:
            fresh = Path(scratch) / index.name
            make_index(tar, fresh)
            if fresh.read_bytes() != index.read_bytes():
                problems.append(f"{index.name}: does not match its tar (regenerate with wds2idx)")
    return problems


def finished_shard_record(out: Path, shard_name: str, needs_cls: bool) -> dict | None:
    """The progress record of `shard_name` when that shard is finished and intact on disk (size,
    SHA-256, sample count and index all match: `verify_shard`), else None.

    An empty shard (every image dropped) has a record with 0 samples and no file.
    """
    record = read_json(shard_record_path(out, shard_name))
    if not isinstance(record, dict) or record.get("name") != shard_name:
        return None
    if record.get("samples") == 0:
        return record
    try:
        return None if verify_shard(Path(out), record, needs_cls) else record
    except (KeyError, TypeError):  # a record of another format
        return None


def verify_object(out: str, entry: dict, needs_cls: bool) -> list[str]:
    """`verify_shard` of a shard in an object store: its tar and index are downloaded (one shard at a
    time, into a temporary folder) and checked as local files: the bytes are re-hashed from the store."""
    with tempfile.TemporaryDirectory(prefix="colorize-verify-") as scratch:
        for name in (entry["name"], entry["name"] + ".idx"):
            if not download(str(join(out, name)), Path(scratch) / name) and name == entry["name"]:
                return [f"{name}: missing"]
        return verify_shard(Path(scratch), entry, needs_cls)


def verify_shards(out) -> list[str]:
    """Every problem found in the shards folder or `s3://` prefix `out`, first shard first (empty list =
    all good)."""
    out = out if is_remote(out) else Path(out)
    try:
        manifest = read_manifest(out)
        needs_cls = manifest.get("classes") is not None
        problems: list[str] = []
        for entry in manifest["shards"]:
            problems += (
                verify_object(str(out), entry, needs_cls) if is_remote(out) else verify_shard(out, entry, needs_cls)
            )
        names = list_sizes(out)
    except ShardsDirError as error:
        return [str(error)]
    listed = {entry["name"] for entry in manifest["shards"]}
    listed |= {index_path(Path(name)).name for name in listed}
    for name in sorted(names):
        if SHARD_FILE.match(name) and name not in listed:
            problems.append(f"{name}: not listed in the manifest")
    if not manifest["shards"]:
        problems.append(
            f"{MANIFEST_FILE} lists no shards: no image of the source was kept (see its skipped and colourless lists)"
        )
    return problems
