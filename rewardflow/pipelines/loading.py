"""Loading diffusers pipelines the same way for every adapter.

:func:`load_diffusers_pipeline` (dtype, device or model offload, VAE slicing / tiling, gradient checkpointing,
attention backend; every non-denoiser component frozen), :func:`check_pipeline_dir` (a missing component or file of
a local pipeline directory is reported by name before diffusers runs), :func:`resolve_dtype` and
:func:`parametrization_from_scheduler`, and :func:`note_sampler_substitution` (a replaced sampler is said once).
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

import torch


_NOTED: set[tuple[str, str]] = set()


def note_sampler_substitution(source: str, target: str, reason: str) -> None:
    """Say on stderr, once per process and pair, that a pipeline's sampler ``source`` runs as ``target``: samples
    then differ from ``pipe(...)`` with the original scheduler, and a user should know why."""
    if (source, target) in _NOTED:
        return
    _NOTED.add((source, target))
    print(f"[rewardflow] sampler: the pipeline's {source} is replaced by {target} ({reason})", file=sys.stderr,
          flush=True)


def parametrization_from_scheduler(scheduler) -> str:
    """'flow' for flow-matching schedulers, else the scheduler's ``prediction_type`` (epsilon / v_prediction)."""
    name = type(scheduler).__name__
    if "FlowMatch" in name:
        return "flow"
    pt = getattr(scheduler.config, "prediction_type", "epsilon")
    if pt not in ("epsilon", "v_prediction"):
        raise ValueError(f"unsupported prediction_type {pt!r} of {name}; expected epsilon or v_prediction")
    return pt


