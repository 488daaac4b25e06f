"""Colourless check: does an image carry colour, judged on a small (≈1/8 scale) decode.

Criterion: the CIELAB chroma C*ab = √(a*² + b*²) of every pixel of the small image; the image is
colourless when no more than 0.1 % of its pixels (`MAX_COLOURED_FRACTION`) reach `CHROMA_THRESHOLD`
(4 Lab units) — i.e. the 99.9th percentile of chroma is below 4. Why these numbers:
- A grey picture stored as an RGB JPEG decodes with R≈G≈B up to rounding: its chroma stays below
  ~0.1 at any quality (tests: skimage's grey photos at quality 50–95), so 4 leaves a wide margin for
  codec noise and faint casts of scanned black-and-white prints.
- Sepia and other toned photos have chroma 10–30 nearly everywhere: far above 4, so they stay.
- A night shot that is mostly black with a few coloured lights has most pixels at chroma ≈ 0: a
  median or 99th percentile would call it colourless. Allowing only 0.1 % keeps any image in which a
  few thumbnail pixels (≈3 of a 63×47 thumbnail, i.e. ~200 source pixels) carry colour, while a single
  stray pixel cannot make a grey image count as colour.
- Files that are greyscale by construction (PIL modes "1", "L", "LA", "I", "I;16…") are colourless
  without looking at pixels (see `convert.py`).

The Lab math matches `skimage.color.rgb2lab` (sRGB, D65, same constants; the tests compare) but runs on
uint8 through a 256-entry linearisation table in float32: no per-pixel power, and no torch import in
the workers. It stays beside the torch reference (`pipeline/lab.py`) only because it pays more than
20 % of build throughput over it (`colorize-bench shards --colourless table,lab`, BENCHMARKS.md).
A colourful image is usually decided from every 16th pixel alone (see `is_colourless`).
"""

from __future__ import annotations

import numpy as np

from pipeline.colour_constants import D65_WHITE, EPSILON, F_OFFSET, KAPPA_SLOPE, SRGB_LINEAR_THRESHOLD, XYZ_FROM_RGB

CHROMA_THRESHOLD = 4.0
MAX_COLOURED_FRACTION = 0.001

_XYZ_FROM_RGB = np.array(XYZ_FROM_RGB, dtype=np.float32)
_D65_WHITE = np.array(D65_WHITE, dtype=np.float32)

# sRGB code value 0–255 → linear light, the same piecewise curve as skimage.
_levels = np.arange(256, dtype=np.float64) / 255.0
_LINEAR_FROM_SRGB8 = np.where(
    _levels > SRGB_LINEAR_THRESHOLD, ((_levels + 0.055) / 1.055) ** 2.4, _levels / 12.92
).astype(np.float32)
# Fold the white-point division into the matrix: rows give X/Xn, Y/Yn, Z/Zn directly.
_NORMALISED_XYZ_FROM_RGB = _XYZ_FROM_RGB / _D65_WHITE[:, None]


def chroma(rgb: np.ndarray) -> np.ndarray:
    """CIELAB chroma C*ab (float32, ≥ 0, ~0–130) of an H×W×3 uint8 sRGB image, shape H×W."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 uint8 image, got {rgb.dtype} {rgb.shape}")
    linear = _LINEAR_FROM_SRGB8[rgb.reshape(-1, 3)]
    xyz = linear @ _NORMALISED_XYZ_FROM_RGB.T
    f = np.where(xyz > EPSILON, np.cbrt(xyz), KAPPA_SLOPE * xyz + F_OFFSET)
    a = 500.0 * (f[:, 0] - f[:, 1])
    b = 200.0 * (f[:, 1] - f[:, 2])
    return np.sqrt(a * a + b * b).reshape(rgb.shape[:2])


def is_colourless(rgb: np.ndarray) -> bool:
    """True when an H×W×3 uint8 sRGB image (ideally a ~1/8-scale thumbnail) carries no colour."""
    pixels = rgb.reshape(-1, 1, 3)
    allowed = int(MAX_COLOURED_FRACTION * pixels.shape[0])
    # Coloured pixels found in a subsample are a lower bound on the whole count: when they already
    # exceed the allowance the answer is "colour" without converting the other 15/16 of the pixels.
    if np.count_nonzero(chroma(pixels[::16]) >= CHROMA_THRESHOLD) > allowed:
        return False
    return bool(np.count_nonzero(chroma(pixels) >= CHROMA_THRESHOLD) <= allowed)
