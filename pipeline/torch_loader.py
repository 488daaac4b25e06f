"""The `torch` backend: webdataset + torchvision in DataLoader workers, for machines without DALI.

Each of the `data.num_threads` workers of each rank is one *reader*. With at least as many shards
as readers, shards are dealt out (`nodesplitter` by rank, then `workersplitter` by worker); with
fewer, every reader walks all shards and keeps every R-th sample (R = readers in all), so no rank is
ever left without data. Training reshuffles the shard order each epoch (same order on every rank,
from the seed) and samples within a `data.shuffle_buffer` window; evaluation reads in manifest order.

Per sample, the *view* — RandomResizedCrop's box and the coin flip (training), or none — is drawn
with the sample's own seed (seed, rank, worker, sample number), so the same sample number always
gets the same crop (`sample_view`); `apply_view` then crops and resizes to S×S (RandomResizedCrop /
squash Resize / evaluation Resize of the shorter side + CenterCrop) and flips. Two modes, same
views, same output:
- CPU decode (`data.decode_device: cpu`, or any non-CUDA device): each worker decodes with
  torchcodec's `decode_jpeg` (libjpeg-turbo), applies the view, batches the uint8 squares and turns
  them into network Lab (`pipeline/lab_uint8.py`'s `lab_step`) itself, so the colour step runs in
  parallel too; the batch is then copied to the device.
- GPU decode (`auto` with a CUDA device): workers only read each sample's bytes and its size from the
  JPEG header (`PIL.Image.open(...).size`, enough to draw the view; shards hold no EXIF rotation: the
  builder stores such photos upright); the main process decodes the batch with one batched nvJPEG
  call (`decode_jpeg(list, device="cuda")`), applies the views and the Lab step on the GPU
  (`finish_batch`) — the loader most users would write instead of DALI.

Resume: the loader counts the batches it handed out; a restored loader replays the same shard order
and shuffle and has each worker drop, undecoded, the samples of the batches already consumed, so
training continues exactly where it stopped (DataLoader takes batches round-robin from the workers).
A one-pass evaluation loader restarts its pass on restore.

Shards in an object store (`data.shards: s3://bucket/prefix`) are streamed with boto3
(`pipeline.location.open_stream`), the same split and order as local ones. A read that fails is
retried from the byte it reached for `data.read_retry_seconds`; then `StoreReadError` names the object.

Bad samples: bytes that are not a JPEG fail in the worker in both modes (the GPU mode reads their
header); in the GPU mode a JPEG whose body nvJPEG cannot decode is found in the main process (the
batch is decoded again image by image) — `error` names its shard and key, `skip` drops it and counts
it, and that batch is one image short (the CPU mode refills the batch from the stream instead).
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator, Sequence
from itertools import count
from typing import NamedTuple, cast

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchcodec.decoders import decode_jpeg
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as F

from configs import DataConfig
from pipeline.lab_uint8 import LabStep, lab_step
from pipeline.loader_base import WORKER_START, BadShardError, StoreReadError, per_rank_batch
from pipeline.location import StoreError, open_stream
from pipeline.shard_list import split_shards


class View(NamedTuple):
    """One sample's crop box in its decoded image (pixels; used by training random_resized crops only)
    and whether it is mirrored left-right."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


def sample_view(cfg: DataConfig, train: bool, height: int, width: int) -> View:
    """The view of an H×W image, drawn from torch's global RNG (seeded per sample by the caller).

    Draws exactly what `v2.Compose([v2.RandomResizedCrop(...), v2.RandomHorizontalFlip(0.5)])` drew
    (torchvision's own box sampler, then one `torch.rand(1) < 0.5`), so both decode modes, and
    loaders saved before they existed, give every sample number the same crop.
    """
    top, left, box_h, box_w = 0, 0, height, width
    if train and cfg.crop == "random_resized":
        shape_only = torch.empty((), dtype=torch.uint8).expand(1, height, width)  # no pixels are read
        top, left, box_h, box_w = RandomResizedCrop.get_params(shape_only, list(cfg.crop_scale), list(cfg.crop_ratio))
    flip = bool(train and cfg.flip and torch.rand(1).item() < 0.5)
    return View(int(top), int(left), int(box_h), int(box_w), flip)


