"""`python -m launch.summary [--features N] [--disc-features N] [--size S]`: what the networks are.

Builds the configured generator and discriminator (fresh weights, CPU) and prints, for each, the
parameter count of every top-level child, the total, and the output shape for one S×S grey input
(L_net 1×1×S×S → ab_net 1×2×S×S → D logits 1×1×h×w).
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

from launch.config import ConfigError, ModelConfig
from models.registry import build_discriminator, build_generator


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe(title: str, module: nn.Module) -> list[str]:
    """One line per top-level child that holds parameters, then the total."""
    lines = [f"{title} ({type(module).__name__})"]
    for name, child in module.named_children():
        count = parameter_count(child)
        if count:
            lines.append(f"  {name:<14} {count:>12,}")
    lines.append(f"  {'total':<14} {parameter_count(module):>12,}")
    return lines


def shape(t: torch.Tensor) -> str:
    return "×".join(str(s) for s in t.shape)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.summary", description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=64, help="generator base width (64 = the seed)")
    parser.add_argument("--disc-features", type=int, default=64, help="discriminator base width")
    parser.add_argument("--size", type=int, default=256, help="side of the test input, a multiple of 256")
    args = parser.parse_args(argv)
    try:
        if args.features <= 0 or args.disc_features <= 0:
            raise ConfigError("--features and --disc-features must be positive")
        if args.size <= 0 or args.size % 256:
            raise ConfigError(f"--size = {args.size} must be a positive multiple of 256")
        cfg = ModelConfig(features=args.features, disc_features=args.disc_features)
        torch.manual_seed(0)
        generator, discriminator = build_generator(cfg).eval(), build_discriminator(cfg).eval()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    lightness = torch.zeros(1, 1, args.size, args.size)
    with torch.no_grad():
        ab = generator(lightness)
        logits = discriminator(lightness, ab)
    lines = describe(f"generator {cfg.generator}, features={cfg.features}", generator)
    lines += describe(f"discriminator {cfg.discriminator}, features={cfg.disc_features}", discriminator)
    lines.append(f"shapes: L {shape(lightness)} → G → ab {shape(ab)} → D(L, ab) → logits {shape(logits)}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
