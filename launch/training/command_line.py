"""The command line of a training run (launch/train.py, and `colorize-train` after `--config`):
`--config RUN.yaml [key=value ...] [--resume | --overwrite]`, options and overrides in any order.

Kept apart from launch/train.py so that `colorize-train` checks a command line without importing the
networks."""

from __future__ import annotations

import argparse

from launch.training import wandb_run

DESCRIPTION = "Train the colorization GAN: NoGAN (generator only), then GAN (PatchGAN discriminator), in one run."


def build_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    parser.add_argument("--config", required=True, help="run config YAML, e.g. configs/demo.yaml")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of the run")
    parser.add_argument(
        "--overwrite", action="store_true", help="move an earlier run of this name aside (to <name>.old-N), start over"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.batch_size=64")
    return parser


def parse_args(argv: list[str] | None, prog: str = "train.py") -> argparse.Namespace:
    """The options and the `key=value` overrides, in any order (`--resume` may stand among them)."""
    parser = build_parser(prog)
    args, extra = parser.parse_known_intermixed_args(argv)
    if args.resume and args.overwrite:
        parser.error("--resume continues the run and --overwrite starts it over: give one of them")
    # A W&B sweep agent passes its parameters as --key=value (`${args}` in configs/sweeps/*.yaml).
    args.overrides = [*args.overrides, *wandb_run.agent_overrides(extra)]
    return args
