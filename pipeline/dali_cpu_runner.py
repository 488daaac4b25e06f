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

The tensors are views of DALI's output buffers, not copies: they stay valid only until the next
`next()`, when DALI recycles the buffers. The loader resizes every image of a batch before it asks
for the next one, which saves copying each decoded image once (≈ 4 % of the CPU path's time).
"""

from __future__ import annotations

import numpy as np
import torch


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
                for name, out in zip(self.names, outputs, strict=True)
            }
        ]

    def checkpoints(self) -> list:
        return [self.pipe.checkpoint()]
