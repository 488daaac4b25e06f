"""Validation during training: ab-L1 (CIELAB units) and PSNR (sRGB) of the generator on the val shards,
beside the grey baseline (ab = 0, the input itself), reduced over all ranks.

Each rank scores its own share of the val shards with the unwrapped generator in eval mode (no DDP
collective inside, so ranks may hold different numbers of batches); one all-reduce of (sum, count)
pairs at the end gives the mean over every image seen.
"""

from __future__ import annotations

from itertools import islice
from typing import Iterable

import torch
from accelerate import Accelerator
from torch import nn

from launch.eval.metrics import ab_l1_lab_units, psnr_rgb
from pipeline.lab import network_to_rgb

EVAL_KEYS = ("eval/ab_l1", "eval/ab_l1_grey", "eval/psnr", "eval/psnr_grey")


@torch.no_grad()
def evaluate(
    accelerator: Accelerator, generator: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], max_batches: int
) -> dict[str, float]:
    """Mean ab-L1 (Lab units, lower is better) and PSNR (dB, sRGB in [0, 1]) over this rank's val batches
    (at most `max_batches`, 0 = all), averaged over all ranks' images. A collective: all ranks call it.

    `batches` yields (L_net B×1×S×S, ab_net B×2×S×S) on the accelerator's device. Only the generator
    runs under the accelerator's autocast (bf16 on CUDA), and its eager forward: a compiled generator
    is compiled for the training step's shapes and mode. The colour conversion and the metrics run in
    float32. The generator's train/eval mode is restored afterwards; the global RNG is untouched (eval
    must not shift the training run's random stream, or a resumed run would diverge from an
    uninterrupted one).
    """
    was_training = generator.training
    generator.eval()
    sums = torch.zeros(len(EVAL_KEYS) + 1, dtype=torch.float64, device=accelerator.device)
    try:
        with torch.random.fork_rng(devices=[]):
            for L, ab in islice(batches, max_batches or None):
                with accelerator.autocast():
                    fake = generator.forward(L)
                fake = fake.float()
                grey = torch.zeros_like(ab)
                n = L.shape[0]
                truth_rgb = network_to_rgb(L, ab)
                sums[0] += ab_l1_lab_units(fake, ab, reduction="none").double().sum()
                sums[1] += ab_l1_lab_units(grey, ab, reduction="none").double().sum()
                sums[2] += psnr_rgb(network_to_rgb(L, fake), truth_rgb, reduction="none").double().sum()
                sums[3] += psnr_rgb(network_to_rgb(L, grey), truth_rgb, reduction="none").double().sum()
                sums[4] += n
    finally:
        generator.train(was_training)
    if accelerator.num_processes > 1:
        sums = accelerator.reduce(sums, reduction="sum")
    count = max(float(sums[-1]), 1.0)
    return {key: float(sums[i]) / count for i, key in enumerate(EVAL_KEYS)}
