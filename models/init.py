"""Weight initialisation shared by the generator and the discriminator (the seed's and pix2pix's).

Convolution and transposed-convolution weights ~ N(0, 0.02), their biases 0; BatchNorm scales
~ N(1, 0.02), BatchNorm shifts 0. Fresh networks start from this; loaded checkpoints overwrite it.
"""

from __future__ import annotations

from torch import nn

INIT_STD = 0.02

_CONVOLUTIONS = (nn.Conv2d, nn.ConvTranspose2d)
_BATCH_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)


def _init_one(module: nn.Module) -> None:
    if isinstance(module, _CONVOLUTIONS):
        nn.init.normal_(module.weight, 0.0, INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, _BATCH_NORMS):
        if module.weight is not None:
            nn.init.normal_(module.weight, 1.0, INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def init_weights(module: nn.Module) -> nn.Module:
    """Initialise every convolution and BatchNorm inside `module` in place; returns `module`."""
    module.apply(_init_one)
    return module