_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """``torch.float32`` / ``"fp16"`` / ``"bfloat16"`` / None (fp32) -> a torch dtype."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    return _DTYPES[key]


def check_pipeline_dir(path: str | os.PathLike) -> dict:
    """Check a local diffusers pipeline directory before loading, so a missing piece is reported by file name.

    Reads ``model_index.json`` and, for every component it lists, checks the component folder and its files:
    ``config.json`` + a weight file for models, ``scheduler_config.json`` for schedulers, a vocabulary file for
    tokenizers. Returns the parsed ``model_index.json``.
    """
    path = str(path)
    index_file = os.path.join(path, "model_index.json")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"pipeline directory not found: {path}")
    if not os.path.isfile(index_file):
        raise FileNotFoundError(f"{path} is not a diffusers pipeline directory: {index_file} is missing")
    with open(index_file) as f:
        index = json.load(f)
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, (list, tuple)) or len(spec) != 2 or spec[0] is None:
            continue
        lib, cls_name = spec
        sub = os.path.join(path, name)
        if not os.path.isdir(sub):
            raise FileNotFoundError(f"component {name!r} ({lib}.{cls_name}) listed in {index_file} is missing: "
                                    f"no folder {sub}")
        files = os.listdir(sub)
        if "Scheduler" in cls_name:
            need = ["scheduler_config.json"]
        elif "Tokenizer" in cls_name or "Processor" in cls_name:
            vocab = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model", "vocab.txt",
                     "preprocessor_config.json")
            if not any(v in files for v in vocab):
                raise FileNotFoundError(f"component {name!r} ({cls_name}): no vocabulary file in {sub} "
                                        f"(expected one of {', '.join(vocab)})")
            continue
        else:
            need = ["config.json"]
            if not any(f.endswith(_WEIGHT_SUFFIXES) for f in files):
                raise FileNotFoundError(f"component {name!r} ({cls_name}): no weight file in {sub} (expected "
                                        f"e.g. {os.path.join(sub, 'diffusion_pytorch_model.safetensors')} or "
                                        f"{os.path.join(sub, 'model.safetensors')})")
        for fn in need:
            if fn not in files:
                raise FileNotFoundError(f"component {name!r} ({cls_name}): {os.path.join(sub, fn)} is missing")
    return index


def _denoiser_of(pipe) -> torch.nn.Module | None:
    for name in ("transformer", "unet"):
        m = getattr(pipe, name, None)
        if isinstance(m, torch.nn.Module):
            return m
    return None


def load_diffusers_pipeline(pipeline_cls: Any, path: str | os.PathLike, dtype: torch.dtype | str | None = None,
                            device: str | torch.device | None = None, *, enable_model_cpu_offload: bool = False,
                            vae_slicing: bool = False, vae_tiling: bool = False,
                            gradient_checkpointing: bool = False, attention: str = "auto", offload: bool = False,
                            **from_pretrained_kw):
    """Load a diffusers pipeline the same way for every adapter.

    Args:
        pipeline_cls: the diffusers pipeline class (or its name, e.g. ``"StableDiffusionXLPipeline"``).
        path: a local ``save_pretrained`` directory (checked first by :func:`check_pipeline_dir`, so a missing
            component is reported by file name) or a hub id (``"stabilityai/sd-turbo"``).
        dtype: torch dtype or ``"fp32" | "fp16" | "bf16"`` (default fp32) for every component.
        device: where to move the pipeline (default ``"cpu"``); ignored with ``enable_model_cpu_offload``.
        enable_model_cpu_offload: diffusers' model offloading (each component moves to the GPU only while it runs);
            ``offload=True`` is the same (the name the CLI commands pass).
        vae_slicing / vae_tiling: decode batch elements one at a time / in tiles (``vae.enable_slicing()`` /
            ``vae.enable_tiling()``); both stay differentiable.
        gradient_checkpointing: ``enable_gradient_checkpointing()`` on the denoiser (``transformer`` or ``unet``).
        attention: ``"auto"`` (xformers when installed and the pipeline runs on CUDA, else PyTorch SDPA, the
            diffusers default), ``"sdpa"`` or ``"xformers"`` (error if unavailable).
        from_pretrained_kw: passed on to ``pipeline_cls.from_pretrained`` (``variant="fp16"``, ``revision``,
            component overrides such as ``vae=...``).

    Every component is put in eval mode and the non-denoiser modules are frozen (``requires_grad_(False)``); the
    chosen attention backend is stored as ``pipe.rewardflow_attention``. Returns the pipeline.
    """
    import diffusers  # lazy: diffusers is a heavy import (seconds), needed only when a pipeline is loaded

    if isinstance(pipeline_cls, str):
        if not hasattr(diffusers, pipeline_cls):
            raise ValueError(f"unknown diffusers pipeline class {pipeline_cls!r}")
        pipeline_cls = getattr(diffusers, pipeline_cls)
    if attention not in ("auto", "sdpa", "xformers"):
        raise ValueError(f"attention must be 'auto', 'sdpa' or 'xformers', got {attention!r}")
    path = str(path)
    # a hub id is "owner/name"; anything else (or anything that exists on disk) is a local path
    local = os.path.exists(path) or not re.fullmatch(r"[\w.-]+/[\w.-]+", path) or path.startswith(".")
    if local:
        check_pipeline_dir(path)  # FileNotFoundError naming the missing file
    try:
        pipe = pipeline_cls.from_pretrained(path, dtype=resolve_dtype(dtype), **from_pretrained_kw)
    except OSError as e:  # diffusers / hub: not found, no connection, missing file
        raise FileNotFoundError(f"cannot load {pipeline_cls.__name__} from {path!r}: {e}") from e
    for comp in pipe.components.values():
        if isinstance(comp, torch.nn.Module):
            comp.eval()
    den = _denoiser_of(pipe)
    for comp in pipe.components.values():
        if isinstance(comp, torch.nn.Module) and comp is not den:
            comp.requires_grad_(False)
    if enable_model_cpu_offload or offload:
        pipe.enable_model_cpu_offload()
        run_device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    else:
        run_device = torch.device(device or "cpu")
        pipe.to(run_device)
    vae = getattr(pipe, "vae", None)
    if vae_slicing and vae is not None:
        vae.enable_slicing()
    if vae_tiling and vae is not None:
        vae.enable_tiling()
    if gradient_checkpointing and den is not None and hasattr(den, "enable_gradient_checkpointing"):
        den.enable_gradient_checkpointing()
    from diffusers.utils import is_xformers_available  # lazy: diffusers is a heavy import

    xformers_ok = is_xformers_available() and run_device.type == "cuda"
    if attention == "xformers" and not xformers_ok:
        raise ValueError("attention='xformers' needs the xformers package and a CUDA device; use 'sdpa'")
    backend = "xformers" if attention == "xformers" or (attention == "auto" and xformers_ok) else "sdpa"
    if backend == "xformers":
        pipe.enable_xformers_memory_efficient_attention()
    pipe.rewardflow_attention = backend
    return pipe
