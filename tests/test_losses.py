"""The losses: L1 and BCE against hand-computed values; the VGG feature loss's zero point, gradient
path into the generator, frozen and always-eval VGG, input modes, autocast and weight loading.

VGG uses random weights (`weights="none"`): the tests check the loss's mechanics, not ImageNet
features, and never download anything.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from configs import ConfigError, LossConfig
from losses import (
    VGGFeatureLoss,
    VGGWeightsError,
    ab_l1,
    build_feature_loss,
    discriminator_loss,
    generator_adversarial_loss,
    load_vgg19_bn_features,
)
from models import Generator
from pipeline.lab import rgb_to_network

# ---------------------------------------------------------------------------------------------- L1


def test_ab_l1_is_the_mean_absolute_difference():
    fake = torch.tensor([[[[0.5, -0.25]], [[0.0, 1.0]]]])  # 1×2×1×2
    real = torch.tensor([[[[0.0, 0.25]], [[-0.5, 0.5]]]])
    assert ab_l1(fake, real).item() == pytest.approx((0.5 + 0.5 + 0.5 + 0.5) / 4)
    assert ab_l1(real, real).item() == 0.0


def test_ab_l1_returns_float32_for_bf16_inputs_and_rejects_mismatched_shapes():
    fake = torch.full((2, 2, 4, 4), 0.25, dtype=torch.bfloat16)
    loss = ab_l1(fake, torch.zeros_like(fake))
    assert loss.dtype == torch.float32 and loss.item() == 0.25
    with pytest.raises(ValueError, match="ab_l1 needs tensors of one shape"):
        ab_l1(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 2))


# ------------------------------------------------------------------------------------ adversarial


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_discriminator_loss_is_half_the_sum_of_bce_on_real_and_fake():
    real_logits = torch.tensor([2.0, -1.0, 0.0, 3.5]).view(1, 1, 2, 2)
    fake_logits = torch.tensor([-2.0, 0.5, 1.0, -4.0]).view(1, 1, 2, 2)
    # BCE(x, 1) = log(1 + e^{-x}); BCE(x, 0) = log(1 + e^{x}); both averaged over the patches.
    expected_real = sum(softplus(-x) for x in real_logits.flatten().tolist()) / 4
    expected_fake = sum(softplus(x) for x in fake_logits.flatten().tolist()) / 4
    loss, loss_real, loss_fake = discriminator_loss(real_logits, fake_logits)
    assert loss_real.item() == pytest.approx(expected_real, rel=1e-6)
    assert loss_fake.item() == pytest.approx(expected_fake, rel=1e-6)
    assert loss.item() == pytest.approx(0.5 * (expected_real + expected_fake), rel=1e-6)


def test_generator_adversarial_loss_wants_fakes_called_real():
    fake_logits = torch.tensor([-2.0, 0.5, 1.0, -4.0]).view(1, 1, 2, 2)
    expected = sum(softplus(-x) for x in fake_logits.flatten().tolist()) / 4
    assert generator_adversarial_loss(fake_logits).item() == pytest.approx(expected, rel=1e-6)
    # A discriminator fooled with confidence costs G almost nothing; one not fooled costs a lot.
    assert generator_adversarial_loss(torch.full((1, 1, 2, 2), 20.0)).item() < 1e-6
    assert generator_adversarial_loss(torch.full((1, 1, 2, 2), -20.0)).item() == pytest.approx(20.0, rel=1e-6)


def test_adversarial_losses_are_stable_for_extreme_bf16_logits():
    huge = torch.full((2, 1, 30, 30), 1e4, dtype=torch.bfloat16)
    loss, _, loss_fake = discriminator_loss(huge, -huge)
    assert loss.dtype == torch.float32 and loss.item() == 0.0 and loss_fake.item() == 0.0
    assert torch.isfinite(generator_adversarial_loss(-huge))


# ---------------------------------------------------------------------------------- feature loss


@pytest.fixture(scope="module")
def feature_loss() -> VGGFeatureLoss:
    torch.manual_seed(0)
    return VGGFeatureLoss(weights="none")


@pytest.fixture(scope="module")
def photo_batch(colour_photos) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_net 1×1×64×64, ab_net 1×2×64×64) of a real photo (the astronaut's top-left corner, downsized)."""
    rgb = torch.from_numpy(colour_photos["astronaut"]).permute(2, 0, 1).float().div(255)[None]
    rgb = nn.functional.interpolate(rgb, size=(64, 64), mode="area")
    return rgb_to_network(rgb)


