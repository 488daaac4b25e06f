"""`manifest.json`: what a shards folder holds, written last and atomically by a build.

Beside it: `train-000000.tar` … `val-000000.tar` …, each with its DALI index `<tar name>.idx`.

Read back (by the loaders and by `verify` and `merge`) with `pipeline.shard_list.read_manifest`,
which checks the format and version below.

Layout (paths relative to the source folder, or inside the source archive; the file's bytes depend only on the plan and the
source contents, never on timing or worker count):
    format, version           "colorization-shards", 1
    source                    absolute source folder the build read
    options                   BuildOptions without `workers`
    plan_sha256               digest of the options and of every image's path, class, size and mtime
                              (see `plan.plan_digest`): another source, or other content, differs
    classes                   class names in `cls` order, or null when the source has no classes
    splits                    {"train": samples, "val": samples}
    totals                    {"images", "kept", "converted", "colourless", "skipped", "bytes"}
    shards                    [{name, split, samples, bytes, sha256}], train then val, index order
    skipped                   [{path, reason}] undecodable files (and broken parts of an archive), sorted by path
    colourless                [path] colourless images (dropped unless options.keep_colourless)

A path that is not valid UTF-8 is written losslessly: each undecodable byte is the JSON escape
`\\udcXX` (Python's `surrogateescape`; `os.fsencode(path)` gives the original bytes back).
"""

from __future__ import annotations

from pipeline.shard_list import FORMAT_NAME, FORMAT_VERSION
from shards.plan import SPLITS

SHARD_FIELDS = ("name", "split", "samples", "bytes", "sha256")


def assemble_manifest(
    source,
    options: dict,
    plan_sha256: str,
    classes,
    image_count: int,
    records: list[dict],
    listing_skipped=(),
) -> dict:
    """The manifest of a finished build from the per-shard progress records (in plan order) and what
    the source's listing found broken (`listing_skipped`, `{path, reason}` entries)."""
    written = [record for record in records if record["samples"] > 0]
    skipped = sorted(
        [*listing_skipped, *(item for record in records for item in record["skipped"])], key=lambda s: s["path"]
    )
    colourless = sorted(path for record in records for path in record["colourless"])
    kept = sum(record["samples"] for record in records)
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "source": str(source),
        "options": options,
        "plan_sha256": plan_sha256,
        "classes": list(classes) if classes is not None else None,
        "splits": {split: sum(r["samples"] for r in records if r["split"] == split) for split in SPLITS},
        "totals": {
            "images": image_count,
            "kept": kept,
            "converted": sum(record["converted"] for record in records),
            "colourless": len(colourless),
            "skipped": len(skipped),
            "bytes": sum(record["bytes"] for record in written),
        },
        "shards": [{field: record[field] for field in SHARD_FIELDS} for record in written],
        "skipped": skipped,
        "colourless": colourless,
    }
