"""`colorize-bench`: the project's benchmarks, one sub-command each (`shards`, `loader`, `step`, `train`).

Each sub-command lives in its own module `launch.bench.<name>` exposing `add_arguments(parser)` and
`run(args) -> int`; modules are imported only when their sub-command runs, so one benchmark's heavy
imports (torch, DALI) never slow another down.
"""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHMARKS = {
    "shards": "build shards from generated ImageNet-like JPEGs; prints images/s",
    "loader": "data loader throughput against the seed-style baseline",
    "step": "training step time",
    "train": "end-to-end training throughput",
}


def _module(name: str):
    return importlib.import_module(f"launch.bench.{name}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="colorize-bench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="benchmark", required=True, metavar="{" + ",".join(BENCHMARKS) + "}")
    # Only the chosen benchmark's module is imported: peek at the sub-command before building parsers.
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    for name, summary in BENCHMARKS.items():
        sub = commands.add_parser(name, help=summary, description=summary)
        if name == chosen:
            _module(name).add_arguments(sub)
    args = parser.parse_args(argv)
    return int(_module(args.benchmark).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
