"""Fast sRGB → network Lab for decoded uint8 batches: the CPU loaders' colour step.

`pipeline/lab.py` is the reference; this computes the same numbers for uint8 input with the
constants folded: D65 white and the RGB→XYZ matrix become one 3×3 matrix (`xyz_matrix`), and
L*/a*/b* together with the network scaling (L/50 − 1, ab/128) become a second 3×3 matrix plus an
offset (`lab_matrix`). The per-pixel work is written as plain elementwise torch ops on the three
colour planes. `uint8_planar_to_network` is exact (within 1e-5 of `pipeline.lab.rgb_to_network` in
normalised units); `uint8_planar_to_network_tables` replaces the sRGB curve and the cube root by table
lookups and is what `torch.compile` fuses into one loop for the DALI backend's CPU path (several
times faster than eager torch on the CPU; within 4.6e-4). See BENCHMARKS.md for the figures.

The DALI pipeline's GPU path uses the same folded constants, so every path computes one formula.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from pipeline.colour_constants import (
    AB_SCALE,
    D65_WHITE,
    EPSILON,
    F_OFFSET,
    KAPPA_SLOPE,
    L_SCALE,
    L_SHIFT,
    SRGB_LINEAR_THRESHOLD,
    XYZ_FROM_RGB,
)

log = logging.getLogger(__name__)


def xyz_matrix() -> list[list[float]]:
    """3×3: linear RGB → XYZ already divided by the D65 white (rows X/Xn, Y/Yn, Z/Zn)."""
    return [[v / w for v in row] for row, w in zip(XYZ_FROM_RGB, D65_WHITE)]


def lab_matrix() -> tuple[list[list[float]], list[float]]:
    """(3×3, 3): f(X/Xn), f(Y/Yn), f(Z/Zn) → (L_net, a_net, b_net) = M @ f + offset."""
    m = [
        [0.0, 116.0 / L_SCALE, 0.0],  # L_net = (116 fy − 16)/50 − 1
        [500.0 / AB_SCALE, -500.0 / AB_SCALE, 0.0],  # a_net = 500 (fx − fy)/128
        [0.0, 200.0 / AB_SCALE, -200.0 / AB_SCALE],  # b_net = 200 (fy − fz)/128
    ]
    return m, [-16.0 / L_SCALE - L_SHIFT, 0.0, 0.0]


_XYZ = xyz_matrix()
_LAB, _LAB_OFFSET = lab_matrix()


def _f(t: torch.Tensor) -> torch.Tensor:
    """CIELAB's f(t): cube root above ε, the linear segment below."""
    # exp(log(t)/3) rather than pow: both are vectorised by inductor, pow(x, 1/3) is not.
    return torch.where(t > EPSILON, torch.exp(torch.log(t.clamp(min=EPSILON)) * (1.0 / 3.0)), t * KAPPA_SLOPE + F_OFFSET)


def uint8_planar_to_network(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """B×3×H×W uint8 sRGB → (L_net B×1×H×W in [-1, 1], ab_net B×2×H×W ≈ [-1, 1]), float32."""
    v = rgb.float() * (1.0 / 255.0)
    lin = torch.where(v > SRGB_LINEAR_THRESHOLD, torch.exp(torch.log((v + 0.055) * (1.0 / 1.055)) * 2.4), v * (1.0 / 12.92))
    r, g, b = lin[:, 0], lin[:, 1], lin[:, 2]
    fx, fy, fz = (_f(m[0] * r + m[1] * g + m[2] * b) for m in _XYZ)
    lab = [m[0] * fx + m[1] * fy + m[2] * fz + o for m, o in zip(_LAB, _LAB_OFFSET)]
    return lab[0].unsqueeze(1), torch.stack(lab[1:], dim=1)


# f(t) as a table over t in [0, 1] (X/Xn, Y/Yn, Z/Zn never exceed 1 for sRGB input), read at the
# nearest of 65,536 steps: the fused kernel then has no transcendental call per pixel. Worst case
# 4.6e-4 in network units (at t ≈ ε, where f is steepest): inside the 1e-3 budget, measured in tests.
_F_STEPS = 65535


def _tables() -> tuple[torch.Tensor, torch.Tensor]:
    from pipeline.lab import srgb_to_linear

    linear = srgb_to_linear(torch.arange(256, dtype=torch.float64) / 255.0).float()
    t = torch.arange(_F_STEPS + 1, dtype=torch.float64) / _F_STEPS
    f = torch.where(t > EPSILON, t.pow(1.0 / 3.0), t * KAPPA_SLOPE + F_OFFSET).float()
    return linear, f


_LINEAR_TABLE, _F_TABLE = _tables()


def uint8_planar_to_network_tables(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """As `uint8_planar_to_network`, by table lookups (for torch.compile; ≤ 4.6e-4 off, see above)."""
    lin = _LINEAR_TABLE[rgb.int()]
    r, g, b = lin[:, 0], lin[:, 1], lin[:, 2]
    fx, fy, fz = (_F_TABLE[(m[0] * r + m[1] * g + m[2] * b).mul(_F_STEPS).add(0.5).clamp(0, _F_STEPS).int()]
                  for m in _XYZ)
    lab = [m[0] * fx + m[1] * fy + m[2] * fz + o for m, o in zip(_LAB, _LAB_OFFSET)]
    return lab[0].unsqueeze(1), torch.stack(lab[1:], dim=1)


def lab_step(compile: bool) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The uint8 → network-Lab function: the table form fused by torch.compile, or exact eager torch.

    Compiling takes a few seconds on first use (cached on disk afterwards); if it fails (no C++
    compiler, unsupported platform) the eager function is used, with a warning.
    """
    if not compile:
        return uint8_planar_to_network
    # Every table index is in range by construction (uint8 values; f's index is clamped), so inductor's
    # per-vector bounds checks on the gathers are dropped: they cost a third of the kernel's time.
    compiled = torch.compile(uint8_planar_to_network_tables, dynamic=False,
                             options={"assert_indirect_indexing": False})

    def run(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal compiled
        if compiled is not uint8_planar_to_network:
            try:
                return compiled(rgb)
            except Exception as exc:  # eager is correct, only slower
                log.warning("torch.compile of the Lab step failed (%s); using eager torch", exc)
                compiled = uint8_planar_to_network
        return uint8_planar_to_network(rgb)

    return run
