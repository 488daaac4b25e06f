"""Fréchet Inception Distance with user-supplied Inception-v3 weights (no download).

`InceptionFeatures(path)` loads a torchvision `inception_v3` state_dict (e.g. torchvision's
`inception_v3_google-0cc3c7bd.pth`, as `.pth` or `.safetensors`) and maps sRGB B×3×H×W in [0, 1]
to 2048-d pool features (bilinear resize to 299², scaled to [-1, 1] as those weights expect).
`frechet_distance` compares two feature sets: ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½).

The numbers are comparable between runs of this tool with the same weights and image count, not
with papers that use the TensorFlow Inception graph (`pytorch-fid`'s weights differ slightly), and
FID is biased upwards for small sample counts (use thousands of images for a stable figure).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import inception_v3

from models.export import UnreadableStateDict, read_state_dict

INCEPTION_SIZE = 299
FEATURE_DIM = 2048


class FidError(ValueError):
    """Inception weights that cannot be used; the message names the file."""


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        return read_state_dict(path)
    except FileNotFoundError:
        raise FidError(f"{path}: no such Inception weights file") from None
    except UnreadableStateDict as exc:
        raise FidError(f"{path}: not a PyTorch state_dict ({exc})") from None


class InceptionFeatures(nn.Module):
    """sRGB B×3×H×W in [0, 1] → B×2048 Inception-v3 pool features, from local weights at `path`."""

    def __init__(self, path: str | Path, device: torch.device | str = "cpu"):
        super().__init__()
        path = Path(path)
        state = _read_state_dict(path)
        aux = any(k.startswith("AuxLogits.") for k in state)
        # transform_input=False: we scale to [-1, 1] ourselves, which is what transform_input
        # produces from ImageNet-normalised input for the Google weights.
        model = inception_v3(weights=None, aux_logits=aux, transform_input=False, init_weights=False)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
            raise FidError(f"{path}: not a torchvision inception_v3 state_dict ({first})") from None
        model.fc = nn.Identity()
        self.model = model.to(device).eval()
        self.device = torch.device(device)

    @torch.inference_mode()
    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(
            rgb.float().to(self.device),
            size=(INCEPTION_SIZE, INCEPTION_SIZE),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        return self.model(x * 2 - 1).double().cpu()


# Not torchmetrics' FrechetInceptionDistance: its Inception weights are a download, a custom extractor
# would run once more over the truth for each of model and grey, and for fewer images than feature
# dimensions the exact singular-value form below is faster and free of its eigvals round-off.
def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """FID between two N×D feature sets (N ≥ 2 each)."""
    a = features_a.double().numpy()
    b = features_b.double().numpy()
    if len(a) < 2 or len(b) < 2:
        raise ValueError("FID needs at least 2 images per set")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    centred_a, centred_b = a - mu_a, b - mu_b
    trace_a = (centred_a**2).sum() / (len(a) - 1)  # Tr Σ without forming Σ
    trace_b = (centred_b**2).sum() / (len(b) - 1)
    diff = mu_a - mu_b
    return float(diff @ diff + trace_a + trace_b - 2 * _trace_sqrt_product(centred_a, centred_b))


def _trace_sqrt_product(centred_a: np.ndarray, centred_b: np.ndarray) -> float:
    """Tr((Σa Σb)^½) for the sample covariances Σ = XᵀX/(N − 1) of centred N×D features X.

    With few samples (N ≤ D), Σa Σb has the same non-zero eigenvalues as K Kᵀ/c with K = Xa Xbᵀ
    (Na×Nb) and c = (Na − 1)(Nb − 1), so the trace is the sum of K's singular values over √c: exact
    and cheap. Otherwise Σa Σb is similar to the symmetric Σa^½ Σb Σa^½, whose eigenvalues' square
    roots sum to the trace. Both avoid a general `sqrtm` and its complex round-off.
    """
    scale = (len(centred_a) - 1) * (len(centred_b) - 1)
    if max(len(centred_a), len(centred_b)) <= centred_a.shape[1]:
        return float(np.linalg.svd(centred_a @ centred_b.T, compute_uv=False).sum() / np.sqrt(scale))
    sigma_a = centred_a.T @ centred_a / (len(centred_a) - 1)
    sigma_b = centred_b.T @ centred_b / (len(centred_b) - 1)
    w, v = np.linalg.eigh(sigma_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    eigenvalues = np.linalg.eigvalsh(root_a @ sigma_b @ root_a)
    return float(np.sqrt(np.clip(eigenvalues, 0, None)).sum())
