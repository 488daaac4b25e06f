"""The run configuration: one tree of typed dataclasses, loaded strictly from YAML.

`load_config(path, overrides)` reads a YAML file whose keys must mirror the dataclasses below
exactly, applies dotted `key=value` overrides (values parsed as YAML scalars/lists), checks every
value's type and range, and returns a `Config`. Any mistake raises `ConfigError` with one line naming
the dotted key and where it came from: the file, or the override itself (`override data.batch_sise=4:
unknown key 'data.batch_sise'; did you mean 'data.batch_size'?`). `dump_config` writes the resolved tree back to YAML; loading that file
gives an equal object.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key and the file."""


@dataclass
class RunConfig:
    """Where the run writes and how it seeds itself."""

    name: str = "demo"
    """Run name: outputs go to `<out_dir>/<name>/`, and W&B uses it as the run name."""
    out_dir: str = "runs"
    """Parent folder of run directories."""
    seed: int = 0
    """Seed for model init, the data order and every random op (per rank offset added)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto`: CUDA when available, else CPU. `cpu` forces CPU even where a GPU exists."""
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    """`auto`: bf16 autocast on CUDA, fp32 on CPU."""
    deterministic: bool = False
    """CUDA: false lets cuDNN time its algorithms once per shape and keep the fastest (the training
    shapes are fixed); true asks for deterministic algorithms instead (slower, bit-repeatable runs)."""


@dataclass
class DataConfig:
    """Which shards to read and how to turn them into (L, ab) batches."""

    shards: str = "demo-data/shards"
    """Shards location written by `colorize-shards build` (holds manifest.json): a local directory,
    or an object-store prefix `s3://bucket/prefix` (endpoint and credentials from the standard AWS
    environment: docs/object-storage.md)."""
    backend: Literal["dali", "torch", "baseline"] = "dali"
    """`dali` (GPU nvJPEG when CUDA, CPU otherwise), `torch` (webdataset + torchvision), `baseline`
    (the seed project's PIL + skimage loader, the benchmark's yardstick; called `seed` before)."""
    size: int = 256
    """Side S of the square training crop, pixels; a multiple of 256 (the generator's constraint)."""
    crop: Literal["random_resized", "resize"] = "random_resized"
    """`random_resized`: random area/aspect crop resized to S×S; `resize`: the seed's whole-image squash."""
    crop_scale: tuple[float, float] = (0.35, 1.0)
    """Area fraction range of the random resized crop, each in (0, 1]."""
    crop_ratio: tuple[float, float] = (0.75, 1.3333333)
    """Aspect-ratio (w/h) range of the random resized crop."""
    flip: bool = True
    """Random horizontal flip with probability 0.5."""
    batch_size: int = 32
    """Images per optimiser step: the global batch (all processes together, which must divide it)
    when `batch_size_unit` is `global`; each process's batch when it is `per_process`."""
    batch_size_unit: Literal["global", "per_process"] = "global"
    """`global`: the run is the same on any number of processes. `per_process` (for multi-GPU
    configs): each process gets `batch_size` images, so the global batch is batch_size × processes,
    and with `optim.reference_batch` the learning rates and step counts follow it (see there)."""
    num_threads: int = 2
    """DALI CPU threads per process, or DataLoader workers for the `torch` and `baseline` backends."""
    prefetch: int = 2
    """Batches prepared ahead of the training step (DALI prefetch queue depth)."""
    shuffle_buffer: int = 1024
    """Samples held in the reader's shuffle buffer (DALI `initial_fill`); shards are pre-shuffled too."""
    on_bad_sample: Literal["error", "skip"] = "error"
    """An undecodable sample: `error` stops with the shard's name; `skip` drops it and counts it."""
    decode_device: Literal["auto", "cpu"] = "auto"
    """`torch` backend: where JPEGs are decoded. `auto`: on the GPU when the loader's device is CUDA
    (batched nvJPEG in the main process; workers only read bytes), else in the DataLoader workers;
    `cpu`: always in the workers. DALI always decodes on the GPU when the device is CUDA."""
    read_retry_seconds: float = 300.0
    """`s3://` shards: how long reads keep retrying (with backoff) while the object store does not
    answer, before the run stops with an error naming the object (resume from the last checkpoint)."""
    cache_dir: str = ""
    """`s3://` shards, `dali` backend, training: a node-local directory each rank first copies the
    shards of its part of the split into (one download per shard, checked against the manifest's
    SHA-256, kept for later runs), for DALI to read from disk. Empty: DALI reads the store itself, one
    ranged GET per sample (see docs/object-storage.md)."""
    compile_lab: bool = True
    """`dali` and `torch` backends decoding on the CPU: fuse the RGB → Lab step with torch.compile
    (polynomial form, ≤ 1e-4 off; a few seconds to compile on first use); false = the reference colour
    math (`pipeline/lab.py`) in eager torch, several times slower."""

    def per_process_batch(self, processes: int) -> int:
        """Images each of `processes` processes loads per step; ConfigError naming data.batch_size
        when a global batch does not divide by the number of processes."""
        if processes < 1:
            raise ValueError(f"the number of processes must be >= 1, got {processes}")
        if self.batch_size_unit == "per_process":
            return self.batch_size
        if self.batch_size % processes:
            raise ConfigError(
                f"data.batch_size = {self.batch_size} does not divide by the number of processes ({processes})"
            )
        return self.batch_size // processes


