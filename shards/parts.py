"""Builds split across machines: `--part K/N` builds the K-th of N disjoint parts, `merge` joins them.

The plan (shuffle, split, shard boundaries) never depends on N: part K (1-based) owns shards K-1,
K-1+N, K-1+2N, … of the plan's list (train shards, then val), so the parts are disjoint, together
cover the plan, and get similar work. Each part writes its shards into the shared OUT and, once all
of them are finished, `OUT/parts/part-K-of-N.json`: the build's identity (source, options, plan
digest, classes, image count, names of every shard in the plan), what listing the source found
broken, and the progress records of its shards. Merging checks that every part 1..N is there, was
built from the same plan, and still has its shards on disk with the recorded sizes (`verify`
re-hashes them), then writes exactly the manifest.json a one-machine build writes. The last part to
finish merges by itself; `colorize-shards merge OUT` does it by hand.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline.shard_list import MANIFEST_FILE
from shards.errors import BuildError
from shards.manifest import assemble_manifest
from shards.output_dir import differences
from shards.plan import ShardPlan
from shards.progress import read_json, read_plan_record, write_record
from shards.verify import verify_shard

PARTS_DIR = "parts"
PART_FORMAT = "colorization-shards-part"
PART_VERSION = 1
_PART_FILE = re.compile(r"^part-(\d+)-of-(\d+)\.json$")


def parse_part(text: str) -> tuple[int, int]:
    """ "K/N" → (K, N) with 1 ≤ K ≤ N; `BuildError` otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise BuildError(f"--part must be K/N with 1 <= K <= N (e.g. 2/8), got {text!r}")
    return int(match[1]), int(match[2])


def part_shards(plan: list[ShardPlan], part: tuple[int, int]) -> list[ShardPlan]:
    """The shards part `part` = (K, N) builds: every N-th shard of the plan, from the K-th."""
    k, n = part
    return plan[k - 1 :: n]


def part_file(out: Path, part: tuple[int, int]) -> Path:
    return Path(out) / PARTS_DIR / f"part-{part[0]}-of-{part[1]}.json"


def _found_parts(out: Path) -> dict[tuple[int, int], Path]:
    folder = Path(out) / PARTS_DIR
    found = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else ():
        if match := _PART_FILE.match(path.name):
            found[int(match[1]), int(match[2])] = path
    return found


def mixed_splits(out: Path, part: tuple[int, int] | None = None) -> BuildError | None:
    """The error for part files in `out/parts` of more than one split (None when there is one N):
    one line naming the files to delete. `part`: the part being built, whose N is taken as meant;
    without it (merge) the split with the fewest part files is taken as the stale one."""
    found = _found_parts(out)
    splits: dict[int, list[Path]] = {}
    for (_, count), path in sorted(found.items()):
        splits.setdefault(count, []).append(path)
    if part is not None:
        splits.setdefault(part[1], [])
    if len(splits) < 2:
        return None
    if part is not None:
        stale = sorted(path for count, paths in splits.items() if count != part[1] for path in paths)
        meant = f"this is part {part[0]} of {part[1]}"
        other = "; or, if that other split is the one you mean, run this part as --part K/N with its N"
    else:
        fewest = min(splits, key=lambda count: (len(splits[count]), count))
        stale, other = splits[fewest], ""
        meant = " and ".join(
            f"{len(paths)} of a split into {count}" for count, paths in splits.items() if count != fewest
        )
    names = ", ".join(path.name for path in stale)
    return BuildError(
        f"{out / PARTS_DIR}: {names} {'is' if len(stale) == 1 else 'are'} from another split into parts ({meant}); "
        f"parts of one build must all use the same N: delete the stale file(s) "
        f"(`rm {' '.join(str(path) for path in stale)}`) and run again{other}"
    )


