"""`make_loader`: the one entry point that picks a backend from `data.backend`.

All backends share the contract of `pipeline/loader_base.py`: iterate to get `(L, ab)` float32
network-Lab batches (L B×1×S×S in [-1, 1], ab B×2×S×S) on `device`, B = data.batch_size //
world_size; `state_dict()` / `load_state_dict()` for resuming; `skipped` (bad samples skipped so
far); `samples_per_epoch` (this rank's share of the split).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from configs import DataConfig
from pipeline.loader_base import Loader, per_rank_batch

if TYPE_CHECKING:  # the backends are imported only when picked
    from pipeline.baseline_loader import BaselineLoader
    from pipeline.dali_loader import DaliLoader
    from pipeline.torch_loader import TorchLoader


def make_loader(
    data_cfg: DataConfig,
    rank: int,
    world_size: int,
    device: torch.device,
    *,
    split: str = "train",
    endless: bool = True,
    seed: int = 0,
) -> Loader:
    """A loader for `split` of `data_cfg.shards`, this rank's part, on `device`.

    `endless=True` (training): shuffled, random crop and flip, never stops. `endless=False`
    (evaluation): one deterministic pass per `iter()` in manifest order, no flip, the whole image
    squashed (`data.crop: resize`) or resized by its shorter side and centre-cropped, last batch kept.
    Raises ConfigError naming data.batch_size when it does not divide by world_size, ShardsDirError for a
    missing shards dir, manifest or shard.
    """
    per_rank_batch(data_cfg, world_size)
    backend: type[DaliLoader | TorchLoader | BaselineLoader]
    if data_cfg.backend == "dali":
        from pipeline.dali_loader import DaliLoader as backend
    elif data_cfg.backend == "torch":
        from pipeline.torch_loader import TorchLoader as backend
    else:
        from pipeline.baseline_loader import BaselineLoader as backend
    return backend(data_cfg, rank, world_size, device, split=split, endless=endless, seed=seed)
