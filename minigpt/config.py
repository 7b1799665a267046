"""Presets and `KEY=VALUE` overrides: how TOML files and the command line fill a dataclass.

A preset is a TOML file, either one of the named presets shipped in configs/ ("tiny",
"shakespeare-char", "gpt2-124m") or a path. Tables are only for readability: `[model] n_layer = 4`
and a top-level `n_layer = 4` mean the same. Overrides on the command line come last and win.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import types
import typing
from importlib.resources import files
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TRUE, FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def preset_names() -> list[str]:
    folder = files("minigpt.configs")
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_preset(name_or_path: str) -> dict:
    """The settings of a named preset or a TOML file, flattened to one level."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"no config file at {path}")
        text = path.read_text(encoding="utf-8")
    elif name_or_path in preset_names():
        text = (files("minigpt.configs") / f"{name_or_path}.toml").read_text(encoding="utf-8")
    else:
        raise ValueError(
            f"unknown preset {name_or_path!r}; choose one of {preset_names()} or give a .toml path"
        )
    try:
        return _flatten(tomllib.loads(text), str(name_or_path))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{name_or_path}: not valid TOML ({exc})") from None


def _flatten(table: dict, source: str) -> dict:
    flat = {}
    for key, value in table.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        for name, item in items:
            if isinstance(item, dict):
                raise ValueError(f"{source}: tables nest one level at most ({key}.{name})")
            if name in flat:
                raise ValueError(f"{source}: {name!r} is set twice")
            flat[name] = item
    return flat


def parse_overrides(pairs: list[str], cls) -> dict:
    """["n_layer=6", "compile=true"] -> {"n_layer": 6, "compile": True}, typed by `cls`'s fields."""
    hints = typing.get_type_hints(cls)
    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        if key not in hints:
            raise ValueError(_unknown_key_message(key, hints))
        values[key] = coerce(raw, hints[key], key)
    return values


def coerce(raw: str, annotation, key: str = "value"):
    """Convert the text `raw` to the type `annotation` (bool, int, float, str, or X | None)."""
    options = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    if type(None) in options and raw.strip().lower() in ("none", "null", ""):
        return None
    for option in options:
        if option is type(None):
            continue
        if option is bool:
            word = raw.strip().lower()
            if word in TRUE | FALSE:
                return word in TRUE
        elif option in (int, float):
            try:
                value = option(raw)
            except ValueError:
                continue
            if option is float and not math.isfinite(value):
                raise ValueError(f"{key}={raw!r}: must be a finite number")
            return value
        elif option is str:
            return raw
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ValueError(f"{key}={raw!r}: expected {names}")


def _is_union(annotation) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _unknown_key_message(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"unknown setting {key!r}{hint} (known: {', '.join(sorted(known))})"


def check_types(config) -> None:
    """Check each field of a settings dataclass against its annotation (bool, int, float, str):
    an int is accepted for a float, and a float must be finite. A NaN slips through every
    comparison (`nan < 0` is False), so range checks alone would let it silently disable
    clipping or poison a schedule."""
    hints = typing.get_type_hints(type(config))
    name = type(config).__name__
    for field in dataclasses.fields(config):
        value, expected = getattr(config, field.name), hints[field.name]
        options = typing.get_args(expected) if _is_union(expected) else (expected,)
        if float in options and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            setattr(config, field.name, value)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name}.{field.name}={value!r}: must be a finite number")
        if expected in (int, float, str, bool) and (
            not isinstance(value, expected) or (expected is int and isinstance(value, bool))
        ):
            raise ValueError(f"{name}.{field.name}={value!r}: expected "
                             f"{expected.__name__}, got {type(value).__name__}")


def from_dict(cls, values: dict):
    """An instance of dataclass `cls` from a dict; unknown keys are an error that lists them."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown} for {cls.__name__}; "
                         f"known settings: {sorted(known)}")
    return cls(**values)


def build(cls, preset: str | None, overrides: list[str]):
    """An instance of dataclass `cls` from a preset, then the overrides."""
    values = load_preset(preset) if preset else {}
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise ValueError(f"{preset}: " + _unknown_key_message(unknown[0], fields))
    values.update(parse_overrides(overrides, cls))
    return cls(**values)
