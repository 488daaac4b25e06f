"""The generator's export format: one `generator.safetensors` that carries its own metadata.

    runs/<name>/generator.safetensors   the state_dict (weights and BatchNorm buffers), and in the
                                        header (metadata key `colorization`) the JSON
                                        {"format": "colorization-generator/1", "model": {...}, ...}

The metadata says which factory and width rebuild the network and how its tensors are scaled, so a
user can run the model without the training config (`read_metadata`; `safe_open(...).metadata()`
shows it too). A training run adds its step and phase, and `weights`: "ema" when the file holds the
moving average of the generator's weights (with {"decay", "updates"} under `ema`), "raw" when it holds
the generator as trained. Exports of earlier versions also wrote the same JSON beside the weights
(`generator.json`); it is still read when the header lacks it. `load_generator` also reads the seed
project's `G_*.pth` checkpoints (a plain PyTorch state_dict with the same module names), which is how
its released weights are imported.

Network tensors (see `pipeline.lab`): input L_net = L*/50 − 1 (B×1×H×W, [-1, 1]), output
ab_net = ab*/128 (B×2×H×W, [-1, 1]); H and W multiples of 256.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from configs import ModelConfig
from configs.atomic import atomic_path
from pipeline.location import first_line

FORMAT = "colorization-generator/1"
NORMALISATION = {"L": "L*/50 - 1", "ab": "ab*/128", "colour_space": "CIELAB D65 (skimage constants)"}
INPUT_MULTIPLE = 256
# Every generator of ours and the seed's share this first layer: Conv2d(1 → features, 4, 2, 1).
FIRST_WEIGHT = "initial_down.0.weight"
_HEADER_KEY = "colorization"
# Prefixes that wrappers add to parameter names, outermost first: DistributedDataParallel, torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class WeightsError(ValueError):
    """A weights file that cannot be used; the one-line message names the file and the reason."""


def legacy_sidecar(path: str | Path) -> Path:
    """`x/generator.safetensors` → `x/generator.json`, the metadata file exports of earlier versions wrote."""
    return Path(path).with_suffix(".json")


def _unwrapped(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` without the prefixes wrappers add to parameter names (DDP, then torch.compile)."""
    state = dict(state)
    for prefix in _WRAPPER_PREFIXES:
        consume_prefix_in_state_dict_if_present(state, prefix)
    return state


def export_metadata(model_cfg: ModelConfig | dict, extra: dict | None = None) -> dict[str, Any]:
    """The metadata of a generator built from `model_cfg` (a ModelConfig or a dict with
    `generator` and `features`), with `extra` (e.g. step, phase) merged in at the top level."""
    if isinstance(model_cfg, ModelConfig):
        name, features = model_cfg.generator, model_cfg.features
    else:
        name, features = model_cfg.get("generator", "seed_unet"), model_cfg["features"]
    meta: dict[str, Any] = {
        "format": FORMAT,
        "model": {"generator": str(name), "features": int(features)},
        "normalisation": dict(NORMALISATION),
        "input_multiple": INPUT_MULTIPLE,
    }
    meta.update(extra or {})
    return meta


