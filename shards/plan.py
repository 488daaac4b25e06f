"""The shard plan: which image goes to which split, which shard, at which position.

The plan is a pure function of the source listing and the output options, so a rerun (after a kill,
with any number of workers) reproduces it exactly:
- split: `val` when a hash of the image's key falls below `val_fraction`, else `train`. It depends on
  the key alone (not on the seed or on other files), so adding images never moves existing ones.
  With `options.split` set, every image goes to that split.
- order: each split's images, sorted by key, are shuffled with `random.Random(f"{seed}/{split}")`
  (Python's documented, version-stable Mersenne Twister), then cut into runs of `shard_samples`. The
  shuffle is global: DALI's reader only shuffles within a small buffer, so every shard must already
  mix all classes.
Shards hold fewer samples than planned when images turn out undecodable or colourless.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass

from shards.keys import display_path
from shards.options import BuildOptions
from shards.scan import SourceImage, SourceListing

SPLITS = ("train", "val")


@dataclass(frozen=True)
class ShardPlan:
    """One shard to write: file `name` (e.g. "train-000000.tar"), its split and its images in order."""

    name: str
    split: str
    images: tuple[SourceImage, ...]


def split_of(key: str, val_fraction: float) -> str:
    """ "val" or "train" for the sample `key`: a uniform hash in [0, 1) compared with `val_fraction`."""
    position = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64
    return "val" if position < val_fraction else "train"


def shard_name(split: str, index: int) -> str:
    """File name of shard `index` of `split`: "train-000000.tar"."""
    return f"{split}-{index:06d}.tar"


def plan_shards(listing: SourceListing, options: BuildOptions) -> list[ShardPlan]:
    """All shards of the build, train shards first then val, each in index order."""
    shards: list[ShardPlan] = []
    for split in SPLITS:
        members = sorted(
            (
                image
                for image in listing.images
                if (options.split or split_of(image.key, options.val_fraction)) == split
            ),
            key=lambda image: image.key,
        )
        random.Random(f"{options.seed}/{split}").shuffle(members)
        size = options.shard_samples
        for index, start in enumerate(range(0, len(members), size)):
            shards.append(ShardPlan(shard_name(split, index), split, tuple(members[start : start + size])))
    return shards


def plan_digest(listing: SourceListing, options: BuildOptions) -> str:
    """SHA-256 naming the plan: the output options and the listing — each image's path, class, size
    and modification time, so the same names with other content (a re-encoded copy of the folder, a
    file replaced since) give another digest."""
    payload = {
        "options": options.output_options(),
        "classes": listing.classes,
        "images": [[image.path, image.cls, image.size, image.mtime] for image in listing.images],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def source_files(listing: SourceListing) -> list[list]:
    """[path, size, mtime] of every image, sorted by path: what `first_difference` compares."""
    return [[image.path, image.size, image.mtime] for image in listing.images]


def _when(mtime: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(mtime))


def first_difference(recorded: list[list], current: list[list]) -> str | None:
    """The first file (by path) that differs between two `source_files` lists, in words; None if equal."""
    before = {path: (size, mtime) for path, size, mtime in recorded}
    now = {path: (size, mtime) for path, size, mtime in current}
    for path in sorted(before.keys() | now.keys()):
        was, isnow = before.get(path), now.get(path)
        if was == isnow:
            continue
        name = display_path(path)
        if was is None:
            return f"{name!r} is in the source but was not when that build began"
        if isnow is None:
            return f"{name!r} was in the source when that build began but is gone"
        return (
            f"{name!r} is {isnow[0]:,} bytes modified {_when(isnow[1])} but was {was[0]:,} bytes "
            f"modified {_when(was[1])} when that build began"
        )
    return None
