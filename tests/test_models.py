"""The networks: the seed generator's exact state_dict layout and size, shapes and ranges, the
PatchGAN's patch grid and size, the initialisation statistics, and the registry's errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from configs import ConfigError, ModelConfig
from models import (
    DISCRIMINATORS,
    GENERATORS,
    Generator,
    PatchDiscriminator,
    build_discriminator,
    build_generator,
    init_weights,
)

SEED_STATE_DICT = Path(__file__).parent / "data" / "generator_state_dict.tsv"
SEED_GENERATOR_PARAMETERS = 57_472_642
# pix2pix's 70×70 PatchGAN, counted by hand: conv1 3·64·16 + 64; conv2 64·128·16 + BN 2·128;
# conv3 128·256·16 + BN 2·256; conv4 256·512·16 + BN 2·512; conv5 512·16 + 1.
PATCHGAN_PARAMETERS = (
    (3 * 64 * 16 + 64) + (64 * 128 * 16 + 256) + (128 * 256 * 16 + 512) + (256 * 512 * 16 + 1024) + (512 * 16 + 1)
)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def seed_generator() -> Generator:
    torch.manual_seed(0)
    return Generator(features=64)


@pytest.fixture(scope="module")
def small_generator() -> Generator:
    torch.manual_seed(0)
    return Generator(features=8)


def test_generator_has_the_seed_parameter_count(seed_generator):
    assert parameter_count(seed_generator) == SEED_GENERATOR_PARAMETERS


def test_generator_state_dict_matches_the_seed_checkpoint_layout(seed_generator):
    expected = [tuple(line.split("\t")) for line in SEED_STATE_DICT.read_text().splitlines() if line]
    actual = [
        (key, "x".join(str(s) for s in t.shape) if t.dim() else "scalar", str(t.dtype).removeprefix("torch."))
        for key, t in seed_generator.state_dict().items()
    ]
    assert len(expected) == 173
    assert actual == expected


def test_generator_loads_a_seed_style_state_dict_strictly(seed_generator):
    # A checkpoint with the seed's names (here: another fresh generator) loads with strict=True.
    other = Generator(features=64).state_dict()
    result = seed_generator.load_state_dict(other, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(seed_generator.state_dict()["up7.conv.0.weight"], other["up7.conv.0.weight"])


@pytest.mark.parametrize("height, width", [(256, 256), (512, 256)])
def test_generator_output_is_ab_of_the_input_size_in_tanh_range(small_generator, height, width):
    lightness = torch.rand(2, 1, height, width) * 2 - 1
    small_generator.train()
    ab = small_generator(lightness)
    assert ab.shape == (2, 2, height, width)
    assert ab.dtype == torch.float32
    assert ab.abs().max() <= 1.0
    assert ab.std() > 0  # not a constant map


def test_seed_width_generator_runs_at_256(seed_generator):
    seed_generator.eval()
    with torch.no_grad():
        ab = seed_generator(torch.zeros(1, 1, 256, 256))
    assert ab.shape == (1, 2, 256, 256) and torch.isfinite(ab).all()


def test_generator_eval_mode_is_deterministic(small_generator):
    small_generator.eval()
    lightness = torch.rand(1, 1, 256, 256) * 2 - 1
    with torch.no_grad():
        assert torch.equal(small_generator(lightness), small_generator(lightness))


@pytest.mark.parametrize(
    "shape, shown",
    [
        ((1, 1, 255, 256), "1×1×255×256"),
        ((1, 1, 256, 384), "1×1×256×384"),
        ((1, 3, 256, 256), "1×3×256×256"),
        ((1, 256, 256), "1×256×256"),
    ],
)
def test_generator_rejects_bad_input_shapes_before_running_layers(small_generator, shape, shown):
    calls = []
    hook = small_generator.initial_down.register_forward_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(ValueError) as info:
            small_generator(torch.zeros(shape))
    finally:
        hook.remove()
    assert str(info.value) == f"generator input must be B×1×H×W with H and W multiples of 256, got {shown}"
    assert calls == []


def test_discriminator_gives_30x30_logits_for_256_and_has_the_pix2pix_size():
    torch.manual_seed(0)
    disc = PatchDiscriminator()
    assert parameter_count(disc) == PATCHGAN_PARAMETERS == 2_765_633
    assert abs(PATCHGAN_PARAMETERS - 2.77e6) / 2.77e6 < 0.01
    logits = disc(torch.rand(2, 1, 256, 256) * 2 - 1, torch.rand(2, 2, 256, 256) * 2 - 1)
    assert logits.shape == (2, 1, 30, 30)
    assert logits.std() > 0


def test_discriminator_patch_grid_follows_the_input_size():
    disc = PatchDiscriminator(features=8)
    assert disc(torch.zeros(2, 1, 512, 256), torch.zeros(2, 2, 512, 256)).shape == (2, 1, 62, 30)


def test_discriminator_conditions_on_lightness():
    torch.manual_seed(0)
    disc = PatchDiscriminator(features=8).eval()
    ab = torch.rand(1, 2, 256, 256) * 2 - 1
    dark, bright = torch.full((1, 1, 256, 256), -0.8), torch.full((1, 1, 256, 256), 0.8)
    assert not torch.allclose(disc(dark, ab), disc(bright, ab))


def test_discriminator_rejects_wrong_channels():
    with pytest.raises(ValueError, match="discriminator inputs must be L B×1×H×W and ab B×2×H×W"):
        PatchDiscriminator(features=8)(torch.zeros(1, 1, 64, 64), torch.zeros(1, 3, 64, 64))


def _weights(module: nn.Module, kinds) -> torch.Tensor:
    return torch.cat([m.weight.detach().flatten() for m in module.modules() if isinstance(m, kinds)])


def _biases(module: nn.Module, kinds) -> torch.Tensor:
    return torch.cat(
        [m.bias.detach().flatten() for m in module.modules() if isinstance(m, kinds) and m.bias is not None]
    )


@pytest.mark.parametrize("network", ["generator", "discriminator"])
def test_networks_start_from_the_seed_initialisation(seed_generator, network):
    module = seed_generator if network == "generator" else PatchDiscriminator()
    convs = _weights(module, (nn.Conv2d, nn.ConvTranspose2d))
    assert abs(convs.mean().item()) < 1e-3
    assert convs.std().item() == pytest.approx(0.02, rel=0.02)
    assert torch.count_nonzero(_biases(module, (nn.Conv2d, nn.ConvTranspose2d))) == 0
    norms = _weights(module, nn.BatchNorm2d)
    assert norms.mean().item() == pytest.approx(1.0, abs=0.005)
    assert norms.std().item() == pytest.approx(0.02, rel=0.15)
    assert torch.count_nonzero(_biases(module, nn.BatchNorm2d)) == 0


def test_init_weights_overwrites_pytorch_defaults():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(16, 64, 3), nn.BatchNorm2d(64), nn.ConvTranspose2d(64, 16, 4), nn.Linear(4, 4))
    linear_before = module[3].weight.detach().clone()
    assert init_weights(module) is module
    assert module[0].weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.count_nonzero(module[0].bias) == 0 and torch.count_nonzero(module[2].bias) == 0
    assert module[1].weight.std().item() == pytest.approx(0.02, rel=0.35)
    assert module[1].weight.mean().item() == pytest.approx(1.0, abs=0.01)
    assert torch.equal(module[3].weight, linear_before)  # layers the seed does not initialise stay as they are


def test_registry_builds_the_configured_networks():
    cfg = ModelConfig(features=8, disc_features=16)
    generator, discriminator = build_generator(cfg), build_discriminator(cfg)
    assert isinstance(generator, Generator) and generator.final_up[0].in_channels == 16
    assert isinstance(discriminator, PatchDiscriminator) and discriminator.model[0].out_channels == 16
    assert GENERATORS == {"seed_unet": Generator}
    assert DISCRIMINATORS == {"patchgan70": PatchDiscriminator}


def test_registry_rejects_unknown_names_with_the_config_key():
    with pytest.raises(ConfigError) as info:
        build_generator(ModelConfig(generator="x"))
    assert str(info.value) == "model.generator = 'x' is not one of: seed_unet"
    with pytest.raises(ConfigError) as info:
        build_discriminator(ModelConfig(discriminator="patchgan"))
    assert str(info.value) == "model.discriminator = 'patchgan' is not one of: patchgan70"
