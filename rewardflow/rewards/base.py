"""The Reward interface and the reward registry.

``scores = reward(media, prompts)`` -> ``Tensor[B]`` (float32, higher is better).

* ``media``: float tensor in [0, 1]; images ``[B, 3, H, W]``, videos ``[B, T, 3, H, W]``.
* ``differentiable``: gradients flow from the scores to the pixels. Black-box rewards say False and are run under
  ``torch.no_grad()``; methods that need gradients call :func:`require_differentiable` at construction.
* ``modality``: "image" or "video".
* ``heads``: names of every score the model exposes (``score_heads`` returns all of them; ``__call__`` returns the
  head named by ``primary_head``).

Two inputs, two preprocessing paths:

* **tensors** (``reward(media, prompts)``, used inside training and inference-time methods): the differentiable,
  batched torch preprocessing of :mod:`rewardflow.rewards.transforms`;
* **files** (:meth:`Reward.score_files`, used by ``rewardflow score``, ``eval`` and ``eval-rewards``): the media as
  decoded from the files (``PIL.Image`` in its stored mode, or a uint8 video), preprocessed exactly as the official
  package does (PIL where it uses PIL), so a file scores the same here as with the official code. A reward says so
  with ``file_input = True`` and accepts those decoded media in :meth:`Reward.score_heads`; any other reward is
  given float tensors (the tensor path), which is already exact for it.

Register a reward family with ``@register_reward("name")`` on a factory; build one with ``load_reward("name", **kw)``.
"""

from __future__ import annotations

import inspect
from typing import Callable, Sequence

import torch
from torch import nn

from rewardflow.io.images import pil_to_tensor
from rewardflow.plugins import load_plugins

_REGISTRY: dict[str, Callable[..., "Reward"]] = {}
_INFO: dict[str, dict] = {}


