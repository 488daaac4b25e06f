"""The sample grid: for a fixed validation batch, one row per image — grey | prediction | truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from configs.atomic import atomic_path
from pipeline.lab import network_to_rgb


@torch.no_grad()
def sample_grid(L: torch.Tensor, fake_ab: torch.Tensor, real_ab: torch.Tensor, padding: int = 4) -> np.ndarray:
    """The grid picture as H×W×3 uint8 sRGB.

    L: L_net N×1×S×S in [-1, 1]; fake_ab, real_ab: ab_net N×2×S×S in [-1, 1]. Row i shows image i with
    ab = 0 (the grey input), with the predicted ab, and with the true ab; white padding between tiles.
    """
    L, fake_ab, real_ab = L.float().cpu(), fake_ab.float().cpu(), real_ab.float().cpu()
    grey = network_to_rgb(L, torch.zeros_like(real_ab))
    pred = network_to_rgb(L, fake_ab)
    truth = network_to_rgb(L, real_ab)
    tiles = torch.stack([grey, pred, truth], dim=1).flatten(0, 1).clamp(0, 1)  # (N·3)×3×S×S
    grid = make_grid(tiles, nrow=3, padding=padding, pad_value=1.0)
    return (grid.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an H×W×3 uint8 sRGB picture as PNG atomically (temp name, then rename)."""
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return Path(path)
