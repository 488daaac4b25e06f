"""`colorize-import-seed G.pth OUT.safetensors`: convert a seed generator checkpoint once.

The seed project saved its generator as a pickled PyTorch state_dict (`G_1_2000000_gan.pth`). This
reads it with `torch.load(weights_only=True)` (no code from the file runs), checks every key and shape
against our generator (width inferred from `initial_down.0.weight`), and writes our export format
(`OUT.safetensors`, its metadata in the header) so later tools load it without pickle.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from models.export import WeightsError, load_generator, save_generator

    parser = argparse.ArgumentParser(prog="colorize-import-seed", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("checkpoint", help="the seed's generator checkpoint, e.g. G_1_2000000_gan.pth")
    parser.add_argument("out", help="where to write the converted weights; must end in .safetensors")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.suffix != ".safetensors":
        print(f"error: {out}: the output name must end in .safetensors", file=sys.stderr)
        return 2
    try:
        generator, meta = load_generator(args.checkpoint)
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model = meta["model"]
    save_generator(out, generator, model, extra={"imported_from": Path(args.checkpoint).name})
    params = sum(p.numel() for p in generator.parameters())
    print(f"wrote {out}: {model['generator']}, features={model['features']}, {params:,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