class Reward(nn.Module):
    """Base class. Subclasses implement :meth:`score_heads` (or :meth:`score` for single-head rewards)."""

    name: str = "reward"
    differentiable: bool = True
    modality: str = "image"
    heads: tuple[str, ...] = ("score",)
    primary_head: str = "score"
    # True: score_heads also accepts media decoded from files (a list of PIL.Image, or of uint8 [T, 3, H, W] videos)
    # and applies the official preprocessing to them (see score_files).
    file_input: bool = False

    def score(self, media: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def score_heads(self, media: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        return {"score": self.score(media, prompts)}

    # -- validation -----------------------------------------------------------------------------------------
    def check_inputs(self, media: torch.Tensor, prompts: Sequence[str]) -> list[str]:
        if not isinstance(media, torch.Tensor) or not media.is_floating_point():
            raise TypeError(f"{self.name}: media must be a float tensor in [0, 1], got "
                            f"{type(media).__name__}{'' if not isinstance(media, torch.Tensor) else ' ' + str(media.dtype)}")
        want = 4 if self.modality == "image" else 5
        layout = "[B, 3, H, W]" if want == 4 else "[B, T, 3, H, W]"
        if media.ndim != want or media.shape[-3] != 3:
            article = "an" if self.modality == "image" else "a"
            raise ValueError(f"{self.name} is {article} {self.modality} reward: media must be {layout}, got "
                             f"{tuple(media.shape)}")
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if len(prompts) != media.shape[0]:
            raise ValueError(f"{self.name}: {media.shape[0]} media but {len(prompts)} prompts")
        with torch.no_grad():
            lo, hi = float(media.min()), float(media.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"{self.name}: media must be in [0, 1], got range [{lo:.3f}, {hi:.3f}] "
                             "(convert from [-1, 1] with x * 0.5 + 0.5)")
        return prompts

    def forward(self, media: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.all_heads(media, prompts)[self.primary_head]

    def all_heads(self, media: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        prompts = self.check_inputs(media, prompts)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.differentiable):
            out = self.score_heads(media, prompts)
        return {k: v.float() for k, v in out.items()}


    # -- file input -------------------------------------------------------------------------------------------
    def score_files(self, media: Sequence, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """All heads ``{name: Tensor[N]}`` of media decoded from files, no gradients.

        ``media``: for an image reward, ``PIL.Image`` objects as decoded (any mode and size; see
        :func:`rewardflow.io.images.open_image`); for a video reward, uint8 ``[T, 3, H, W]`` tensors. A reward with
        ``file_input = True`` receives them in :meth:`score_heads` and applies its official preprocessing; any
        other reward gets float tensors in [0, 1] (RGB, alpha dropped), one call per distinct size.
        """
        media = list(media)
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not media:
            raise ValueError(f"{self.name}.score_files: no media given")
        if len(prompts) != len(media):
            raise ValueError(f"{self.name}: {len(media)} media but {len(prompts)} prompts")
        for m in media:
            _check_file_media(m, self.modality, self.name)
        with torch.no_grad():
            if self.file_input:
                out = self.score_heads(media, prompts)
            else:
                out = self._score_file_tensors(media, prompts)
        return {k: v.detach().float().cpu() for k, v in out.items()}

    def _score_file_tensors(self, media: list, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The tensor path for decoded media: float tensors grouped by shape, one :meth:`all_heads` call each."""
        device = _module_device(self)
        tensors = [pil_to_tensor(m) if self.modality == "image" else m.float().div(255.0) for m in media]
        groups: dict[tuple, list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault(tuple(t.shape), []).append(i)
        out: dict[str, torch.Tensor] = {}
        for ids in groups.values():
            heads = self.all_heads(torch.stack([tensors[i] for i in ids]).to(device), [prompts[i] for i in ids])
            for k, v in heads.items():
                if k not in out:
                    out[k] = torch.full((len(media),), float("nan"), dtype=torch.float32)
                out[k][ids] = v.detach().float().cpu()
        return out


def _module_device(module: nn.Module) -> torch.device:
    """Device of a module's first parameter or buffer (CPU for a module without tensors)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def _check_file_media(m, modality: str, name: str) -> None:
    if modality == "image":
        from PIL import Image

        if not isinstance(m, Image.Image):
            raise TypeError(f"{name}.score_files: image media must be PIL images decoded from files, got "
                            f"{type(m).__name__} (score tensors with reward(media, prompts))")
    elif not (isinstance(m, torch.Tensor) and m.dtype == torch.uint8 and m.ndim == 4 and m.shape[1] == 3):
        got = f"{m.dtype} {tuple(m.shape)}" if isinstance(m, torch.Tensor) else type(m).__name__
        raise TypeError(f"{name}.score_files: video media must be uint8 [T, 3, H, W] tensors, got {got}")


def require_differentiable(reward: Reward, method: str) -> None:
    """Refuse a black-box reward in a method that backpropagates through it (fail at construction)."""
    if not getattr(reward, "differentiable", False):
        raise ValueError(f"{method} backpropagates through the reward, but {reward.name!r} is a black-box "
                         "(non-differentiable) reward; use a differentiable reward or a policy-gradient method")


def finite_mask(scores: torch.Tensor) -> torch.Tensor:
    """Bool mask of the usable scores. Black-box rewards (HTTP judges) return NaN for a sample they could not
    score (parse failure, timeout) instead of a fake value, and ``WeightedReward`` propagates it; every consumer
    (advantages, pair formation, means, best-of-N) keeps only ``scores[finite_mask(scores)]``."""
    return torch.isfinite(scores)


def register_reward(name: str, *, modality: str = "image", differentiable: bool = True, description: str = ""):
    """Decorator: register a reward factory under ``name``. The keyword metadata is what ``rewardflow rewards``
    lists without building the model."""

    def deco(factory):
        if name in _REGISTRY:
            raise ValueError(f"reward {name!r} is already registered")
        _REGISTRY[name] = factory
        doc = description or (factory.__doc__ or "").strip().split("\n")[0]
        _INFO[name] = {"name": name, "modality": modality, "differentiable": differentiable, "description": doc}
        return factory

    return deco


def list_rewards() -> list[str]:
    _import_builtin()
    return sorted(_REGISTRY)


def reward_info() -> list[dict]:
    """Registry metadata, one dict per reward: name, modality, differentiable, description."""
    _import_builtin()
    return [_INFO[n] for n in sorted(_REGISTRY)]


_WRAPPERS: dict[str, Callable[..., "Reward"]] = {}
_WRAPPER_INFO: dict[str, dict] = {}


def register_reward_wrapper(name: str, *, modality: str = "image", takes: str = "image", description: str = ""):
    """Decorator: register a factory ``f(inner_name, **kwargs)`` that wraps another reward, so that
    ``load_reward("name(inner)")`` works (e.g. ``segmental(toy_clip)``). ``takes``: the modality of the wrapped
    reward; ``modality``: the wrapper's own (what ``rewardflow rewards`` lists)."""

    def deco(factory):
        if name in _WRAPPERS:
            raise ValueError(f"reward wrapper {name!r} is already registered")
        _WRAPPERS[name] = factory
        doc = description or (factory.__doc__ or "").strip().split("\n")[0]
        _WRAPPER_INFO[name] = {"name": name, "modality": modality, "takes": takes, "description": doc}
        return factory

    return deco


def wrapper_info() -> list[dict]:
    """Registered reward wrappers, one dict each: name, modality (its own), takes (the wrapped reward's), and
    description."""
    _import_builtin()
    return [_WRAPPER_INFO[n] for n in sorted(_WRAPPERS)]


def load_reward(name: str, **kwargs) -> Reward:
    """Build a registered reward by name; an unknown name raises ``KeyError`` listing the known ones.
    ``"wrapper(inner)"`` builds a registered wrapper around the reward named ``inner``."""
    check_reward_name(name)
    if name.endswith(")") and "(" in name and name not in _REGISTRY:
        outer, inner = name[:-1].split("(", 1)
        return _WRAPPERS[outer.strip()](inner.strip(), **kwargs)
    factory = _REGISTRY[name]
    _check_arguments(name, factory, kwargs)
    return factory(**kwargs)


def _check_arguments(name: str, factory: Callable, kwargs: dict) -> None:
    """A missing or unknown option of a reward factory as a ValueError naming the reward and its options, instead
    of the factory's TypeError."""
    sig = inspect.signature(factory)
    try:
        sig.bind(**kwargs)
    except TypeError as e:
        opts = ", ".join(f"{p.name}{'' if p.default is inspect.Parameter.empty else '=' + repr(p.default)}"
                         for p in sig.parameters.values() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
        raise ValueError(f"reward {name!r}: {e}; its options are: {opts or '(none)'} (from the command line: "
                         f"--weights {name}=PATH for path=; in a config: reward_kwargs: {{{name}: {{OPTION: VALUE}}}})"
                         ) from None


def check_reward_name(name: str) -> None:
    """Raise :func:`load_reward`'s ``KeyError`` (closest match, known names) for an unknown reward or wrapper name
    without building anything: commands call it before loading a model."""
    _import_builtin()
    if name.endswith(")") and "(" in name and name not in _REGISTRY:
        outer = name[:-1].split("(", 1)[0]
        if outer.strip() not in _WRAPPERS:
            raise KeyError(f"unknown reward wrapper {outer.strip()!r} in {name!r}; known wrappers: "
                           f"{', '.join(sorted(_WRAPPERS)) or 'none'}")
        return
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown reward {name!r}.{hint} Known rewards: {', '.join(sorted(_REGISTRY))}")


def _import_builtin() -> None:
    # Importing the family modules registers them: every module in rewardflow/rewards/ is one family.
    # Family modules import their heavy dependencies (open_clip, transformers models) inside the factories.
    import importlib
    import pkgutil

    import rewardflow.rewards as pkg

    for m in pkgutil.iter_modules(pkg.__path__):
        if not m.name.startswith("_"):
            importlib.import_module(f"rewardflow.rewards.{m.name}")
    load_plugins()
