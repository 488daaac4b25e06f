"""The `dali` backend: one DALI pipeline per rank, wrapped as a resumable (L, ab) iterator.

Sharding: `fn.readers.webdataset(shard_id=rank, num_shards=world_size)` splits this split's samples
(counted through the `.idx` files, so it works with fewer shards than ranks) into contiguous,
disjoint parts, each rank reading its own; training shuffles within `data.shuffle_buffer`.

Resume: the pipeline is built with checkpointing. `state_dict()` returns DALI's checkpoint of the
batches *consumed* (the iterator's `checkpoints()` accounts for batches prefetched but not yet
handed out), which holds the reader position and every RNG; `load_state_dict` rebuilds the pipeline
from it, and the next batches are exactly those an uninterrupted loader would have yielded.

Shards in an object store (`data.shards: s3://bucket/prefix`): DALI's reader gets the `s3://` URLs of
the tars and their indexes and reads them itself (its S3 client takes the same AWS environment as
boto3). A read that fails (the store stopped, a connection dropped) stops DALI's pipeline; the loader
then waits, with backoff, and rebuilds it from the last consumed position, so the batches go on
exactly where they were once the store answers again. After `data.read_retry_seconds` without
success it raises `StoreReadError` naming the object. That is one ranged GET per sample; with
`data.cache_dir` set, a training loader instead copies the shards that hold its rank's part into that
node-local directory first (`pipeline/shard_cache.py`, one download per shard) and DALI reads the
copies: it is then given only those shards, with private indexes cut to the rank's samples, as one
reader of one shard (`shard_id=0, num_shards=1`). The rank reads the same samples as without the
cache, but keeps them every epoch (DALI's `stick_to_shard`) instead of moving on to the next rank's
part, so that each node copies only its ranks' parts. With several ranks, its checkpoints are
therefore only for a loader with the cache, and the other way round (one rank reads the whole split
either way).

Bad data: before building, each shard is checked against its index (a truncated tar has samples past
its end; the tar's size comes from the folder's or bucket's listing). A sample DALI cannot decode stops the pipeline with the sample's source named; in
`on_bad_sample: error` that becomes one `BadShardError` naming the shard and key. In `skip`, the bad
sample's entry in a private copy of the shard's index is pointed at its nearest good neighbour's
JPEG (so positions do not move), the pipeline is rebuilt from the last consumed checkpoint and the
sample is counted in `skipped`: batches keep their size, and the replaced slot repeats a neighbour.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
import time
from pathlib import Path

import torch

from configs import DataConfig
from pipeline.cpu_finish import decoded_to_network
from pipeline.dali_cpu_runner import DaliCpuRunner
from pipeline.dali_index import entries_past_end, read_index, substitute, write_index
from pipeline.dali_pipeline import READER_NAME, colorization_pipeline
from pipeline.lab_uint8 import lab_step
from pipeline.loader_base import BadShardError, StoreReadError, per_rank_batch, rank_slice
from pipeline.location import StoreError, base_name, head, is_remote, list_sizes, read_range
from pipeline.shard_cache import cache_shards
from pipeline.shard_list import Shard, split_shards

# "Failed to decode sample #5 : /path/train-000001.tar:166912:img-00020.jpg"
_FAILED_SAMPLE = re.compile(r"Failed to decode sample #\d+ : (?P<tar>.+?\.tar):(?P<offset>\d+):(?P<member>\S+)")
# DALI's S3 errors: "S3 Object not found. bucket=b object=p/train-000000.tar: …"
_S3_OBJECT = re.compile(r"bucket=(?P<bucket>\S+) object=(?P<key>[^\s:]+)")


class DaliLoader:
    """Iterable of (L B×1×S×S, ab B×2×S×S) float32 network-Lab batches on `device`, from DALI."""

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
        self.cfg = data_cfg
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.gpu = self.device.type == "cuda"
        # The GPU the pipeline runs on, and where its batches land. A bare "cuda" means the current
        # device (what torch would use for it, and what accelerate sets to the local rank), not GPU 0.
        self.device_id: int | None = None
        if self.gpu:
            self.device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self.device = torch.device("cuda", self.device_id)
        self.split, self.endless, self.seed = split, endless, seed
        self.batch_size = per_rank_batch(data_cfg, world_size)
        self.shards: list[Shard] = split_shards(data_cfg.shards, split)
        self.remote = is_remote(data_cfg.shards)
        self._outage: tuple[float, float] | None = None  # (first failure, next pause) while the store fails
        self.skipped = 0
        self._excluded: dict[str, set[int]] = {}  # shard name → positions replaced in its index
        self._indexes = {s.name: read_index(s.index_path, data_cfg.read_retry_seconds) for s in self.shards}
        for shard in self.shards:
            self._check_truncation(shard)
        total = sum(len(entries) for _, entries in self._indexes.values())
        part = rank_slice(total, rank, world_size)
        self.samples_per_epoch = len(part)
        # Shards DALI reads: all of the split (each rank takes its part), or this rank's node-local copies.
        self._read: list[tuple[Shard, str | Path, slice]] = [(s, s.path, slice(None)) for s in self.shards]
        self.cached = self.remote and endless and bool(data_cfg.cache_dir)
        if self.cached:
            self._read = self._copy_part(part)
        # Which samples the rank reads in later epochs: its own part again (cached, several ranks) or
        # the next rank's part. One rank reads all of the split either way.
        self.keeps_part = self.cached and world_size > 1
        # A one-pass reader pads every rank's pass to the batches of the largest share (ceil(total / W)).
        self._batches_per_pass = math.ceil(math.ceil(total / world_size) / self.batch_size)
        self._lab = None if self.gpu else lab_step(data_cfg.compile_lab)
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._checkpoint: bytes | None = None  # to restore from at the next build
        self._last_good: bytes | None = None  # consumed position, refreshed after every batch
        # Samples of the current one-pass already handed out at `_last_good` / `_checkpoint` (CPU runner).
        self._delivered_at_last_good = 0
        self._delivered_at_checkpoint = 0
        self._iterator = None
        self._pass_open = False  # a one-pass loader whose current pass was started and not finished

    def _copy_part(self, part: range) -> list[tuple[Shard, str | Path, slice]]:
        """(shard, local copy, positions of its index this rank reads) for each shard holding samples of
        `part` (this rank's positions in the split's samples, shards in manifest order)."""
        wanted, first = [], 0
        for shard in self.shards:
            count = len(self._indexes[shard.name][1])
            lo, hi = max(part.start, first), min(part.stop, first + count)
            if lo < hi:
                wanted.append((shard, slice(lo - first, hi - first)))
            first += count
        label = f"rank {self.rank}: " if self.world_size > 1 else ""
        copies = cache_shards([shard for shard, _ in wanted], self.cfg.cache_dir, self.cfg.read_retry_seconds, label)
        return [(shard, copy, window) for (shard, window), copy in zip(wanted, copies, strict=True)]

    # ---------------------------------------------------------------------------------------------
    def _check_truncation(self, shard: Shard) -> None:
        _, entries = self._indexes[shard.name]
        assert shard.bytes is not None  # split_shards lists the sizes
        past = entries_past_end(shard.bytes, entries)
        if not past:
            return
        if self.cfg.on_bad_sample == "error":
            raise BadShardError(
                f"{shard.path}: truncated shard: {len(past)} of {len(entries)} samples lie past the end of the "
                f"file (first: {entries[past[0]].key}); rebuild it, or set data.on_bad_sample=skip"
            )
        self._exclude(shard.name, past)

    def _exclude(self, shard_name: str, positions) -> None:
        new = set(positions) - self._excluded.setdefault(shard_name, set())
        self._excluded[shard_name] |= new
        self.skipped += len(new)

    def _index_paths(self) -> list[str | Path]:
        """The .idx file of each shard DALI reads, or a private copy: patched for shards with replaced
        samples, cut to this rank's window of a cached shard."""
        paths: list[str | Path] = []
        for shard, _, window in self._read:
            bad = self._excluded.get(shard.name)
            if not bad and window == slice(None):
                paths.append(shard.index_path)
                continue
            version, entries = self._indexes[shard.name]
            try:
                patched = substitute(entries, bad) if bad else entries
            except Exception as exc:
                raise BadShardError(f"{shard.path}: {exc}") from None
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="colorization-idx-")
            path = Path(self._tmp.name) / base_name(shard.index_path)
            write_index(path, version, patched[window])
            paths.append(path)
        return paths

    def _build(self):
        from nvidia.dali.plugin.base_iterator import LastBatchPolicy
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        pipe = colorization_pipeline(
            tar_paths=[path for _, path, _ in self._read],
            index_paths=self._index_paths(),
            size=self.cfg.size,
            crop=self.cfg.crop,
            crop_scale=self.cfg.crop_scale,
            crop_ratio=self.cfg.crop_ratio,
            flip=self.cfg.flip,
            train=self.endless,
            shard_id=0 if self.cached else self.rank,
            num_shards=1 if self.cached else self.world_size,
            shuffle_buffer=self.cfg.shuffle_buffer,
            gpu=self.gpu,
            batch_size=self.batch_size,
            num_threads=self.cfg.num_threads,
            device_id=self.device_id,
            seed=self.seed * 1000 + self.rank + 1,  # distinct crops per rank; 0 would mean "random"
            prefetch_queue_depth=self.cfg.prefetch,
            checkpoint=self._checkpoint,
        )
        cpu_flips = not self.gpu and self.endless and self.cfg.flip
        names = ["lab" if self.gpu else "rgb"] + (["mirror"] if cpu_flips else [])
        try:
            if not self.gpu:
                return DaliCpuRunner(
                    pipe,
                    names,
                    self.endless,
                    self.samples_per_epoch,
                    self._batches_per_pass,
                    self._delivered_at_checkpoint,
                )
            if self.endless:
                # No reader_name: the iterator runs on across epochs (the reader wraps around), every
                # batch full.
                return DALIGenericIterator(pipe, names, size=-1)
            return DALIGenericIterator(
                pipe, names, reader_name=READER_NAME, last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=True
            )
        except RuntimeError as exc:
            self._raise_or_skip(exc)
            return self._build()

    # ---------------------------------------------------------------------------------------------
    def _raise_or_skip(self, exc: RuntimeError) -> None:
        """Turn DALI's error for an undecodable sample into BadShardError, or exclude the sample."""
        match = _FAILED_SAMPLE.search(str(exc))
        if match is not None:
            _, entries = self._indexes[base_name(match["tar"])]
            offset = int(match["offset"])
            bad = {
                base_name(match["tar"]): [
                    i for i, e in enumerate(entries) if e.components.get("jpg", (None,))[0] == offset
                ]
            }
        elif self.remote and not self.cached and ("readers.webdataset" in str(exc) or _S3_OBJECT.search(str(exc))):
            self._wait_for_store(exc)
            return
        elif "decoders" in str(exc) or "nvImageCodec" in str(exc):
            # Bytes that are no image at all fail without naming the sample: find them by their header.
            bad = self._find_non_jpeg()
            if not bad:
                raise exc
        else:
            raise exc
        name, positions = next(iter(bad.items()))
        shard = next(s for s in self.shards if s.name == name)
        key = self._indexes[name][1][positions[0]].key
        if self.cfg.on_bad_sample == "error":
            raise BadShardError(
                f"{shard.path}: sample {key} could not be decoded (set data.on_bad_sample=skip to drop such samples)"
            ) from None
        for name, positions in bad.items():
            if not positions or set(positions) <= self._excluded.get(name, set()):
                raise BadShardError(
                    f"{shard.path}: sample {key} could not be decoded and could not be skipped"
                ) from None
            self._exclude(name, positions)
        # The failed pipeline is unusable: rebuild from the last consumed position.
        self._rebuild_from_last_good()

    def _rebuild_from_last_good(self) -> None:
        """Drop the failed pipeline; the next batch rebuilds it from the last consumed position."""
        self._iterator = None
        if self._last_good is not None:
            self._checkpoint = self._last_good
            self._delivered_at_checkpoint = self._delivered_at_last_good

    def _wait_for_store(self, exc: RuntimeError) -> None:
        """DALI's reader failed on `s3://` shards: pause (0.5 s doubling to 8 s) and rebuild from the
        last consumed position, or, once `data.read_retry_seconds` have passed since the first failure,
        raise StoreReadError naming the object (or the prefix when DALI names none)."""
        now = time.monotonic()
        since, pause = self._outage or (now, 0.5)
        if now - since >= self.cfg.read_retry_seconds:
            raise self._store_error(exc, now - since) from None
        time.sleep(pause)
        self._outage = (since, min(pause * 2, 8.0))
        self._rebuild_from_last_good()

    def _store_error(self, exc: RuntimeError, seconds: float) -> StoreReadError:
        match = _S3_OBJECT.search(str(exc))
        what = f"s3://{match['bucket']}/{match['key']}" if match else self.cfg.shards
        try:  # boto3 names what is wrong with the store, when something is
            missing = match is not None and head(what) is None
            list_sizes(self.cfg.shards)
            reason = (
                "no such object (deleted while the run was reading?)" if missing else "DALI's S3 reader kept failing"
            )
        except StoreError as error:
            reason = str(error).split(": ", 1)[-1]
        return StoreReadError(
            f"{what}: {reason}; gave up after {seconds:.0f} s of retries (data.read_retry_seconds = "
            f"{self.cfg.read_retry_seconds:g}); resume from the last checkpoint once the store is back"
        )

    def _find_non_jpeg(self) -> dict[str, list[int]]:
        """Shard name → positions of samples whose `jpg` bytes do not start with a JPEG marker."""
        bad: dict[str, list[int]] = {}
        for shard in self.shards:
            _, entries = self._indexes[shard.name]
            excluded = self._excluded.get(shard.name, set())
            for i, entry in enumerate(entries):
                offset, size, _ = entry.components["jpg"]
                if i in excluded:
                    continue
                head = read_range(shard.path, offset, 3, self.cfg.read_retry_seconds) if size >= 4 else b""
                if head != b"\xff\xd8\xff":
                    bad.setdefault(shard.name, []).append(i)
        return bad

    def _next_raw(self):
        while True:
            if self._iterator is None:
                self._iterator = self._build()
                self._last_good = self._iterator.checkpoints()[0]
            try:
                out = next(self._iterator)[0]
            except RuntimeError as exc:
                self._raise_or_skip(exc)
                continue
            self._last_good = self._iterator.checkpoints()[0]
            self._delivered_at_last_good = getattr(self._iterator, "delivered", 0)
            self._outage = None
            return out

    def _to_network(self, out: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if self.gpu:
            lab = out["lab"]
            return lab[:, :1].contiguous(), lab[:, 1:].contiguous()
        centre_crop = not self.endless and self.cfg.crop == "random_resized"
        assert self._lab is not None  # built for the CPU path
        L, ab = decoded_to_network(out["rgb"], out.get("mirror", ()), self.cfg.size, centre_crop, self._lab)
        return L.to(self.device, non_blocking=True), ab.to(self.device, non_blocking=True)

    def __iter__(self):
        if not self.endless:
            # Each iter() is a whole pass from the start. DALI cannot rewind a pass half-way, so a pass
            # an earlier consumer left unfinished (an evaluation of the first N batches) is run to its
            # end here, undecoded into tensors, and the new pass starts at the first sample.
            while self._pass_open:
                try:
                    self._next_raw()
                except StopIteration:
                    self._pass_open = False
            self._pass_open = True
        while True:
            try:
                out = self._next_raw()
            except StopIteration:
                self._pass_open = False
                return  # one pass done; auto_reset readies the next pass
            yield self._to_network(out)

    # ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Picklable, small: DALI's checkpoint of the consumed position, plus the skip bookkeeping."""
        checkpoint = self._iterator.checkpoints()[0] if self._iterator is not None else self._checkpoint
        return {
            "backend": "dali",
            "checkpoint": checkpoint,
            "skipped": self.skipped,
            "excluded": {name: sorted(pos) for name, pos in self._excluded.items() if pos},
            "world_size": self.world_size,
            "rank": self.rank,
            "keeps_part": self.keeps_part,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("backend") != "dali":
            raise ValueError(f"loader state is for backend {state.get('backend')!r}, not 'dali'")
        if state.get("world_size") != self.world_size:
            raise ValueError(
                f"loader state was saved with {state.get('world_size')} processes, now {self.world_size}: "
                "the data position cannot be carried over"
            )
        if bool(state.get("keeps_part", False)) != self.keeps_part:
            said = "with" if state.get("keeps_part") else "without"
            raise ValueError(
                f"loader state was saved {said} data.cache_dir (a cached loader reads only its rank's part "
                "every epoch), and this run is the other way: set data.cache_dir as the saved run had it"
            )
        self._excluded = {name: set(pos) for name, pos in state.get("excluded", {}).items()}
        self.skipped = int(state.get("skipped", 0))
        self._checkpoint = state["checkpoint"]
        self._delivered_at_checkpoint = 0
        self._iterator = None
        self._pass_open = False

    def close(self) -> None:
        self._iterator = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp.name, ignore_errors=True)
            self._tmp = None
