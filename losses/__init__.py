"""Losses, kept apart from the networks: ab L1, the frozen VGG19-bn feature loss, pix2pix BCE."""

from losses.adversarial import discriminator_loss, generator_adversarial_loss
from losses.feature import VGGFeatureLoss, VGGWeightsError, build_feature_loss, load_vgg19_bn_features
from losses.l1 import ab_l1

__all__ = [
    "VGGFeatureLoss",
    "VGGWeightsError",
    "ab_l1",
    "build_feature_loss",
    "discriminator_loss",
    "generator_adversarial_loss",
    "load_vgg19_bn_features",
]
