"""An exponential moving average (EMA) of the generator's weights, the copy worth exporting.

After the n-th G update (n = 0, 1, …) every floating-point tensor of the average moves towards the
generator's:

    ema ← d·ema + (1 − d)·G,   d = min(model.ema_decay, (1 + n) / (10 + n))

The warm-up of d is TensorFlow's `ExponentialMovingAverage(num_updates=…)` rule: the first updates
average over a short window (d = 0.1, 0.18, 0.25, …), so the average is not held near the initial
weights for the ~1/(1 − decay) updates a fixed decay would need to forget them. The average starts as
a copy of G's initial weights, which is what the first update's d = 0.1 mixes in.

Buffers: BatchNorm's running mean and variance are averaged like the weights, not copied. They are
statistics of the activations, and to first order the activations of the averaged weights are the
average of the activations of the weights averaged, so averaged statistics fit the averaged weights
(copied ones would describe only the last few steps' G, whose weights the GAN phase keeps moving
around). Integer buffers (`num_batches_tracked`) are copied.

Not `torch.optim.swa_utils.AveragedModel` with `get_ema_multi_avg_fn`: its `update_parameters` reads
its device-side update counter on the host twice per call (`bool(n_averaged == 0)`, `n_averaged > 0`),
which waits for the GPU every step, and that decay has no warm-up. Here n is a host integer (saved
with the checkpoint), d is a Python float, and an update is one `torch._foreach_lerp_` over the
float tensors and one `torch._foreach_copy_` over the integer ones: kernel launches, no host sync.
Called outside autocast, in fp32 (the generator's weights are fp32 under bf16 autocast too).

Processes: every rank keeps its own average and updates it from its own replica of G with no
communication. DDP gives every replica the same parameters after each step (same initial weights,
all-reduced gradients, the same optimiser arithmetic), so the averaged weights are the same on every
rank. BatchNorm running statistics are not: each rank's forward updates them from its own batch (DDP
broadcasts rank 0's at the next forward), so only rank 0's averaged statistics are used: checkpoints
and exports are written by rank 0, and `synchronise` (called before each evaluation, where every rank
scores its share of the val split with the average) broadcasts rank 0's buffers to the others. A
resumed run, which loads rank 0's average on every rank, therefore evaluates and exports exactly as an
uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate.utils import broadcast
from torch import nn

WARMUP_OFFSET = 10
"""d = min(decay, (1 + n) / (WARMUP_OFFSET + n)) for the n-th update."""


def ema_decay_at(decay: float, updates_done: int) -> float:
    """The decay of the update that follows `updates_done` earlier ones (warm-up, see the module doc)."""
    return min(decay, (1 + updates_done) / (WARMUP_OFFSET + updates_done))


class GeneratorEMA:
    """The average (`module`: a generator in eval mode, no gradients) of `source`, a generator that
    trains; `updates` counts the updates so far. `state_dict`/`load_state_dict` make it a checkpointed
    object (`accelerator.register_for_checkpointing`)."""

    def __init__(self, source: nn.Module, average: nn.Module, decay: float) -> None:
        """`average`: a generator of the same architecture, on the same device and in the same memory
        format as `source` (its values are overwritten with `source`'s here)."""
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = average.requires_grad_(False).eval()
        self.module.load_state_dict(source.state_dict())
        pairs = list(zip(self._tensors(self.module), self._tensors(source), strict=True))
        floating = [(a, s) for a, s in pairs if a.is_floating_point()]
        self._float_average, self._float_source = [a for a, _ in floating], [s for _, s in floating]
        self._other_average = [a for a, s in pairs if not a.is_floating_point()]
        self._other_source = [s for a, s in pairs if not a.is_floating_point()]

    @staticmethod
    def _tensors(module: nn.Module) -> list[torch.Tensor]:
        """Parameters then buffers, detached, in the module's registration order."""
        return [t.detach() for t in (*module.parameters(), *module.buffers())]

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the source generator's current weights and buffers (one update)."""
        decay = ema_decay_at(self.decay, self.updates)
        torch._foreach_lerp_(self._float_average, self._float_source, 1.0 - decay)
        if self._other_average:
            torch._foreach_copy_(self._other_average, self._other_source)
        self.updates += 1

    def synchronise(self, num_processes: int) -> None:
        """Give every rank rank 0's buffers (a collective: every rank calls it); nothing with one process."""
        if num_processes > 1:
            broadcast(list(self.module.buffers()), from_process=0)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
