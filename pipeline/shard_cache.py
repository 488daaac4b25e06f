"""Node-local copies of `s3://` shards (`data.cache_dir`), so that DALI reads them from disk.

DALI's reader fetches an object-store shard one ranged GET per sample: a network round trip and a
request for the store to serve per image, which caps the `dali` backend well below what it reaches on
local disk. With `data.cache_dir` set, each training rank first copies the shards that hold its part
of the split into that directory, one whole-object download per shard (boto3's managed transfer:
parallel ranged parts for large objects), and DALI then reads the copies.

Layout: `cache_dir/<bucket>/<prefix>/<shard>.tar`, so that several datasets share one cache without
clashing. A copy is checked against the manifest's size and SHA-256 before it is renamed into place
(never a torn or stale file under a shard's name), and its checked digest is written beside it as
`<shard>.tar.sha256`; a later run (a requeued job, another rank on the same node) re-uses a copy whose
size and recorded digest match the manifest, and downloads it again otherwise (the shards were
rebuilt under the same prefix). Ranks sharing a node and a cache write under unique temporary names
and rename, so they never see each other's half-written files; a shard two ranks both need is at most
downloaded twice. Nothing is evicted: the cache holds each node's ranks' parts of the split until it is
deleted by hand.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.location import ObjectUrl, StoreError, download, file_sha256
from pipeline.shard_list import Shard

DIGEST_SUFFIX = ".sha256"


class ShardCacheError(StoreError):
    """A copy that does not match its manifest entry, or a cache directory that cannot be written; one
    line naming the object or the directory."""


def cache_path(shard: Shard, cache_dir: str | Path) -> Path:
    """Where the copy of the `s3://` shard lives: cache_dir/<bucket>/<key>."""
    url = ObjectUrl.parse(shard.path)
    return Path(cache_dir) / url.bucket / url.key


def _is_current(shard: Shard, local: Path) -> bool:
    """Whether `local` is a checked copy of this version of the shard (size and digest as listed)."""
    try:
        size = local.stat().st_size
        recorded = Path(str(local) + DIGEST_SUFFIX).read_text().strip()
    except OSError:
        return False
    return size == shard.bytes and (shard.sha256 is None or recorded == shard.sha256)


def cached_copy(shard: Shard, cache_dir: str | Path, retry_seconds: float = 0.0) -> tuple[Path, int]:
    """(local path, bytes downloaded) of the shard's checked copy, downloading it when there is none.

    Raises StoreError naming the object when the store fails for `retry_seconds`, and ShardCacheError
    when the downloaded bytes differ from the manifest's size or SHA-256 (the shard changed in the
    store after the build) or the cache directory cannot be written.
    """
    local = cache_path(shard, cache_dir)
    if _is_current(shard, local):
        return local, 0
    temp = local.with_name(f".{local.name}.{os.getpid()}.part")
    try:
        local.parent.mkdir(parents=True, exist_ok=True)
        if not download(str(shard.path), temp, retry_seconds):
            raise StoreError(f"{shard.path}: no such object (deleted after the run listed it?)")
        size, digest = temp.stat().st_size, file_sha256(temp)
        if size != shard.bytes or (shard.sha256 is not None and digest != shard.sha256):
            raise ShardCacheError(
                f"{shard.path}: the downloaded copy ({size} bytes, SHA-256 {digest[:12]}…) does not match "
                f"manifest.json ({shard.bytes} bytes, {str(shard.sha256)[:12]}…): was the shard rewritten "
                "after the build? Rebuild or re-upload it"
            )
        # The digest first, then the tar: a tar under its final name always has its digest beside it.
        digest_temp = temp.with_name(temp.name + DIGEST_SUFFIX)
        digest_temp.write_text(digest + "\n")
        os.replace(digest_temp, str(local) + DIGEST_SUFFIX)
        os.replace(temp, local)
    except OSError as exc:
        raise ShardCacheError(f"{local.parent}: cannot write the shard cache ({exc.strerror or exc})") from None
    finally:
        temp.unlink(missing_ok=True)
        temp.with_name(temp.name + DIGEST_SUFFIX).unlink(missing_ok=True)
    return local, size


def cache_shards(
    shards: Sequence[Shard], cache_dir: str | Path, retry_seconds: float = 0.0, label: str = ""
) -> list[Path]:
    """Local checked copies of `shards`, in order, downloading those the cache lacks; one line on
    stderr says what was copied (nothing when every copy was there)."""
    start, pulled, copied = time.monotonic(), 0, 0
    paths = []
    for shard in shards:
        path, size = cached_copy(shard, cache_dir, retry_seconds)
        paths.append(path)
        pulled += size
        copied += size > 0
    if copied:
        seconds = time.monotonic() - start
        print(
            f"{label}copied {copied} of {len(shards)} shards ({pulled / 1e6:,.1f} MB) from the store to {cache_dir} "
            f"in {seconds:.1f} s ({pulled / 1e6 / max(seconds, 1e-9):.0f} MB/s)",
            file=sys.stderr,
            flush=True,
        )
    return paths
