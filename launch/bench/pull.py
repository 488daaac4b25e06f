"""What a loader pulls from where its shards live: bytes per image, bytes/s per rank, and the link a
node needs at a target rate (`colorize-bench loader --also-shards`, docs/object-storage.md).

A reader pulls whole samples: the JPEG plus its tar headers (and `.cls`), i.e. the split's shard
bytes over its samples, as the manifest records them. Multiply by images/s for the bytes/s a rank
reads from the store; at a target of `TARGET_IMAGES_PER_S` per GPU, a node of G GPUs needs G times
that from the store, and the JPEGs' size (set by `colorize-shards build --short-side`) is what brings
it within a given link.
"""

from __future__ import annotations

from pipeline.location import is_remote
from pipeline.shard_list import read_manifest

TARGET_IMAGES_PER_S = 8000
"""The per-GPU rate the sizing rule is given for (a fast GPU's training step on 256² crops)."""


def source_name(backend: str, location: str, primary: str) -> str:
    """`dali` on the primary shards, `dali@s3` / `dali@local` on another location of the same shards."""
    if location == primary:
        return backend
    return f"{backend}@{'s3' if is_remote(location) else 'local'}"


def mean_sample_bytes(location: str, split: str) -> float:
    """Shard bytes per sample of `split` (JPEG + tar headers + cls), from the manifest."""
    shards = [s for s in read_manifest(location)["shards"] if s.get("split") == split]
    samples = sum(int(s["samples"]) for s in shards)
    return sum(int(s["bytes"]) for s in shards) / samples if samples else 0.0


def sizing(mean_bytes: float, gpus_per_node: int = 8) -> dict:
    """What `TARGET_IMAGES_PER_S` per GPU needs from the store at `mean_bytes` per sample."""
    per_gpu = TARGET_IMAGES_PER_S * mean_bytes
    return {
        "target_images_per_s_per_gpu": TARGET_IMAGES_PER_S,
        "mean_sample_bytes": round(mean_bytes),
        "bytes_per_s_per_gpu": round(per_gpu),
        "gbit_per_s_per_gpu": round(per_gpu * 8 / 1e9, 2),
        "gpus_per_node": gpus_per_node,
        "gbit_per_s_per_node": round(per_gpu * 8 * gpus_per_node / 1e9, 1),
    }


def sizing_line(figures: dict) -> str:
    return (
        f"at {figures['target_images_per_s_per_gpu']:,} images/s per GPU and {figures['mean_sample_bytes'] / 1e3:.1f} "
        f"KB per sample, each GPU's rank pulls {figures['bytes_per_s_per_gpu'] / 1e6:.0f} MB/s "
        f"({figures['gbit_per_s_per_gpu']:.2f} Gbit/s); a node of {figures['gpus_per_node']} GPUs "
        f"{figures['gbit_per_s_per_node']:.1f} Gbit/s from the store"
    )
