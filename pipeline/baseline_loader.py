"""The `baseline` backend: the seed project's loader, reading our shards — the benchmark's yardstick.

As the seed project's notebook does it: a map-style `Dataset` whose
`__getitem__` opens the JPEG with PIL (`Image.open(...).convert("RGB")`), squashes it to S×S with
`Resize((S, S), BICUBIC)`, flips it with `RandomHorizontalFlip(0.5)` (training), converts it with
`skimage.color.rgb2lab` in float64, scales it (L/50 − 1, ab/128) and returns float32; a DataLoader
with `data.num_threads` workers (the seed: 2), shuffling, `pin_memory` where CUDA is. It ignores
`data.crop` (the seed only squashes). Samples are found by listing each shard's tar members once.

Ranks take contiguous, disjoint slices of the (shuffled each epoch) sample order. Resume: the epoch
and the batches consumed in it are saved; a restored loader rebuilds that epoch's order and starts
after them (the flips of the remaining batches are redrawn, as the seed had no RNG control).
"""

from __future__ import annotations

import io
import tarfile
from itertools import count

import numpy as np
import torch
from PIL import Image
from skimage.color import rgb2lab
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from configs import ConfigError, DataConfig
from pipeline.loader_base import WORKER_START, BadShardError, per_rank_batch, rank_slice
from pipeline.location import is_remote
from pipeline.shard_list import split_shards


def list_samples(tar_path) -> list[tuple[str, str, int, int]]:
    """(tar path, key, data offset, size) of each `.jpg` member, in tar order."""
    try:
        with tarfile.open(tar_path) as tar:
            return [
                (str(tar_path), m.name.rsplit(".", 1)[0], m.offset_data, m.size)
                for m in tar.getmembers()
                if m.isfile() and m.name.endswith(".jpg")
            ]
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BadShardError(f"{tar_path}: cannot be read as a tar ({exc})") from None


class SeedDataset(Dataset):
    """Item i → (L_net 1×S×S, ab_net 2×S×S) float32, or None when undecodable in skip mode."""

    def __init__(self, samples, size: int, flip: bool, on_bad_sample: str) -> None:
        self.samples = samples
        steps = [transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC)]
        if flip:
            steps.append(transforms.RandomHorizontalFlip(0.5))
        self.transform = transforms.Compose(steps)
        self.on_bad_sample = on_bad_sample

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        path, key, offset, size = self.samples[i]
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        try:
            image = Image.open(io.BytesIO(data)).convert("RGB")
        except Exception as exc:
            if self.on_bad_sample == "skip":
                return None
            raise BadShardError(f"{path}: sample {key} could not be decoded ({exc})") from None
        lab = rgb2lab(np.asarray(self.transform(image)))  # float64, H×W×3, L in [0, 100]
        lab = torch.from_numpy(lab.astype(np.float32)).permute(2, 0, 1)
        return lab[:1] / 50.0 - 1.0, lab[1:] / 128.0


def _collate(items):
    good = [x for x in items if x is not None]
    skipped = len(items) - len(good)
    if not good:
        return None, None, skipped
    return torch.stack([x[0] for x in good]), torch.stack([x[1] for x in good]), skipped


class BaselineLoader:
    """Iterable of (L B×1×S×S, ab B×2×S×S) float32 network-Lab batches on `device`, the seed's way."""

    def __init__(
        self,
        data_cfg: DataConfig,
        rank: int,
        world_size: int,
        device: torch.device,
        *,
        split: str = "train",
        endless: bool = True,
        seed: int = 0,
    ) -> None:
        self.cfg, self.rank, self.world_size = data_cfg, rank, world_size
        self.device = torch.device(device)
        self.endless, self.seed = endless, seed
        self.batch_size = per_rank_batch(data_cfg, world_size)
        if is_remote(data_cfg.shards):
            raise ConfigError(
                f"data.backend = 'baseline' reads local shards only (the seed project's loader, the benchmark's "
                f"yardstick), not {data_cfg.shards}: use 'dali' or 'torch' for s3:// shards"
            )
        samples = [
            s for shard in split_shards(data_cfg.shards, split, need_index=False) for s in list_samples(shard.path)
        ]
        self.dataset = SeedDataset(
            samples, data_cfg.size, flip=endless and data_cfg.flip, on_bad_sample=data_cfg.on_bad_sample
        )
        self.samples_per_epoch = len(rank_slice(len(samples), rank, world_size))
        self.skipped = 0
        self.epoch, self.batch_in_epoch = 0, 0

    def _order(self, epoch: int) -> list[int]:
        n = len(self.dataset)
        if self.endless:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch)).tolist()
        else:
            order = list(range(n))
        return [order[i] for i in rank_slice(n, self.rank, self.world_size)]

    def __iter__(self):
        epochs = count(self.epoch) if self.endless else [0]
        for epoch in epochs:
            start = self.batch_in_epoch * self.batch_size if self.endless else 0
            loader = DataLoader(
                self.dataset,
                batch_size=self.batch_size,
                sampler=self._order(epoch)[start:],
                num_workers=self.cfg.num_threads,
                pin_memory=self.device.type == "cuda",
                collate_fn=_collate,
                multiprocessing_context=WORKER_START,
                generator=torch.Generator(),  # iter() must not draw from the global RNG (exact resume)
            )
            self.epoch = epoch
            for lightness, ab, skipped in loader:
                self.skipped += skipped
                self.batch_in_epoch += 1
                if lightness is None:
                    continue
                yield lightness.to(self.device, non_blocking=True), ab.to(self.device, non_blocking=True)
            self.batch_in_epoch = 0

    def state_dict(self) -> dict:
        return {
            "backend": "baseline",
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "skipped": self.skipped,
            "world_size": self.world_size,
            "rank": self.rank,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("backend") != "baseline":
            raise ValueError(f"loader state is for backend {state.get('backend')!r}, not 'baseline'")
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        self.skipped = int(state.get("skipped", 0))
