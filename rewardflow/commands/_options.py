"""Flags shared by the commands, defined once.

* Generator flags (``sample``, ``noise-opt``, ``eval``): ``--adapter``, ``--lora``, ``--guidance`` and the
  :class:`~rewardflow.pipelines.options.GeneratorOptions` (``--height``, ``--width``, ``--num-frames``, ``--dtype``,
  ``--attention``, ``--gradient-checkpointing``, ``--vae-slicing``, ``--vae-tiling``, ``--max-sequence-length``,
  ``--offload``, ``--device``); :func:`load_generator_from_args` loads the model with them and applies ``--lora``
  (a LoRA or a full fine-tune, :meth:`~rewardflow.pipelines.lora.LoraMixin.load_weights`).
* Reward weights (``score``, ``noise-opt``, ``eval``, ``eval-rewards``): ``--weights [NAME=]PATH``, passed to the
  reward's factory as ``path=``; :func:`build_reward_from_args` builds a reward spec with them, and a missing weight
  file becomes one error line naming the file and the flag.

No torch import at module level: the parser must build without it.
"""

from __future__ import annotations

import argparse

DTYPE_CHOICES = ("fp32", "fp16", "bf16", "float32", "float16", "bfloat16")


def add_generator_options(p: argparse.ArgumentParser, *, guidance_help: str | None = None) -> None:
    """The generator flags (see the module docstring) in their own help group."""
    g = p.add_argument_group("generator options (real diffusers models; an embedded toy model has one size and dtype)")
    g.add_argument("--adapter", default=None, help="generator adapter (default: from model_index.json and the model "
                                                   "name; see `rewardflow models`)")
    g.add_argument("--lora", default=None, metavar="DIR|FILE",
                   help="trained weights: a LoRA folder (pytorch_lora_weights.safetensors, as training and diffusers "
                        "write it) or .safetensors file (diffusers or kohya / A1111 keys), or a full fine-tune (a save_pretrained denoiser folder, or a "
                        "folder holding unet/ or transformer/)")
    g.add_argument("--guidance", type=float, default=None,
                   help=guidance_help or "classifier-free guidance scale (default: the adapter's; <= 1 = no guidance, "
                                         "as in diffusers: Turbo models use 0); FLUX.1-dev: the distilled guidance")
    g.add_argument("--height", type=int, default=None, help="image / video height in pixels (default: the model's)")
    g.add_argument("--width", type=int, default=None, help="image / video width in pixels (default: the model's)")
    g.add_argument("--num-frames", type=int, default=None, help="video models: frames (default: the model's)")
    g.add_argument("--dtype", default=None, choices=DTYPE_CHOICES,
                   help="dtype of the model weights (default fp32; fp16 / bf16 halve the memory)")
    g.add_argument("--attention", default=None, choices=("auto", "sdpa", "xformers"),
                   help="attention backend (default auto: xformers on CUDA when installed, else PyTorch SDPA)")
    g.add_argument("--gradient-checkpointing", action="store_true",
                   help="checkpoint the denoiser's blocks (memory, when gradients flow through it)")
    g.add_argument("--vae-slicing", action="store_true", help="decode one batch element at a time (memory)")
    g.add_argument("--vae-tiling", action="store_true", help="decode in tiles (memory, large images / videos)")
    g.add_argument("--max-sequence-length", type=int, default=None,
                   help="T5 / UMT5 prompt length (SD3, FLUX, Wan, LTX, CogVideoX; default: the pipeline's)")
    g.add_argument("--offload", action="store_true", help="diffusers' model CPU offload (sampling)")
    g.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def generator_options(args: argparse.Namespace):
    """The :class:`~rewardflow.pipelines.options.GeneratorOptions` of the parsed flags."""
    from rewardflow.pipelines.options import GeneratorOptions

    return GeneratorOptions(height=args.height, width=args.width, num_frames=args.num_frames, dtype=args.dtype,
                            attention=args.attention, gradient_checkpointing=args.gradient_checkpointing,
                            vae_slicing=args.vae_slicing, vae_tiling=args.vae_tiling,
                            max_sequence_length=args.max_sequence_length, offload=args.offload,
                            guidance_scale=args.guidance, device=args.device)