def vgg_state(loss: VGGFeatureLoss) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in loss.slices.state_dict().items()}


def test_feature_loss_is_zero_for_the_true_colours_and_positive_otherwise(feature_loss, photo_batch):
    lightness, ab = photo_batch
    assert feature_loss(lightness, ab, ab).item() == 0.0
    grey = torch.zeros_like(ab)
    worse = feature_loss(lightness, grey, ab).item()
    assert worse > 0
    # Closer colours cost less: halfway between grey and the truth scores between the two.
    assert 0 < feature_loss(lightness, ab / 2, ab).item() < worse


def test_feature_loss_sums_the_weighted_slices(photo_batch):
    torch.manual_seed(0)
    only_pool4 = VGGFeatureLoss(layer_weights=(0.0, 1.0, 0.0), weights="none")
    both = VGGFeatureLoss(layer_weights=(0.0, 3.0, 2.0), weights="none")
    both.load_state_dict(only_pool4.state_dict())
    lightness, ab = photo_batch
    fake = torch.zeros_like(ab)
    with torch.no_grad():
        real_features = only_pool4.features(only_pool4.vgg_input(lightness, ab))
        fake_features = only_pool4.features(only_pool4.vgg_input(lightness, fake))
    per_slice = [(f - r).abs().mean().item() for f, r in zip(fake_features, real_features, strict=True)]
    assert only_pool4(lightness, fake, ab).item() == pytest.approx(per_slice[1], rel=1e-5)
    assert both(lightness, fake, ab).item() == pytest.approx(3 * per_slice[1] + 2 * per_slice[2], rel=1e-5)
    assert [f.shape[-1] for f in fake_features] == [8, 4, 2]  # pool3, pool4, pool5 of a 64² input


def test_feature_loss_trains_the_generator_and_leaves_vgg_untouched(feature_loss):
    torch.manual_seed(0)
    generator = Generator(features=4)
    # The parent of both, as a training script might hold them: .train() reaches every child.
    parent = nn.ModuleDict({"generator": generator, "feature_loss": feature_loss}).train()
    assert generator.training and feature_loss.training
    assert not any(m.training for m in feature_loss.slices.modules())
    before_vgg = vgg_state(feature_loss)
    before_generator = {k: v.detach().clone() for k, v in generator.named_parameters()}
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-3)

    lightness = torch.rand(1, 1, 256, 256) * 2 - 1
    real_ab = torch.rand(1, 2, 256, 256) * 0.6 - 0.3
    loss = feature_loss(lightness, generator(lightness), real_ab)
    loss.backward()
    grads = {k: p.grad for k, p in generator.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["initial_down.0.weight"].abs().sum() > 0  # the gradient reaches the first layer
    assert all(p.grad is None for p in feature_loss.parameters())
    optimizer.step()

    assert any(not torch.equal(p, before_generator[k]) for k, p in generator.named_parameters())
    after_vgg = vgg_state(feature_loss)
    assert after_vgg.keys() == before_vgg.keys()
    assert all(torch.equal(after_vgg[k], before_vgg[k]) for k in before_vgg)  # weights and BN statistics
    assert not any(p.requires_grad for p in feature_loss.parameters())
    parent.eval()


def test_feature_loss_gradient_survives_out_of_gamut_colours(feature_loss):
    # Extreme ab (the generator's Tanh limits) are far outside sRGB; clipping there would give zero
    # gradient, so the loss converts without clipping and every pixel still gets a push.
    lightness = torch.linspace(-0.9, 0.9, 64).view(1, 1, 1, 64).expand(1, 1, 64, 64)
    fake = torch.ones(1, 2, 64, 64).mul(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1)).requires_grad_()
    feature_loss(lightness, fake, torch.zeros(1, 2, 64, 64)).backward()
    per_pixel = fake.grad.abs().sum(dim=1)
    assert torch.isfinite(fake.grad).all()
    assert (per_pixel > 0).float().mean() > 0.99


def test_seed_mode_feeds_lab_not_rgb(feature_loss, photo_batch):
    seed_mode = VGGFeatureLoss(input_mode="lab", weights="none")
    seed_mode.load_state_dict(feature_loss.state_dict())
    lightness, ab = photo_batch
    assert torch.equal(seed_mode.vgg_input(lightness, ab), torch.cat([lightness, ab], 1))
    rgb_input = feature_loss.vgg_input(lightness, ab)
    # rgb mode: ImageNet-normalised sRGB; undoing the normalisation gives the photo back in [0, 1].
    rgb = rgb_input * feature_loss.std + feature_loss.mean
    assert rgb.min() > -1e-3 and rgb.max() < 1 + 1e-3
    fake = torch.zeros_like(ab)
    assert seed_mode(lightness, fake, ab).item() != pytest.approx(feature_loss(lightness, fake, ab).item(), rel=1e-3)


