"""`build_shards`: source (folder, tar or zip) → shuffled WebDataset shards + DALI indexes + manifest, resumably.

Steps: scan the source → plan every shard (a pure function of listing + options) → claim OUT →
skip shards already finished by an earlier run → inspect the images of the remaining shards in a
process pool (ordered `imap`, so results arrive in plan order whatever the worker count) and write
each shard as its images come back → write the manifest last, atomically. Workers read their images
themselves, by path from a folder or by offset from an archive (`shards.sources`). With `part=(K, N)`
only every N-th shard of the plan is built and a part manifest is written instead (`shards.parts`).
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import signal
from collections.abc import Generator, Iterator
from pathlib import Path

from tqdm import tqdm

from configs.atomic import write_json_atomic
from configs.progress_bar import progress_bar
from pipeline.shard_list import MANIFEST_FILE
from shards.convert import COLOURLESS, KEPT, SKIPPED, Inspection, inspect_read
from shards.manifest import assemble_manifest
from shards.options import BuildOptions
from shards.output_dir import claim_output
from shards.parts import finish_part, part_shards
from shards.plan import ShardPlan, plan_digest, plan_shards
from shards.progress import finished_shard_record, write_shard_record
from shards.scan import scan_source
from shards.sources import Source
from shards.tar_writer import ShardWriter

__all__ = ["BuildOptions", "build_shards"]

# Per-process state of pool workers, set once by `_init_worker` instead of pickled with every task:
# the source's reader, short_side, quality, keep_colourless.
_worker_settings: tuple | None = None


def _init_worker(reader, short_side: int | None, quality: int, keep_colourless: bool) -> None:
    global _worker_settings
    _worker_settings = (reader, short_side, quality, keep_colourless)


def _init_pool_worker(*settings) -> None:
    # Ctrl-C is the parent's to handle (it stops the pool); workers would only add tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _init_worker(*settings)


def _inspect_in_worker(locator) -> Inspection:
    assert _worker_settings is not None, "_init_worker runs first (pool initializer)"
    reader, short_side, quality, keep_colourless = _worker_settings
    result = inspect_read(functools.partial(reader.read, locator), short_side, quality, keep_colourless)
    if result.status == KEPT and not result.converted and reader.cheap_reread:
        # The parent re-reads kept source bytes itself (from the page cache): cheaper than shipping
        # ~100 KB per image through the pool's pipe, which costs a pickle and two copies each way.
        return dataclasses.replace(result, jpeg=None)
    return result


def _inspections(source: Source, locators: list, options: BuildOptions) -> Generator[Inspection, None, None]:
    """Inspection of each located file, in order; in a pool of `options.workers` processes when > 1."""
    settings = (source.reader(), options.short_side, options.quality, options.keep_colourless)
    if options.workers == 1 or len(locators) <= 1:
        _init_worker(*settings)
        yield from map(_inspect_in_worker, locators)
        return
    # Chunks amortise inter-process overhead yet stay small enough to keep every worker busy.
    chunksize = max(1, min(64, len(locators) // (options.workers * 8)))
    with multiprocessing.Pool(options.workers, initializer=_init_pool_worker, initargs=settings) as pool:
        yield from pool.imap(_inspect_in_worker, locators, chunksize=chunksize)


def _write_shard(source: Source, out: Path, shard: ShardPlan, results: Iterator[Inspection], bar: tqdm) -> dict:
    """Write one shard from the next `len(shard.images)` results; return its progress record."""
    reader = source.reader()
    writer = ShardWriter(out / shard.name)
    skipped: list[dict] = []
    colourless: list[str] = []
    converted = 0
    try:
        for image in shard.images:
            result = next(results)
            bar.update(1)
            if result.colourless:
                colourless.append(source.archive_path(image.path))
            if result.status == SKIPPED:
                skipped.append({"path": source.archive_path(image.path), "reason": result.reason})
            elif result.status == KEPT:
                jpeg = result.jpeg if result.jpeg is not None else reader.read(source.files[image.path])
                writer.add(image.key, jpeg, image.cls)
                converted += result.converted
            else:
                assert result.status == COLOURLESS, result.status
        if writer.samples:
            written = writer.commit()
            size, sha256 = written.bytes, written.sha256
        else:  # every image dropped: no file (an empty tar has no index and would trip readers)
            writer.abort()
            size, sha256 = 0, None
    except BaseException:
        writer.abort()
        raise
    return {
        "name": shard.name,
        "split": shard.split,
        "samples": writer.samples,
        "bytes": size,
        "sha256": sha256,
        "converted": converted,
        "skipped": skipped,
        "colourless": colourless,
    }


def build_shards(
    src,
    out,
    options: BuildOptions | None = None,
    progress: bool = True,
    *,
    inside: str | None = None,
    part: tuple[int, int] | None = None,
) -> dict:
    """Build (or finish building) the shards of `src` in `out`; return the manifest.

    `src`: an image folder, or a tar / zip archive read in place (`shards.sources`; `inside` picks a
    folder of it). `part=(K, N)`: build only the K-th of N disjoint parts of the plan and write its
    part manifest; returns the merged manifest when that completed the set, else the part manifest.
    Raises `BuildError` for a missing/unreadable `src`, an unusable `out`, or an `out` that holds a
    different build. Undecodable images never raise: they are listed in the manifest's `skipped`.
    `progress` shows a tqdm bar (images/s) on stderr.
    """
    options = options or BuildOptions()
    out = Path(out)
    listing = scan_source(src, inside)
    source = listing.source
    assert source is not None  # scan_source always sets it
    plan = plan_shards(listing, options)
    digest = plan_digest(listing, options)
    mine = plan if part is None else part_shards(plan, part)
    owned = None if part is None else {shard.name for shard in mine}
    claim_output(out, source.location, options.output_options(), digest, owned)

    records: dict[str, dict] = {}
    pending: list[ShardPlan] = []
    for shard in mine:
        record = finished_shard_record(out, shard.name)
        if record is not None:
            records[shard.name] = record
        else:
            pending.append(shard)

    locators = [source.files[image.path] for shard in pending for image in shard.images]
    total = sum(len(shard.images) for shard in mine)
    with progress_bar(
        total=total, initial=total - len(locators), unit="img", desc="shards", disable=not progress, smoothing=0.1
    ) as bar:
        results = _inspections(source, locators, options)
        try:
            for shard in pending:
                record = _write_shard(source, out, shard, results, bar)
                write_shard_record(out, record)
                records[shard.name] = record
        finally:
            results.close()  # stops the pool promptly when a shard fails or the user interrupts

    summary = (source.location, options.output_options(), digest, listing.classes, len(listing.images))
    if part is not None:
        return finish_part(out, part, summary, listing.problems, plan, [records[shard.name] for shard in mine])
    manifest = assemble_manifest(*summary, [records[shard.name] for shard in plan], listing.problems)
    write_json_atomic(out / MANIFEST_FILE, manifest)
    return manifest