def load_generator_from_args(args: argparse.Namespace, model: str | None = None, **overrides):
    """Load ``model`` (default ``args.model``) with the generator flags, then ``--lora``. ``overrides`` replace
    options (e.g. a command's own default guidance). Returns ``(generator, adapter entry)``."""
    from rewardflow.pipelines.options import load_generator_with_options
    from rewardflow.pipelines.registry import resolve_adapter

    model = model or args.model
    entry = resolve_adapter(model, args.adapter)
    opts = generator_options(args)
    for k, v in overrides.items():
        setattr(opts, k, v)
    gen = load_generator_with_options(model, entry["name"], opts)
    if args.lora:
        gen.load_weights(args.lora, trainable=False)
    return gen, entry


def add_reward_weights_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", action="append", default=[], metavar="[NAME=]PATH",
                   help="reward weights passed as path= to the reward NAME (a checkpoint file or folder; NAME may be "
                        "left out when the spec has one reward; repeatable)")


def _split_weight(w: str) -> tuple[str | None, str]:
    """``"NAME=PATH"`` -> ``(NAME, PATH)``; a bare path (its part before any ``=`` has a path separator, or there is
    no ``=``) -> ``(None, PATH)``."""
    name, sep, path = w.partition("=")
    if sep and name and "/" not in name and "\\" not in name:
        return name, path
    return None, w


def reward_kwargs_from_weights(weights: list[str], names: list[str], *, strict: bool = True) -> dict[str, dict]:
    """``--weights`` values -> ``{name: {"path": PATH}}`` for the rewards in ``names``. ``strict``: a NAME that
    is not in ``names`` is an error (with several specs, :func:`check_weights_names` checks the union and each spec
    takes its own)."""
    out: dict[str, dict] = {}
    for w in weights:
        name, path = _split_weight(w)
        if name is None:
            if len(names) != 1:
                raise ValueError(f"--weights {w!r}: the spec has several rewards ({', '.join(names)}); write "
                                 "--weights NAME=PATH")
            name = names[0]
        elif name not in names:
            if strict:
                raise ValueError(f"--weights {w!r}: {name!r} is not a reward of the spec ({', '.join(names)})")
            continue
        out[name] = {"path": path}
    return out


def check_weights_names(weights: list[str], specs: list[str]) -> None:
    """Every ``--weights NAME=PATH`` names a reward of one of ``specs``; a bare path needs a single reward."""
    from rewardflow.rewards.combine import parse_reward_spec

    names = {n for s in specs for n, _ in parse_reward_spec(s)}
    for w in weights:
        name, _ = _split_weight(w)
        if name is None and len(names) > 1:
            raise ValueError(f"--weights {w!r}: several rewards are given ({', '.join(sorted(names))}); write "
                             "--weights NAME=PATH")
        if name is not None and name not in names:
            raise ValueError(f"--weights {w!r}: {name!r} is not one of the rewards ({', '.join(sorted(names))})")


def build_reward_from_args(spec: str, weights: list[str], base_kwargs: dict[str, dict] | None = None, *,
                           strict: bool = True):
    """Build the reward ``spec`` with ``base_kwargs`` (e.g. a recipe's options) and the ``--weights`` paths on
    top; a missing weight file is a :class:`~rewardflow.rewards.combine.MissingWeightsError` saying to use
    ``--weights NAME=PATH``."""
    from rewardflow.rewards.combine import MissingWeightsError, build_reward, parse_reward_spec

    names = [n for n, _ in parse_reward_spec(spec)]
    kwargs = {n: dict(v) for n, v in (base_kwargs or {}).items() if n in names}
    for n, kw in reward_kwargs_from_weights(weights, names, strict=strict).items():
        kwargs.setdefault(n, {}).update(kw)
    try:
        return build_reward(spec, **kwargs)
    except MissingWeightsError as e:
        raise e.with_hint(f"give the file with --weights {e.reward}=PATH") from None
