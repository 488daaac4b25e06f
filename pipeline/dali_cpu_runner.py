"""Drive a CPU DALI pipeline directly, one batch of differently sized images at a time.

`DALIGenericIterator` stacks every output into one tensor per batch, which on the CPU path would need
the decoded images padded to a common size inside DALI — a copy that cost as much as the JPEG decode
(BENCHMARKS.md). Run directly, the pipeline hands each image over as it is and the loader resizes
it (`pipeline/cpu_finish.py`). The runner gives the iterator's interface the loader relies on:
`next()` → [{output name: list of per-sample tensors}] (a list of one, as the iterator has one entry
per pipeline), `StopIteration` after each pass when not `endless` (the next `next()` starts the next
pass on the same pipeline), and `checkpoints()` → [DALI
checkpoint of the batches handed out so far] (the pipeline's own checkpoint already accounts for
prefetched batches: checked by `tests/test_loader.py`'s exact-resume test).

DALI's own threads are given a lower scheduling priority (nice + 10, Linux) once they exist: the
loader's thread, which resizes and converts every batch, is the serial part of the path, and on a
machine with as many busy threads as cores, the scheduler's fair share left it runnable but waiting
for a core a third of the time while DALI's threads decoded batches that then sat in the queue.
Yielding to it gives the path more images/s (BENCHMARKS.md has the figures).

The tensors are views of DALI's output buffers, not copies: they stay valid only until the next
`next()`, when DALI recycles the buffers. The loader resizes every image of a batch before it asks
for the next one, which saves copying each decoded image once (≈ 4 % of the CPU path's time).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

DALI_THREAD_PREFIX = "[DALI]"  # how DALI names its worker and executor threads
NICE_INCREMENT = 10


def lower_dali_thread_priority(increment: int = NICE_INCREMENT) -> int:
    """Set every DALI thread of this process to this thread's nice value + `increment`.

    Returns how many threads were changed; 0 where threads cannot be listed (not Linux). Setting
    an absolute value, not adding, keeps it idempotent when several pipelines share the process.
    """
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return 0
    target = min(19, os.getpriority(os.PRIO_PROCESS, 0) + increment)
    changed = 0
    for task in tasks.iterdir():
        try:
            if (task / "comm").read_text().startswith(DALI_THREAD_PREFIX):
                tid = int(task.name)
                if os.getpriority(os.PRIO_PROCESS, tid) < target:
                    os.setpriority(os.PRIO_PROCESS, tid, target)
                    changed += 1
        except (OSError, ValueError):  # the thread ended meanwhile, or the priority is not ours to lower
            continue
    return changed


class DaliCpuRunner:
    """Iterator over dicts of per-sample uint8 tensors from a built-on-demand CPU pipeline."""

    def __init__(
        self, pipe, names: list[str], endless: bool, samples_per_pass: int, batches_per_pass: int, delivered: int = 0
    ) -> None:
        self.pipe, self.names, self.endless = pipe, names, endless
        self.samples_per_pass, self.batches_per_pass = samples_per_pass, batches_per_pass
        # Samples handed out in the current pass (one-pass mode); a pipeline rebuilt from a checkpoint
        # mid-pass starts from the count at that checkpoint (padding comes only after the real samples).
        self.delivered = delivered
        self.batches_run = -(-delivered // pipe.max_batch_size)
        self._priority_lowered = False
        pipe.build()

    def __iter__(self):
        return self

    def __next__(self) -> list[dict[str, list[torch.Tensor]]]:
        while True:
            if not self.endless and self.batches_run >= self.batches_per_pass:
                # The pass is over. Every rank's reader pads its pass with repeats of its last sample
                # to the same number of batches (those of the largest rank's share), and all of them
                # have been read, so the next call starts the next pass, at this rank's first sample
                # again (`stick_to_shard`), on the same pipeline — as the GPU iterator's auto_reset.
                self.delivered = self.batches_run = 0
                raise StopIteration
            outputs = self.pipe.run()
            if not self._priority_lowered:  # DALI's threads all exist once a batch has been produced
                lower_dali_thread_priority()
                self._priority_lowered = True
            count = len(outputs[0])
            if self.endless:
                break
            self.batches_run += 1
            count = min(count, self.samples_per_pass - self.delivered)  # drop the padding
            self.delivered += count
            if count:
                break
        return [
            {
                name: [torch.from_numpy(np.asarray(out[i])) for i in range(count)]
                for name, out in zip(self.names, outputs, strict=False)
            }
        ]

    def checkpoints(self) -> list:
        return [self.pipe.checkpoint()]