@dataclass
class ModelConfig:
    """Which networks to build (names from `models.registry`) and how to run them."""

    generator: str = "seed_unet"
    """Generator factory name in `models.registry.GENERATORS`."""
    discriminator: str = "patchgan70"
    """Discriminator factory name in `models.registry.DISCRIMINATORS`."""
    features: int = 64
    """Generator base width (64 = the seed's network, 57,472,642 parameters)."""
    disc_features: int = 64
    """Discriminator base width (64 = pix2pix's 70×70 PatchGAN)."""
    channels_last: bool = True
    """Use channels_last memory format on CUDA (faster convolutions with bf16)."""
    compile: bool = False
    """Wrap both networks in `torch.compile`."""
    sync_batchnorm: bool = False
    """Convert BatchNorm to SyncBatchNorm in multi-process CUDA runs (ignored on CPU)."""
    ema_decay: float = 0.0
    """Keep an exponential moving average of the generator's weights with this decay per G update, in
    [0, 1); 0 = none. The n-th update (from 0) uses min(ema_decay, (1 + n) / (10 + n)), so the first
    updates are not dominated by the initial weights. When on, the average is evaluated beside the
    raw generator (`eval/ema/*`) and is the exported `generator.safetensors`. With
    `optim.reference_batch`, the decay is written for that batch and rescaled like the steps
    (decay^(G / reference_batch)): the average then spans the same number of images."""


@dataclass
class LossConfig:
    """Loss terms and their weights."""

    l1_weight: float = 100.0
    """Weight of the L1 loss on normalised ab (the seed's λ = 100), both phases."""
    feature_weight_nogan: float = 1.0
    """Weight of the VGG19-bn feature loss in the NoGAN phase."""
    feature_weight_gan: float = 0.0
    """Weight of the VGG19-bn feature loss in the GAN phase (0 = the seed)."""
    adversarial_weight: float = 1.0
    """Weight of the generator's BCE adversarial term in the GAN phase."""
    vgg_layer_weights: tuple[float, float, float] = (30.0, 70.0, 10.0)
    """Weights of the three VGG slices (to pool3, pool4, pool5)."""
    vgg_input: Literal["rgb", "lab"] = "rgb"
    """`rgb`: Lab → sRGB → ImageNet mean/std before VGG (the fix); `lab`: the normalised Lab tensor as-is
    (the seed project's input)."""
    vgg_weights: str = "imagenet"
    """`imagenet` (torchvision download), `none` (random init, for tests), or a local state_dict path."""


