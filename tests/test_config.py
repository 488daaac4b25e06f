"""Strict YAML config loading: every mistake names its dotted key and the file."""

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from configs import Config, ConfigError, dump_config, load_config, scale_to_processes

CONFIGS = sorted(Path(__file__).resolve().parent.parent.joinpath("configs").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)


def test_defaults_when_no_file():
    cfg = load_config(None)
    assert cfg.loss.l1_weight == 100.0 and cfg.optim.nogan.lr == 1e-4
    assert cfg.optim.generator.betas == (0.5, 0.999)


# What a run gets for every key its file leaves out: the seed's networks and losses, pix2pix's GAN
# optimisers, the training views, the cadence of logs and checkpoints. A new key may join; a default
# that changes should change here too, on purpose.
DEFAULTS = {
    "run.seed": 0,
    "run.device": "auto",
    "run.mixed_precision": "auto",
    "run.deterministic": False,
    "data.backend": "dali",
    "data.size": 256,
    "data.crop": "random_resized",
    "data.crop_scale": (0.35, 1.0),
    "data.crop_ratio": (0.75, 1.3333333),
    "data.flip": True,
    "data.batch_size": 32,
    "data.batch_size_unit": "global",
    "data.num_threads": 2,
    "data.prefetch": 2,
    "data.shuffle_buffer": 1024,
    "data.on_bad_sample": "error",
    "data.decode_device": "auto",
    "data.compile_lab": True,
    "data.read_retry_seconds": 300.0,
    "data.cache_dir": "",
    "model.generator": "seed_unet",
    "model.discriminator": "patchgan70",
    "model.features": 64,
    "model.disc_features": 64,
    "model.channels_last": True,
    "model.compile": False,
    "model.sync_batchnorm": False,
    "model.ema_decay": 0.0,
    "loss.l1_weight": 100.0,
    "loss.feature_weight_nogan": 1.0,
    "loss.feature_weight_gan": 0.0,
    "loss.adversarial_weight": 1.0,
    "loss.vgg_layer_weights": (30.0, 70.0, 10.0),
    "loss.vgg_input": "rgb",
    "loss.vgg_weights": "imagenet",
    "optim.nogan.lr": 1e-4,
    "optim.nogan.betas": (0.9, 0.999),
    "optim.nogan.weight_decay": 0.0,
    "optim.generator.lr": 2e-4,
    "optim.generator.betas": (0.5, 0.999),
    "optim.generator.weight_decay": 0.0,
    "optim.discriminator.lr": 2e-4,
    "optim.discriminator.betas": (0.5, 0.999),
    "optim.discriminator.weight_decay": 0.0,
    "optim.grad_clip": 0.0,
    "optim.warmup_steps": 0,
    "optim.reference_batch": 0,
    "schedule.nogan_steps": 100,
    "schedule.critic_steps": 0,
    "schedule.gan_steps": 100,
    "logging.alert_wait_fraction": 0.25,
    "logging.alert_wait_logs": 20,
    "logging.every_steps": 10,
    "logging.sample_every_steps": 500,
    "logging.eval_every_steps": 2000,
    "logging.eval_batches": 8,
    "logging.sample_count": 8,
    "checkpoint.every_steps": 1000,
    "checkpoint.keep_last": 3,
}


