"""Networks: the seed's generator, the 70×70 PatchGAN discriminator, weight init, named factories."""

from models.discriminator import PatchDiscriminator
from models.generator import Generator
from models.init import init_weights
from models.registry import DISCRIMINATORS, GENERATORS, build_discriminator, build_generator

__all__ = [
    "DISCRIMINATORS",
    "GENERATORS",
    "Generator",
    "PatchDiscriminator",
    "build_discriminator",
    "build_generator",
    "init_weights",
]
