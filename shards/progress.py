"""Build progress kept in `OUT/.progress/`, so a killed build resumes without redoing finished shards.

- `plan.json`: the plan digest and options of the build that owns OUT; a rerun with other options or
  another source (files added, removed, renamed, or changed in size or modification time) is refused
  instead of mixing shards of two plans.
- `source-files.json.gz`: [path, size, mtime] of every image of that plan, read only to name the first
  file that differs when a rerun's digest does not match.
- `<shard>.json`, one per finished shard, written atomically *after* the shard's rename: name, split,
  samples, bytes, sha256, and the shard's skipped and colourless source paths. A shard counts as
  finished only when its record exists and the tar and index on disk still match it
  (`shards.verify.finished_shard_record`).
- `<shard>.deaths.json`: source paths of that shard whose decode killed a worker, with how often.

Every record is JSON written atomically. Source paths that are not UTF-8 are written losslessly: each
undecodable byte is the JSON escape `\\udcXX` (Python's `surrogateescape`), which `json.loads` reads
back to the same string (`shards.keys.raw_path` then gives the original bytes).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from configs.atomic import write_bytes_atomic

PROGRESS_DIR = ".progress"
PLAN_FILE = "plan.json"
SOURCE_FILES = "source-files.json.gz"


def progress_dir(out: Path) -> Path:
    return Path(out) / PROGRESS_DIR


def read_json(path: Path):
    """Parsed JSON at `path`, or None when missing or unreadable (a torn record counts as absent)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def json_bytes(payload, compact: bool = False) -> bytes:
    """Indented (or, `compact`, one-line), key-sorted UTF-8 JSON with a final newline (stable bytes for
    equal payloads); lone surrogates (names that are not UTF-8) become `\\udcXX` escapes."""
    layout: dict = {"separators": (",", ":")} if compact else {"indent": 2}
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, **layout) + "\n"
    return text.encode("utf-8", "backslashreplace")


def write_record(path: Path, record) -> None:
    """Write a build record (manifest, part manifest, progress record) atomically; the one way shards/ writes them."""
    write_bytes_atomic(path, json_bytes(record))


def read_plan_record(out: Path) -> dict | None:
    return read_json(progress_dir(out) / PLAN_FILE)


def write_plan_record(out: Path, record: dict, files: list[list]) -> None:
    """Record the plan that owns OUT and its source files (files first: the plan names them)."""
    progress_dir(out).mkdir(exist_ok=True)
    write_bytes_atomic(progress_dir(out) / SOURCE_FILES, gzip.compress(json_bytes(files, compact=True), 1, mtime=0))
    write_record(progress_dir(out) / PLAN_FILE, record)


def read_source_files(out: Path) -> list[list] | None:
    """The [path, size, mtime] list recorded with the plan, or None when absent or unreadable."""
    try:
        return json.loads(gzip.decompress((progress_dir(out) / SOURCE_FILES).read_bytes()))
    except (OSError, ValueError, EOFError):
        return None


def shard_record_path(out: Path, shard_name: str) -> Path:
    return progress_dir(out) / f"{shard_name}.json"


def write_shard_record(out: Path, record: dict) -> None:
    write_record(shard_record_path(out, record["name"]), record)


def deaths_path(out: Path, shard_name: str) -> Path:
    return progress_dir(out) / f"{shard_name}.deaths.json"


def read_deaths(out: Path, shard_name: str) -> dict[str, int]:
    """source path → how many decode workers it killed, for the images of `shard_name`."""
    record = read_json(deaths_path(out, shard_name))
    return record if isinstance(record, dict) else {}
