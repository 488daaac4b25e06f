"""pix2pix's 70×70 PatchGAN discriminator, conditioned on the lightness channel.

It scores overlapping 70×70 patches of a Lab image as real or fake: input cat(L_net, ab_net) as
B×3×H×W (network scaling, each channel roughly in [-1, 1]), output raw logits B×1×(H/8 − 2)×(W/8 − 2)
(30×30 for 256²; apply BCEWithLogits, not a sigmoid). With features = 64 it has 2,765,633 parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from models.init import init_weights


class PatchDiscriminator(nn.Module):
    """70×70 PatchGAN: C64 → C128 → C256 → C512 (stride 1) → 1 logit per patch.

    Layers (pix2pix `NLayerDiscriminator`, n_layers = 3): Conv(in→f, 4, 2, 1) → LeakyReLU(0.2);
    Conv(f→2f, 4, 2, 1) → BN → LReLU; Conv(2f→4f, 4, 2, 1) → BN → LReLU; Conv(4f→8f, 4, 1, 1) → BN →
    LReLU; Conv(8f→1, 4, 1, 1). Convolutions followed by BatchNorm carry no bias (BN's shift replaces it).
    """

    def __init__(self, features: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        f = features

        def stage(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 4, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)]

        self.model = nn.Sequential(
            nn.Conv2d(in_channels, f, 4, 2, 1),
            nn.LeakyReLU(0.2),
            *stage(f, 2 * f, 2),
            *stage(2 * f, 4 * f, 2),
            *stage(4 * f, 8 * f, 1),
            nn.Conv2d(8 * f, 1, 4, 1, 1),
        )
        init_weights(self)

    def forward(self, lightness: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        """L_net B×1×H×W in [-1, 1] and ab_net B×2×H×W in [-1, 1] → patch logits B×1×h×w.

        h = H/8 − 2 and w = W/8 − 2 (30×30 for a 256² input); each logit sees a 70×70 input patch.
        """
        if lightness.dim() != 4 or ab.dim() != 4 or lightness.shape[1] + ab.shape[1] != self.model[0].in_channels:
            raise ValueError(
                "discriminator inputs must be L B×1×H×W and ab B×2×H×W, got "
                f"{'×'.join(map(str, lightness.shape))} and {'×'.join(map(str, ab.shape))}"
            )
        return self.model(torch.cat([lightness, ab], dim=1))
