"""Shared test fixtures: real photographs that ship inside installed packages, and the gpu marker."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

# Tests never touch the network: W&B stays offline and torch hub downloads are not attempted.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

COLOUR_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


def pytest_collection_modifyitems(config, items):
    """`gpu` tests run where CUDA exists and are skipped, with the reason shown, everywhere else."""
    if torch.cuda.is_available():
        return
    needs_cuda = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(needs_cuda)


@pytest.fixture(scope="session")
def colour_photos() -> dict[str, np.ndarray]:
    """Real colour photographs from skimage.data: name → H×W×3 uint8 sRGB."""
    import skimage.data

    return {name: np.ascontiguousarray(getattr(skimage.data, name)()[..., :3]) for name in COLOUR_PHOTOS}
