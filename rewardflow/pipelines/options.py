"""Generator options in one place: what ``rewardflow train``, ``sample``, ``noise-opt`` and ``eval`` (and the Python
API) may set on a generator when they load it, and how each option reaches the adapter.

:class:`GeneratorOptions` holds them; :meth:`GeneratorOptions.load_kwargs` turns them into the keyword arguments of
the adapter's ``from_pretrained`` (only the options that are set, so every adapter keeps its own defaults: the
diffusers pipeline's resolution, frame count, text length and guidance), and refuses an option the adapter cannot
take (``num_frames`` on an image model, a resolution on the embedded toy model) with the option's name.
:func:`load_generator_with_options` is ``load_generator`` + those keyword arguments.

``dtype`` is the dtype of the *frozen* weights (text encoders, VAE, the base denoiser); LoRA weights attached for
training are kept in float32 (:meth:`~rewardflow.pipelines.lora.LoraMixin.add_lora`), as diffusers' training
scripts do with ``cast_training_params``.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from dataclasses import dataclass
from typing import Any

from rewardflow.pipelines.loading import resolve_dtype
from rewardflow.pipelines.registry import load_generator, resolve_adapter

# options load_diffusers_pipeline takes (every diffusers adapter passes **load_options to it)
PIPELINE_LOAD_OPTIONS = ("dtype", "attention", "vae_slicing", "vae_tiling", "offload")
# options every adapter takes (the embedded toy models too); gradient checkpointing is switched on after loading,
# with Generator.enable_gradient_checkpointing
COMMON_OPTIONS = ("device", "guidance_scale", "gradient_checkpointing")
ATTENTION_BACKENDS = ("auto", "sdpa", "xformers")


@dataclass
class GeneratorOptions:
    """How to load a generator. ``None`` / ``False`` = the adapter's default (for diffusers models: the pipeline's
    ``__call__`` defaults, e.g. 1024 px for SD3 / FLUX, 480x832x81 for Wan)."""

    height: int | None = None                 # image / video height in pixels
    width: int | None = None                  # image / video width in pixels
    num_frames: int | None = None             # video models: pixel frames
    dtype: str | None = None                  # frozen weights: fp32, fp16 or bf16 (default fp32)
    attention: str | None = None              # auto (xformers on CUDA when installed, else SDPA), sdpa, xformers
    gradient_checkpointing: bool = False      # checkpoint the denoiser's blocks (memory for backprop)
    vae_slicing: bool = False                 # decode batch elements one at a time
    vae_tiling: bool = False                  # decode in tiles (large images / videos)
    max_sequence_length: int | None = None    # T5 / UMT5 text length (SD3, FLUX, Wan, LTX, CogVideoX)
    offload: bool = False                     # diffusers' model CPU offload (sampling only)
    guidance_scale: float | None = None       # CFG scale (<= 1: no guidance); FLUX.1-dev: the distilled guidance
    device: str | None = None                 # torch device (default: cuda when available, else cpu)

    def __post_init__(self):
        for k in ("height", "width", "num_frames", "max_sequence_length"):
            v = getattr(self, k)
            if v is not None and int(v) < 1:
                raise ValueError(f"{k} must be >= 1, got {v}")
        if self.dtype is not None:
            resolve_dtype(self.dtype)  # ValueError naming the accepted names
        if self.attention is not None and self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_BACKENDS)}, got {self.attention!r}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def set_options(self) -> dict[str, Any]:
        """The options that differ from the defaults (what the user asked for)."""
        default = GeneratorOptions()
        return {k: getattr(self, k) for k in self.names() if getattr(self, k) != getattr(default, k)}

    def load_kwargs(self, entry: dict) -> dict[str, Any]:
        """``from_pretrained`` keyword arguments for the adapter ``entry`` (from
        :func:`~rewardflow.pipelines.registry.resolve_adapter`). ``device`` is always set (cuda when available)."""
        accepted = accepted_options(entry)
        kw = self.set_options()
        bad = [k for k in kw if k not in accepted]
        if bad:
            what = "an embedded model with one size and dtype" if entry["embedded"] else \
                f"a {getattr(entry['cls'], 'modality', 'image')} model"
            raise ValueError(f"generator option {bad[0]!r} is not supported by adapter {entry['name']!r} ({what}); "
                             f"it takes: {', '.join(sorted(accepted))}")
        if kw.get("device") is None:
            import torch  # lazy: torch is a heavy import, and this module is imported to build CLI parsers

            kw["device"] = "cuda" if torch.cuda.is_available() else "cpu"
        return kw


def accepted_options(entry: dict) -> set[str]:
    """The :class:`GeneratorOptions` names adapter ``entry`` accepts: its ``from_pretrained`` keyword parameters,
    the pipeline-loading options when it forwards ``**load_options`` to ``load_diffusers_pipeline`` (every
    non-embedded adapter), and ``device`` / ``guidance_scale`` (every adapter)."""
    params = inspect.signature(entry["cls"].from_pretrained).parameters
    names = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    forwards = any(p.kind is p.VAR_KEYWORD for p in params.values())
    out = set(COMMON_OPTIONS) | (names & set(GeneratorOptions.names()))
    if forwards and not entry["embedded"]:
        out |= set(PIPELINE_LOAD_OPTIONS)
    if getattr(entry["cls"], "modality", "image") != "video":
        out.discard("num_frames")
    return out


def load_generator_with_options(model: str | os.PathLike, adapter: str | None = None,
                                options: GeneratorOptions | None = None, **extra):
    """``load_generator(model, adapter, **options.load_kwargs(entry), **extra)``, then gradient checkpointing when
    asked; returns the generator."""
    entry = resolve_adapter(model, adapter)
    kw = (options or GeneratorOptions()).load_kwargs(entry)
    kw.update(extra)
    checkpointing = kw.pop("gradient_checkpointing", False)
    gen = load_generator(model, adapter=entry["name"], **kw)
    if checkpointing:
        gen.enable_gradient_checkpointing()
    return gen
