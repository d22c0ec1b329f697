"""Generator adapters by name, and loading a diffusers pipeline directory or hub id through the right adapter.

Each adapter module in ``rewardflow/pipelines/`` registers itself::

    @register_generator("sd3", pipeline_classes=("StableDiffusion3Pipeline",), description="...")
    class SD3Generator(Generator):
        @classmethod
        def from_pretrained(cls, path, **kw) -> "SD3Generator": ...

``load_generator(path_or_id)`` reads ``model_index.json`` (``_class_name``) to pick the adapter; ``adapter=``
overrides the detection. Where several adapters load the same pipeline class (``sd`` and ``sd-turbo``), the one whose
``name_pattern`` matches the model's name wins (``stabilityai/sd-turbo``, ``./my-SDXL-Turbo``), else the one without
a pattern. A registered adapter name that is not a path on disk (a plugin's embedded model, e.g. the
toy world's ``toy``) loads that adapter's default weights. Plugins (:mod:`rewardflow.plugins`) register more
adapters with the same decorator.
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
import pkgutil
import re

import rewardflow.pipelines
from rewardflow.plugins import load_plugins

_ADAPTERS: dict[str, dict] = {}
# modules of this package that are not adapters (everything else not starting with "_" is one)
_SUPPORT_MODULES = ("base", "registry", "parametrization", "lora", "loading", "vae", "options")


def register_generator(name: str, *, pipeline_classes: tuple[str, ...] = (), description: str = "",
                       embedded: bool = False, name_pattern: str | None = None):
    """Class decorator registering a generator adapter. ``embedded``: the adapter ships its own default weights,
    so ``load_generator(name)`` works without a path (the toy models). ``name_pattern``: a regular expression
    (case-insensitive) on the model's path or hub id that selects this adapter among those of the same pipeline
    class (e.g. ``turbo`` for SD-Turbo's defaults: no guidance, one step)."""
    def deco(cls):
        if name in _ADAPTERS:
            raise ValueError(f"generator adapter {name!r} is already registered")
        _ADAPTERS[name] = {"name": name, "cls": cls, "pipeline_classes": tuple(pipeline_classes),
                           "description": description or (cls.__doc__ or "").strip().split("\n")[0],
                           "embedded": bool(embedded), "name_pattern": name_pattern}
        return cls

    return deco


def _import_builtin() -> None:
    for m in pkgutil.iter_modules(rewardflow.pipelines.__path__):
        if m.name not in _SUPPORT_MODULES and not m.name.startswith("_"):
            importlib.import_module(f"rewardflow.pipelines.{m.name}")
    load_plugins()


def list_generators() -> list[dict]:
    _import_builtin()
    return [_ADAPTERS[n] for n in sorted(_ADAPTERS)]


def _pipeline_class_name(path: str) -> str | None:
    if os.path.isdir(path):
        f = os.path.join(path, "model_index.json")
        if not os.path.isfile(f):
            raise FileNotFoundError(f"{path} is not a diffusers pipeline directory: {f} is missing")
        with open(f) as fh:
            return json.load(fh).get("_class_name")
    try:  # a hub id: read model_index.json from the cache or the hub
        from huggingface_hub import hf_hub_download  # lazy: the hub client, only for a hub id (network path)

        with open(hf_hub_download(path, "model_index.json")) as fh:
            return json.load(fh).get("_class_name")
    except Exception as e:  # noqa: BLE001 - reported with the fix
        raise FileNotFoundError(f"cannot read model_index.json of {path!r} (not a local directory, and the hub "
                                f"lookup failed: {type(e).__name__}: {e}); pass a local pipeline directory or "
                                "--adapter NAME") from e


def _model_name(path: str) -> str:
    """The last component of a path or hub id (``stabilityai/sd-turbo`` -> ``sd-turbo``): a name pattern is matched
    against the model's own name, not against a parent folder."""
    parts = [p for p in re.split(r"[\\/]+", str(path)) if p not in ("", ".")]
    return parts[-1] if parts else ""


def resolve_adapter(path: str | os.PathLike | None, adapter: str | None = None) -> dict:
    """The registry entry (``name``, ``cls``, ``pipeline_classes``, ``description``, ``embedded``) of the adapter
    that loads ``path``, without loading any weights: ``adapter`` if given, an embedded model's name, or the adapter
    of the pipeline class in ``model_index.json``."""
    _import_builtin()
    path = None if path is None else str(path)
    if path is None and adapter is None:
        raise ValueError("no model given: pass a diffusers pipeline directory or hub id (or the name of an "
                         f"embedded model: {', '.join(n for n, a in _ADAPTERS.items() if a['embedded']) or 'none'})")
    if adapter is None:
        if path in _ADAPTERS and not os.path.exists(path):  # an embedded model (e.g. "toy"), by adapter name
            adapter = path
        else:
            cls_name = _pipeline_class_name(path)
            hits = [a for a in _ADAPTERS.values() if cls_name in a["pipeline_classes"]]
            if not hits:
                raise ValueError(f"no adapter for pipeline class {cls_name!r} of {path}; known adapters: "
                                 + ", ".join(f"{a['name']} ({'/'.join(a['pipeline_classes'])})"
                                             for a in _ADAPTERS.values()))
            named = [a for a in hits if a["name_pattern"] and re.search(a["name_pattern"], _model_name(path), re.I)]
            plain = [a for a in hits if not a["name_pattern"]]
            adapter = (named or plain or hits)[0]["name"]
    if adapter not in _ADAPTERS:
        close = difflib.get_close_matches(adapter, _ADAPTERS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown generator adapter {adapter!r}.{hint} Known: {', '.join(sorted(_ADAPTERS))}")
    return _ADAPTERS[adapter]


def load_generator(path: str | os.PathLike | None = None, adapter: str | None = None, **kwargs):
    """Build the adapter for a diffusers pipeline (local directory or hub id); ``kwargs`` go to its
    ``from_pretrained`` (dtype, device, guidance_scale, ...)."""
    entry = resolve_adapter(path, adapter)
    path = None if path is None else str(path)
    if path == entry["name"] and not os.path.exists(path):
        path = None  # an embedded model: the adapter's own default weights
    return entry["cls"].from_pretrained(path, **kwargs)
