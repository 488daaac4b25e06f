"""sRGB (D65) ↔ CIELAB constants, as `skimage.color` has them, and the network scaling.

Plain numbers with no imports, so every colour conversion in the project — torch (`pipeline/lab.py`,
`pipeline/lab_uint8.py`), DALI (`pipeline/dali_pipeline.py`) and numpy in the shard builder's
workers (`shards/colourless.py`, which must not import torch) — reads one definition.
"""

# sRGB linear → XYZ (skimage.color.colorconv.xyz_from_rgb), row-major.
XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
D65_WHITE = (0.95047, 1.0, 1.08883)


def _inverse_3x3(m):
    """Inverse of a 3×3 matrix given as rows, by cofactors (float64, no numpy or torch needed)."""
    (a, b, c), (d, e, f), (g, h, i) = m
    cof = (
        (e * i - f * h, c * h - b * i, b * f - c * e),
        (f * g - d * i, a * i - c * g, c * d - a * f),
        (d * h - e * g, b * g - a * h, a * e - b * d),
    )
    det = a * cof[0][0] + b * cof[1][0] + c * cof[2][0]
    return tuple(tuple(x / det for x in row) for row in cof)


# XYZ → sRGB linear, inverted once here so no conversion inverts a matrix at run time.
RGB_FROM_XYZ = _inverse_3x3(XYZ_FROM_RGB)

EPSILON = 0.008856  # (6/29)^3 as skimage rounds it: where f(t) switches from the cube root to linear
KAPPA_SLOPE = 7.787  # slope of f(t)'s linear segment
F_OFFSET = 16.0 / 116.0
F_INV_THRESHOLD = 0.2068966  # f(ε): where lab→xyz switches from the cube to the linear segment
SRGB_LINEAR_THRESHOLD = 0.04045  # sRGB code value (in [0, 1]) where the power curve starts
SRGB_ENCODED_THRESHOLD = 0.0031308  # the same knee in linear light

# Network tensors: L_net = L*/L_SCALE − L_SHIFT, ab_net = (a*, b*)/AB_SCALE (the seed's scaling).
L_SCALE, L_SHIFT, AB_SCALE = 50.0, 1.0, 128.0