def save_generator(
    path: str | Path, generator: torch.nn.Module, model_cfg: ModelConfig | dict, extra: dict | None = None
) -> Path:
    """Write `generator`'s state_dict to `path` (safetensors, atomically) with its metadata in the header.

    `generator` may be wrapped (DDP `module.`, `torch.compile` `_orig_mod.`); the prefixes are removed
    so the file loads into a bare Generator. Tensors are copied to contiguous CPU memory (channels_last
    and CUDA models export the same bytes as a CPU model). Returns the weights path.
    """
    path = Path(path)
    meta = export_metadata(model_cfg, extra)
    state = {k: v.detach().to("cpu").contiguous() for k, v in _unwrapped(generator.state_dict()).items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={_HEADER_KEY: json.dumps(meta)})
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of an exported generator: its safetensors header, else the JSON file an earlier
    version wrote beside it (`legacy_sidecar`), else {}. WeightsError naming the file when a legacy
    sidecar is not a JSON object; FileNotFoundError / SafetensorError for what is no safetensors file."""
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
    if _HEADER_KEY in header:
        return json.loads(header[_HEADER_KEY])
    sidecar = legacy_sidecar(path)
    if not sidecar.is_file():
        return {}
    try:
        meta = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WeightsError(f"{sidecar}: metadata file is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise WeightsError(f"{sidecar}: metadata file must hold a JSON object")
    return meta


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """(state_dict, metadata) when `path` is a safetensors file, else None."""
    try:
        meta = read_metadata(path)
    except WeightsError:
        raise
    except (SafetensorError, OSError, ValueError, UnicodeDecodeError):
        return None
    return load_file(str(path)), meta


class UnreadableStateDict(ValueError):
    """A file that holds no state_dict `read_state_dict` can read; the message says why, in a few words."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a saved state_dict: `.safetensors`, or `torch.save` (read with
    `weights_only=True`; a dict under "state_dict" or "model" is unwrapped). The one reader of saved
    weights (generators, VGG19-bn, Inception). FileNotFoundError when `path` is no file;
    UnreadableStateDict otherwise — callers word both for their own kind of weights."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UnreadableStateDict(first_line(exc)) from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and weights_only errors all mean "not a state_dict"
        raise UnreadableStateDict(f"{type(exc).__name__}: {first_line(exc)}") from None
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict):
        raise UnreadableStateDict(f"holds a {type(obj).__name__}, not a state_dict")
    # Keep the tensors; a dict without the expected keys then fails where the missing key is named.
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the generator saved in `path` and return `(generator in eval mode on device, metadata)`.

    Accepts our `.safetensors` export (metadata from `read_metadata`, else the width inferred from
    `initial_down.0.weight`) and the seed's `G_*.pth` PyTorch state_dicts (loaded
    with `weights_only=True`). Raises WeightsError, one line naming the file, for a missing file, a
    file that is neither format, or a state_dict whose keys or shapes do not fit the generator.
    """
    from models import build_generator  # the registry imports the networks; keep this module light

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    loaded = _read_safetensors(path)
    if loaded is not None:
        state, meta = loaded
        source = "safetensors"
    else:
        try:
            state = read_state_dict(path)
        except UnreadableStateDict:
            raise WeightsError(
                f"{path}: not a safetensors file or a PyTorch state_dict with the generator's keys "
                f"(cannot be read as either)"
            ) from None
        meta, source = {}, "pytorch"
    state = _unwrapped(state)
    if FIRST_WEIGHT not in state:
        raise WeightsError(
            f"{path}: not a safetensors file or a PyTorch state_dict with the generator's keys "
            f"(missing '{FIRST_WEIGHT}')"
        )
    inferred = int(state[FIRST_WEIGHT].shape[0])
    model_meta = meta.get("model")
    if not isinstance(model_meta, dict):
        model_meta = {}
    name = str(model_meta.get("generator", "seed_unet"))
    features = int(model_meta.get("features", inferred))
    if features != inferred:
        raise WeightsError(f"{path}: metadata says features={features} but '{FIRST_WEIGHT}' has {inferred}")
    try:
        generator = build_generator(ModelConfig(generator=name, features=features))
    except (KeyError, ValueError) as exc:
        raise WeightsError(f"{path}: cannot build generator {name!r} ({exc})") from None
    # Seed checkpoints from older PyTorch may lack BatchNorm's num_batches_tracked; it is unused in eval.
    for key, value in generator.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state.setdefault(key, value)
    try:
        generator.load_state_dict(state)  # strict: every key, every shape
    except RuntimeError as exc:
        # torch lists every mismatch on its own line after a heading; the first one makes the message.
        detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), first_line(exc))
        detail = detail if len(detail) <= 200 else detail[:199] + "…"
        raise WeightsError(f"{path}: does not fit generator {name!r} with features={features} ({detail})") from None
    generator.to(device).eval()
    full_meta = export_metadata({"generator": name, "features": features})
    full_meta.update(meta)
    full_meta["source"] = source
    full_meta["path"] = str(path)
    return generator, full_meta