@dataclass
class AdamConfig:
    """One Adam optimiser."""

    lr: float = 1e-4
    """Learning rate."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    weight_decay: float = 0.0
    """L2 weight decay (the seed's README suggests it on D if D grows too strong)."""


def _gan_adam() -> AdamConfig:
    return AdamConfig(lr=2e-4, betas=(0.5, 0.999))


@dataclass
class OptimConfig:
    """Optimisers per phase: the generator gets a fresh Adam when the GAN phase starts."""

    nogan: AdamConfig = field(default_factory=AdamConfig)
    """Generator optimiser in the NoGAN phase (seed: lr 1e-4, betas 0.9/0.999)."""
    generator: AdamConfig = field(default_factory=_gan_adam)
    """Generator optimiser in the GAN phase (pix2pix: lr 2e-4, betas 0.5/0.999)."""
    discriminator: AdamConfig = field(default_factory=_gan_adam)
    """Discriminator optimiser (pix2pix: lr 2e-4, betas 0.5/0.999)."""
    grad_clip: float = 0.0
    """Clip each network's gradient norm to this value; 0 disables clipping."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up over this many steps at the start of each phase (0 = none), so a
    fresh Adam at a large-batch learning rate does not take its first, poorly estimated steps at full size."""
    reference_batch: int = 0
    """0: learning rates and step counts are used as written. > 0: they are written for this global
    batch, and a run whose global batch G differs rescales them when it starts (and prints so):
    every lr × √(G / reference_batch) (Adam's square-root rule), `schedule.*_steps` and
    `optim.warmup_steps` × reference_batch / G (rounded up), so the run sees the same number of samples,
    and `model.ema_decay` ^ (G / reference_batch), so the generator's average spans as many."""


@dataclass
class ScheduleConfig:
    """How many optimiser steps each phase runs, in one run."""

    nogan_steps: int = 100
    """Generator-only steps (L1 + feature loss)."""
    critic_steps: int = 0
    """Critic warm-up steps between NoGAN and GAN: D alone learns the frozen generator's colours
    against the real ones (DeOldify's critic pretraining), so the GAN phase starts with a critic that
    knows G's artefacts. 0 = none (GAN follows NoGAN directly)."""
    gan_steps: int = 100
    """Adversarial steps (one D step then one G step each)."""


@dataclass
class LoggingConfig:
    """What is logged, where, and how often."""

    wandb: Literal["online", "offline", "disabled", "auto"] = "auto"
    """`auto`: online when W&B credentials exist, else offline (sync later with `wandb sync`)."""
    project: str = "colorization"
    """W&B project name."""
    entity: str | None = None
    """W&B entity (team or user); None uses the account default."""
    tags: str = ""
    """W&B tags, comma-separated (e.g. `baseline,imagenet`)."""
    group: str | None = None
    """W&B group (e.g. one per experiment or sweep); None: no group."""
    notes: str | None = None
    """W&B run notes (free text shown on the run page)."""
    alert_wait_fraction: float = 0.25
    """`wandb.alert` (online runs) when data/wait_fraction stays above this (0 = never)…"""
    alert_wait_logs: int = 20
    """…for this many logging steps in a row."""
    every_steps: int = 10
    """Log scalars every this many steps."""
    sample_every_steps: int = 500
    """Write a grey | prediction | truth grid of a fixed validation batch every this many steps."""
    eval_every_steps: int = 2000
    """Evaluate ab-L1 and PSNR on the validation shards every this many steps."""
    eval_batches: int = 8
    """Validation batches per evaluation, on each process (0 = the whole validation split). On the DALI
    path an evaluation of fewer batches than the split still decodes the rest of the pass before the
    next one (a DALI pass cannot be rewound half-way)."""
    sample_count: int = 8
    """Images in the sample grid."""


@dataclass
class CheckpointConfig:
    """When checkpoints are written and how many are kept."""

    every_steps: int = 1000
    """Save every this many steps (also at the phase switch, at the end and on SIGTERM/SIGINT)."""
    keep_last: int = 3
    """Keep this many most recent checkpoints."""


@dataclass
class Config:
    """The whole run configuration."""

    run: RunConfig = field(default_factory=RunConfig)
    """Run identity, output folder, seed, device."""
    data: DataConfig = field(default_factory=DataConfig)
    """Shards and the loader."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Networks."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Loss weights and the VGG feature loss."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimisers."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Phase lengths."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """W&B, metrics.jsonl, samples, evaluation."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoint cadence and retention."""

    @property
    def total_steps(self) -> int:
        return self.schedule.nogan_steps + self.schedule.critic_steps + self.schedule.gan_steps

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out_dir) / self.run.name


# --------------------------------------------------------------------------------------------------
# Strict conversion from plain YAML values to the typed tree.


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


