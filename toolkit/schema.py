"""Frozen dataclasses from YAML: the loader every config and env.yaml goes through.

An unknown key is an error that lists the valid keys with their defaults; a wrong scalar type names the key.
Kept apart from `toolkit.config` so a job's worker (which reads env.yaml) imports no LLM or W&B code.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from toolkit.errors import ConfigError

T = TypeVar("T")


def from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from a mapping; unknown keys raise with the list of valid keys."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {_describe(cls)}")
    hints = typing.get_type_hints(cls)
    values = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _describe(cls: type) -> str:
    return ", ".join(f"{f.name} (default {_default(f)!r})" for f in dataclasses.fields(cls))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return "{...}" if dataclasses.is_dataclass(value) else value
    return "required"


def _convert(hint: Any, value: Any, where: str) -> Any:
    """Check (and normalise) one value against its type: scalars, tuples and dicts of them, nested dataclasses.
    A list where a mapping belongs, or a string where a list belongs, is an error here, not at sbatch time."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        return _sequence(args, value, where)
    if origin is dict:
        return _mapping(args, value, where)
    return _scalar(hint, value, where)


def _scalar(hint: Any, value: Any, where: str) -> Any:
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _sequence(args: tuple[Any, ...], value: Any, where: str) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    item = args[0] if args else Any
    return tuple(_scalar(item, v, f"{where}[{i}]") if item is not Any else v for i, v in enumerate(value))


def _mapping(args: tuple[Any, ...], value: Any, where: str) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {value!r}")
    key, item = args if len(args) == 2 else (Any, Any)
    return {_scalar(key, k, f"{where} key {k!r}"): _item(item, v, f"{where}.{k}") for k, v in value.items()}


def _item(hint: Any, value: Any, where: str) -> Any:
    """A mapping's value: a number where text belongs is written as text (`env_vars: {STEPS: 50}`,
    `sbatch_extra: {nice: 10}`)."""
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value if hint is Any else _scalar(hint, value, where)


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)   # libyaml when there: ~10x faster, same result


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(), Loader=_SAFE_LOADER) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return data


def override(obj: T, **changes: Any) -> T:
    """Replace fields given as non-None keyword arguments (CLI flags override the YAML)."""
    return dataclasses.replace(obj, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[type-var]
