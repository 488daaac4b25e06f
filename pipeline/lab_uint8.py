"""Fast sRGB → network Lab for decoded uint8 batches on the CPU: the CPU loaders' colour step.

`pipeline/lab.py` is the reference; this computes the same numbers (within 1e-4 in network units
over all 2^24 uint8 colours, checked by the tests) as one kernel that `torch.compile` fuses into a
vectorised loop: D65 white and the RGB→XYZ matrix are folded into one 3×3 matrix (`xyz_matrix`),
L*/a*/b* and the network scaling (L/50 − 1, ab/128) into a second 3×3 matrix plus an offset
(`lab_matrix`), and the sRGB curve and the cube root become polynomials and a Halley step — no
table gathers or transcendental calls, which inductor would compile into scalar loops. On the DALI
CPU path this kernel is about twice the images/s of the compiled reference (BENCHMARKS.md#loader).

The DALI pipeline's GPU path uses the same folded constants, so every path computes one formula.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
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
from pipeline.lab import rgb_to_network
from pipeline.location import first_line

log = logging.getLogger(__name__)

LabStep = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""B×3×H×W uint8 sRGB → (L_net B×1×H×W, ab_net B×2×H×W) float32."""


def xyz_matrix() -> list[list[float]]:
    """3×3: linear RGB → XYZ already divided by the D65 white (rows X/Xn, Y/Yn, Z/Zn)."""
    return [[v / w for v in row] for row, w in zip(XYZ_FROM_RGB, D65_WHITE, strict=True)]


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


# The compiled CPU kernel avoids table lookups: inductor turns each gather into a scalar loop (≈ 6
# per pixel, most of the kernel's time), while polynomials and divisions stay in vector registers.
# sRGB decoding on its power segment, ((v + 0.055)/1.055)^2.4 for v in (0.04045, 1], is a degree-7
# polynomial fitted at the 245 uint8 values that reach it (≤ 6e-6 off in linear light); the cube root
# is range-reduced to s in [1/8, 1] by exact powers of 8, started from a cubic guess (≤ 1.8 % off)
# and refined by one Halley step (cubic convergence: ≤ 1e-5 relative, one division). Over all 2^24
# uint8 colours the result is within 1e-4 of `pipeline.lab.rgb_to_network` in network units
# (measured by the tests).
_POLY_DEGREE = 7


def _srgb_power_segment_coefficients() -> list[float]:
    """Coefficients c0…c7 (ascending powers of v) of the sRGB decoding curve above the threshold."""
    v = np.arange(256, dtype=np.float64) / 255.0
    v = v[v > SRGB_LINEAR_THRESHOLD]
    fit = np.polynomial.Polynomial.fit(v, ((v + 0.055) / 1.055) ** 2.4, _POLY_DEGREE).convert()
    return [float(c) for c in fit.coef]


def _cube_root_guess_coefficients() -> list[float]:
    """Least-squares cubic for s^(1/3) on s in [1/8, 1] (ascending powers)."""
    s = np.linspace(0.125, 1.0, 4097)
    return [float(c) for c in np.polynomial.Polynomial.fit(s, np.cbrt(s), 3).convert().coef]


_SRGB_POLY = _srgb_power_segment_coefficients()
_CBRT_GUESS = _cube_root_guess_coefficients()


def _horner(coefficients: list[float], x: torch.Tensor) -> torch.Tensor:
    """Σ c_i x^i for ascending `coefficients`, as multiply-adds."""
    total = torch.full_like(x, coefficients[-1])
    for c in coefficients[-2::-1]:
        total = total * x + c
    return total


def _srgb_to_linear_polynomial(v: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] → linear light in [0, 1], by the polynomial above."""
    return torch.where(v > SRGB_LINEAR_THRESHOLD, _horner(_SRGB_POLY, v), v * (1.0 / 12.92))


def _cube_root_halley(t: torch.Tensor) -> torch.Tensor:
    """t^(1/3) for t in [1/512, 1] (float32, ≤ 1e-5 relative), with multiply-adds and one division.

    Finite for any t in [0, 1] (below 1/512 the guess is poor, not undefined).
    """
    below_64th, below_8th = t < 1.0 / 64.0, t < 1.0 / 8.0
    s = torch.where(below_64th, t * 64.0, torch.where(below_8th, t * 8.0, t))  # s in [1/8, 1]
    scale = torch.where(below_64th, 0.25, torch.where(below_8th, 0.5, 1.0))  # cbrt(1/64), cbrt(1/8), 1
    root = _horner(_CBRT_GUESS, s)
    cube = root * root * root
    root = root * (cube + 2.0 * s) / (2.0 * cube + s)  # Halley's step for root³ = s
    return root * scale


def _affine(row: list[float], values: tuple[torch.Tensor, ...], offset: float = 0.0) -> torch.Tensor:
    """Σ row_i · values_i + offset, leaving out the zero coefficients (the compiler keeps 0 · x)."""
    terms = [c * v for c, v in zip(row, values, strict=True) if c != 0.0]
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total + offset if offset else total


def uint8_planar_to_network_fast(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """B×3×H×W uint8 sRGB → (L_net B×1×H×W, ab_net B×2×H×W) float32, gather- and transcendental-free
    (for torch.compile; ≤ 1e-4 from the reference)."""
    lin = _srgb_to_linear_polynomial(rgb.float() * (1.0 / 255.0))
    rgb_linear = (lin[:, 0], lin[:, 1], lin[:, 2])
    # Below ε the linear segment applies; the cube root's value there is discarded, and finite.
    f = tuple(
        torch.where(t > EPSILON, _cube_root_halley(t), t * KAPPA_SLOPE + F_OFFSET)
        for t in (_affine(row, rgb_linear) for row in _XYZ)
    )
    lab = [_affine(row, f, offset) for row, offset in zip(_LAB, _LAB_OFFSET, strict=True)]
    return lab[0].unsqueeze(1), torch.stack(lab[1:], dim=1)


def reference(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """B×3×H×W uint8 sRGB → (L_net, ab_net) float32 by the reference colour math, `pipeline.lab`."""
    return rgb_to_network(rgb.float() * (1.0 / 255.0))


def lab_step(compile: bool) -> LabStep:
    """The uint8 → network-Lab function: B×3×H×W uint8 sRGB → (L_net B×1×H×W in [-1, 1], ab_net
    B×2×H×W ≈ [-1, 1]) float32, on the input's device.

    `compile`: the polynomial kernel fused by torch.compile for CPU tensors (a few seconds to compile
    on first use, cached on disk afterwards; if compiling fails — no C++ compiler, unsupported
    platform — the reference is used, with a warning). CUDA tensors, and `compile=False`, take the
    reference: on a GPU the eager elementwise ops are cheap.
    """
    if not compile:
        return reference
    compiled = torch.compile(uint8_planar_to_network_fast, dynamic=False)

    def run(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal compiled
        if compiled is not reference and rgb.device.type == "cpu":
            try:
                return compiled(rgb)
            except Exception as exc:  # the reference is correct, only slower
                log.warning("torch.compile of the Lab step failed (%s); using the reference Lab", first_line(exc))
                compiled = reference
        return reference(rgb)

    return run
