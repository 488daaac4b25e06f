"""Helpers for the tests of the model-using tools (colorize, colorize-ui, colorize-eval)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from models import Generator
from models.export import save_generator
from pipeline.lab import rgb_to_lab

# Final-layer bias of the test generator, in ab_net units: tanh(0.35) ≈ 0.34 → a*, b* ≈ +43 before
# the weights' own small contribution, i.e. a clearly orange cast on every image. A freshly
# initialised network alone outputs |ab_net| of a few hundredths (N(0, 0.02) weights), which a
# colour check could not tell apart from grey.
COLOUR_BIAS = (0.35, 0.35)


def make_weights(path: Path, features: int = 8, seed: int = 0, bias: tuple[float, float] | None = COLOUR_BIAS) -> Path:
    """A small fresh generator exported with `save_generator`; `bias` sets the final layer's bias."""
    torch.manual_seed(seed)
    generator = Generator(features=features)
    if bias is not None:
        with torch.no_grad():
            generator.final_up[0].bias.copy_(torch.tensor(bias))
    return save_generator(path, generator, {"generator": "seed_unet", "features": features})


def console_script(name: str) -> str:
    """Path of an installed console script of this venv (e.g. `colorize`)."""
    path = Path(sys.executable).parent / name
    assert path.exists(), f"console script {name} is not installed in {path.parent}; run make install"
    return str(path)


def lightness(rgb_uint8_or_float: np.ndarray) -> np.ndarray:
    """CIELAB L* (H×W, 0–100) of an H×W×3 sRGB image (uint8, or float in [0, 1])."""
    rgb = np.asarray(rgb_uint8_or_float)
    if rgb.dtype == np.uint8:
        rgb = rgb.astype(np.float32) / 255.0
    tensor = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)
    return rgb_to_lab(tensor)[0].numpy()


def chroma(rgb_uint8: np.ndarray) -> np.ndarray:
    """CIELAB chroma sqrt(a*² + b*²) (H×W, Lab units) of an H×W×3 uint8 sRGB image."""
    tensor = torch.from_numpy(rgb_uint8.astype(np.float32) / 255.0).permute(2, 0, 1)
    lab = rgb_to_lab(tensor)
    return torch.sqrt(lab[1] ** 2 + lab[2] ** 2).numpy()


def subprocess_env() -> dict[str, str]:
    """Environment for a child tool process: no analytics, no W&B network."""
    env = dict(os.environ)
    env.update(GRADIO_ANALYTICS_ENABLED="False", WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    return env
