"""The perceptual (feature) loss of the NoGAN phase: L1 between frozen VGG19-bn activations.

Both colourings of one lightness channel, predicted and true, go through torchvision's VGG19-bn
`features`, cut into three slices that end at pool3 (`[:27]`), pool4 (`[27:40]`) and pool5 (`[40:]`);
the loss is Σ_k w_k · mean|φ_k(fake) − φ_k(real)| with the seed's weights w = (30, 70, 10).

What VGG sees (`input_mode`):
- `rgb` (the fix): (L_net, ab_net) → CIELAB → sRGB → ImageNet mean/std, the input VGG was trained on.
  The sRGB is deliberately *not* clipped to [0, 1]: clipping would zero the gradient of every
  out-of-gamut prediction, exactly the pixels the loss should pull back. Because ab_net is bounded by
  the generator's Tanh, unclipped sRGB stays within about [-1, 2], a range VGG handles.
- `lab` (the seed project's behaviour, for reproduction; called `seed` before): cat(L_net, ab_net) fed as if it were RGB, without
  ImageNet normalisation.

The network is frozen (no parameter requires grad) and always in eval mode, whatever `.train()` the
parent calls, so its BatchNorm statistics never move. The colour conversion runs in float32 with
autocast off; VGG itself runs under the caller's autocast (bf16 on GPU) and the L1 is taken in float32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import VGG19_BN_Weights
from torchvision.models.vgg import cfgs, make_layers

from configs import ConfigError, LossConfig
from models.export import UnreadableStateDict, read_state_dict
from pipeline.lab import denormalize_lab, lab_to_rgb
from pipeline.location import first_line

# Module index ranges of vgg19_bn.features: up to and including pool3 (26), pool4 (39), pool5 (52).
VGG_SLICES = ((0, 27), (27, 40), (40, 53))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_MODES = ("rgb", "lab")


class VGGWeightsError(ConfigError):
    """VGG19-bn weights that cannot be had: a missing or unreadable file, a foreign state_dict, a failed download."""


def _fresh_vgg19_bn_features() -> nn.Sequential:
    """torchvision's vgg19_bn `features` with its random init, built without the 120 M-parameter
    classifier that `vgg19_bn(weights=None)` would allocate and initialise only to be thrown away."""
    features = make_layers(cfgs["E"], batch_norm=True)
    for module in features.modules():  # the init torchvision's VGG.__init__ applies
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:  # make_layers' convolutions all have one
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return features


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        return read_state_dict(path)
    except FileNotFoundError:
        raise VGGWeightsError(
            f"VGG19-bn weights file not found: {path} (loss.vgg_weights takes 'imagenet', 'none' or a local state_dict path)"
        ) from None
    except UnreadableStateDict as exc:
        raise VGGWeightsError(f"cannot read VGG19-bn weights from {path}: {exc}") from None


def _load_features(features: nn.Sequential, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a full vgg19_bn state_dict (`features.*` and `classifier.*`) or a bare `features` one."""
    if any(key.startswith("features.") for key in state):
        state = {key[len("features.") :]: v for key, v in state.items() if key.startswith("features.")}
    try:
        features.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise VGGWeightsError(f"{source} is not a VGG19-bn state_dict: {detail}") from None


def load_vgg19_bn_features(weights: str) -> nn.Sequential:
    """VGG19-bn `features` (53 modules, conv/BN/ReLU + 5 max-pools) with the requested weights.

    weights: `imagenet` (torchvision's IMAGENET1K_V1, downloaded once into the torch hub cache; in a
    multi-process run the caller lets one process download first, see `launch/train.py`),
    `none` (torchvision's random init; for tests), or a local path to a vgg19_bn state_dict (`.pth`,
    `.pt` read with `torch.load(weights_only=True)`, or `.safetensors`), full-model or `features` only.
    """
    features = _fresh_vgg19_bn_features()
    if weights == "none":
        return features
    if weights == "imagenet":
        weights_enum = VGG19_BN_Weights.IMAGENET1K_V1
        try:
            state = weights_enum.get_state_dict(progress=True, check_hash=True)
        except Exception as exc:  # offline, proxy, corrupt cache: all need the same advice
            file_name = weights_enum.url.rsplit("/", 1)[-1]
            cache = Path(torch.hub.get_dir()) / "checkpoints"
            raise VGGWeightsError(
                f"cannot download VGG19-bn ImageNet weights ({file_name}: {type(exc).__name__}: "
                f"{first_line(exc)}); pre-stage the file: fetch {weights_enum.url} where there is network "
                f"and copy it to {cache / file_name} (the torch hub cache; TORCH_HOME moves it), or set "
                "loss.vgg_weights to a local state_dict path"
            ) from None
        _load_features(features, state, "torchvision IMAGENET1K_V1")
        return features
    path = Path(weights).expanduser()
    _load_features(features, _read_state_dict(path), str(path))
    return features


