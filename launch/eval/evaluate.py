"""`colorize-eval`: score a generator on held-out shards, beside the grey baseline.

    colorize-eval --weights runs/demo/generator.safetensors --shards demo-data/shards
    colorize-eval --weights G.safetensors --shards /data/shards --limit 5000 --json eval.json \
                  --fid-inception inception_v3_google-0cc3c7bd.pth

Reads `--split` (default val) of the shards with the project's loader (`pipeline.make_loader`, one
deterministic pass: resize by the shorter side to `--size`, centre crop), predicts ab for each L, and
reports per-image means of:
    ab-L1      mean |Δa*|, |Δb*| vs the truth, CIELAB units (lower is better)
    PSNR       dB, sRGB of (L, predicted ab) vs sRGB of (L, true ab) (higher is better; inf = identical)
    SSIM       Gaussian-window SSIM on the same sRGB pair (higher is better)
    colourful  Hasler–Süsstrunk colourfulness of the predictions (and of the truth, for reference)
    FID        only with `--fid-inception PATH` (local torchvision inception_v3 weights)
each beside the same metric for the grey baseline (ab = 0: the input itself), which any useful
colouriser must beat. A table goes to the terminal; `--json OUT` writes the same numbers (non-finite
values as the strings "inf" / "nan", so the file stays strict JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterable
from itertools import islice
from pathlib import Path

import torch

from configs.atomic import write_text_atomic
from launch.eval.metrics import ab_l1_lab_units, colourfulness, psnr_rgb, ssim_rgb
from pipeline.lab import network_to_rgb

METRICS = ("ab_l1", "psnr", "ssim", "colourfulness")
LABELS = {
    "ab_l1": "ab-L1 (Lab units, lower better)",
    "psnr": "PSNR (dB, higher better)",
    "ssim": "SSIM (higher better)",
    "colourfulness": "colourfulness (Hasler-Süsstrunk)",
    "fid": "FID (lower better)",
}


class EvalError(ValueError):
    """A command-line mistake or unusable input; printed as one `error:` line."""


def _per_image(metric: str, out_ab, true_ab, rgb, true_rgb) -> torch.Tensor:
    """One metric per image (B,) of a colouring: its ab_net and sRGB against the truth's."""
    if metric == "ab_l1":
        return ab_l1_lab_units(out_ab, true_ab, reduction="none")
    if metric == "psnr":
        return psnr_rgb(rgb, true_rgb, reduction="none")
    if metric == "ssim":
        return ssim_rgb(rgb, true_rgb, reduction="none")
    return colourfulness(rgb, reduction="none")


