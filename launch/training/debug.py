"""Test hooks, switched on by environment variables and inert otherwise.

- `COLORIZE_DEBUG_DUMP=1`: every rank records a hash of each training sample it sees (its L channel's
  bytes) and, at the end, writes `<run_dir>/debug/rank<r>.json` with those hashes and a SHA-256 of its
  parameters (not buffers) — how the tests prove that ranks read disjoint data and hold identical weights.
- `COLORIZE_DEBUG_KILL_AFTER_CHECKPOINT=<n>`: the process SIGKILLs itself right after the checkpoint of
  step n is complete — a hard crash at a known point, for the exact-resume test.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import torch
from torch import nn

DUMP_ENV = "COLORIZE_DEBUG_DUMP"
KILL_ENV = "COLORIZE_DEBUG_KILL_AFTER_CHECKPOINT"


def parameter_digest(*modules: nn.Module) -> str:
    """SHA-256 over the bytes of every parameter of `modules`, in registration order.

    Buffers (BatchNorm running statistics) are left out on purpose: DDP broadcasts them from rank 0 at
    the start of each forward, and each rank then updates them with its own batch, so after the last
    step they legitimately differ by one local update.
    """
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.named_parameters():
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class SampleRecorder:
    """Collects per-sample hashes on this rank when `COLORIZE_DEBUG_DUMP` is set; otherwise does nothing."""

    def __init__(self) -> None:
        self.enabled = os.environ.get(DUMP_ENV, "") not in ("", "0")
        self.hashes: list[str] = []

    def record(self, L: torch.Tensor) -> None:
        """L: L_net B×1×S×S; one hash per sample."""
        if not self.enabled:
            return
        for sample in L.detach().float().cpu():
            self.hashes.append(hashlib.sha256(sample.contiguous().numpy().tobytes()).hexdigest()[:16])

    def dump(self, run_dir: Path, rank: int, step: int, *modules: nn.Module) -> None:
        if not self.enabled:
            return
        out = run_dir / "debug" / f"rank{rank}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"rank": rank, "step": step, "params_sha256": parameter_digest(*modules), "samples": self.hashes}
        out.write_text(json.dumps(payload))


def maybe_kill_after_checkpoint(step: int) -> None:
    """SIGKILL this process when `COLORIZE_DEBUG_KILL_AFTER_CHECKPOINT` names `step`."""
    if os.environ.get(KILL_ENV) == str(step):
        os.kill(os.getpid(), signal.SIGKILL)
