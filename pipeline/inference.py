"""Full-resolution colourisation with a trained generator (shared by `colorize` and `colorize-ui`).

The network only sees a small copy, but the output keeps every pixel of the original's lightness:

    original sRGB H×W ──rgb_to_lab──► L* (H×W, kept as is)
         │
         └─ L_net = L*/50 − 1, resized (bilinear, antialiased) to h×w, multiples of 256 that keep
            the aspect ratio as far as the network allows (`model_shape`)
                 │ generator (eval mode, inference_mode) → ab_net 2×h×w in [-1, 1]
                 ▼
            ab* = 128·ab_net, upsampled (bilinear) to H×W
    (L*, ab*) ──► sRGB; out-of-gamut colours are desaturated at constant L* (`lab_to_rgb_in_gamut`)

Colour carries far less fine detail than lightness, so predicting it at ~512 px and upsampling loses
little, while the original's full-resolution L* keeps edges and texture sharp. Unlike the seed's
notebook (squash to 512², train-mode BatchNorm and dropout, resize L back), results are deterministic
and keep the input's size, aspect ratio and lightness.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.lab import AB_SCALE, L_SCALE, L_SHIFT, lab_to_rgb, linear_to_srgb, rgb_to_lab, srgb_to_linear

MODEL_MULTIPLE = 256


def model_shape(height: int, width: int, size: int = 512) -> tuple[int, int]:
    """(h, w) of the copy the network sees for an H×W image: sides multiples of 256, ≥ 256.

    The long side becomes `size` rounded to a multiple of 256; the short side is scaled by the same
    factor and rounded to the nearest multiple of 256 (at least 256), so the aspect ratio is kept as
    closely as 256-pixel steps allow. E.g. 3000×2000 → 512×256 at size 512, 768×512 at size 768.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}×{width}")
    long_model = max(MODEL_MULTIPLE, round(size / MODEL_MULTIPLE) * MODEL_MULTIPLE)
    scale = long_model / max(height, width)
    short_model = max(MODEL_MULTIPLE, round(min(height, width) * scale / MODEL_MULTIPLE) * MODEL_MULTIPLE)
    return (long_model, short_model) if height >= width else (short_model, long_model)


def resolve_device(name: str) -> torch.device:
    """`auto` → CUDA when available, else CPU; `cpu` / `cuda` (or `cuda:N`) as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch.cuda.is_available() is False")
    return torch.device(name)


def lab_to_rgb_in_gamut(lab: torch.Tensor) -> torch.Tensor:
    """CIELAB 3×H×W → sRGB 3×H×W in [0, 1], keeping L* exactly where the colour is out of gamut.

    Per-channel clipping (what `lab_to_rgb(clip=True)` does) changes the lightness and hue of colours
    the sRGB cube cannot show. Here such a pixel moves instead, in linear-light RGB, along the
    straight line towards the grey of the same L*, to the point where it meets the cube's surface.
    Luminance Y is a linear function of linear RGB and fixes L*, so every point of that line has the
    pixel's L*; a line through the white point also keeps its dominant wavelength (hue). Closed form,
    one pass, and only over the out-of-gamut pixels.
    """
    rgb = lab_to_rgb(lab, clip=False)
    outside = ((rgb < 0) | (rgb > 1)).any(dim=0)
    if outside.any():
        pixels = lab[:, outside].unsqueeze(-1)  # 3×N×1: the out-of-gamut pixels as one column
        colour = srgb_to_linear(rgb[:, outside])  # 3×N, linear light
        grey = srgb_to_linear(lab_to_rgb(torch.cat((pixels[:1], torch.zeros_like(pixels[1:]))), clip=False)).squeeze(-1)
        step = colour - grey
        safe = torch.where(step == 0, torch.ones_like(step), step)
        # Largest t in [0, 1] with grey + t·step inside [0, 1] in every channel.
        limit = torch.where(step > 0, (1 - grey) / safe, torch.where(step < 0, -grey / safe, torch.ones_like(step)))
        t = limit.clamp(0.0, 1.0).amin(dim=0, keepdim=True)
        rgb[:, outside] = linear_to_srgb((grey + t * step).clamp(0.0, 1.0))
    return rgb.clamp(0.0, 1.0)


@dataclass
class Colorized:
    """One result: `rgb` H×W×3 float32 sRGB in [0, 1] at the input's size; `grey` the input's
    lightness alone (a* = b* = 0) as H×W×3 sRGB, when asked for (side-by-side pictures)."""

    rgb: np.ndarray
    grey: np.ndarray | None = None


class Colorizer:
    """Runs a generator over photos of any size (see the module docstring for the method).

    `generator` maps L_net B×1×h×w → ab_net B×2×h×w (h, w multiples of 256); it is put in eval mode.
    `size` is the long side of the network's input (rounded to a multiple of 256).
    """

    def __init__(self, generator: torch.nn.Module, device: torch.device | str = "cpu", size: int = 512):
        if size < MODEL_MULTIPLE // 2:
            raise ValueError(f"size must be at least {MODEL_MULTIPLE // 2}, got {size}")
        self.device = torch.device(device)
        self.generator = generator.to(self.device).eval()
        self.size = size

    def shape_for(self, rgb: np.ndarray) -> tuple[int, int]:
        """Network input (h, w) for an H×W×3 image."""
        return model_shape(rgb.shape[0], rgb.shape[1], self.size)

    @torch.inference_mode()
    def colorize(self, images: Sequence[np.ndarray], batch_size: int = 8, with_grey: bool = False) -> list[Colorized]:
        """Colourise H×W×3 float32 sRGB [0, 1] arrays (sizes may differ); results in input order.

        Images whose network inputs share a shape run through the generator together, at most
        `batch_size` at a time.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        results: list[Colorized | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for index, rgb in enumerate(images):
            groups.setdefault(self.shape_for(rgb), []).append(index)
        for shape, indices in groups.items():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                for index, result in zip(chunk, self._run(shape, [images[i] for i in chunk], with_grey), strict=True):
                    results[index] = result
        return results  # type: ignore[return-value]

    def _run(self, shape: tuple[int, int], images: list[np.ndarray], with_grey: bool) -> list[Colorized]:
        lightness = []  # full-resolution L*, 1×H×W each
        small = []
        for rgb in images:
            tensor = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1).to(self.device)
            l_star = rgb_to_lab(tensor)[:1]
            lightness.append(l_star)
            l_net = (l_star / L_SCALE - L_SHIFT).unsqueeze(0)
            small.append(F.interpolate(l_net, size=shape, mode="bilinear", align_corners=False, antialias=True))
        ab_small = self.generator(torch.cat(small)).float()
        out = []
        for l_star, ab_net in zip(lightness, ab_small, strict=True):
            ab = F.interpolate(ab_net.unsqueeze(0), size=l_star.shape[-2:], mode="bilinear", align_corners=False)[0]
            colour = lab_to_rgb_in_gamut(torch.cat((l_star, ab * AB_SCALE)))
            grey = None
            if with_grey:
                grey = lab_to_rgb(torch.cat((l_star, torch.zeros_like(ab)))).permute(1, 2, 0).cpu().numpy()
            out.append(Colorized(rgb=colour.permute(1, 2, 0).cpu().numpy(), grey=grey))
        return out
