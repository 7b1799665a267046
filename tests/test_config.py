"""Presets, KEY=VALUE overrides and TrainConfig's validation."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from minigpt import config as configs
from minigpt.train import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class Example:
    count: int = 1
    rate: float = 0.5
    flag: bool = False
    name: str = "x"
    limit: int | None = None
    share: float | None = 0.1


# --------------------------------------------------------------------------- presets

def test_the_shipped_presets_are_listed():
    assert {"tiny", "shakespeare-char", "gpt2-124m"} <= set(configs.preset_names())
    assert set(configs.preset_names()) == {p.stem for p in CONFIGS.glob("*.toml")}


@pytest.mark.parametrize("name", ["tiny", "shakespeare-char", "gpt2-124m"])
def test_every_preset_flattens_its_tables_and_builds_a_valid_config(name):
    raw = tomllib.loads((CONFIGS / f"{name}.toml").read_text())
    expected = {}
    for key, value in raw.items():  # flatten by hand: tables only group settings
        expected.update(value if isinstance(value, dict) else {key: value})
    assert configs.load_preset(name) == expected
    config = configs.build(TrainConfig, name, [])
    for key, value in expected.items():
        assert getattr(config, key) == value, key


def test_tiny_is_the_default_training_config():
    """The dataclass defaults and the tiny preset describe the same run."""
    defaults = TrainConfig()
    for key, value in configs.load_preset("tiny").items():
        assert getattr(defaults, key) == value, key


def test_a_toml_file_by_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('out_dir = "runs/mine"\n[model]\nn_layer = 2\n[optim]\nlearning_rate = 1e-3\n')
    assert configs.load_preset(str(path)) == {
        "out_dir": "runs/mine", "n_layer": 2, "learning_rate": 1e-3}
    config = configs.build(TrainConfig, str(path), ["n_layer=3"])
    assert (config.n_layer, config.learning_rate, config.out_dir) == (3, 1e-3, "runs/mine")


@pytest.mark.parametrize("text", [
    "n_layer = 2\n[model]\nn_layer = 3\n",  # top level and in a table
    "[model]\nn_layer = 2\n[optim]\nn_layer = 3\n",  # in two tables
])
def test_a_setting_given_twice_is_an_error(tmp_path, text):
    path = tmp_path / "twice.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match="'n_layer' is set twice"):
        configs.load_preset(str(path))


def test_tables_nest_one_level_only(tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text("[model.size]\nn_layer = 2\n")
    with pytest.raises(ValueError, match="one level"):
        configs.load_preset(str(path))


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("n_layer = = 2\n")
    with pytest.raises(ValueError, match="not valid TOML") as error:
        configs.load_preset(str(path))
    assert "broken.toml" in str(error.value)


def test_missing_toml_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.toml"):
        configs.load_preset(str(tmp_path / "nothere.toml"))


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown preset 'tinyy'") as error:
        configs.load_preset("tinyy")
    assert "tiny" in str(error.value) and "gpt2-124m" in str(error.value)


def test_an_unknown_key_in_a_preset_suggests_the_close_one(tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text("[model]\nn_layers = 2\n")
    with pytest.raises(ValueError, match="did you mean n_layer"):
        configs.build(TrainConfig, str(path), [])


def test_a_badly_typed_preset_value_names_the_field(tmp_path):
    path = tmp_path / "typed.toml"
    path.write_text('[model]\nn_layer = "four"\n')
    with pytest.raises(ValueError, match="n_layer='four'"):
        configs.build(TrainConfig, str(path), [])


# --------------------------------------------------------------------------- overrides

def test_overrides_are_typed_by_the_dataclass():
    values = configs.parse_overrides(
        ["count=3", "rate=1e-3", "flag=yes", "name=hello world", "limit=7", "share=none"], Example)
    assert values == {"count": 3, "rate": 1e-3, "flag": True, "name": "hello world", "limit": 7,
                      "share": None}
    assert type(values["count"]) is int and type(values["rate"]) is float


@pytest.mark.parametrize("raw, expected", [
    ("true", True), ("True", True), ("on", True), ("1", True),
    ("false", False), ("no", False), ("OFF", False), ("0", False),
])
def test_boolean_words(raw, expected):
    assert configs.coerce(raw, bool) is expected


@pytest.mark.parametrize("raw, annotation, expected", [
    ("none", int | None, None), ("null", int | None, None), ("", float | None, None),
    ("12", int | None, 12), ("0.25", float | None, 0.25), ("3", float, 3.0),
    ("-2", int, -2), ("=x", str, "=x"), ("def ", str, "def "),
])
def test_coerce(raw, annotation, expected):
    value = configs.coerce(raw, annotation)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("pair, words", [
    ("count=abc", "count='abc': expected int"),
    ("count=2.5", "count='2.5': expected int"),
    ("rate=fast", "rate='fast': expected float"),
    ("flag=maybe", "flag='maybe': expected bool"),
    ("limit=many", "limit='many': expected int or NoneType"),
])
def test_badly_typed_values_are_refused(pair, words):
    with pytest.raises(ValueError, match=words):
        configs.parse_overrides([pair], Example)


def test_unknown_key_suggests_the_close_match():
    with pytest.raises(ValueError, match="unknown setting 'n_layers'; did you mean n_layer"):
        configs.parse_overrides(["n_layers=2"], TrainConfig)
    with pytest.raises(ValueError, match="unknown setting 'zzz'") as error:
        configs.parse_overrides(["zzz=1"], TrainConfig)
    assert "did you mean" not in str(error.value)


def test_dashes_in_keys_and_the_last_value_wins():
    assert configs.parse_overrides(["max-iters=5", "max_iters=6"], TrainConfig) == {
        "max_iters": 6}


def test_an_override_without_equals_is_refused():
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        configs.parse_overrides(["n_layer"], TrainConfig)


def test_overrides_win_over_the_preset():
    config = configs.build(TrainConfig, "tiny", ["n_layer=2", "compile=true", "dropout=0.1"])
    assert (config.n_layer, config.compile, config.dropout) == (2, True, 0.1)
    assert config.n_embd == configs.load_preset("tiny")["n_embd"]


# --------------------------------------------------------------------------- TrainConfig checks

@pytest.mark.parametrize("settings, words", [
    (dict(batch_size=0), "TrainConfig.batch_size=0"),
    (dict(max_iters=-1), "TrainConfig.max_iters=-1"),
    (dict(eval_iters=0), "TrainConfig.eval_iters=0"),
    (dict(warmup_iters=-5), "TrainConfig.warmup_iters=-5"),
    (dict(grad_clip=-1.0), "TrainConfig.grad_clip=-1.0"),
    (dict(learning_rate=0.0), "TrainConfig.learning_rate=0.0"),
    (dict(learning_rate=1e-3, min_lr=1e-2), "TrainConfig.min_lr=0.01"),
    (dict(beta2=1.0), "TrainConfig.beta2=1.0"),
    (dict(dtype="float8"), "TrainConfig.dtype='float8'"),
    (dict(n_layer=2.5), "TrainConfig.n_layer=2.5: expected int"),
    (dict(n_layer="4"), "TrainConfig.n_layer='4': expected int"),
    (dict(compile=1), "TrainConfig.compile=1: expected bool"),
    (dict(n_layer=True), "TrainConfig.n_layer=True: expected int"),
    (dict(out_dir=3), "TrainConfig.out_dir=3: expected str"),
    (dict(n_embd=30, n_head=4), "n_embd=30 is not divisible by n_head=4"),
    (dict(dropout=1.5), "dropout=1.5"),
    (dict(pos_encoding="fancy"), "pos_encoding='fancy'"),
])
def test_train_config_validation_names_the_field(settings, words):
    with pytest.raises(ValueError) as error:
        TrainConfig(**settings)
    assert words in str(error.value)


def test_train_config_accepts_ints_for_floats_and_round_trips_through_a_dict():
    config = TrainConfig(learning_rate=1, min_lr=0)
    assert type(config.learning_rate) is float and config.learning_rate == 1.0
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert set(config.to_dict()) == {f.name for f in dataclasses.fields(TrainConfig)}
    with pytest.raises(ValueError, match="unknown setting"):
        TrainConfig.from_dict({**config.to_dict(), "n_layers": 3})


# --------------------------------------------------------------------------- non-finite values


def _float_fields(cls):
    import typing

    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls)
            if float in (typing.get_args(hints[f.name]) or (hints[f.name],))]


def _settings_classes():
    from minigpt.cli import EvalConfig, SampleConfig
    from minigpt.finetune import FinetuneConfig
    from minigpt.model import GPTConfig
    from minigpt.train import TrainConfig

    return [TrainConfig, FinetuneConfig, SampleConfig, EvalConfig, GPTConfig]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_every_float_setting_of_every_config_rejects_non_finite_values(bad):
    """NaN passes every comparison (nan < 0 is False), so a range check alone would let
    grad_clip=nan switch clipping off or min_lr=nan poison the schedule."""
    checked = 0
    for cls in _settings_classes():
        for name in _float_fields(cls):
            with pytest.raises(ValueError, match=rf"{name}=(-?inf|nan)"):
                cls(**{name: bad})
            checked += 1
    assert checked >= 15  # learning rates, betas, clipping, LoRA alpha, temperature, ...


def test_non_finite_values_are_refused_where_they_are_typed():
    from minigpt.train import TrainConfig

    for raw in ("nan", "inf", "-Infinity"):
        with pytest.raises(ValueError, match=rf"grad_clip='{raw}': must be a finite number"):
            configs.build(TrainConfig, None, [f"grad_clip={raw}"])