def value_at(cfg: Config, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_every_default_is_the_documented_one():
    cfg = load_config(None)
    assert {key: value_at(cfg, key) for key in DEFAULTS} == DEFAULTS
    assert load_config(None, ["run.out_dir=/data/runs", "run.name=x"]).run_dir == Path("/data/runs/x")


# (key, values accepted at the edge of the range, values just past it)
RANGES = [
    ("data.size", ["256", "512"], ["0", "255", "300", "-256"]),
    ("data.batch_size", ["1"], ["0"]),
    ("data.num_threads", ["1"], ["0"]),
    ("data.prefetch", ["1"], ["0"]),
    ("data.shuffle_buffer", ["1"], ["0"]),
    ("data.crop_scale", ["[0.01, 0.01]", "[1, 1]"], ["[0, 1]", "[0.6, 0.5]", "[0.5, 1.01]"]),
    ("data.crop_ratio", ["[0.5, 0.5]", "[0.1, 9]"], ["[0, 1]", "[2, 1.5]"]),
    ("model.features", ["1"], ["0"]),
    ("model.disc_features", ["1"], ["0"]),
    *[(f"loss.{name}", ["0"], ["-0.001"]) for name in ("l1_weight", "feature_weight_nogan", "feature_weight_gan")],
    ("loss.adversarial_weight", ["0"], ["-0.001"]),
    *[(f"optim.{name}.lr", ["1e-9"], ["0"]) for name in ("nogan", "generator", "discriminator")],
    *[
        (f"optim.{name}.betas", ["[0, 0]", "[0.99, 0.999]"], ["[1, 0.9]", "[0.9, 1]", "[-0.1, 0.9]", "[0.9, -0.1]"])
        for name in ("nogan", "generator", "discriminator")
    ],
    *[(f"optim.{name}.weight_decay", ["0"], ["-1e-9"]) for name in ("nogan", "generator", "discriminator")],
    ("optim.grad_clip", ["0"], ["-0.5"]),
    ("optim.warmup_steps", ["0"], ["-1"]),
    ("optim.reference_batch", ["0"], ["-1"]),
    ("schedule.nogan_steps", ["0"], ["-1"]),
    ("schedule.gan_steps", ["0"], ["-1"]),
    ("schedule.critic_steps", ["0"], ["-1"]),
    ("data.read_retry_seconds", ["0"], ["-0.5"]),
    ("model.ema_decay", ["0", "0.999"], ["-0.5", "1"]),
    *[
        (f"logging.{name}", ["1"], ["0"])
        for name in ("every_steps", "sample_every_steps", "eval_every_steps", "sample_count")
    ],
    ("logging.eval_batches", ["0"], ["-1"]),
    ("checkpoint.every_steps", ["1"], ["0"]),
    ("checkpoint.keep_last", ["1"], ["0"]),
]


@pytest.mark.parametrize("key, accepted, refused", RANGES, ids=[r[0] for r in RANGES])
def test_each_range_check_takes_its_edge_and_names_the_first_value_past_it(key, accepted, refused):
    for text in accepted:
        load_config(None, [f"{key}={text}"])
    for text in refused:
        with pytest.raises(ConfigError) as err:
            load_config(None, [f"{key}={text}"])
        value = value_at(load_config(None, [f"{key}={accepted[0]}"]), key)
        shown = yaml.safe_load(text)
        shown = tuple(float(v) for v in shown) if isinstance(value, tuple) else type(value)(shown)
        assert f"{key} = {shown!r}" in str(err.value), text


def test_a_run_needs_some_steps():
    load_config(None, ["schedule.nogan_steps=0", "schedule.gan_steps=1"])
    with pytest.raises(ConfigError, match="schedule.nogan_steps = 0 and schedule.gan_steps must not both be 0"):
        load_config(None, ["schedule.nogan_steps=0", "schedule.gan_steps=0"])


def test_a_critic_warm_up_needs_a_gan_phase_after_it():
    cfg = load_config(None, ["schedule.nogan_steps=2", "schedule.critic_steps=3", "schedule.gan_steps=1"])
    assert cfg.total_steps == 6
    with pytest.raises(ConfigError, match="schedule.critic_steps"):
        load_config(None, ["schedule.critic_steps=3", "schedule.gan_steps=0"])


def test_the_per_process_batch_is_a_whole_number():
    batch = load_config(None, ["data.batch_size=64"]).data.per_process_batch(2)
    assert batch == 32 and type(batch) is int  # a float batch size would reach the loaders


def test_rescaling_names_only_the_phases_and_the_average_a_run_has():
    cfg = load_config(None, ["data.batch_size=64", "data.batch_size_unit=per_process", "optim.reference_batch=64"])
    scaled, notes = scale_to_processes(cfg, 8)
    assert scaled.schedule.critic_steps == 0 and scaled.model.ema_decay == 0.0
    assert len(notes) == 2 and not any("critic" in note or "ema_decay" in note for note in notes), notes


def test_the_resolved_config_is_written_in_the_documented_order():
    sections = list(yaml.safe_load(dump_config(load_config(None))))
    assert sections == [field.name for field in dataclasses.fields(Config)]


@pytest.mark.parametrize(
    "override, suggestion",
    [
        ("data.shuffle_bufer=1", "did you mean 'data.shuffle_buffer'?"),
        ("run.devce=cpu", "did you mean 'run.device' or 'run.seed'?"),
        ("data.flp=true", "did you mean 'data.flip', 'data.crop' or 'data'?"),
        ("optim.nogan.bets=1", "did you mean 'optim.nogan.betas', 'optim.nogan' or 'optim.nogan.lr'?"),  # of 5
    ],
)
def test_an_unknown_key_suggests_up_to_three_close_keys(override, suggestion):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value).endswith(suggestion)


