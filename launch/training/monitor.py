"""Loss terms kept on the device between the loop's sync points, and the one read-back at each.

On CUDA the host must not wait for the GPU every step: reading a loss (`.item()`, `.tolist()`, an
all-reduce whose result is read) blocks the CPU until the GPU has finished the step, so the CPU can
never queue the next step while the GPU runs this one. `LossMonitor.update` therefore only launches
device work: it keeps the latest value of each term, and for each term the first step at which it
was non-finite and that value. `LossMonitor.read` is the sync point: on logging, sample, eval and
checkpoint steps (and on a stop request) it reduces across ranks, copies the numbers to the host,
and raises `TrainingError` naming the first non-finite step and term, before anything is saved.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from launch.training.errors import TrainingError

NOT_SEEN = -1
"""`first_bad` entry of a term that has stayed finite."""


class LossMonitor:
    """Device-side record of the loop's loss terms (0-d tensors keyed by metric name)."""

    def __init__(self, device: torch.device, world_size: int) -> None:
        self.device = device
        self.world_size = world_size
        self.keys: tuple[str, ...] = ()
        # The completed-step counter lives on the device too: `fill_` with a Python int is a kernel
        # argument, not a host → device copy, so stamping a step costs no synchronisation.
        self._step = torch.zeros((), dtype=torch.int64, device=device)
        # Set by `_reset` at the first `update`, which always comes before a `read`.
        self._latest: torch.Tensor | None = None
        self._first_bad: torch.Tensor | None = None
        self._first_value: torch.Tensor | None = None

    def _reset(self, keys: Sequence[str]) -> None:
        self.keys = tuple(keys)
        n = len(self.keys)
        self._latest = torch.zeros(n, dtype=torch.float32, device=self.device)
        self._first_bad = torch.full((n,), NOT_SEEN, dtype=torch.int64, device=self.device)
        self._first_value = torch.zeros(n, dtype=torch.float32, device=self.device)

    def update(self, step: int, terms: dict[str, torch.Tensor]) -> None:
        """Record the terms of completed step `step` (1-based count of steps done). No host sync."""
        if tuple(terms) != self.keys:
            self._reset(tuple(terms))  # a new phase (its first step follows a sync point: the phase switch saves)
        self._step.fill_(step)
        values = torch.stack([t.detach().float() for t in terms.values()])
        assert self._first_bad is not None and self._first_value is not None  # set by _reset above
        newly_bad = ~torch.isfinite(values) & (self._first_bad == NOT_SEEN)
        self._first_bad = torch.where(newly_bad, self._step, self._first_bad)
        self._first_value = torch.where(newly_bad, values, self._first_value)
        self._latest = values

    def read(self, stop_requested: bool) -> tuple[dict[str, float], bool]:
        """THE sync point: each term's latest value averaged over ranks, and whether any rank asked to
        stop. A collective (every rank calls it at the same step). Raises TrainingError when a term was
        non-finite on any rank since the last read, naming the first such step and the term."""
        assert self._latest is not None and self._first_bad is not None and self._first_value is not None, (
            "read() before any update()"
        )
        stop = torch.tensor([float(stop_requested)], device=self.device)
        packed = torch.cat([self._latest, stop])
        first_bad = torch.where(self._first_bad == NOT_SEEN, torch.iinfo(torch.int64).max, self._first_bad)
        if self.world_size > 1:
            dist.all_reduce(packed, op=dist.ReduceOp.SUM)
            dist.all_reduce(first_bad, op=dist.ReduceOp.MIN)
        numbers, bad_steps = packed.tolist(), first_bad.tolist()
        for i, key in enumerate(self.keys):
            if bad_steps[i] != torch.iinfo(torch.int64).max:
                seen_here = self._first_bad[i].item() == bad_steps[i]
                value = self._first_value[i].item() if seen_here else "non-finite on another rank"
                raise TrainingError(f"non-finite loss at step {bad_steps[i]}: {key} = {value}")
        values = {key: numbers[i] / self.world_size for i, key in enumerate(self.keys)}
        return values, numbers[-1] > 0
