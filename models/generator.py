"""The seed's generator: a U-Net whose encoder is built from ResNet-style residual units.

It maps the lightness of a photo to its colour: input L_net (B×1×H×W, CIELAB L*/50 − 1, in [-1, 1]),
output ab_net (B×2×H×W, CIELAB (a*, b*)/128, in [-1, 1] through a final Tanh). The encoder halves the
resolution eight times (256 → 1 at the bottleneck), so H and W must be multiples of 256.

Module names and shapes match the seed's checkpoints (`G_*.pth`) exactly, so they load with
`load_state_dict` unchanged; with features = 64 the network has 57,472,642 parameters. Some names
are kept although they read oddly (the shortcut `downsample5` serves d8, `downsample3` d9 and
`downsample4` d11; `res3` and `down2` downsample) because renaming them would break those checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn

from models.init import init_weights

# Eight stride-2 stages take a 256-pixel side down to the 1×1 bottleneck.
SIZE_MULTIPLE = 256


class Block(nn.Module):
    """One resolution step: a 4×4 stride-2 convolution (down) or transposed convolution (up), then
    BatchNorm, then LeakyReLU(0.2) (`leaky`) or ReLU. B×in×H×W → B×out×(H/2 or 2H)×(W/2 or 2W)."""

    def __init__(self, in_channels: int, out_channels: int, down: bool, leaky: bool) -> None:
        super().__init__()
        conv_type = nn.Conv2d if down else nn.ConvTranspose2d
        self.conv = nn.Sequential(
            conv_type(in_channels, out_channels, 4, 2, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(0.2) if leaky else nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _residual_unit(channels: int) -> nn.Sequential:
    """Conv3×3 → BN → LeakyReLU(0.2) → Conv3×3 → BN, same shape in and out; the caller adds the
    skip (the seed applies no activation after the addition)."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
        nn.BatchNorm2d(channels),
        nn.LeakyReLU(0.2),
        nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
        nn.BatchNorm2d(channels),
    )


def _down_residual(in_channels: int, out_channels: int) -> nn.Sequential:
    """Block(in → out, down, leaky) → Conv3×3 → BN: halves H and W; paired with a 1×1 shortcut."""
    return nn.Sequential(
        Block(in_channels, out_channels, down=True, leaky=True),
        nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def _shortcut(in_channels: int, out_channels: int) -> nn.Sequential:
    """1×1 stride-2 convolution → BN: the residual shortcut of a resolution-halving stage."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, 2, 0, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def _up_with_dropout(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(Block(in_channels, out_channels, down=False, leaky=False), nn.Dropout(0.5))


class Generator(nn.Module):
    """The seed's ResNet-encoder U-Net colouriser.

    forward(L): L_net B×1×H×W float in [-1, 1] (CIELAB L*/50 − 1), H and W multiples of 256
    → ab_net B×2×H×W in [-1, 1] (CIELAB (a*, b*)/128).

    `features` is the base width f (64 = the seed); the widest layers have 8f channels. The decoder's
    first three levels use Dropout(0.5), active in train mode only.
    """

    def __init__(self, features: int = 64) -> None:
        super().__init__()
        f = features
        # Registration order follows the seed's state_dict, so saved key lists compare line by line.
        self.initial_down = nn.Sequential(nn.Conv2d(1, f, 4, 2, 1, bias=False), nn.LeakyReLU(0.2))
        self.res1 = _residual_unit(f)
        self.res2 = _residual_unit(f)
        self.res3 = _down_residual(f, 2 * f)
        self.downsample1 = _shortcut(f, 2 * f)
        self.res4 = _residual_unit(2 * f)
        self.down2 = _down_residual(2 * f, 4 * f)
        self.downsample2 = _shortcut(2 * f, 4 * f)
        self.res5 = _residual_unit(4 * f)
        self.downsample3 = _shortcut(8 * f, 8 * f)
        self.down3 = Block(4 * f, 8 * f, down=True, leaky=True)
        self.downsample4 = _shortcut(8 * f, 8 * f)
        self.down4 = Block(8 * f, 8 * f, down=True, leaky=True)
        self.downsample5 = _shortcut(4 * f, 8 * f)
        self.down5 = Block(8 * f, 8 * f, down=True, leaky=True)
        self.down6 = Block(8 * f, 8 * f, down=True, leaky=True)
        self.bottleneck = nn.Sequential(nn.Conv2d(8 * f, 8 * f, 4, 2, 1), nn.ReLU())
        self.up1 = Block(8 * f, 8 * f, down=False, leaky=False)
        self.up2 = _up_with_dropout(16 * f, 8 * f)
        self.up3 = _up_with_dropout(16 * f, 8 * f)
        self.up4 = _up_with_dropout(16 * f, 8 * f)
        self.up5 = Block(16 * f, 4 * f, down=False, leaky=False)
        self.up6 = Block(8 * f, 2 * f, down=False, leaky=False)
        self.up7 = Block(4 * f, f, down=False, leaky=False)
        self.final_up = nn.Sequential(nn.ConvTranspose2d(2 * f, 2, 4, 2, 1), nn.Tanh())
        init_weights(self)

    @staticmethod
    def check_input(lightness: torch.Tensor) -> None:
        """Raise ValueError unless `lightness` is B×1×H×W with H and W multiples of 256."""
        shape = tuple(lightness.shape)
        if (
            lightness.dim() != 4
            or shape[1] != 1
            or shape[2] == 0
            or shape[3] == 0
            or shape[2] % SIZE_MULTIPLE
            or shape[3] % SIZE_MULTIPLE
        ):
            got = "×".join(str(s) for s in shape)
            raise ValueError(f"generator input must be B×1×H×W with H and W multiples of {SIZE_MULTIPLE}, got {got}")

    def forward(self, lightness: torch.Tensor) -> torch.Tensor:
        """L_net B×1×H×W in [-1, 1] → ab_net B×2×H×W in [-1, 1]; shapes for a 256² input in comments."""
        self.check_input(lightness)
        d1 = self.initial_down(lightness)  # f@128
        d2 = self.res1(d1)  # f@128 (the seed adds no skip here)
        d3 = self.res2(d2) + d1  # f@128
        d4 = self.res3(d3) + self.downsample1(d3)  # 2f@64
        d5 = self.res4(d4) + d4  # 2f@64
        d6 = self.down2(d5) + self.downsample2(d5)  # 4f@32
        d7 = self.res5(d6) + d6  # 4f@32
        d8 = self.down3(d7) + self.downsample5(d7)  # 8f@16
        d9 = self.down4(d8) + self.downsample3(d8)  # 8f@8
        d10 = self.down5(d9)  # 8f@4 (no shortcut in the seed)
        d11 = self.down6(d10) + self.downsample4(d10)  # 8f@2
        bottleneck = self.bottleneck(d11)  # 8f@1
        up1 = self.up1(bottleneck)  # 8f@2
        up2 = self.up2(torch.cat([up1, d11], 1))  # 8f@4
        up3 = self.up3(torch.cat([up2, d10], 1))  # 8f@8
        up4 = self.up4(torch.cat([up3, d9], 1))  # 8f@16
        up5 = self.up5(torch.cat([up4, d8], 1))  # 4f@32
        up6 = self.up6(torch.cat([up5, d7], 1))  # 2f@64
        up7 = self.up7(torch.cat([up6, d5], 1))  # f@128
        return self.final_up(torch.cat([up7, d3], 1))  # 2@256