def test_batch_split_needs_at_least_one_process():
    assert load_config(None, ["data.batch_size=6"]).data.per_process_batch(1) == 6
    with pytest.raises(ValueError, match="must be >= 1, got 0"):
        load_config(None).data.per_process_batch(0)


def test_unknown_key_is_named_with_file(tmp_path):
    path = write(tmp_path, "data:\n  batch_sise: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "data.batch_sise" in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_section_is_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'trainer'"):
        load_config(write(tmp_path, "trainer: {}\n"))


@pytest.mark.parametrize(
    "text, key",
    [
        ("data:\n  batch_size: '8'\n", "data.batch_size"),
        ("data:\n  batch_size: 8.5\n", "data.batch_size"),
        ("data:\n  flip: 1\n", "data.flip"),
        ("data:\n  backend: tensorflow\n", "data.backend"),
        ("data:\n  crop_scale: [0.5]\n", "data.crop_scale"),
        ("optim:\n  nogan:\n    betas: [0.9, fast]\n", "optim.nogan.betas[1]"),
        ("model: 3\n", "model"),
    ],
)
def test_wrong_types_are_named(tmp_path, text, key):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert key in str(err.value)


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.size=300", "data.size"),
        ("data.batch_size=0", "data.batch_size"),
        ("data.crop_scale=[0.9, 0.1]", "data.crop_scale"),
        ("optim.discriminator.lr=-1", "optim.discriminator.lr"),
        ("optim.generator.betas=[0.5, 1.0]", "optim.generator.betas"),
        ("schedule.nogan_steps=-5", "schedule.nogan_steps"),
    ],
)
def test_out_of_range_values_are_named(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert key in str(err.value)


def test_overrides_apply_with_yaml_typing(tmp_path):
    path = write(tmp_path, "data:\n  batch_size: 8\n")
    cfg = load_config(
        path,
        [
            "data.batch_size=64",
            "loss.vgg_input=lab",
            "optim.nogan.betas=[0.8, 0.99]",
            "logging.entity=null",
            "model.compile=true",
            "optim.nogan.lr=3e-4",
        ],
    )
    assert cfg.data.batch_size == 64 and cfg.loss.vgg_input == "lab"
    assert cfg.optim.nogan.betas == (0.8, 0.99) and cfg.logging.entity is None
    assert cfg.model.compile is True and cfg.optim.nogan.lr == pytest.approx(3e-4)


@pytest.mark.parametrize("override", ["data.batch_size", "=3", "data..size=256", "data.size.x=1"])
def test_malformed_overrides_raise(override):
    with pytest.raises(ConfigError):
        load_config(None, [override])


@pytest.mark.parametrize(
    "override, message",
    [
        ("data..size=256", "override 'data..size=256' has an empty key"),
        ("data.size=[1,", "override data.size=[1,: unparsable value '[1,'"),
    ],
)
def test_malformed_overrides_are_named(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_an_override_value_may_hold_an_equals_sign_and_an_optional_takes_a_value_or_null():
    cfg = load_config(None, ["run.name=a=b", "logging.entity=team"])
    assert cfg.run.name == "a=b" and cfg.logging.entity == "team"
    assert load_config(None, ["logging.entity=null"]).logging.entity is None


def test_a_choice_outside_the_list_names_the_choices():
    with pytest.raises(
        ConfigError, match=re.escape("data.backend = 'tensorflow' is not one of 'dali' | 'torch' | 'baseline'")
    ):
        load_config(None, ["data.backend=tensorflow"])


def test_override_unknown_key_is_named():
    with pytest.raises(ConfigError, match="data.bacth_size"):
        load_config(None, ["data.bacth_size=4"])


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(missing)


def test_invalid_yaml_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"run.yaml: not valid YAML at line \d"):
        load_config(write(tmp_path, "data:\n  size: [256\n"))
    with pytest.raises(ConfigError, match=r"run.yaml: not valid YAML at line 4$"):  # the line of the mistake
        load_config(write(tmp_path, "run:\n  name: x\n  seed: 1\n   oops: 2\n"))
    with pytest.raises(ConfigError, match=r"run.yaml: the top level must be a mapping of sections"):
        load_config(write(tmp_path, "- data\n- model\n"))


def test_exponent_floats_read_as_numbers(tmp_path):
    # YAML 1.1 reads `1e-4` as text; a learning rate written that way must still work.
    cfg = load_config(write(tmp_path, "optim:\n  nogan:\n    lr: 1e-4\n"))
    assert cfg.optim.nogan.lr == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match="optim.nogan.lr must be a number"):
        load_config(write(tmp_path, "optim:\n  nogan:\n    lr: fast\n"))


