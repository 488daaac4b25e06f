"""sRGB (D65) ↔ CIELAB in torch, batched and differentiable, plus the network normalisation.

This is the project's reference colour math: the constants are those of `skimage.color` (sRGB
primaries, D65 2° white (0.95047, 1.0, 1.08883), ε = 0.008856, κ-slope 7.787), so results agree with
`skimage.color.rgb2lab` / `lab2rgb`. All functions take the colour channels on dim -3, so they work on
C×H×W images and B×C×H×W batches alike, on CPU and CUDA, in any float dtype.

Network tensors (the seed's scaling, kept so its released weights stay usable):
    L_net  = L* / 50 − 1      (B×1×H×W, in [-1, 1])
    ab_net = (a*, b*) / 128   (B×2×H×W, roughly in [-1, 1])
"""

from __future__ import annotations

import torch

from pipeline.colour_constants import (
    AB_SCALE,
    D65_WHITE,
    EPSILON,
    F_INV_THRESHOLD,
    F_OFFSET,
    KAPPA_SLOPE,
    L_SCALE,
    L_SHIFT,
    RGB_FROM_XYZ,
    SRGB_ENCODED_THRESHOLD,
    SRGB_LINEAR_THRESHOLD,
    XYZ_FROM_RGB,
)

# (device, dtype) → (XYZ_FROM_RGB 3×3, RGB_FROM_XYZ 3×3, D65 white 3×1×1). Built on first use per
# device and dtype, then reused: a tensor made from Python numbers is a host → device copy that
# blocks the CPU until the GPU catches up, and the training step converts colours several times.
_CONSTANTS: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _constants(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    key = (like.device, like.dtype)
    found = _CONSTANTS.get(key)
    if found is None:
        # Normal tensors even when first asked for under `inference_mode`: an inference tensor could
        # not later be saved for backward by a training step's colour conversion.
        with torch.inference_mode(False):
            xyz_from_rgb, rgb_from_xyz, white = (
                torch.tensor(values, dtype=like.dtype, device=like.device)
                for values in (XYZ_FROM_RGB, RGB_FROM_XYZ, D65_WHITE)
            )
        found = _CONSTANTS[key] = (xyz_from_rgb, rgb_from_xyz, white.view(3, 1, 1))
    return found


def _apply_matrix(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-pixel 3×3 colour transform of `x` (…×3×H×W)."""
    return torch.einsum("ij,...jhw->...ihw", m, x)


def srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB-encoded values in [0, 1] → linear light. Any shape."""
    # Clamp inside the power branch so its gradient stays finite where the linear branch is chosen.
    power = ((rgb.clamp(min=SRGB_LINEAR_THRESHOLD) + 0.055) / 1.055) ** 2.4
    return torch.where(rgb > SRGB_LINEAR_THRESHOLD, power, rgb / 12.92)


def linear_to_srgb(linear: torch.Tensor) -> torch.Tensor:
    """Linear light → sRGB-encoded values (not clipped). Any shape."""
    power = 1.055 * linear.clamp(min=SRGB_ENCODED_THRESHOLD) ** (1 / 2.4) - 0.055
    return torch.where(linear > SRGB_ENCODED_THRESHOLD, power, linear * 12.92)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB → CIELAB.

    rgb: …×3×H×W, sRGB in [0, 1]. Returns …×3×H×W: L* in [0, 100], a*, b* roughly in [-128, 127].
    """
    xyz_from_rgb, _, white = _constants(rgb)
    xyz = _apply_matrix(xyz_from_rgb, srgb_to_linear(rgb)) / white
    cube_root = xyz.clamp(min=EPSILON) ** (1.0 / 3.0)
    f = torch.where(xyz > EPSILON, cube_root, KAPPA_SLOPE * xyz + F_OFFSET)
    fx, fy, fz = f.unbind(dim=-3)
    lightness = 116.0 * fy - 16.0
    a = 500.0 * (fx - fy)
    b = 200.0 * (fy - fz)
    return torch.stack((lightness, a, b), dim=-3)


def lab_to_rgb(lab: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """CIELAB → sRGB.

    lab: …×3×H×W (L* in [0, 100], a*, b* in Lab units). Returns …×3×H×W sRGB, clipped to [0, 1]
    when `clip` (out-of-gamut colours are clipped per channel, as skimage does).
    """
    lightness, a, b = lab.unbind(dim=-3)
    fy = (lightness + 16.0) / 116.0
    fx = a / 500.0 + fy
    fz = (fy - b / 200.0).clamp(min=0.0)  # skimage clips negative z before cubing
    f = torch.stack((fx, fy, fz), dim=-3)
    cube = f.clamp(min=F_INV_THRESHOLD) ** 3
    _, rgb_from_xyz, white = _constants(lab)
    xyz = torch.where(f > F_INV_THRESHOLD, cube, (f - F_OFFSET) / KAPPA_SLOPE) * white
    rgb = linear_to_srgb(_apply_matrix(rgb_from_xyz, xyz))
    return rgb.clamp(0.0, 1.0) if clip else rgb


def normalize_lab(lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CIELAB …×3×H×W → (L_net …×1×H×W in [-1, 1], ab_net …×2×H×W ≈ [-1, 1])."""
    return lab[..., :1, :, :] / L_SCALE - L_SHIFT, lab[..., 1:, :, :] / AB_SCALE


def denormalize_lab(lightness: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """(L_net …×1×H×W, ab_net …×2×H×W) → CIELAB …×3×H×W in Lab units."""
    return torch.cat(((lightness + L_SHIFT) * L_SCALE, ab * AB_SCALE), dim=-3)


def rgb_to_network(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sRGB …×3×H×W in [0, 1] → (L_net …×1×H×W, ab_net …×2×H×W)."""
    return normalize_lab(rgb_to_lab(rgb))


def network_to_rgb(lightness: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """(L_net …×1×H×W, ab_net …×2×H×W) → sRGB …×3×H×W in [0, 1]."""
    return lab_to_rgb(denormalize_lab(lightness, ab))
