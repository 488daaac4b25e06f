"""Shared test fixtures: real photographs that ship inside installed packages, and the gpu marker."""

from __future__ import annotations

import os
import sys

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


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state, fixed by the first `Accelerator()`: a test that trains
    on the CPU would otherwise decide the device and precision of every later test in the process
    (a bf16 CUDA test then fails with "AcceleratorState has already been initialized")."""
    yield
    if "accelerate" in sys.modules:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


@pytest.fixture(scope="session")
def colour_photos() -> dict[str, np.ndarray]:
    """Real colour photographs from skimage.data: name → H×W×3 uint8 sRGB."""
    import skimage.data

    return {name: np.ascontiguousarray(getattr(skimage.data, name)()[..., :3]) for name in COLOUR_PHOTOS}
