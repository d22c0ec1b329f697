"""The toy world as a rewardflow plugin (entry point ``rewardflow.plugins: toy``, see :mod:`rewardflow.plugins`).

``register()`` adds, through the same registries a third-party plugin uses:

* generators ``toy`` and ``toy_video`` (the shipped tiny text-to-image / text-to-video flow models);
* rewards ``toy_clip``, ``toy_clip_adv``, ``toy_oracle`` and the toy video rewards;
* the prompt source ``toy:train`` / ``toy:heldout`` (caption splits, sampled category-balanced) whose evaluation
  runs the ``toy_oracle`` hook (exact oracle accuracy, strict, partial and per category);
* the distributional-reward encoders ``toy_clip`` / ``toy_clip_adv``, the reference set ``toy`` (rendered
  ground-truth images of training captions) and the rewards ``toy_frechet``, ``toy_vendi``,
  ``toy_exemplar_similarity`` built on them;
* the media source ``toy`` (the rendered clip of a video caption, InstructVideo's real-data mode).

The core library never imports this package; docs/toy-world.md describes the world itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

# the adapter and reward modules register their names when imported (their decorators run on import)
import rewardflow.toy.generator  # noqa: F401
import rewardflow.toy.rewards  # noqa: F401
import rewardflow.toy.video_generator  # noqa: F401
import rewardflow.toy.video_rewards  # noqa: F401
from rewardflow.eval.hooks import register_eval_hook
from rewardflow.io.media_sources import register_media_source
from rewardflow.io.prompts import PromptSource, register_prompt_source
from rewardflow.rewards.base import load_reward, register_reward
from rewardflow.rewards.distributional import ImageEncoder, _hash_files, register_encoder, register_reference_set
from rewardflow.toy import world
from rewardflow.toy.assets import asset_path
from rewardflow.toy.evaluation import eval_prompts, oracle_report
from rewardflow.toy.models import ToyCLIPModel
from rewardflow.toy.video import render_clips


class ToyPromptSource(PromptSource):
    """``toy:SPLIT``: the toy captions of a split, one group per caption category (each drawn equally often);
    evaluation takes ``per_group`` fixed prompts of each category and is judged by the exact oracle."""

    eval_hooks = ("toy_oracle",)

    def __init__(self, split: str):
        if split not in ("train", "heldout"):
            raise ValueError(f"toy prompt split must be train or heldout, got {split!r} (toy:train or toy:heldout)")
        self.split = split
        super().__init__(f"toy:{split}", [world.split_captions(split, c) for c in world.CATEGORIES])

    def eval_list(self, per_group: int, seed: int = 0) -> list[str]:
        return eval_prompts(self.split, per_group, seed=seed)


def oracle_metrics(media: torch.Tensor, prompts: list[str]) -> dict[str, float]:
    """``oracle_accuracy``, ``oracle_partial`` and ``oracle_<category>`` of toy images against their captions."""
    rep = oracle_report(media.detach().float().cpu(), prompts)
    return {"oracle_accuracy": rep["accuracy"], "oracle_partial": rep["partial"],
            **{f"oracle_{k}": v for k, v in rep["per_category"].items()}}


def _toy_encoder(asset: str, name: str):
    def factory(path=None, device="cpu") -> ImageEncoder:
        d = Path(path) if path is not None else asset_path(asset)
        if not d.is_dir():
            raise FileNotFoundError(f"encoder weights directory not found: {d}")
        model = ToyCLIPModel.from_pretrained(str(d), dtype=torch.float32).to(device).eval().requires_grad_(False)
        weights = sorted(d.glob("*.safetensors")) + sorted(d.glob("config.json"))
        return ImageEncoder(lambda x: model.encode_image(x.to(model.device)), f"{name}:{_hash_files(weights)}", model)

    return factory


def toy_reference_images(n: int = 512, split: str = "train", seed: int = 0, size: int = 32) -> torch.Tensor:
    """Ground-truth renders of ``n`` toy-world captions (the toy world's exemplar set), ``[n, 3, size, size]``."""
    rng = np.random.default_rng(seed)
    imgs = world.render_batch(world.sample_scenes(rng, n, split=split), size=size, rng=rng)
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0


def _toy_reference_set(n: int, seed: int, image_size: int | None):
    size = image_size or 32
    return toy_reference_images(n, "train", seed, size), f"toy_renders:train:{n}:{seed}:{size}"


def _toy_clips(prompts, frames: int, seed: int) -> torch.Tensor:
    return render_clips(list(prompts), frames=frames, rng=np.random.default_rng(seed))


def _toy_distributional(kind: str):
    toy = {"encoder": "toy_clip"} if kind == "vendi" else {"encoder": "toy_clip", "reference": "toy"}

    def factory(**kw):
        return load_reward(kind, **{**toy, **kw})

    return factory


_registered = False


def register() -> None:
    global _registered
    if _registered:
        return
    _registered = True
    register_prompt_source("toy", ToyPromptSource)
    register_eval_hook("toy_oracle")(oracle_metrics)
    register_encoder("toy_clip")(_toy_encoder("reward", "toy_clip"))
    register_encoder("toy_clip_adv")(_toy_encoder("reward_adv", "toy_clip_adv"))
    register_reference_set("toy")(_toy_reference_set)
    register_media_source("toy")(_toy_clips)
    # the distributional rewards on the toy world's encoder and exemplars (DRAGON's set-level rewards in the toy)
    for kind, desc in (("frechet", "-Fréchet distance of toy-CLIP embeddings to rendered toy exemplars"),
                       ("vendi", "Vendi diversity of toy-CLIP embeddings"),
                       ("exemplar_similarity", "cosine of a toy-CLIP embedding to the rendered exemplars' mean")):
        register_reward(f"toy_{kind}", differentiable=False, description=desc)(_toy_distributional(kind))
