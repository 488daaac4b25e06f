"""The `torch` backend: webdataset + torchvision in DataLoader workers, for machines without DALI.

Each of the `data.num_threads` workers of each rank is one *reader*. With at least as many shards
as readers, shards are dealt out (`nodesplitter` by rank, then `workersplitter` by worker); with
fewer, every reader walks all shards and keeps every R-th sample (R = readers in all), so no rank is
ever left without data. Training reshuffles the shard order each epoch (same order on every rank,
from the seed) and samples within a `data.shuffle_buffer` window; evaluation reads in manifest order.

Per sample: `torchvision.io.decode_jpeg` → RandomResizedCrop / squash Resize / (evaluation) Resize +
CenterCrop → optional flip, with the sample's own seed (seed, rank, worker, sample number), so the
same sample number always gets the same crop. Workers batch the uint8 images and turn them into
network Lab (`pipeline/lab_uint8.py`) themselves, so the colour step runs in parallel too.

Resume: the loader counts the batches it handed out; a restored loader replays the same shard order
and shuffle and has each worker drop, undecoded, the samples of the batches already consumed, so
training continues exactly where it stopped (DataLoader takes batches round-robin from the workers).
A one-pass evaluation loader restarts its pass on restore.
"""

from __future__ import annotations

import random
from itertools import count
from typing import Iterator

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2

from launch.config import DataConfig
from pipeline.lab_uint8 import uint8_planar_to_network
from pipeline.loader_base import WORKER_START, BadShardError, per_rank_batch
from pipeline.shard_list import split_shards