def finish_part(
    out: Path,
    part: tuple[int, int],
    summary: tuple,
    listing_skipped,
    plan: list[ShardPlan],
    records: list[dict],
    share: Callable[[Path], None] | None = None,
    check: Callable[[dict], list[str]] | None = None,
) -> dict:
    """Record a finished part; merge when every part is there. Returns the merged manifest then, else
    this part's own summary (manifest fields over its shards, plus `part`, `parts` and `missing`).

    `share(part file)` publishes the part file and fetches the other parts' (an object-store OUT,
    `shards.store_output`); `check` replaces merge's check of each shard (see `merge_parts`)."""
    source, options, digest, classes, image_count = summary
    k, n = part
    write_record(
        part_file(out, part),
        {
            "format": PART_FORMAT,
            "version": PART_VERSION,
            "part": k,
            "parts": n,
            "source": source,
            "options": options,
            "plan_sha256": digest,
            "classes": list(classes) if classes is not None else None,
            "images": image_count,
            "plan": [shard.name for shard in plan],
            "listing_skipped": list(listing_skipped),
            "records": records,
        },
    )
    if share is not None:
        share(part_file(out, part))
    if (mixed := mixed_splits(out, part)) is not None:
        raise mixed
    found = _found_parts(out)
    missing = [i for i in range(1, n + 1) if (i, n) not in found]
    if not missing:
        return merge_parts(out, check)
    images = sum(len(shard.images) for shard in part_shards(plan, part))
    own = assemble_manifest(source, options, digest, classes, images, records, listing_skipped)
    return {**own, "part": k, "parts": n, "missing": missing}


def merge_parts(out, check: Callable[[dict], list[str]] | None = None) -> dict:
    """Check every part of the build in `out` and write its manifest.json; return the manifest.

    `BuildError` (one line naming the part) when a part is missing, was built with other options or
    from another listing, or a shard of it is gone or changed: by default each shard in `out` is
    re-hashed (`verify_shard`); `check(record)` → problems replaces that (an object store's shards
    are checked by their size and SHA-256 metadata).
    """
    out = Path(out)
    found = _found_parts(out)
    if not found:
        raise BuildError(
            f"{out}: no part manifests in {PARTS_DIR}/ (build the parts first: "
            f"`colorize-shards build SRC {out} --part K/N` for K = 1 … N)"
        )
    if (mixed := mixed_splits(out)) is not None:
        raise mixed
    n = next(iter(found))[1]
    parts = {k: (path, read_json(path)) for (k, _), path in sorted(found.items())}
    reference = read_plan_record(out) or next(iter(parts.values()))[1]
    if not isinstance(reference, dict):
        reference = {}
    first_plan = None
    for k, (path, part) in parts.items():
        name = f"{PARTS_DIR}/{path.name}"
        if not isinstance(part, dict) or part.get("format") != PART_FORMAT or part.get("version") != PART_VERSION:
            raise BuildError(f"{out / name}: unreadable part manifest; rerun part {k}/{n}")
        if part["options"] != reference.get("options"):
            raise BuildError(
                f"{out / name}: part {k} of {n} was built with other options "
                f"({differences(reference.get('options') or {}, part['options'])}); rebuild it "
                f"with the options of the other parts"
            )
        if part["plan_sha256"] != reference.get("plan_sha256") or part["plan"] != (first_plan or part["plan"]):
            raise BuildError(
                f"{out / name}: part {k} of {n} was built from a different source listing "
                f"(files added, removed or renamed); rebuild it from the same source"
            )
        first_plan = part["plan"]
    missing = [k for k in range(1, n + 1) if k not in parts]
    if missing:
        more = f" (and {', '.join(map(str, missing[1:]))})" if missing[1:] else ""
        raise BuildError(
            f"{out}: part {missing[0]} of {n}{more} is missing: no {PARTS_DIR}/part-{missing[0]}-of-{n}"
            f".json, that part has not finished; run `colorize-shards build SRC {out} "
            f"--part {missing[0]}/{n}`"
        )

    records: dict[str, dict] = {}
    owner: dict[str, int] = {}
    for k, (path, part) in parts.items():
        wanted = part["plan"][k - 1 :: n]
        if [record["name"] for record in part["records"]] != wanted:
            raise BuildError(f"{out / PARTS_DIR / path.name}: does not list the shards of part {k} of {n}; rerun it")
        for record in part["records"]:
            records[record["name"]], owner[record["name"]] = record, k
    needs_cls = parts[1][1]["classes"] is not None
    written = [record for record in records.values() if record["samples"]]
    # Hashing releases the GIL: threads read and hash several shards at once.
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        checked = list(pool.map(check or (lambda record: verify_shard(out, record, needs_cls)), written))
    for record, problems in zip(written, checked, strict=True):
        if problems:
            k = owner[record["name"]]
            raise BuildError(
                f"{out / record['name']}: shard of part {k} of {n} changed since that part finished "
                f"({problems[0]}); rerun `colorize-shards build SRC {out} --part {k}/{n}`"
            )
    part = parts[1][1]
    manifest = assemble_manifest(
        part["source"],
        part["options"],
        part["plan_sha256"],
        part["classes"],
        part["images"],
        [records[name] for name in part["plan"]],
        part["listing_skipped"],
    )
    write_record(out / MANIFEST_FILE, manifest)
    return manifest
