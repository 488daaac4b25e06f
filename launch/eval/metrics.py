"""Colourisation metrics as plain torch functions on batches (used by `colorize-eval` and training).

Every function takes B×C×H×W tensors and returns the batch mean (a 0-d tensor) or, with
`reduction="none"`, one value per image (shape B) so callers can average over a whole dataset.

    ab_l1_lab_units(pred_ab, true_ab)   mean |Δa*|, |Δb*| in CIELAB units (ab_net × 128); lower is better
    psnr_rgb(pred_rgb, true_rgb)        PSNR in dB, sRGB in [0, 1] (data range 1; torchmetrics); inf for
                                        identical images
    ssim_rgb(pred_rgb, true_rgb)        SSIM, 11×11 Gaussian window σ = 1.5, per channel then averaged —
                                        the same numbers as skimage's `structural_similarity(...,
                                        gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                        data_range=1, channel_axis=...)`
    colourfulness(rgb)                  Hasler & Süsstrunk (2003) colourfulness M on the 0–255 scale:
                                        0 for grey, ~15 "slightly", ~33 "moderately", ~59 "quite",
                                        ~82 "highly", ~109 "extremely colourful"
"""

from __future__ import annotations

import torch

from pipeline.lab import AB_SCALE

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # scipy's gaussian_filter with truncate=3.5: int(3.5·1.5 + 0.5) = 5 → 11 taps
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _reduce(per_image: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_image.mean()
    if reduction == "none":
        return per_image
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def ab_l1_lab_units(pred_ab: torch.Tensor, true_ab: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean absolute a*, b* error in CIELAB units. pred_ab, true_ab: ab_net B×2×H×W (ab*/128)."""
    per_image = (pred_ab.float() - true_ab.float()).abs().flatten(1).mean(dim=1) * AB_SCALE
    return _reduce(per_image, reduction)


def psnr_rgb(pred_rgb: torch.Tensor, true_rgb: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """PSNR in dB of sRGB B×3×H×W images in [0, 1] (data range 1): 10·log10(1 / MSE) per image, in
    float64 (torchmetrics). Identical images give +inf (the mean is then inf too)."""
    # Imported on first use: only scoring needs it, and the GPU check imports the training code on a
    # node before the kit that brings torchmetrics has arrived (docs/gpu-check.md).
    from torchmetrics.functional.image import peak_signal_noise_ratio

    per_image = peak_signal_noise_ratio(
        pred_rgb.double(), true_rgb.double(), data_range=1.0, reduction="none", dim=(1, 2, 3)
    )
    return _reduce(per_image.float(), reduction)


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    x = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=dtype, device=device)
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def _band(g: torch.Tensor, n: int) -> torch.Tensor:
    """(n − 10)×n matrix whose row i holds the 11-tap window `g` at columns i … i + 10."""
    taps = g.numel()
    rows = torch.arange(n - taps + 1, device=g.device)
    band = torch.zeros(n - taps + 1, n, dtype=g.dtype, device=g.device)
    band[rows.unsqueeze(1), rows.unsqueeze(1) + torch.arange(taps, device=g.device)] = g
    return band


# Not torchmetrics' SSIM: it reflect-pads before filtering and so differs from skimage's (the
# reference these numbers are quoted against) by up to ~0.007 on real photos.
def ssim_rgb(pred_rgb: torch.Tensor, true_rgb: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Structural similarity of B×C×H×W images in [0, 1] (data range 1), averaged over channels.

    Local statistics use a separable 11×11 Gaussian (σ = 1.5) over the valid region only, which is
    exactly the region skimage averages after cropping its filter's borders. H and W must be ≥ 11.
    """
    if min(pred_rgb.shape[-2:]) < 2 * SSIM_RADIUS + 1:
        raise ValueError(
            f"ssim_rgb needs images of at least {2 * SSIM_RADIUS + 1}×{2 * SSIM_RADIUS + 1}, got {tuple(pred_rgb.shape[-2:])}"
        )
    # float32: the statistics of [0, 1] images lose < 1e-6 to rounding, far below SSIM's constants
    # (C2 = 9e-4), and float64 convolutions are several times slower on CPU.
    x = pred_rgb.float()
    y = true_rgb.float()
    h, w = x.shape[-2:]
    # The separable Gaussian "valid" filter as two banded matrices: blur(t) = G_h · t · G_wᵀ. On CPU
    # this matmul is several times faster than a grouped convolution.
    g = _gaussian_window(x.dtype, x.device)
    band_h, band_w = _band(g, h), _band(g, w)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return band_h @ t @ band_w.T

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return _reduce(ssim_map.flatten(1).mean(dim=1).float(), reduction)


def colourfulness(rgb: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Hasler–Süsstrunk colourfulness of sRGB B×3×H×W images in [0, 1], on the paper's 0–255 scale.

    rg = R − G, yb = (R + G)/2 − B;  M = sqrt(σ_rg² + σ_yb²) + 0.3·sqrt(μ_rg² + μ_yb²)."""
    scaled = rgb.double() * 255.0
    r, g, b = scaled[:, 0].flatten(1), scaled[:, 1].flatten(1), scaled[:, 2].flatten(1)
    rg = r - g
    yb = 0.5 * (r + g) - b
    spread = torch.sqrt(rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False))
    centre = torch.sqrt(rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2)
    return _reduce((spread + 0.3 * centre).float(), reduction)