def _transform(cfg: DataConfig, train: bool) -> v2.Transform:
    size = cfg.size
    if train and cfg.crop == "random_resized":
        steps = [v2.RandomResizedCrop(size, scale=cfg.crop_scale, ratio=cfg.crop_ratio, antialias=True)]
    elif cfg.crop == "resize":
        steps = [v2.Resize((size, size), antialias=True)]
    else:
        steps = [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    if train and cfg.flip:
        steps.append(v2.RandomHorizontalFlip(0.5))
    return v2.Compose(steps)


class _Readers(IterableDataset):
    """Yields (L, ab, keys, skipped) batches of one worker; see the module docstring."""

    def __init__(self, cfg, urls, rank, world_size, batch_size, train, endless, seed, start_batch):
        self.cfg, self.urls = cfg, urls
        self.rank, self.world_size = rank, world_size
        self.batch_size, self.train, self.endless, self.seed = batch_size, train, endless, seed
        self.start_batch = start_batch

    def _samples(self, worker: int, workers: int) -> Iterator[dict]:
        """Raw samples (bytes not decoded) of this reader, epoch after epoch when endless."""
        readers = self.world_size * workers
        reader = self.rank * workers + worker
        by_shard = len(self.urls) >= readers
        for epoch in count():
            urls = list(self.urls)
            if self.train:
                random.Random(self.seed * 100_003 + epoch).shuffle(urls)
            dataset = wds.WebDataset(
                urls,
                nodesplitter=(lambda u: list(u)[self.rank :: self.world_size]) if by_shard else _all,
                workersplitter=(lambda u: list(u)[worker::workers]) if by_shard else _all,
                shardshuffle=False,
                handler=self._handler,
                empty_check=False,
            )
            stream = dataset if by_shard else (s for i, s in enumerate(dataset) if i % readers == reader)
            if self.train:
                rng = random.Random(f"{self.seed}/{epoch}/{self.rank}/{worker}")
                stream = _shuffled(stream, self.cfg.shuffle_buffer, rng)
            yield from stream
            if not self.endless:
                return

    def _handler(self, exn: Exception) -> bool:
        """webdataset's error hook for unreadable tars: stop naming the shard, or go on."""
        if self.cfg.on_bad_sample == "skip":
            self._errors += 1
            return True
        url = next((a for a in getattr(exn, "args", ()) if isinstance(a, str) and a.endswith(".tar")), "a shard")
        raise BadShardError(f"{url}: cannot be read ({exn.args[0] if exn.args else exn})") from None

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # DataLoader takes batches round-robin starting at worker 0; after a restore at batch k the
        # next batch belongs to logical worker k % workers, so worker ids are rotated to match.
        worker = (worker + self.start_batch) % workers
        torch.set_num_threads(1)  # one core per worker; there are as many workers as cores
        transform = _transform(self.cfg, self.train)
        # Batches this worker already delivered before the restore (round-robin over workers).
        skip_samples = len(range(worker, self.start_batch, workers)) * self.batch_size
        self._errors = 0
        images, keys, reported = [], [], 0
        for n, sample in enumerate(self._samples(worker, workers)):
            if n < skip_samples:
                continue
            image = self._decode(sample)
            if image is None:
                continue
            torch.manual_seed(hash((self.seed, self.rank, worker, n)) & 0x7FFF_FFFF)
            images.append(transform(image))
            keys.append(f"{sample['__url__'].rsplit('/', 1)[-1]}/{sample['__key__']}")
            if len(images) == self.batch_size:
                yield (*uint8_planar_to_network(torch.stack(images)), keys, self._errors - reported)
                reported, images, keys = self._errors, [], []
        if images:
            yield (*uint8_planar_to_network(torch.stack(images)), keys, self._errors - reported)

    def _decode(self, sample: dict) -> torch.Tensor | None:
        """3×H×W uint8 sRGB, or None (counted) for an undecodable sample in skip mode."""
        try:
            data = sample["jpg"]
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except Exception as exc:
            if self.cfg.on_bad_sample == "skip":
                self._errors += 1
                return None
            raise BadShardError(
                f"{sample.get('__url__', 'a shard')}: sample {sample.get('__key__')} could not be decoded ({exc})"
            ) from None


def _all(urls):
    return urls


def _shuffled(stream, buffer_size: int, rng: random.Random):
    """Shuffle within a window of `buffer_size` samples (as DALI's reader and webdataset do)."""
    buffer = []
    for sample in stream:
        buffer.append(sample)
        if len(buffer) >= buffer_size:
            i = rng.randrange(len(buffer))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


class TorchLoader:
    """Iterable of (L B×1×S×S, ab B×2×S×S) float32 network-Lab batches on `device`, from torch."""

    def __init__(self, data_cfg: DataConfig, rank: int, world_size: int, device: torch.device, *,
                 split: str = "train", endless: bool = True, seed: int = 0, return_keys: bool = False) -> None:
        self.cfg, self.rank, self.world_size = data_cfg, rank, world_size
        self.device = torch.device(device)
        self.split, self.endless, self.seed, self.return_keys = split, endless, seed, return_keys
        self.batch_size = per_rank_batch(data_cfg, world_size)
        self.shards = split_shards(data_cfg.shards, split, need_index=False)
        self.skipped = 0
        self.batches = 0  # handed out since the start (endless) or since the pass began
        self._start_batch = 0
        self.samples_per_epoch = self._rank_samples()

    def _rank_samples(self) -> int:
        readers = self.world_size * self.cfg.num_threads
        if len(self.shards) >= readers:
            mine = [s for i, s in enumerate(self.shards) if i % self.world_size == self.rank]
            return sum(s.samples for s in mine)  # varies with the epoch's shard order when sizes differ
        total = sum(s.samples for s in self.shards)
        workers = self.cfg.num_threads
        return sum(len(range(self.rank * workers + w, total, readers)) for w in range(workers))

    def __iter__(self):
        dataset = _Readers(self.cfg, [str(s.path) for s in self.shards], self.rank, self.world_size,
                           self.batch_size, train=self.endless, endless=self.endless, seed=self.seed,
                           start_batch=self._start_batch)
        loader = DataLoader(dataset, batch_size=None, num_workers=self.cfg.num_threads,
                            pin_memory=self.device.type == "cuda", prefetch_factor=self.cfg.prefetch,
                            persistent_workers=False,
                            multiprocessing_context=WORKER_START)
        self.batches = self._start_batch
        self._start_batch = 0 if not self.endless else self._start_batch
        for lightness, ab, keys, skipped in loader:
            self.skipped += skipped
            self.batches += 1
            if self.endless:
                self._start_batch = self.batches
            batch = (lightness.to(self.device, non_blocking=True), ab.to(self.device, non_blocking=True))
            yield (*batch, keys) if self.return_keys else batch

    def state_dict(self) -> dict:
        return {"backend": "torch", "batches": self.batches if self.endless else 0, "skipped": self.skipped,
                "world_size": self.world_size, "rank": self.rank}

    def load_state_dict(self, state: dict) -> None:
        if state.get("backend") != "torch":
            raise ValueError(f"loader state is for backend {state.get('backend')!r}, not 'torch'")
        if state.get("world_size") != self.world_size:
            raise ValueError(f"loader state was saved with {state.get('world_size')} processes, now {self.world_size}")
        self.skipped = int(state.get("skipped", 0))
        self._start_batch = self.batches = int(state.get("batches", 0))
