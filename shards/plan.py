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
from dataclasses import dataclass

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
    """SHA-256 naming the plan: the listing (paths, classes) and the output options."""
    payload = {
        "options": options.output_options(),
        "classes": listing.classes,
        "images": [[image.path, image.cls] for image in listing.images],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()
