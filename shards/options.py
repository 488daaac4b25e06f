"""`BuildOptions`: every choice that shapes the shards, with defaults that suit ImageNet-1k."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from shards.errors import BuildError

# ImageNet-1k's train set averages ~110 KB per JPEG: 2,000 samples make ~220 MB shards, big enough
# for sequential reads and few files, small enough that ~580 shards spread over many ranks.
DEFAULT_SHARD_SAMPLES = 2000
# About 10,000 of ImageNet's 1,281,167 train images go to our validation split (10_000 / 1.28 M).
DEFAULT_VAL_FRACTION = 0.0078
DEFAULT_QUALITY = 95
# Largest image (width × height) a decode worker takes on: an RGBA one and its RGB copy are ~0.8 GB.
DEFAULT_MAX_PIXELS = 100_000_000


def default_workers() -> int:
    """All cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class BuildOptions:
    """Options of `colorize-shards build`; all but `workers` decide the bytes of the output."""

    shard_samples: int = DEFAULT_SHARD_SAMPLES
    """Source images planned per shard (a shard holds fewer when some are skipped or colourless)."""
    val_fraction: float = DEFAULT_VAL_FRACTION
    """Fraction of images in the `val` split, chosen per image from a hash of its key, in [0, 1)."""
    seed: int = 0
    """Seed of the global shuffle of samples across each split's shards."""
    short_side: int | None = None
    """When set, images whose shorter side exceeds it are downsized (aspect kept) and re-encoded."""
    quality: int = DEFAULT_QUALITY
    """JPEG quality (1–95) for images that must be re-encoded; sources already fit are kept byte-exact."""
    keep_colourless: bool = False
    """Keep colourless images (converted to 3-channel RGB JPEG) instead of dropping them."""
    split: str | None = None
    """"train" or "val" puts every image into that split (ImageNet's val archive → val shards);
    None splits by `val_fraction`."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Images with more pixels (width × height, read from the header) are skipped as too large
    without being decoded; bounds each decode worker's memory (and the loader's)."""
    workers: int = field(default_factory=default_workers)
    """Decode processes; has no effect on the output bytes."""

    def __post_init__(self) -> None:
        if not isinstance(self.shard_samples, int) or self.shard_samples < 1:
            raise BuildError(f"shard_samples must be a positive integer, got {self.shard_samples!r}")
        if not 0.0 <= float(self.val_fraction) < 1.0:
            raise BuildError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.short_side is not None and (not isinstance(self.short_side, int) or self.short_side < 8):
            raise BuildError(f"short_side must be an integer >= 8, got {self.short_side!r}")
        if not isinstance(self.quality, int) or not 1 <= self.quality <= 95:
            raise BuildError(f"quality must be an integer in [1, 95], got {self.quality!r}")
        if self.split not in (None, "train", "val"):
            raise BuildError(f"split must be 'train' or 'val', got {self.split!r}")
        if not isinstance(self.max_pixels, int) or self.max_pixels < 1:
            raise BuildError(f"max_pixels must be a positive integer, got {self.max_pixels!r}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise BuildError(f"workers must be a positive integer, got {self.workers!r}")

    def output_options(self) -> dict:
        """The options that decide the output bytes (recorded in the manifest; `workers` is not)."""
        options = asdict(self)
        del options["workers"]
        if options["split"] is None:  # absent unless set: builds from before the option keep their records
            del options["split"]
        if options["max_pixels"] == DEFAULT_MAX_PIXELS:  # likewise
            del options["max_pixels"]
        options["val_fraction"] = float(options["val_fraction"])
        return options
