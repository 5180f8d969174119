"""Typed configs: dataclass defaults, then a YAML file, then `key=value` overrides.

Every stage owns one dataclass (composed of small shared ones). The YAML file holds only what differs from the
defaults. Unknown keys and wrong types are errors that name the key, e.g. `ppo.kl.target: expected float, got
'abc'` — a typo in a config must never silently fall back to a default.

Validation has one rule. A dataclass checks its own values (ranges, exclusive options, divisibility among its own
fields) in `__post_init__` with `require`, which raises a `ConfigValueError` naming the field; `from_dict` turns it
into a ConfigError naming the key's whole path (`data.dev_fraction: must be in [0, 1], got 2.0`). Checks that need
the launch (number of processes, FSDP) are each stage's `check_launch(cfg, procs)`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the stage's dataclass."""


class ConfigValueError(ValueError):
    """A value a config dataclass rejects in its `__post_init__`; `key` is the field's name in that dataclass."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


def setting(default: Any = dataclasses.MISSING, help: str = "", *, default_factory: Any = dataclasses.MISSING
            ) -> Any:
    """A config field with its one-line meaning (`--show-config` prints it), like a commented nanoGPT config."""
    if "\n" in help:
        raise ValueError(f"a setting's help is one line: {help!r}")
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"help": help})


def require(ok: bool, key: str, problem: str) -> None:
    """A config dataclass's check of its own field `key` (call it in `__post_init__`)."""
    if not ok:
        raise ConfigValueError(key, problem)


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build `cls` from its defaults, a YAML file (optional) and `key=value` overrides (dotted keys)."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml_mapping(Path(path))
    for override in overrides or []:
        key, value = parse_override(override)
        set_dotted(data, key, value)
    where = f" (in {path})" if path is not None else ""
    try:
        return from_dict(cls, data)
    except ConfigError as err:
        raise ConfigError(f"{err}{where}") from None


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=3` -> ("a.b", 3). The value is parsed as YAML, so `true`, `1e-5`, `[1, 2]` and `null` work."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {part} is a value, not a section")
        node = child
    node[parts[-1]] = value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Instantiate dataclass `cls` from a nested mapping, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"unknown key {prefix}{unknown[0]} (known keys here: {known})")
    kwargs = {name: coerce(hints[name], value, f"{prefix}{name}") for name, value in data.items()}
    try:
        obj = cls(**kwargs)
    except ConfigValueError as err:  # the dataclass named its field: give the key's whole path
        raise ConfigError(f"{prefix}{err.key}: {err.problem}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {err}") from None
    return obj


def coerce(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; allow int -> float. Returns the (possibly converted) value."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, prefix=key + ".")
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(option, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: expected {type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: expected one of {list(allowed)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML reads `1e-5` (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, bool) or tp is float and isinstance(value, bool):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


def type_name(tp: Any) -> str:
    """An annotation as a person reads it: `bool | 'auto'`, `int | None`, `'a' | 'b'`, `list[str]`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(option) for option in typing.get_args(tp))
    if origin is typing.Literal:
        return " | ".join(repr(v) for v in typing.get_args(tp))
    if tp is type(None):
        return "None"
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain nested data, for writing config.yaml."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
