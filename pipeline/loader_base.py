"""What every loader backend shares: the batch contract, errors, and how ranks split a split.

Every backend yields `(L, ab)` — L B×1×S×S, ab B×2×S×S, float32 network Lab (`pipeline/lab.py`) on
the requested device. B is the per-rank batch, `data.batch_size //
world_size`. Training loaders (`endless=True`) never stop; evaluation loaders (`endless=False`) make
one deterministic pass per `iter()` and keep the last, partial batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from configs import DataConfig
from pipeline.location import StoreError

if TYPE_CHECKING:  # this module stays importable without torch at run time
    import torch

# DataLoader workers start from a fork server, not by forking this process: a fork taken while DALI's
# (or any) threads hold locks can deadlock the child, and the benchmark runs every backend in one process.
WORKER_START = "forkserver"


class Loader(Protocol):
    """What every backend offers: iterating yields `(L, ab)` batches; and the state below."""

    skipped: int
    """Bad samples skipped so far (`data.on_bad_sample: skip`)."""

    @property
    def samples_per_epoch(self) -> int:
        """This rank's share of the split."""
        ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def state_dict(self) -> dict:
        """The position in the stream, for a checkpoint."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Resume from a `state_dict()`."""
        ...


class BadShardError(RuntimeError):
    """A shard that cannot be read, or a sample that cannot be decoded; the message names the shard."""


class StoreReadError(StoreError, BadShardError):
    """Reading `s3://` shards failed while iterating: the store did not answer for
    `data.read_retry_seconds` (or refused); one line naming the object. A training run stops on it
    (nothing saved) and resumes from its last checkpoint once the store is back."""


def per_rank_batch(data_cfg: DataConfig, world_size: int) -> int:
    """This rank's batch (`DataConfig.per_process_batch`); ConfigError naming data.batch_size when a
    global batch does not divide by world_size."""
    return data_cfg.per_process_batch(world_size)


def rank_slice(total: int, rank: int, world_size: int) -> range:
    """Sample positions [begin, end) of `rank` when `total` samples are split into contiguous parts.

    The same arithmetic as DALI's readers (floor(total·r/W) … floor(total·(r+1)/W)), so every rank gets
    total//W or total//W + 1 samples — never none while total >= world_size.
    """
    return range(total * rank // world_size, total * (rank + 1) // world_size)