def apply_view(image: torch.Tensor, view: View, cfg: DataConfig, train: bool) -> torch.Tensor:
    """3×H×W uint8 sRGB (CPU or CUDA) → 3×S×S uint8 sRGB: crop/resize (bilinear, antialiased), flip.

    Training random_resized: the view's box resized to S×S; `crop: resize`: the whole image squashed
    to S×S; evaluation of random_resized: shorter side to S, centre S×S. On CUDA torchvision resizes
    uint8 through float32 (its uint8 kernel is CPU-only), so the two devices differ by rounding.
    """
    size = cfg.size
    if train and cfg.crop == "random_resized":
        out = F.resized_crop(image, view.top, view.left, view.height, view.width, [size, size], antialias=True)
    elif cfg.crop == "resize":
        out = F.resize(image, [size, size], antialias=True)
    else:
        out = F.center_crop(F.resize(image, [size], antialias=True), [size, size])
    return F.horizontal_flip(out) if view.flip else out


def finish_batch(
    images: Sequence[torch.Tensor], views: Sequence[View], cfg: DataConfig, train: bool, lab: LabStep
) -> tuple[torch.Tensor, torch.Tensor]:
    """B decoded 3×H×W uint8 sRGB images (sizes differ; CPU or CUDA) and their views →
    (L_net B×1×S×S in [-1, 1], ab_net B×2×S×S ≈ [-1, 1]) float32 on the images' device."""
    return lab(torch.stack([apply_view(im, v, cfg, train) for im, v in zip(images, views, strict=True)]))


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(height, width) of a JPEG, from its header only (Pillow reads no pixels here); ValueError when
    the bytes are not a JPEG."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG":
                raise ValueError(f"not a JPEG ({image.format})")
            width, height = image.size
    except (OSError, SyntaxError) as exc:  # Pillow's "cannot identify image file"
        raise ValueError(f"not a JPEG ({exc})") from None
    return height, width


