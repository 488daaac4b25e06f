"""The pixel loss on colour: mean absolute error between predicted and true ab.

Works in network units (ab_net = (a*, b*)/128), so an error of 0.01 is 1.28 Lab units. The seed's
weight λ = 100 is not applied here: the training loop multiplies by `cfg.loss.l1_weight`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ab_l1(fake_ab: torch.Tensor, real_ab: torch.Tensor) -> torch.Tensor:
    """Mean |fake_ab − real_ab| over every element, as a float32 scalar tensor.

    fake_ab, real_ab: B×2×H×W ab_net (CIELAB (a*, b*)/128, roughly [-1, 1]), same shape. The result is
    unweighted; the caller applies `cfg.loss.l1_weight` (100 in the seed).
    """
    if fake_ab.shape != real_ab.shape:
        raise ValueError(f"ab_l1 needs tensors of one shape, got {tuple(fake_ab.shape)} and {tuple(real_ab.shape)}")
    # float32 so a bf16 autocast forward does not round the mean of millions of small differences.
    return F.l1_loss(fake_ab.float(), real_ab.float())