def evaluate_batches(
    predict: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    limit: int | None = None,
    inception: Callable[[torch.Tensor], torch.Tensor] | None = None,
    *,
    metrics: tuple[str, ...] = METRICS,
    max_batches: int | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
    others: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> dict:
    """Per-image means of `metrics` for the model and the grey baseline (and the truth's
    colourfulness), over at most `limit` images or `max_batches` batches of `batches`. The one
    evaluation loop: `colorize-eval` and the training run's `eval/*` both use it.

    `batches` yields (L_net B×1×S×S, ab_net B×2×S×S); `predict` maps L_net to predicted ab_net (any
    float dtype; the colour maths and metrics run in float32). `inception`, when given, maps sRGB
    B×3×S×S in [0, 1] to features for FID. Sums stay on the batches' device until the end (no host
    read per batch); `reduce`, when given, sums them over processes first (every process calls it,
    for its own share of the batches). `others` names more predictors scored on the same batches
    beside the model (e.g. the generator's average), each under its name. Returns {"images": n,
    "metrics": {name: {"model": x, "grey": y[, <other>: …][, "truth": z]}}}; raises EvalError when
    there was no image.
    """
    others = others or {}
    columns = [(m, who) for m in metrics for who in ("model", "grey", *others)]
    if "colourfulness" in metrics:
        columns.append(("colourfulness", "truth"))
    features: dict[str, list[torch.Tensor]] = {name: [] for name in ("model", "grey", *others, "truth")}
    sums: torch.Tensor | None = None
    seen = 0
    for lightness, ab in islice(batches, max_batches):  # None: all
        if limit is not None and seen >= limit:
            break
        if limit is not None:
            lightness, ab = lightness[: limit - seen], ab[: limit - seen]
        lightness, ab = lightness.float(), ab.float()
        outputs = {"model": predict(lightness).float(), "grey": torch.zeros_like(ab)}
        outputs |= {name: other(lightness).float() for name, other in others.items()}
        truth_rgb = network_to_rgb(lightness, ab)
        rgbs = {name: network_to_rgb(lightness, out_ab) for name, out_ab in outputs.items()} | {"truth": truth_rgb}
        batch_sums = torch.stack(
            [_per_image(metric, outputs.get(who), ab, rgbs[who], truth_rgb).double().sum() for metric, who in columns]
        )
        sums = batch_sums if sums is None else sums + batch_sums
        if inception is not None:
            for name, rgb in rgbs.items():
                features[name].append(inception(rgb))
        seen += lightness.shape[0]
    if sums is None:
        sums = torch.zeros(len(columns), dtype=torch.float64, device=device)
    counted = torch.cat([sums, torch.tensor([float(seen)], dtype=torch.float64, device=sums.device)])
    if reduce is not None:
        counted = reduce(counted)
    *totals, images = counted.tolist()
    if images == 0:
        raise EvalError("no images to evaluate (the split is empty)")
    result: dict[str, dict[str, float]] = {}
    for (metric, who), total in zip(columns, totals, strict=True):
        result.setdefault(metric, {})[who] = total / images
    if inception is not None:
        from launch.eval.fid import frechet_distance

        truth = torch.cat(features["truth"])
        result["fid"] = {
            name: frechet_distance(torch.cat(features[name]), truth) for name in ("model", "grey", *others)
        }
    return {"images": int(images), "metrics": result}


def _number(value: float) -> str:
    return "inf" if value == math.inf else "nan" if math.isnan(value) else f"{value:.4f}"


def format_table(result: dict) -> str:
    """The metrics as an aligned text table: one row per metric, columns model | grey | truth."""
    rows = [("metric", "model", "grey (ab=0)", "truth")]
    for name, values in result["metrics"].items():
        rows.append(
            (
                LABELS[name],
                _number(values["model"]),
                _number(values["grey"]),
                _number(values["truth"]) if "truth" in values else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else "-inf" if value < 0 else "nan"
    return value


def write_json(path: Path, result: dict) -> None:
    """Write `result` as strict JSON, atomically."""
    write_text_atomic(path, json.dumps(_json_safe(result), indent=2, allow_nan=False) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="colorize-eval", description="Score a generator on held-out shards beside the grey baseline."
    )
    parser.add_argument("--weights", required=True, help="generator.safetensors (ours) or a seed G_*.pth")
    parser.add_argument("--shards", required=True, help="shards directory or s3://bucket/prefix (holds manifest.json)")
    parser.add_argument("--split", default="val", help="split to score (default: val)")
    parser.add_argument("--limit", type=int, default=None, help="score at most this many images (default: all)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch (default: 16)")
    parser.add_argument(
        "--size", type=int, default=256, help="square evaluation size, a multiple of 256 (default: 256)"
    )
    parser.add_argument(
        "--backend", choices=("torch", "dali"), default="torch", help="data loader backend (default: torch)"
    )
    parser.add_argument("--workers", type=int, default=2, help="loader worker processes / DALI threads (default: 2)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda (default: auto)")
    parser.add_argument(
        "--fid-inception", default=None, metavar="PATH", help="torchvision inception_v3 weights; adds FID"
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    from configs import DataConfig
    from models.export import load_generator
    from pipeline import make_loader
    from pipeline.inference import resolve_device

    if args.size <= 0 or args.size % 256:
        raise EvalError(f"--size must be a positive multiple of 256, got {args.size}")
    if args.batch_size < 1 or args.workers < 1:
        raise EvalError("--batch-size and --workers must be >= 1")
    if args.limit is not None and args.limit < 1:
        raise EvalError(f"--limit must be >= 1, got {args.limit}")
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        raise EvalError(f"--device: {exc}") from None
    generator, meta = load_generator(args.weights, device=device)
    inception = None
    if args.fid_inception:
        from launch.eval.fid import InceptionFeatures

        inception = InceptionFeatures(args.fid_inception, device=device)
    data_cfg = DataConfig(
        shards=args.shards,
        backend=args.backend,
        size=args.size,
        batch_size=args.batch_size,
        num_threads=args.workers,
        flip=False,
        on_bad_sample="skip",
    )
    loader = make_loader(data_cfg, 0, 1, device, split=args.split, endless=False)

    from tqdm import tqdm

    total = getattr(loader, "samples_per_epoch", None)
    total = min(total, args.limit) if total and args.limit else (total or args.limit)
    with torch.inference_mode(), tqdm(total=total, unit="img", file=sys.stderr, disable=not total) as bar:

        def counted(batches):
            for batch in batches:
                bar.update(batch[0].shape[0])
                yield batch

        result = evaluate_batches(generator, counted(loader), args.limit, inception)
    result = {
        "weights": str(args.weights),
        "model": meta.get("model"),
        "shards": str(args.shards),
        "split": args.split,
        "size": args.size,
        **result,
    }
    print(f"{result['images']} images of {args.shards} ({args.split}) at {args.size}×{args.size}")
    print(format_table(result))
    if args.json:
        write_json(Path(args.json), result)
    return 0


def main(argv: list[str] | None = None) -> int:
    from configs import ConfigError
    from launch.eval.fid import FidError
    from models.export import WeightsError
    from pipeline.shard_list import ShardsDirError

    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (EvalError, WeightsError, FidError, ShardsDirError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
