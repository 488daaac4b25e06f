"""`build_shards`: source (folder, tar or zip) → shuffled WebDataset shards + DALI indexes + manifest, resumably.

Steps: scan the source → plan every shard (a pure function of listing + options) → lock and claim
OUT (one writer per OUT, or per part: `shards.lock`) → skip shards already finished by an earlier run
(verified against their records: `shards.verify`) → inspect the images of the remaining shards in a
process pool (`shards.pool`: results in plan order whatever the worker count) and write each shard
as its images come back → write the manifest last, atomically. Workers read their images
themselves, by path from a folder or by offset from an archive (`shards.sources`). With `part=(K, N)`
only every N-th shard of the plan is built and a part manifest is written instead (`shards.parts`).
OUT may be an `s3://` prefix: the same build runs in a local staging folder and each finished shard is
uploaded, the manifest last (`shards.store_output`).

A decode worker that dies (kill -9, the out-of-memory killer, a crash in a decoder) stops the build
with one line naming the image it was decoding; that image is noted in `.progress/`, and when it
kills a worker again on a later run it is listed under `skipped` ("killed its decode worker twice")
and the build goes on with a fresh pool. A rerun resumes as after any other stop.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

from tqdm import tqdm

from configs.progress_bar import progress_bar
from pipeline.location import is_remote
from pipeline.shard_list import MANIFEST_FILE
from shards.convert import COLOURLESS, KEPT, SKIPPED, Inspection
from shards.errors import BuildError
from shards.keys import display_path
from shards.lock import OutputLock, role_of
from shards.manifest import assemble_manifest
from shards.options import BuildOptions
from shards.output_dir import claim_output, prepare_output
from shards.parts import finish_part, mixed_splits, part_shards
from shards.plan import ShardPlan, plan_digest, plan_shards, source_files
from shards.pool import Settings, WorkerDied, inspections
from shards.progress import deaths_path, read_deaths, write_record, write_shard_record
from shards.scan import scan_source
from shards.sources import Source
from shards.store_output import StoreOutput, default_staging
from shards.tar_writer import ShardWriter
from shards.verify import finished_shard_record

__all__ = ["BuildOptions", "build_shards"]

KILLED_TWICE = "killed its decode worker twice (out of memory, or a crash in the decoder): not decoded again"


def _results(
    source: Source, out: Path, pending: list[ShardPlan], options: BuildOptions
) -> Generator[Inspection, None, None]:
    """Inspection of every image of `pending`, in plan order; handles decode workers that die."""
    images = [(shard.name, image) for shard in pending for image in shard.images]
    locators = [source.files[image.path] for _, image in images]
    deaths = {shard.name: read_deaths(out, shard.name) for shard in pending}
    known = {
        index: Inspection(SKIPPED, reason=KILLED_TWICE)
        for index, (shard, image) in enumerate(images)
        if deaths[shard].get(image.path, 0) >= 2
    }
    settings = Settings(
        source.reader(), options.short_side, options.quality, options.keep_colourless, options.max_pixels
    )
    position = 0
    while True:
        try:
            for result in inspections(settings, locators, options.workers, position, known):
                position += 1
                yield result
            return
        except WorkerDied as died:
            if died.index is None:
                raise BuildError(
                    "a decode worker ended unexpectedly (terminated, or it died between images); run the same "
                    "command again to resume"
                ) from None
            shard, image = images[died.index]
            deaths[shard][image.path] = deaths[shard].get(image.path, 0) + 1
            write_record(deaths_path(out, shard), deaths[shard])
            if deaths[shard][image.path] < 2:
                name = display_path(source.archive_path(image.path))
                raise BuildError(
                    f"a decode worker died while decoding {name!r} (killed, or out of memory: see dmesg); "
                    "run the same command again to resume (an image that kills a worker twice is skipped)"
                ) from None
            known[died.index] = Inspection(SKIPPED, reason=KILLED_TWICE)  # and go on with a fresh pool


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
    staging: str | Path | None = None,
) -> dict:
    """Build (or finish building) the shards of `src` in `out`; return the manifest.

    `src`: an image folder, or a tar / zip archive read in place (`shards.sources`; `inside` picks a
    folder of it). `part=(K, N)`: build only the K-th of N disjoint parts of the plan and write its
    part manifest; returns the merged manifest when that completed the set, else the part manifest.
    Raises `BuildError` for a missing, unreadable or image-free `src`, an unusable `out`, an `out`
    that holds a different build or is being written by another build, part files of another N, or
    a decode worker that died. Undecodable images never raise: they are listed in the manifest's
    `skipped`. `progress` shows a tqdm bar (images/s) on stderr.

    `out` may be an object-store prefix `s3://bucket/prefix`: the build then runs in the local folder
    `staging` (default `shards.store_output.default_staging`) and uploads each shard as it is
    finished, the manifest last (`shards.store_output`).
    """
    options = options or BuildOptions()
    store = None
    if is_remote(out):  # an object store: build in a local staging folder, upload each shard
        store = StoreOutput(str(out), Path(staging) if staging is not None else default_staging(str(out)))
        out = store.stage
    out = Path(out)
    listing = scan_source(src, inside)
    source = listing.source
    assert source is not None  # scan_source always sets it
    plan = plan_shards(listing, options)
    digest = plan_digest(listing, options)
    mine = plan if part is None else part_shards(plan, part)
    owned = None if part is None else {shard.name for shard in mine}
    prepare_output(out)
    with OutputLock(out, role_of(part)):
        if part is not None and (mixed := mixed_splits(out, part)) is not None:
            raise mixed
        claim_output(out, source.location, options.output_options(), digest, source_files(listing), owned)
        if store is not None:
            store.claim(options.output_options(), digest)
        needs_cls = listing.classes is not None
        records: dict[str, dict] = {}
        pending: list[ShardPlan] = []
        for shard in mine:
            record = store.finished(shard.name) if store else finished_shard_record(out, shard.name, needs_cls)
            if record is not None:
                records[shard.name] = record
            else:
                pending.append(shard)

        total = sum(len(shard.images) for shard in mine)
        remaining = sum(len(shard.images) for shard in pending)
        with progress_bar(
            total=total, initial=total - remaining, unit="img", desc="shards", disable=not progress, smoothing=0.1
        ) as bar:
            results = _results(source, out, pending, options)
            try:
                for shard in pending:
                    record = _write_shard(source, out, shard, results, bar)
                    if store is not None:
                        store.publish(record)
                    write_shard_record(out, record)
                    records[shard.name] = record
            finally:
                results.close()  # stops the pool promptly when a shard fails or the user interrupts

        summary = (source.location, options.output_options(), digest, listing.classes, len(listing.images))
        if part is not None:
            mine_records = [records[shard.name] for shard in mine]
            if store is None:
                return finish_part(out, part, summary, listing.problems, plan, mine_records)
            with store.naming():
                merged = finish_part(
                    out, part, summary, listing.problems, plan, mine_records, store.push_part, store.check_shard
                )
            if "missing" not in merged:
                store.publish_manifest()
            return merged
        manifest = assemble_manifest(*summary, [records[shard.name] for shard in plan], listing.problems)
        write_record(out / MANIFEST_FILE, manifest)
        if store is not None:
            store.publish_manifest()
        return manifest
