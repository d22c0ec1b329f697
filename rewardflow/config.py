"""Typed configs: a YAML file (and ``key=value`` overrides) into a dataclass, failing on unknown keys and bad values
*before* anything heavy loads, with the valid keys and the closest match in the message.

* YAML errors are reported as ``FILE:LINE:COLUMN: problem`` (a tab in the indentation is named as such); a key
  given twice in one mapping is an error, not a silent overwrite.
* Values take the field's type: YAML reads ``1e-5`` as text, so numbers are converted; a boolean or a non-finite
  number where a number belongs is refused.
* A field whose metadata says ``path=True`` holds an input path: a relative path written in a YAML file is looked up
  next to that file first, then under the shipped assets folder (``assets/...``), then in the working directory.
  Overrides on the command line are relative to the working directory, as shell users expect.
* Fields carry their help text in ``metadata["help"]``; :func:`config_table` renders a dataclass's keys as a
  Markdown table (docs/usage/config.md is generated from it) and :func:`describe_fields` as plain text
  (``rewardflow train --help-config``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar, get_type_hints

import yaml

from rewardflow.io.paths import resolve_input_path

T = TypeVar("T")


# --------------------------------------------------------------------------------------------------- YAML
class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping."""


def _mapping_no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            m = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", m)
        seen[key] = loader.construct_object(value_node, deep=deep)
    return seen


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_no_duplicates)


def load_yaml(text: str, where: str) -> Any:
    """Parse YAML ``text``; errors become ``ValueError("WHERE:LINE:COL: problem")``."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        pos = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = e.problem or e.context or str(e)
        if "\\t" in problem or "'\t'" in problem or "tab" in problem.lower():
            problem += " (YAML indents with spaces, not tabs)"
        raise ValueError(f"{where}{pos}: {problem}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{where}: {e}") from None


# --------------------------------------------------------------------------------------------------- values
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


def _type_name(typ: Any) -> str:
    if isinstance(typ, type):
        return typ.__name__
    return str(typ).replace("typing.", "")


def coerce_value(value: Any, typ: Any, key: str) -> Any:
    """``value`` (from YAML or a ``key=value`` override) as field type ``typ``; ValueError naming ``key`` if it
    cannot be."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return coerce_value(value, inner[0], key)
        return value
    if origin is tuple and isinstance(value, (list, tuple, str)):
        # `key=a,b(x=1,y=2)` on the command line, or a YAML list
        items = _split_top_level(value) if isinstance(value, str) else tuple(value)
        args = typing.get_args(typ)
        if len(args) == 2 and args[1] is Ellipsis and args[0] in (int, float, str):
            items = tuple(coerce_value(v, args[0], f"{key}[{i}]") for i, v in enumerate(items))
        return items
    if origin is dict and value is not None and not isinstance(value, dict):
        raise ValueError(f"config key {key!r} expects a mapping (e.g. {key}={{name: {{path: FILE}}}}), got "
                         f"{type(value).__name__} {value!r}")
    if typ in (int, float):
        if isinstance(value, bool):
            raise ValueError(f"config key {key!r} expects {typ.__name__}, got the boolean {value!r}")
        if isinstance(value, str):
            try:
                value = float(value) if typ is float else int(value)
            except ValueError:
                raise ValueError(f"config key {key!r} expects {typ.__name__}, got {value!r}") from None
        if typ is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if typ is float and isinstance(value, int):
            value = float(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"config key {key!r} must be a finite number, got {value!r}")
    if typ in (int, float, str, bool) and not isinstance(value, typ):
        hint = f" (quote it to keep it text: {key}='{value}')" if typ is str and value is not None else ""
        raise ValueError(f"config key {key!r} expects {typ.__name__}, got {type(value).__name__} {value!r}{hint}")
    return value


def read_config_dict(path: str | Path | None = None, overrides: Sequence[str] = (),
                     path_keys: Sequence[str] = ()) -> dict[str, Any]:
    """The mapping in YAML ``path`` (if any) updated by ``key=value`` overrides (values parsed as YAML scalars).
    Relative values of ``path_keys`` written in the file are resolved with :func:`resolve_input_path`."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        loaded = load_yaml(p.read_text(encoding="utf-8-sig"), str(p)) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{p}: a config must be a mapping of keys to values")
        for k in path_keys:
            if isinstance(loaded.get(k), str) and loaded[k]:
                loaded[k] = resolve_input_path(loaded[k], p.parent)
        data.update(loaded)
    for ov in overrides:
        if "=" not in ov:
            raise ValueError(f"override {ov!r} must look like key=value")
        k, v = ov.split("=", 1)
        data[k.strip()] = load_yaml(v, f"override {k.strip()}=") if v.strip() else ""
    return data


def path_fields(*classes: type) -> list[str]:
    """Names of the fields marked ``metadata={"path": True}`` in the dataclasses ``classes``."""
    return [f.name for cls in classes for f in dataclasses.fields(cls) if f.metadata.get("path")]


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """``cls`` from YAML ``path`` plus ``key=value`` overrides (values parsed as YAML scalars)."""
    data = read_config_dict(path, overrides, path_keys=path_fields(cls))
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, fields, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown config key {k!r} for {cls.__name__}.{hint} Valid keys: {', '.join(fields)}")
    return cls(**{k: coerce_value(v, hints[k], k) for k, v in data.items()})


# --------------------------------------------------------------------------------------------------- docs
def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def field_rows(cls: type) -> list[tuple[str, str, str, str]]:
    """``(key, type, default, help)`` of every field of the dataclass ``cls``, in declaration order."""
    hints = get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        d = _default_of(f)
        shown = "unset" if d is None else repr(list(d) if isinstance(d, tuple) else d)
        rows.append((f.name, _type_name(hints[f.name]), shown, str(f.metadata.get("help", ""))))
    return rows


def config_table(cls: type) -> str:
    """The fields of ``cls`` as a Markdown table (key, type, default, help)."""
    esc = lambda s: s.replace("|", "\\|")
    lines = ["| key | type | default | help |", "|---|---|---|---|"]
    lines += [f"| `{k}` | `{esc(t)}` | `{esc(d)}` | {esc(h)} |" for k, t, d, h in field_rows(cls)]
    return "\n".join(lines) + "\n"


def describe_fields(cls: type) -> str:
    """The fields of ``cls`` for a terminal: ``key (type, default)`` and the help text indented below."""
    return "".join(f"  {k} ({t}, default {d})\n      {h}\n" for k, t, d, h in field_rows(cls))


def option(default: Any, help: str, *, path: bool = False) -> Any:  # noqa: A002 - the metadata key trl uses
    """A dataclass field with its help text (shown by ``--help-config`` and in docs/usage/config.md); mutable
    defaults (lists, tuples, dicts) become default factories. ``path=True`` marks an input path (resolved next to
    the config file, see the module docstring)."""
    meta = {"help": help, **({"path": True} if path else {})}
    if isinstance(default, (list, tuple, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)