def test_dump_and_reload_gives_an_equal_object(tmp_path):
    cfg = load_config(CONFIGS[0], ["data.batch_size=16", "optim.discriminator.weight_decay=1e-5"])
    out = tmp_path / "resolved.yaml"
    text = dump_config(cfg, out)
    assert yaml.safe_load(text)["data"]["batch_size"] == 16
    assert load_config(out) == cfg
    assert not list(tmp_path.glob("*.tmp"))


def test_every_field_has_a_docstring():
    import ast
    import inspect

    import configs as module

    tree = ast.parse(inspect.getsource(module))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name.endswith("Config") and node.name != "ConfigError":
            body = node.body
            for i, stmt in enumerate(body):
                if isinstance(stmt, ast.AnnAssign):
                    nxt = body[i + 1] if i + 1 < len(body) else None
                    has_doc = isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant)
                    assert has_doc, f"{node.name}.{stmt.target.id} has no docstring"


@pytest.mark.parametrize("override, new", [("data.backend=seed", "baseline"), ("loss.vgg_input=seed", "lab")])
def test_a_renamed_choice_names_its_new_value(override, new):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"{key} = 'seed' was renamed: use '{new}'"):
        load_config(None, [override])


def test_a_list_for_a_choice_is_a_one_line_error():
    with pytest.raises(ConfigError, match=r"data.backend = \['a', 'b'\] is not one of"):
        load_config(None, ["data.backend=[a, b]"])


def test_a_mistyped_override_names_the_override_and_close_keys(tmp_path):
    path = write(tmp_path, "data:\n  batch_size: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["data.batch_sise=4"])
    message = str(err.value)
    assert message.startswith(
        "override data.batch_sise=4: unknown key 'data.batch_sise'; did you mean 'data.batch_size'"
    )
    assert str(path) not in message  # the file is fine: the override is the mistake


@pytest.mark.parametrize(
    "override, message",
    [
        ("batch_size=4", "override batch_size=4: unknown key 'batch_size'; did you mean 'data.batch_size'"),
        ("data.batch_size=x", "override data.batch_size=x: data.batch_size must be an integer, got 'x'"),
        ("data.batch_size=0", "override data.batch_size=0: data.batch_size = 0 must be positive"),
        ("trainer.lr=1", "override trainer.lr=1: unknown key 'trainer' (known: checkpoint, data, logging, loss"),
    ],
)
def test_override_mistakes_name_the_override(tmp_path, override, message):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "data:\n  batch_size: 8\n"), [override])
    assert str(err.value).startswith(message)


def test_an_unknown_key_in_the_file_suggests_close_keys(tmp_path):
    path = write(tmp_path, "schedule:\n  nogan_step: 8\n")
    with pytest.raises(
        ConfigError, match=r"run.yaml: unknown key 'schedule.nogan_step'; did you mean 'schedule.nogan_steps'"
    ):
        load_config(path)


def test_an_override_replaces_a_bad_value_in_the_file(tmp_path):
    cfg = load_config(write(tmp_path, "data:\n  batch_size: many\n"), ["data.batch_size=4"])
    assert cfg.data.batch_size == 4
