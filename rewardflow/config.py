"""Typed configs: a YAML file (and ``key=value`` overrides) into a dataclass, failing on unknown keys *before*
anything heavy loads, with the valid keys and the closest match in the message."""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, Sequence, TypeVar, get_type_hints

import yaml

T = TypeVar("T")


def _split_top_level(text: str) -> tuple[str, ...]:
    """Split on commas outside parentheses: ``"clip,hpsv2(path=a,b)"`` -> ``("clip", "hpsv2(path=a,b)")``."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return tuple(x.strip() for x in parts if x.strip())


def _coerce(value: Any, typ: Any, key: str) -> Any:
    origin = getattr(typ, "__origin__", None)
    if origin is tuple and isinstance(value, (list, tuple, str)):
        # `key=a,b(x=1,y=2)` on the command line, or a YAML list
        items = _split_top_level(value) if isinstance(value, str) else tuple(value)
        args = getattr(typ, "__args__", ())
        if len(args) == 2 and args[1] is Ellipsis and args[0] in (int, float):
            # numbers: YAML 1.1 reads `1e-5` as a string; every element gets the declared type
            items = tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(items))
        return items
    if typ in (int, float) and isinstance(value, str):
        try:
            return typ(value)
        except ValueError:
            raise ValueError(f"config key {key!r} expects {typ.__name__}, got {value!r}") from None
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ in (int, float, str, bool) and not isinstance(value, typ):
        hint = f" (quote it to keep it text: {key}='{value}')" if typ is str and value is not None else ""
        raise ValueError(f"config key {key!r} expects {typ.__name__}, got {type(value).__name__} {value!r}{hint}")
    return value


def read_config_dict(path: str | Path | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The mapping in YAML ``path`` (if any) updated by ``key=value`` overrides (values parsed as YAML scalars)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{p}: a config must be a mapping of keys to values")
        data.update(loaded)
    for ov in overrides:
        if "=" not in ov:
            raise ValueError(f"override {ov!r} must look like key=value")
        k, v = ov.split("=", 1)
        data[k.strip()] = yaml.safe_load(v)
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """``cls`` from YAML ``path`` plus ``key=value`` overrides (values parsed as YAML scalars)."""
    data = read_config_dict(path, overrides)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, fields, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown config key {k!r} for {cls.__name__}.{hint} Valid keys: {', '.join(fields)}")
    return cls(**{k: _coerce(v, hints[k], k) for k, v in data.items()})
