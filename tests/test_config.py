"""Strict YAML config loading: every mistake names its dotted key and the file."""

from pathlib import Path

import pytest
import yaml

from configs import Config, ConfigError, dump_config, load_config

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
