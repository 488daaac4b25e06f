"""Building into an object store (`colorize-shards build SRC s3://bucket/prefix`): stage locally, upload,
and count a shard as done only when the store holds it whole.

The build runs as into a local folder, in a *staging* folder (`--staging`, by default
`~/.cache/colorize-shards/<bucket>/<prefix>`): its lock, plan record, progress records, part files and
the shard being written live there. Each finished shard (written atomically, as always) is uploaded:
its index, then its tar, each with its SHA-256 in the object's metadata; the two objects are then read
back (HEAD: size and metadata) and only when they match is the shard's progress record uploaded to
`<prefix>/.progress/` and the local copies deleted — the staging folder holds one shard at a time, not
the dataset. `manifest.json` is uploaded last, after every shard, so a reader never sees a manifest
naming a missing shard.

At most one upload per shard: a shard whose tar and index are already in the store with the recorded
size and SHA-256 counts as done (a resumed build skips it, on this machine or on another, whose
staging folder is empty: the records are in the store too), and a rebuilt shard whose bytes the store
already holds is not sent again. A prefix holding shards of another build (other options, other
source) is refused, as a local OUT is.

One writer per OUT: the staging folder's lock (`shards.lock`) keeps a second build on the same staging
folder out. An object store has no lock to take; two machines building the same plan into one prefix
at once write byte-identical objects (the build is deterministic), so the result is the same; a build
of another plan is refused by the plan record uploaded first.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from configs.atomic import write_bytes_atomic
from pipeline.location import (
    NoSuchObject,
    ObjectUrl,
    StoreError,
    file_sha256,
    head,
    join,
    list_sizes,
    put_bytes,
    read_bytes,
    upload,
)
from pipeline.shard_list import MANIFEST_FILE
from shards.errors import BuildError
from shards.output_dir import SHARD_FILE, differences
from shards.parts import PARTS_DIR
from shards.progress import PLAN_FILE, PROGRESS_DIR, json_bytes, progress_dir, read_json
from shards.tar_writer import index_path

TAR_SHA256 = "tar-sha256"


def default_staging(out: str) -> Path:
    """`$XDG_CACHE_HOME` (or ~/.cache) / colorize-shards / bucket / prefix."""
    url = ObjectUrl.parse(out)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "colorize-shards" / url.bucket / (url.key or "_")


class StoreOutput:
    """The store side of a build into `out` (an `s3://` prefix) staged in the local folder `stage`."""

    def __init__(self, out: str, stage: Path) -> None:
        self.out, self.stage = str(out).rstrip("/"), Path(stage)

    def url(self, name: str) -> str:
        return str(join(self.out, name))

    def _get(self, name: str) -> bytes | None:
        """The object `name` under the prefix, or None when there is none."""
        try:
            return read_bytes(self.url(name))
        except NoSuchObject:
            return None

    def _read_json(self, name: str):
        data = self._get(name)
        try:
            return None if data is None else json.loads(data)
        except ValueError:
            return None

    def _fail(self, error: StoreError) -> BuildError:
        return BuildError(str(error))

    # Claim ------------------------------------------------------------------------------------
    def claim(self, options: dict, plan_sha256: str) -> None:
        """Refuse a prefix holding another build (its plan record or manifest differs, or shard objects
        without either); record this build's plan there first. BuildError naming the prefix."""
        advice = "choose another prefix or delete its objects"
        try:
            names = list_sizes(self.out)
            plan = self._read_json(f"{PROGRESS_DIR}/{PLAN_FILE}")
            manifest = self._read_json(MANIFEST_FILE) if MANIFEST_FILE in names else None
        except StoreError as error:
            raise self._fail(error) from None
        for recorded in (plan, manifest):
            if recorded is None:
                continue
            if not isinstance(recorded, dict) or recorded.get("options") != options:
                changed = differences((recorded or {}).get("options") or {}, options)
                raise BuildError(f"{self.out} holds shards built with other options ({changed}); {advice}")
            if recorded.get("plan_sha256") != plan_sha256:
                raise BuildError(
                    f"{self.out} holds shards built from a different source listing (was "
                    f"{recorded.get('source')!r}; files added, removed, renamed or changed since); {advice}"
                )
        if plan is None and manifest is None and any(SHARD_FILE.match(name) for name in names):
            raise BuildError(f"{self.out} holds shard objects without a manifest or progress record; {advice}")
        if plan is None:
            self._put(f"{PROGRESS_DIR}/{PLAN_FILE}", (progress_dir(self.stage) / PLAN_FILE).read_bytes())

    # Shards -----------------------------------------------------------------------------------
    def _holds(self, name: str, size: int, sha256: str) -> bool:
        """Whether the store has the shard `name` with this tar size and SHA-256, and its index."""
        try:
            tar, idx = head(self.url(name)), head(self.url(name + ".idx"))
        except StoreError as error:
            raise self._fail(error) from None
        return (
            tar is not None
            and idx is not None
            and tar[0] == size
            and tar[1].get("sha256") == sha256
            and idx[1].get(TAR_SHA256) == sha256
        )

    def finished(self, name: str) -> dict | None:
        """The progress record of shard `name` when the store holds it whole (the record from the
        staging folder, else from the store), else None."""
        record = read_json(progress_dir(self.stage) / f"{name}.json")
        if not isinstance(record, dict) or record.get("name") != name:
            try:
                record = self._read_json(f"{PROGRESS_DIR}/{name}.json")
            except StoreError as error:
                raise self._fail(error) from None
        if not isinstance(record, dict) or record.get("name") != name:
            return None
        if record.get("samples") == 0:
            return record
        try:
            return record if self._holds(name, int(record["bytes"]), str(record["sha256"])) else None
        except (KeyError, TypeError, ValueError):  # a record of another format
            return None

    def publish(self, record: dict) -> None:
        """Upload the staged shard of `record` (index, then tar) unless the store already holds it,
        check it there, upload its record, and delete the local copies."""
        name = record["name"]
        if record["samples"]:
            tar = self.stage / name
            idx = index_path(tar)
            if not self._holds(name, record["bytes"], record["sha256"]):
                self._upload(idx, name + ".idx", {"sha256": file_sha256(idx), TAR_SHA256: record["sha256"]})
                self._upload(tar, name, {"sha256": record["sha256"]})
                if not self._holds(name, record["bytes"], record["sha256"]):
                    raise BuildError(
                        f"{self.url(name)}: the store does not hold what was uploaded (size or SHA-256 metadata "
                        "differ); run the same command again"
                    )
        self._put(f"{PROGRESS_DIR}/{name}.json", json_bytes(record))
        if record["samples"]:
            idx.unlink(missing_ok=True)
            tar.unlink(missing_ok=True)

    # Records, parts and the manifest ----------------------------------------------------------
    def push_part(self, part_path: Path) -> None:
        """Share a finished part's file (`parts/part-K-of-N.json`) and fetch every other part's."""
        self._put(f"{PARTS_DIR}/{part_path.name}", part_path.read_bytes())
        self.pull_parts()

    def pull_parts(self) -> None:
        """Copy the store's `parts/*.json` (and its plan record, when the staging folder has none) into
        the staging folder, where `shards.parts` reads them."""
        try:
            for name in list_sizes(self.url(PARTS_DIR)):
                if name.endswith(".json"):
                    write_bytes_atomic(self.stage / PARTS_DIR / name, read_bytes(self.url(f"{PARTS_DIR}/{name}")))
            plan = progress_dir(self.stage) / PLAN_FILE
            if not plan.exists() and (data := self._get(f"{PROGRESS_DIR}/{PLAN_FILE}")) is not None:
                write_bytes_atomic(plan, data)
        except StoreError as error:
            raise self._fail(error) from None

    def check_shard(self, record: dict) -> list[str]:
        """`merge`'s check of a part's shard against the store: present with the recorded size and
        SHA-256 (metadata; `colorize-shards verify` re-hashes the bytes)."""
        if self._holds(record["name"], record["bytes"], record["sha256"]):
            return []
        return [f"{self.url(record['name'])} is not in the store with the recorded size and SHA-256"]

    @contextmanager
    def naming(self) -> Iterator[None]:
        """BuildErrors raised inside name the store's objects, not their staged copies (parts, merge)."""
        try:
            yield
        except BuildError as error:
            raise BuildError(str(error).replace(str(self.stage), self.out)) from None

    def publish_manifest(self) -> None:
        """Upload the staged manifest.json: the last object of a build."""
        self._put(MANIFEST_FILE, (self.stage / MANIFEST_FILE).read_bytes())

    def _put(self, name: str, data: bytes) -> None:
        try:
            put_bytes(self.url(name), data, {"sha256": hashlib.sha256(data).hexdigest()})
        except StoreError as error:
            raise self._fail(error) from None

    def _upload(self, local: Path, name: str, metadata: dict[str, str]) -> None:
        try:
            upload(local, self.url(name), metadata)
        except StoreError as error:
            raise self._fail(error) from None
