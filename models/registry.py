"""Named model factories, so a config chooses networks by name and a typo fails at start-up.

`build_generator(cfg.model)` / `build_discriminator(cfg.model)` look the configured names up here;
an unknown name raises `ConfigError` listing the known ones.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from configs import ConfigError, ModelConfig
from models.discriminator import PatchDiscriminator
from models.generator import Generator

GENERATORS: dict[str, Callable[..., nn.Module]] = {"seed_unet": Generator}
"""Generator factories: name → callable(features=...) returning a module L_net B×1×H×W → ab_net B×2×H×W."""

DISCRIMINATORS: dict[str, Callable[..., nn.Module]] = {"patchgan70": PatchDiscriminator}
"""Discriminator factories: name → callable(features=...) returning a module (L, ab) → patch logits."""


def _lookup(table: dict[str, Callable[..., nn.Module]], key: str, name: str) -> Callable[..., nn.Module]:
    if name not in table:
        raise ConfigError(f"{key} = {name!r} is not one of: {', '.join(sorted(table))}")
    return table[name]


def build_generator(model_cfg: ModelConfig) -> nn.Module:
    """A freshly initialised generator named by `model_cfg.generator`, width `model_cfg.features`."""
    return _lookup(GENERATORS, "model.generator", model_cfg.generator)(features=model_cfg.features)


def build_discriminator(model_cfg: ModelConfig) -> nn.Module:
    """A freshly initialised discriminator named by `model_cfg.discriminator`, width `model_cfg.disc_features`."""
    return _lookup(DISCRIMINATORS, "model.discriminator", model_cfg.discriminator)(features=model_cfg.disc_features)
