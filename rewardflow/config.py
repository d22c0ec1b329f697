"""Typed configs: a YAML file (and ``key=value`` overrides) into a dataclass, failing on unknown keys *before*
anything heavy loads, with the valid keys and the closest match in the message.

The checks at the edge, shared by every config (``rewardflow train``, ``rewardflow demo``, ...):

* YAML syntax errors and tabs name ``file:line:column``; a key given twice in one mapping is refused;
* values are coerced to the field's type; a YAML boolean (``true``, ``yes``, ``on``) where a number belongs, and
  NaN or inf in a float field, are refused;
* a config class may declare ``value_ranges = {"save_every": ">=0", "lr": ">0", "ema_decay": "[0,1)"}``;
  :func:`check_ranges` refuses a value outside its range (NaN is outside every range);
* input paths in a config file (``model``, ``prompts``, ... : :data:`INPUT_PATH_KEYS`) that are relative are read
  relative to the config file's folder when the file is there, so a config works from any working directory
  (a value that is not a file next to the config, e.g. a hub id, ``toy`` or ``toy:train``, is kept as written).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar, get_type_hints

import yaml

T = TypeVar("T")

# config keys that name input files or folders (resolved relative to the config file, see the module docstring)
INPUT_PATH_KEYS = ("model", "prompts", "eval_prompts", "dataset", "init_from", "lora", "reference")


# ----------------------------------------------------------------------------------------------- YAML
class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: construct_mapping reports it
            continue
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first given on line {first + 1}); keep one", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_error(where: str, e: yaml.YAMLError) -> ValueError:
    mark = getattr(e, "problem_mark", None)
    loc = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark is not None else where
    problem = getattr(e, "problem", None) or str(e)
    context = getattr(e, "context", None)
    text = f"{problem} ({context})" if context and "duplicate key" not in problem else problem
    if "'\\t'" in problem:
        text += "; YAML does not allow tabs here: use spaces"
    return ValueError(f"{loc}: {text}")


def parse_yaml(text: str, where: str = "<string>") -> Any:
    """``yaml.safe_load`` with duplicate keys refused and errors as ``ValueError('WHERE:LINE:COL: problem')``."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise _yaml_error(where, e) from None


# ----------------------------------------------------------------------------------------------- values
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


def _optional_of(typ: Any) -> Any:
    """``X`` for ``X | None`` / ``Optional[X]``, else None."""
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(typ)) == 2:
            return args[0]
    return None


def _coerce(value: Any, typ: Any, key: str) -> Any:
    inner = _optional_of(typ)
    if inner is not None:
        return None if value is None else _coerce(value, inner, key)
    origin = getattr(typ, "__origin__", None)
    if origin is tuple and isinstance(value, (list, tuple, str)):
        # `key=a,b(x=1,y=2)` on the command line, or a YAML list
        items = _split_top_level(value) if isinstance(value, str) else tuple(value)
        args = getattr(typ, "__args__", ())
        if len(args) == 2 and args[1] is Ellipsis and args[0] in (int, float):
            # numbers: YAML 1.1 reads `1e-5` as a string; every element gets the declared type
            items = tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(items))
        return items
    if typ in (int, float) and isinstance(value, bool):
        raise ValueError(f"config key {key!r} expects {typ.__name__}, got the boolean {value!r} (YAML reads "
                         "true/false/yes/no/on/off as booleans); give a number")
    if typ in (int, float) and isinstance(value, str):
        try:
            value = typ(value)
        except ValueError:
            raise ValueError(f"config key {key!r} expects {typ.__name__}, got {value!r}") from None
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ in (int, float, str, bool) and not isinstance(value, typ):
        hint = f" (quote it to keep it text: {key}='{value}')" if typ is str and value is not None else ""
        raise ValueError(f"config key {key!r} expects {typ.__name__}, got {type(value).__name__} {value!r}{hint}")
    if typ is float and not math.isfinite(value):
        raise ValueError(f"config key {key!r} is {value}; give a finite number")
    return value