class _Readers(IterableDataset):
    """Yields one worker's batches: (L, ab, keys, skipped) when it decodes, or (byte tensors, views,
    keys, skipped) when the main process decodes (`encoded`); see the module docstring."""

    def __init__(self, cfg, urls, rank, world_size, batch_size, train, endless, seed, start_batch, encoded=False):
        self.cfg, self.urls = cfg, urls
        self.rank, self.world_size = rank, world_size
        self.batch_size, self.train, self.endless, self.seed = batch_size, train, endless, seed
        self.start_batch = start_batch
        self.encoded = encoded

    def _samples(self, worker: int, workers: int) -> Iterator[dict]:
        """Raw samples (bytes not decoded) of this reader, epoch after epoch when endless."""
        readers = self.world_size * workers
        reader = self.rank * workers + worker
        by_shard = len(self.urls) >= readers
        for epoch in count():
            urls = list(self.urls)
            if self.train:
                random.Random(self.seed * 100_003 + epoch).shuffle(urls)
            # WebDataset's own stages, with the shards opened here: local files, or `s3://` objects
            # streamed through boto3 with retries (`pipeline.location.open_stream`).
            dataset = wds.DataPipeline(
                wds.SimpleShardList(urls),
                (lambda u: list(u)[self.rank :: self.world_size]) if by_shard else _all,
                (lambda u: list(u)[worker::workers]) if by_shard else _all,
                self._open_shards,
                wds.pipelinefilter(wds.tariterators.tar_file_expander)(handler=self._handler),
                wds.pipelinefilter(wds.tariterators.group_by_keys)(handler=self._handler),
            )
            stream = dataset if by_shard else (s for i, s in enumerate(dataset) if i % readers == reader)
            if self.train:
                rng = random.Random(f"{self.seed}/{epoch}/{self.rank}/{worker}")
                buffer = self.cfg.shuffle_buffer
                stream = wds.filters.shuffle(buffer, initial=buffer, rng=rng)(iter(stream))
            yield from stream
            if not self.endless:
                return

    def _open_shards(self, sources: Iterator[dict]) -> Iterator[dict]:
        """webdataset stage: {url} → {url, stream}; each stream is closed once its tar is read."""
        for source in sources:
            try:
                stream = open_stream(source["url"], self.cfg.read_retry_seconds)
            except StoreError as exn:  # the store did not answer for data.read_retry_seconds, or refused
                raise StoreReadError(exn.message) from None
            except OSError as exn:  # a local shard gone since the manifest was read
                exn.args = (*exn.args, source["url"])
                if self._handler(exn):
                    continue
                raise
            try:
                yield {"url": source["url"], "stream": stream}
            finally:
                stream.close()

    def _handler(self, exn: Exception) -> bool:
        """webdataset's error hook for unreadable tars: stop naming the shard, or go on. The object
        store failing is never skipped: `StoreReadError` (retries are over when it gets here)."""
        if isinstance(exn, StoreError):
            raise StoreReadError(exn.message) from None
        if self.cfg.on_bad_sample == "skip":
            self._errors += 1
            return True
        url = next((a for a in getattr(exn, "args", ()) if isinstance(a, str) and a.endswith(".tar")), "a shard")
        raise BadShardError(f"{url}: cannot be read ({exn.args[0] if exn.args else exn})") from None

    def __iter__(self):
        try:
            yield from self._batches()
        except BadShardError as exc:
            # Handed to the main process as an item, which raises it there: an exception raised in a
            # DataLoader worker would arrive as a whole traceback in the message instead of one line.
            yield exc

    def _batches(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # DataLoader takes batches round-robin starting at worker 0; after a restore at batch k the
        # next batch belongs to logical worker k % workers, so worker ids are rotated to match.
        worker = (worker + self.start_batch) % workers
        torch.set_num_threads(1)  # one core per worker; there are as many workers as cores
        self._lab = lab_step(self.cfg.compile_lab)
        # Batches this worker already delivered before the restore (round-robin over workers).
        skip_samples = len(range(worker, self.start_batch, workers)) * self.batch_size
        self._errors = 0
        images, views, keys, reported = [], [], [], 0
        for n, sample in enumerate(self._samples(worker, workers)):
            if n < skip_samples:
                continue
            image = self._read(sample) if self.encoded else self._decode(sample)
            if image is None:
                continue
            torch.manual_seed(hash((self.seed, self.rank, worker, n)) & 0x7FFF_FFFF)
            if self.encoded:
                data, (height, width) = image
                images.append(data)
                views.append(sample_view(self.cfg, self.train, height, width))
            else:
                images.append(
                    apply_view(image, sample_view(self.cfg, self.train, *image.shape[-2:]), self.cfg, self.train)
                )
            keys.append(f"{sample['__url__'].rsplit('/', 1)[-1]}/{sample['__key__']}")
            if len(images) == self.batch_size:
                yield self._batch(images, views, keys, self._errors - reported)
                reported, images, views, keys = self._errors, [], [], []
        if images:
            yield self._batch(images, views, keys, self._errors - reported)

    def _batch(self, images, views, keys, skipped):
        if self.encoded:
            return images, views, keys, skipped
        return (*self._lab(torch.stack(images)), keys, skipped)

    def _read(self, sample: dict) -> tuple[torch.Tensor, tuple[int, int]] | None:
        """(the JPEG as a 1-D uint8 tensor, its (H, W)), or None (counted) in skip mode for a sample
        whose bytes are missing or not a JPEG."""
        try:
            data = sample["jpg"]
            return torch.frombuffer(bytearray(data), dtype=torch.uint8), jpeg_size(data)
        except Exception as exc:
            self._bad(sample, exc)
            return None

    def _decode(self, sample: dict) -> torch.Tensor | None:
        """3×H×W uint8 sRGB, or None (counted) for an undecodable sample in skip mode."""
        try:
            data = sample["jpg"]
            return cast(torch.Tensor, decode_jpeg(data, mode="RGB"))
        except Exception as exc:
            self._bad(sample, exc)
            return None

    def _bad(self, sample: dict, exc: Exception) -> None:
        if self.cfg.on_bad_sample == "skip":
            self._errors += 1
            return None
        raise BadShardError(
            f"{sample.get('__url__', 'a shard')}: sample {sample.get('__key__')} could not be decoded ({exc})"
        ) from None


def _all(urls):
    return urls


class TorchLoader:
    """Iterable of (L B×1×S×S, ab B×2×S×S) float32 network-Lab batches on `device`, from torch
    (decoded in the workers, or on the GPU: `data.decode_device`, module docstring)."""

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
        self.split, self.endless, self.seed = split, endless, seed
        self.batch_size = per_rank_batch(data_cfg, world_size)
        self.shards = split_shards(data_cfg.shards, split, need_index=False)
        self.skipped = 0
        self.batches = 0  # handed out since the start (endless) or since the pass began
        self._start_batch = 0
        self.samples_per_epoch = self._rank_samples()
        # Where JPEGs are decoded: None = in the workers (CPU); a CUDA device = batched nvJPEG in this
        # process (the tests also set a CPU device here to run the GPU mode's flow without a GPU).
        gpu_decode = data_cfg.decode_device == "auto" and self.device.type == "cuda"
        self.decode_on: torch.device | None = self.device if gpu_decode else None
        self._lab = lab_step(data_cfg.compile_lab)  # GPU mode: the Lab step of decoded batches

    def _rank_samples(self) -> int:
        readers = self.world_size * self.cfg.num_threads
        if len(self.shards) >= readers:
            mine = [s for i, s in enumerate(self.shards) if i % self.world_size == self.rank]
            return sum(s.samples for s in mine)  # varies with the epoch's shard order when sizes differ
        total = sum(s.samples for s in self.shards)
        workers = self.cfg.num_threads
        return sum(len(range(self.rank * workers + w, total, readers)) for w in range(workers))

    def __iter__(self):
        dataset = _Readers(
            self.cfg,
            [str(s.path) for s in self.shards],
            self.rank,
            self.world_size,
            self.batch_size,
            train=self.endless,
            endless=self.endless,
            seed=self.seed,
            start_batch=self._start_batch,
            encoded=self.decode_on is not None,
        )
        loader = DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.cfg.num_threads,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=self.cfg.prefetch,
            persistent_workers=False,
            multiprocessing_context=WORKER_START,
            # The workers seed themselves per batch; a generator of its own keeps iter() from drawing
            # its base seed from the global RNG, which a resumed training run must find untouched.
            generator=torch.Generator(),
        )
        self.batches = self._start_batch
        self._start_batch = 0 if not self.endless else self._start_batch
        for item in loader:
            if isinstance(item, BadShardError):
                raise item
            first, second, keys, skipped = item
            self.skipped += skipped
            self.batches += 1
            if self.endless:
                self._start_batch = self.batches
            if self.decode_on is None:
                yield first.to(self.device, non_blocking=True), second.to(self.device, non_blocking=True)
                continue
            batch = self._decode_batch(first, second, keys)
            if batch is not None:  # None: every image of the batch was undecodable (skip mode)
                yield batch

    def _decode_batch(
        self, encoded: list[torch.Tensor], views: list[View], keys: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """GPU mode: B JPEGs (1-D uint8 tensors) → (L_net B×1×S×S, ab_net B×2×S×S) float32 on the
        device, the undecodable ones dropped (skip) or named by their key (error); None if none is left."""
        device = self.decode_on
        assert device is not None  # set in GPU mode
        try:
            images = list(decode_jpeg(encoded, mode="RGB", device=device))
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, ValueError):
            # One bad JPEG fails the whole batched call: decode one by one to find it.
            images, kept_views = [], []
            for data, view, key in zip(encoded, views, keys, strict=True):
                try:
                    images.append(cast(torch.Tensor, decode_jpeg(data, mode="RGB", device=device)))
                except torch.OutOfMemoryError:
                    raise
                except (RuntimeError, ValueError) as exc:
                    shard, _, sample = key.partition("/")
                    if self.cfg.on_bad_sample != "skip":
                        raise BadShardError(f"{shard}: sample {sample} could not be decoded ({exc})") from None
                    self.skipped += 1
                    continue
                kept_views.append(view)
            views = kept_views
            if not images:
                return None
        return finish_batch(images, views, self.cfg, self.endless, self._lab)

    def state_dict(self) -> dict:
        return {
            "backend": "torch",
            "batches": self.batches if self.endless else 0,
            "skipped": self.skipped,
            "world_size": self.world_size,
            "rank": self.rank,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("backend") != "torch":
            raise ValueError(f"loader state is for backend {state.get('backend')!r}, not 'torch'")
        if state.get("world_size") != self.world_size:
            raise ValueError(f"loader state was saved with {state.get('world_size')} processes, now {self.world_size}")
        self.skipped = int(state.get("skipped", 0))
        self._start_batch = self.batches = int(state.get("batches", 0))
