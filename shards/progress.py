"""Build progress kept in `OUT/.progress/`, so a killed build resumes without redoing finished shards.

- `plan.json`: the plan digest and options of the build that owns OUT; a rerun with other options or
  another source listing is refused instead of mixing shards of two plans.
- `<shard>.json`, one per finished shard, written atomically *after* the shard's rename: name, split,
  samples, bytes, sha256, and the shard's skipped and colourless source paths. A shard counts as
  finished only when its record exists and the tar on disk still has the recorded size and SHA-256.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from configs.atomic import write_json_atomic
from shards.tar_writer import index_path

PROGRESS_DIR = ".progress"
PLAN_FILE = "plan.json"


def progress_dir(out: Path) -> Path:
    return Path(out) / PROGRESS_DIR


def read_json(path: Path):
    """Parsed JSON at `path`, or None when missing or unreadable (a torn record counts as absent)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_plan_record(out: Path) -> dict | None:
    return read_json(progress_dir(out) / PLAN_FILE)


def write_plan_record(out: Path, record: dict) -> None:
    progress_dir(out).mkdir(exist_ok=True)
    write_json_atomic(progress_dir(out) / PLAN_FILE, record)


def write_record(path: Path, record: dict) -> None:
    """Write a build record (a part manifest, …) as JSON, atomically; the one way shards/ writes them."""
    write_json_atomic(path, record)


def shard_record_path(out: Path, shard_name: str) -> Path:
    return progress_dir(out) / f"{shard_name}.json"


def write_shard_record(out: Path, record: dict) -> None:
    write_json_atomic(shard_record_path(out, record["name"]), record)


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def finished_shard_record(out: Path, shard_name: str) -> dict | None:
    """The record of `shard_name` when that shard is finished and intact on disk, else None.

    An empty shard (every image dropped) has a record with 0 samples and no file.
    """
    record = read_json(shard_record_path(out, shard_name))
    if not isinstance(record, dict) or record.get("name") != shard_name:
        return None
    if record.get("samples") == 0:
        return record
    tar = Path(out) / shard_name
    index = index_path(tar)
    try:
        if tar.stat().st_size != record.get("bytes") or not index.is_file():
            return None
    except OSError:
        return None
    return record if file_sha256(tar) == record.get("sha256") else None