def test_feature_loss_runs_under_bf16_autocast(feature_loss, photo_batch):
    lightness, ab = photo_batch
    fake = torch.zeros_like(ab)
    full = feature_loss(lightness, fake, ab)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = feature_loss(lightness, fake, ab)
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed)
    assert mixed.item() == pytest.approx(full.item(), rel=0.05)


def test_feature_loss_rejects_mismatched_inputs_and_bad_options(feature_loss):
    with pytest.raises(ValueError, match="feature loss needs L B×1×H×W and fake/real ab B×2×H×W"):
        feature_loss(torch.zeros(1, 1, 64, 64), torch.zeros(1, 2, 64, 64), torch.zeros(1, 2, 32, 32))
    with pytest.raises(ValueError, match="input_mode = 'hsv' is not one of: rgb, lab"):
        VGGFeatureLoss(input_mode="hsv", weights="none")
    with pytest.raises(ValueError, match="layer_weights needs 3 values"):
        VGGFeatureLoss(layer_weights=(1.0, 2.0), weights="none")


def test_build_feature_loss_follows_the_config():
    loss = build_feature_loss(LossConfig(vgg_layer_weights=(1.0, 2.0, 3.0), vgg_input="lab", vgg_weights="none"))
    assert loss.layer_weights == (1.0, 2.0, 3.0) and loss.input_mode == "lab"


# --------------------------------------------------------------------------------- weight loading


@pytest.fixture(scope="module")
def saved_features() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return load_vgg19_bn_features("none").state_dict()


def assert_loaded(loss: VGGFeatureLoss, expected: dict[str, torch.Tensor]) -> None:
    loaded = {}
    for stage in loss.slices:  # slices keep vgg19_bn's own module indices ("27.weight", ...)
        loaded.update(stage.state_dict())
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_local_full_model_state_dict_loads(tmp_path, saved_features):
    # Keys as torchvision's vgg19_bn.state_dict() names them; the classifier is ignored.
    full = {f"features.{k}": v for k, v in saved_features.items()} | {"classifier.6.bias": torch.zeros(1000)}
    path = tmp_path / "vgg19_bn.pth"
    torch.save(full, path)
    assert_loaded(VGGFeatureLoss(weights=str(path)), saved_features)


def test_local_features_only_safetensors_loads(tmp_path, saved_features):
    path = tmp_path / "vgg19_bn_features.safetensors"
    save_file({k: v.contiguous() for k, v in saved_features.items()}, str(path))
    assert_loaded(VGGFeatureLoss(weights=str(path)), saved_features)


def test_missing_weights_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "vgg.pth"
    with pytest.raises(VGGWeightsError, match=f"VGG19-bn weights file not found: {missing}") as info:
        VGGFeatureLoss(weights=str(missing))
    assert isinstance(info.value, ConfigError)


def test_foreign_or_unreadable_weights_are_refused(tmp_path):
    foreign = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, foreign)
    with pytest.raises(VGGWeightsError, match=f"{foreign} is not a VGG19-bn state_dict"):
        VGGFeatureLoss(weights=str(foreign))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(VGGWeightsError, match=f"cannot read VGG19-bn weights from {garbage}"):
        VGGFeatureLoss(weights=str(garbage))


def test_imagenet_weights_come_from_torchvision(monkeypatch, saved_features):
    from torchvision.models import VGG19_BN_Weights

    asked = []

    def fake_download(self, **kwargs):
        asked.append(self.url)
        return {f"features.{k}": v for k, v in saved_features.items()}

    monkeypatch.setattr(type(VGG19_BN_Weights.IMAGENET1K_V1), "get_state_dict", fake_download)
    assert_loaded(VGGFeatureLoss(weights="imagenet"), saved_features)
    assert asked == [VGG19_BN_Weights.IMAGENET1K_V1.url]

    def offline(self, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(type(VGG19_BN_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(
        VGGWeightsError, match="cannot download VGG19-bn ImageNet weights .*local state_dict path"
    ) as error:
        VGGFeatureLoss(weights="imagenet")
    # The message names the file and where to put it so that no download is needed.
    file_name = VGG19_BN_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    assert str(Path(torch.hub.get_dir()) / "checkpoints" / file_name) in str(error.value)