RENAMED_VALUES = {("data.backend", "seed"): "baseline", ("loss.vgg_input", "seed"): "lab"}
"""Choices that had another name: (dotted key, old value) → new value, named in the error."""


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against annotation `tp`; return it converted (lists → tuples, int → float)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if isinstance(value, str) and (key, value) in RENAMED_VALUES:
            raise ConfigError(f"{source}: {key} = {value!r} was renamed: use {RENAMED_VALUES[key, value]!r}")
        if value not in typing.get_args(tp):
            raise ConfigError(f"{source}: {key} = {value!r} is not one of {_type_name(tp)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, key, source)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{source}: {key} must be a list of {len(args)} values, got {value!r}")
        return tuple(_convert(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if _is_section(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, f"{key}.", source)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads `1e-4` as a string; accept any text Python reads as a number.
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
        return value
    raise TypeError(f"config field {key} has an unsupported annotation {tp!r}")


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _dotted_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of the tree under `cls`, sections and leaves (`data`, `data.batch_size`, …)."""
    keys = []
    for name, tp in typing.get_type_hints(cls).items():
        keys.append(prefix + name)
        if _is_section(tp):
            keys.extend(_dotted_keys(tp, f"{prefix}{name}."))
    return keys


def _unknown_key(key: str, known: list[str]) -> str:
    """`unknown key 'k'` with the closest known keys, or the section's keys when none is close."""
    close = difflib.get_close_matches(key, _dotted_keys(Config), n=3, cutoff=0.6)
    if close:
        names = [repr(k) for k in close]
        choices = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
        return f"unknown key '{key}'; did you mean {choices}?"
    return f"unknown key '{key}' (known: {', '.join(sorted(known))})"


def _build(cls: type, values: dict, prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            raise ConfigError(f"{source}: {_unknown_key(prefix + key, names)}")
    kwargs = {k: _convert(v, hints[k], f"{prefix}{k}", source) for k, v in values.items()}
    return cls(**kwargs)


def config_to_dict(cfg: Any) -> dict:
    """The tree as plain YAML-able values (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def _apply_override(tree: dict, override: str) -> str:
    """Set one `key=value` in the YAML tree; returns the dotted key. The key and the value's type are
    checked here against the dataclasses, so a mistake names the override rather than the file."""
    source = f"override {override}"
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form key=value")
    dotted, raw = override.split("=", 1)
    dotted = dotted.strip()
    parts = dotted.split(".")
    if not dotted or any(not p for p in parts):
        raise ConfigError(f"override {override!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: unparsable value {raw!r} ({exc.problem})") from None
    tp: Any = Config
    for i, part in enumerate(parts):
        if not _is_section(tp):
            raise ConfigError(f"{source}: '{'.'.join(parts[:i])}' is not a section")
        hints = typing.get_type_hints(tp)
        if part not in hints:
            raise ConfigError(f"{source}: {_unknown_key('.'.join(parts[: i + 1]), list(hints))}")
        tp = hints[part]
    _convert(value, tp, dotted, source)
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):  # absent, or the file's own value there is wrong and replaced
            child = node[part] = {}
        node = child
    node[parts[-1]] = value
    return dotted


def validate(cfg: Config, source: str = "<config>", overridden: dict[str, str] | None = None) -> Config:
    """Range checks that types alone cannot express; raises ConfigError naming the key and where its
    value came from: `source`, or the override that set it (`overridden`: dotted key → override)."""
    overridden = overridden or {}

    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            where = f"override {overridden[key]}" if key in overridden else source
            raise ConfigError(f"{where}: {key} = {_get(cfg, key)!r} {why}")

    need(cfg.data.size > 0 and cfg.data.size % 256 == 0, "data.size", "must be a positive multiple of 256")
    need(cfg.data.batch_size > 0, "data.batch_size", "must be positive")
    need(cfg.data.num_threads > 0, "data.num_threads", "must be positive")
    need(cfg.data.prefetch > 0, "data.prefetch", "must be positive")
    need(cfg.data.shuffle_buffer > 0, "data.shuffle_buffer", "must be positive")
    need(cfg.data.read_retry_seconds >= 0, "data.read_retry_seconds", "must be >= 0")
    lo, hi = cfg.data.crop_scale
    need(0 < lo <= hi <= 1, "data.crop_scale", "must satisfy 0 < low <= high <= 1")
    lo, hi = cfg.data.crop_ratio
    need(0 < lo <= hi, "data.crop_ratio", "must satisfy 0 < low <= high")
    need(cfg.model.features > 0, "model.features", "must be positive")
    need(cfg.model.disc_features > 0, "model.disc_features", "must be positive")
    need(0 <= cfg.model.ema_decay < 1, "model.ema_decay", "must lie in [0, 1) (0 = no EMA generator)")
    for name in ("l1_weight", "feature_weight_nogan", "feature_weight_gan", "adversarial_weight"):
        need(getattr(cfg.loss, name) >= 0, f"loss.{name}", "must be >= 0")
    for name in ("nogan", "generator", "discriminator"):
        adam: AdamConfig = getattr(cfg.optim, name)
        need(adam.lr > 0, f"optim.{name}.lr", "must be positive")
        need(all(0 <= b < 1 for b in adam.betas), f"optim.{name}.betas", "must lie in [0, 1)")
        need(adam.weight_decay >= 0, f"optim.{name}.weight_decay", "must be >= 0")
    need(cfg.optim.grad_clip >= 0, "optim.grad_clip", "must be >= 0")
    need(cfg.optim.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    need(cfg.optim.reference_batch >= 0, "optim.reference_batch", "must be >= 0")
    need(cfg.schedule.nogan_steps >= 0, "schedule.nogan_steps", "must be >= 0")
    need(cfg.schedule.critic_steps >= 0, "schedule.critic_steps", "must be >= 0")
    need(cfg.schedule.gan_steps >= 0, "schedule.gan_steps", "must be >= 0")
    need(
        cfg.schedule.critic_steps == 0 or cfg.schedule.gan_steps > 0,
        "schedule.critic_steps",
        "warms the critic up for a GAN phase: set schedule.gan_steps > 0 too, or critic_steps to 0",
    )
    need(cfg.total_steps > 0, "schedule.nogan_steps", "and schedule.gan_steps must not both be 0")
    for name in ("every_steps", "sample_every_steps", "eval_every_steps", "sample_count"):
        need(getattr(cfg.logging, name) > 0, f"logging.{name}", "must be positive")
    need(cfg.logging.eval_batches >= 0, "logging.eval_batches", "must be >= 0")
    need(cfg.checkpoint.every_steps > 0, "checkpoint.every_steps", "must be positive")
    need(cfg.checkpoint.keep_last > 0, "checkpoint.keep_last", "must be positive")
    return cfg


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read `path` (YAML; None = defaults only), apply `key=value` overrides, check, return a Config.

    Raises ConfigError (one line, naming the dotted key and the file or the override) for a missing or
    unparsable file, an unknown key (with the closest known keys), a wrong type, a malformed override,
    or an out-of-range value.
    """
    source = str(path) if path is not None else "<defaults>"
    tree: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{source}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{source}: not valid YAML{where}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections")
        tree = loaded or {}
    overridden = {_apply_override(tree, override): override for override in overrides}
    cfg = _build(Config, tree, "", source)
    return validate(cfg, source, overridden)


def scale_to_processes(cfg: Config, processes: int) -> tuple[Config, list[str]]:
    """The config a run on `processes` processes trains with: `data.batch_size` made global, and
    learning rates and step counts rescaled by `optim.reference_batch` (see its docstring). Returns
    the resolved config (unit `global`, reference 0, so saving and reloading it changes nothing) and
    lines saying what was changed and why. Raises ConfigError when the batch does not split."""
    data, model, optim, schedule = cfg.data, cfg.model, cfg.optim, cfg.schedule
    notes: list[str] = []
    batch = data.per_process_batch(processes) * processes
    if data.batch_size_unit == "per_process":
        notes.append(f"global batch {batch} = data.batch_size {data.batch_size} per process × {processes} processes")
    reference = optim.reference_batch
    if reference and batch != reference:
        lr_factor = math.sqrt(batch / reference)

        def steps(n: int) -> int:
            return math.ceil(n * reference / batch)

        scaled_adam = {
            name: dataclasses.replace(getattr(optim, name), lr=getattr(optim, name).lr * lr_factor)
            for name in ("nogan", "generator", "discriminator")
        }
        new_schedule = ScheduleConfig(
            nogan_steps=steps(schedule.nogan_steps),
            critic_steps=steps(schedule.critic_steps),
            gan_steps=steps(schedule.gan_steps),
        )
        critic = f" + {new_schedule.critic_steps:,} critic" if new_schedule.critic_steps else ""
        notes.append(
            f"optim.reference_batch {reference} → global batch {batch}: learning rates × √({batch}/{reference}) = "
            f"{lr_factor:.3f} (nogan {scaled_adam['nogan'].lr:.3g}, generator {scaled_adam['generator'].lr:.3g}, "
            f"discriminator {scaled_adam['discriminator'].lr:.3g}); steps × {reference}/{batch}: "
            f"{new_schedule.nogan_steps:,} NoGAN{critic} + {new_schedule.gan_steps:,} GAN, "
            f"warm-up {steps(optim.warmup_steps):,}"
        )
        if model.ema_decay > 0:
            # One update now stands for batch/reference updates at the reference batch.
            model = dataclasses.replace(model, ema_decay=model.ema_decay ** (batch / reference))
            notes.append(
                f"model.ema_decay ^ ({batch}/{reference}) = {model.ema_decay:.6g}: the same images per average"
            )
        optim = dataclasses.replace(optim, **scaled_adam, warmup_steps=steps(optim.warmup_steps))
        schedule = new_schedule
    resolved = dataclasses.replace(
        cfg,
        data=dataclasses.replace(data, batch_size=batch, batch_size_unit="global"),
        model=model,
        optim=dataclasses.replace(optim, reference_batch=0),
        schedule=schedule,
    )
    return resolved, notes


def dump_config(cfg: Config, path: str | Path | None = None) -> str:
    """The resolved config as YAML text; also written (atomically) to `path` when given."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    if path is not None:
        from configs.atomic import write_text_atomic

        write_text_atomic(path, text)
    return text