class VGGFeatureLoss(nn.Module):
    """Weighted L1 between frozen VGG19-bn features of the predicted and the true colouring.

    forward(L, fake_ab, real_ab): L_net B×1×H×W in [-1, 1], fake_ab and real_ab B×2×H×W ab_net in
    [-1, 1] (CIELAB, network scaling), H and W ≥ 32 → float32 scalar ≥ 0 (0 when fake_ab == real_ab).
    Gradients flow to `fake_ab` only; the real branch runs under `no_grad`.
    """

    mean: torch.Tensor  # ImageNet mean and std, 1×3×1×1 buffers (registered in __init__)
    std: torch.Tensor

    def __init__(
        self,
        layer_weights: tuple[float, float, float] = (30.0, 70.0, 10.0),
        input_mode: Literal["rgb", "lab"] = "rgb",
        weights: str = "imagenet",
    ) -> None:
        super().__init__()
        if input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode = {input_mode!r} is not one of: {', '.join(INPUT_MODES)}")
        if len(layer_weights) != len(VGG_SLICES):
            raise ValueError(
                f"layer_weights needs {len(VGG_SLICES)} values (pool3, pool4, pool5), got {layer_weights!r}"
            )
        self.layer_weights = tuple(float(w) for w in layer_weights)
        self.input_mode = input_mode
        features = load_vgg19_bn_features(weights)
        self.slices = nn.ModuleList(features[start:stop] for start, stop in VGG_SLICES)
        self.slices.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.train(False)

    def train(self, mode: bool = True) -> VGGFeatureLoss:
        """Set the mode of the module as usual, but keep VGG in eval: its BatchNorm uses ImageNet
        statistics and must not update them from our batches."""
        super().train(mode)
        self.slices.eval()
        return self

    def vgg_input(self, lightness: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        """(L_net B×1×H×W, ab_net B×2×H×W) → the B×3×H×W float32 tensor VGG sees (see the module doc)."""
        # Colour math in float32 even under a bf16 autocast: the sRGB gamma curve needs the precision.
        with torch.autocast(device_type=lightness.device.type, enabled=False):
            lightness, ab = lightness.float(), ab.float()
            if self.input_mode == "lab":
                return torch.cat([lightness, ab], dim=1)
            rgb = lab_to_rgb(denormalize_lab(lightness, ab), clip=False)
            return (rgb - self.mean) / self.std

    def features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """VGG activations at pool3, pool4 and pool5 for a B×3×H×W VGG input."""
        parameter = next(self.slices.parameters())
        x = image.to(parameter.dtype)
        out = []
        for stage in self.slices:
            x = stage(x)
            out.append(x)
        return out

    def forward(self, lightness: torch.Tensor, fake_ab: torch.Tensor, real_ab: torch.Tensor) -> torch.Tensor:
        if (
            fake_ab.shape != real_ab.shape
            or lightness.shape[:1] + lightness.shape[2:] != fake_ab.shape[:1] + fake_ab.shape[2:]
        ):
            raise ValueError(
                "feature loss needs L B×1×H×W and fake/real ab B×2×H×W, got "
                f"{tuple(lightness.shape)}, {tuple(fake_ab.shape)}, {tuple(real_ab.shape)}"
            )
        with torch.no_grad():
            real_features = self.features(self.vgg_input(lightness, real_ab))
        fake_features = self.features(self.vgg_input(lightness, fake_ab))
        loss = fake_ab.new_zeros((), dtype=torch.float32)
        for weight, fake, real in zip(self.layer_weights, fake_features, real_features, strict=True):
            loss = loss + weight * F.l1_loss(fake.float(), real.float())
        return loss


def build_feature_loss(loss_cfg: LossConfig) -> VGGFeatureLoss:
    """The feature loss configured by `cfg.loss` (`vgg_layer_weights`, `vgg_input`, `vgg_weights`)."""
    return VGGFeatureLoss(loss_cfg.vgg_layer_weights, loss_cfg.vgg_input, loss_cfg.vgg_weights)
