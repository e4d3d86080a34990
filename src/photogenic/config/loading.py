"""Building, checking and serialising configs: presets, YAML files and `a.b=value` overrides; dicts, fingerprints."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from photogenic.config.presets import PRESETS
from photogenic.config.sections import Config, ConfigError

__all__ = ["load_config", "to_dict", "flatten", "overrides_from", "fingerprint", "field_docs", "from_dict"]


def load_config(
    preset: str | None = None,
    file: str | Path | None = None,
    overrides: Iterable[str] = (),
) -> Config:
    """Resolve a config: a preset, then a YAML file, then `a.b.c=value` overrides, later ones winning.

    Args:
        preset: preset name; when None, the file's `preset:` key, else `demo`.
        file: optional YAML file with any subset of the tree: a local path or a store URI.
        overrides: `dotted.key=value` strings; values are parsed as YAML scalars or lists.

    Returns:
        The validated, frozen config.

    Raises:
        ConfigError: naming the key, file or preset that is wrong and what is allowed.
    """
    file_data: dict[str, Any] = {}
    if file is not None:
        file_data = _read_yaml(file)
    name = preset or file_data.get("preset") or "demo"
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}{_suggest(name, PRESETS)}; presets: {', '.join(PRESETS)}")
    data = to_dict(PRESETS[name]())
    _merge(data, file_data)
    for item in overrides:
        _apply_override(data, item)
    data["preset"] = name
    return from_dict(Config, data)


def to_dict(obj: Any) -> Any:
    """A plain JSON-able dict of a config (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def overrides_from(config: Config) -> list[str]:
    """The `key=value` overrides that turn `config.preset`'s preset into `config` (whatever a YAML file and
    overrides did), so another process resolves the same config from the preset name and this list."""
    base = flatten(to_dict(PRESETS[config.preset]()))
    out = []
    for key, value in flatten(to_dict(config)).items():
        if key == "preset" or base.get(key) == value:
            continue
        text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
        out.append(f"{key}={text.removesuffix(chr(10) + '...').strip()}")
    return out


def fingerprint(obj: Any) -> str:
    """A stable sha256 of a config (or any JSON-able value): same content, same fingerprint."""
    data = to_dict(obj)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def field_docs(cls: type = Config, prefix: str = "") -> dict[str, str]:
    """`{"dotted.key": "doc"}` for every leaf field of a config class."""
    out: dict[str, str] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(field_docs(hints[f.name], f"{name}."))
        else:
            out[name] = f.metadata.get("doc", "")
    return out


def from_dict(cls: type, data: Mapping[str, Any], path: str = "") -> Any:
    """Build a config dataclass from plain data, checking keys, types and bounds.

    Raises:
        ConfigError: for an unknown key (with close matches), a wrong type or a value out of range.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"config key {path.rstrip('.') or '<root>'!r} must be a mapping, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ConfigError(
                f"unknown config key {path + str(key)!r}{_suggest(str(key), fields, path)}; "
                f"allowed under {path.rstrip('.') or 'the root'}: {', '.join(fields)}"
            )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _check(hints[name], value, f"{path}{name}", fields[name].metadata)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config section {path.rstrip('.') or '<root>'!r}: {exc}") from exc


def _check(tp: Any, value: Any, key: str, meta: Mapping[str, Any]) -> Any:
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, f"{key}.")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if value not in args or type(value) is not type(args[args.index(value)]):
            raise ConfigError(f"config key {key!r} must be one of {list(args)}, got {_show(value)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check(inner[0], value, key, meta)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be a list, got {_show(value)}")
        item_tp = args[0] if args else Any
        return tuple(_check(item_tp, v, f"{key}[{i}]", {}) for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `3e-4` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r} must be a number, got {_show(value)}")
        value = float(value)
    elif tp in _SCALARS:
        what, ok = _SCALARS[tp]
        if not ok(value):
            raise ConfigError(f"config key {key!r} must be {what}, got {_show(value)}")
    _check_bounds(value, key, meta)
    return value


_SCALARS: dict[type, tuple[str, Callable[[Any], bool]]] = {
    int: ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    bool: ("true or false", lambda v: isinstance(v, bool)),
    str: ("a string", lambda v: isinstance(v, str)),
}


def _check_bounds(value: Any, key: str, meta: Mapping[str, Any]) -> None:
    checks = {
        "ge": (lambda v, b: v >= b, ">="),
        "gt": (lambda v, b: v > b, ">"),
        "le": (lambda v, b: v <= b, "<="),
        "lt": (lambda v, b: v < b, "<"),
    }
    for bound, (ok, sign) in checks.items():
        if bound in meta and not ok(value, meta[bound]):
            raise ConfigError(f"config key {key!r} must be {sign} {meta[bound]:g}, got {value!r}")


def _read_yaml(path: str | Path) -> dict[str, Any]:
    try:
        text = _read_text(str(path))
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top, got {_show(data)}")
    return data


def _read_text(path: str) -> str:
    """A local file, or an object in the store (`s3://...`, `file://...`): a run's resolved config."""
    if "://" not in path:
        return Path(path).read_text()
    from photogenic.storage import StoreError, open_store, split_parent

    try:
        folder, name = split_parent(path)
        return open_store(folder).get_bytes(name).decode()
    except StoreError as exc:
        raise ConfigError(f"config file {path!r} cannot be read: {exc}") from exc


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _apply_override(data: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like 'dotted.key=value'")
    key, raw = item.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    node: dict[str, Any] = data
    cls: Any = Config
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        prefix = ".".join(parts[:i]) + ("." if i else "")
        if part not in fields:
            raise ConfigError(
                f"unknown config key {key!r}{_suggest(part, fields, prefix)}; "
                f"allowed under {prefix.rstrip('.') or 'the root'}: {', '.join(fields) or '(nothing: a leaf)'}"
            )
        cls = typing.get_type_hints(cls)[part]
        if i < len(parts) - 1:
            node = node.setdefault(part, {})
    node[parts[-1]] = _parse_value(raw, cls, key)


def _parse_value(raw: str, tp: Any, key: str) -> Any:
    if tp is str or (typing.get_origin(tp) is Literal and all(isinstance(a, str) for a in typing.get_args(tp))):
        return raw
    try:
        return yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError as exc:
        raise ConfigError(f"override for {key!r}: cannot parse value {raw!r}: {exc}") from exc


def _suggest(word: str, choices: Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(prefix + c) for c in close) + "?"


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"
