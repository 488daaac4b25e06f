"""Colourless check: does an image carry colour, judged on a small (≈1/8 scale) decode.

Criterion: the CIELAB chroma C*ab = √(a*² + b*²) of every pixel of the small image; the image is
colourless when its 99.9th percentile is below `CHROMA_THRESHOLD` (4 Lab units). Why these numbers:
- A grey picture stored as an RGB JPEG decodes with R≈G≈B up to rounding: its chroma stays below ~1.5
  even at quality 50, so 4 leaves a wide margin for codec noise and faint scanner casts.
- Sepia and other toned photos have chroma 10–25 nearly everywhere: far above 4, so they stay.
- A night shot that is mostly black with a few coloured lights has most pixels at chroma ≈ 0; a
  median or 99th percentile would call it colourless. The 99.9th percentile keeps any image in which
  more than 0.1 % of the small image (≈3 pixels of a 63×47 thumbnail, i.e. ~200 source pixels)
  carries colour, while a handful of stray pixels cannot make a grey image count as colour.
- Files that are greyscale by construction (PIL modes "1", "L", "LA", "I", "I;16…") are colourless
  without looking at pixels (see `convert.py`).

The Lab math matches `skimage.color.rgb2lab` (sRGB, D65, same constants; the tests compare) but runs on
uint8 through a 256-entry linearisation table in float32: ~10× faster, no torch import in workers.
"""

from __future__ import annotations

import numpy as np

CHROMA_THRESHOLD = 4.0
CHROMA_PERCENTILE = 99.9

_XYZ_FROM_RGB = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
    dtype=np.float32,
)
_D65_WHITE = np.array([0.95047, 1.0, 1.08883], dtype=np.float32)
_EPSILON = 0.008856

# sRGB code value 0–255 → linear light, the same piecewise curve as skimage.
_levels = np.arange(256, dtype=np.float64) / 255.0
_LINEAR_FROM_SRGB8 = np.where(
    _levels > 0.04045, ((_levels + 0.055) / 1.055) ** 2.4, _levels / 12.92
).astype(np.float32)
# Fold the white-point division into the matrix: rows give X/Xn, Y/Yn, Z/Zn directly.
_NORMALISED_XYZ_FROM_RGB = _XYZ_FROM_RGB / _D65_WHITE[:, None]


def chroma(rgb: np.ndarray) -> np.ndarray:
    """CIELAB chroma C*ab (float32, ≥ 0, ~0–130) of an H×W×3 uint8 sRGB image, shape H×W."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 uint8 image, got {rgb.dtype} {rgb.shape}")
    linear = _LINEAR_FROM_SRGB8[rgb.reshape(-1, 3)]
    xyz = linear @ _NORMALISED_XYZ_FROM_RGB.T
    f = np.where(xyz > _EPSILON, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    a = 500.0 * (f[:, 0] - f[:, 1])
    b = 200.0 * (f[:, 1] - f[:, 2])
    return np.sqrt(a * a + b * b).reshape(rgb.shape[:2])


def colour_score(rgb: np.ndarray) -> float:
    """The `CHROMA_PERCENTILE`th percentile of the chroma of an H×W×3 uint8 sRGB image (Lab units)."""
    return float(np.percentile(chroma(rgb), CHROMA_PERCENTILE))


def is_colourless(rgb: np.ndarray) -> bool:
    """True when an H×W×3 uint8 sRGB image (ideally a ~1/8-scale thumbnail) carries no colour."""
    return colour_score(rgb) < CHROMA_THRESHOLD