_RULE = re.compile(r"^(>=|>|<=|<)\s*(-?[\d.e+-]+)$|^([\[(])\s*(-?[\d.e+-]+)\s*,\s*(-?[\d.e+-]+)\s*([\])])$")


def _in_range(x: Any, rule: str) -> bool:
    m = _RULE.match(rule.strip())
    if m is None:
        raise ValueError(f"bad value range {rule!r}: use >N, >=N, <N, <=N or an interval such as [0,1)")
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    if m.group(1):
        op, n = m.group(1), float(m.group(2))
        return {">=": x >= n, ">": x > n, "<=": x <= n, "<": x < n}[op]
    lo, hi = float(m.group(4)), float(m.group(5))
    return (x >= lo if m.group(3) == "[" else x > lo) and (x <= hi if m.group(6) == "]" else x < hi)


def _describe(rule: str) -> str:
    m = _RULE.match(rule.strip())
    if m.group(1):
        return f"{m.group(1)} {m.group(2)}"
    return f"in {rule.replace(' ', '')}"


def check_ranges(cfg: Any, ranges: Mapping[str, str] | None = None, hints: Mapping[str, str] | None = None) -> None:
    """Refuse a numeric field of ``cfg`` outside its range (``ranges`` defaults to ``type(cfg).value_ranges``);
    NaN is outside every range. ``hints`` (or ``type(cfg).value_hints``) add what 0 or the default means."""
    ranges = getattr(type(cfg), "value_ranges", {}) if ranges is None else ranges
    hints = getattr(type(cfg), "value_hints", {}) if hints is None else hints
    for key, rule in ranges.items():
        value = getattr(cfg, key)
        if value is None:
            continue
        for x in value if isinstance(value, (tuple, list)) else (value,):
            if not _in_range(x, rule):
                hint = f" ({hints[key]})" if key in hints else ""
                raise ValueError(f"{key} must be {_describe(rule)}{hint}, got {value!r}")


# ----------------------------------------------------------------------------------------------- files
def _resolve_paths(data: dict[str, Any], base: Path, keys: Sequence[str]) -> None:
    """Relative input paths in a config file are read relative to the file's folder when they exist there."""
    for k in keys:
        v = data.get(k)
        if isinstance(v, str) and v and not os.path.isabs(v) and not v.startswith("~"):
            candidate = base / v
            if candidate.exists():
                data[k] = os.path.normpath(str(candidate))


def read_config_dict(path: str | Path | None = None, overrides: Sequence[str] = (),
                     path_keys: Sequence[str] = INPUT_PATH_KEYS) -> dict[str, Any]:
    """The mapping in YAML ``path`` (if any) updated by ``key=value`` overrides (values parsed as YAML scalars).
    Relative input paths (``path_keys``) in the file resolve against the file's folder; the overrides' against
    the working directory, where they were typed."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        try:
            text = p.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as e:
            raise ValueError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start}); save the config as UTF-8") from None
        loaded = parse_yaml(text, str(p))
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{p}: a config must be a mapping of keys to values (key: value lines), got a "
                             f"{type(loaded).__name__}")
        bad = [k for k in loaded if not isinstance(k, str)]
        if bad:
            raise ValueError(f"{p}: config keys must be names, got {bad[0]!r}")
        _resolve_paths(loaded, p.parent, path_keys)
        data.update(loaded)
    for ov in overrides:
        k, sep, v = ov.partition("=")
        if not sep or not k.strip():
            raise ValueError(f"override {ov!r} must look like key=value")
        data[k.strip()] = parse_yaml(v, f"override {ov!r}")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """``cls`` from YAML ``path`` plus ``key=value`` overrides (values parsed as YAML scalars), type-coerced and
    range-checked (``cls.value_ranges``)."""
    data = read_config_dict(path, overrides)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, fields, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown config key {k!r} for {cls.__name__}.{hint} Valid keys: {', '.join(fields)}")
    cfg = cls(**{k: _coerce(v, hints[k], k) for k, v in data.items()})
    check_ranges(cfg)
    return cfg
