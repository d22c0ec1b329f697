"""Real media by prompt: named sources of real clips for methods that edit real data instead of their own samples
(InstructVideo's ``source``, the paper's ``reward_source='gt'`` WebVid clips).

A source is ``fn(prompts, frames, seed) -> Tensor[B, T, 3, H, W]`` in [0, 1]; plugins register theirs (the toy world
registers ``toy``: the rendered clip of each caption).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from rewardflow.plugins import load_plugins

MediaSource = Callable[[Sequence[str], int, int], torch.Tensor]
_SOURCES: dict[str, MediaSource] = {}


def register_media_source(name: str):
    """Decorator registering a media source under ``name``."""

    def deco(fn: MediaSource) -> MediaSource:
        if name in _SOURCES:
            raise ValueError(f"media source {name!r} is already registered")
        _SOURCES[name] = fn
        return fn

    return deco


def media_source_names() -> list[str]:
    load_plugins()
    return sorted(_SOURCES)


def get_media_source(name: str) -> MediaSource:
    load_plugins()
    if name not in _SOURCES:
        raise KeyError(f"unknown media source {name!r}; known sources: {', '.join(sorted(_SOURCES)) or 'none'}")
    return _SOURCES[name]
