"""Helpers shared by the trainer / method tests: a tiny differentiable reward with a known optimum direction and a
Trainer on the tiny random toy pipeline (conftest ``tiny_pipe_dir``)."""

from __future__ import annotations

import torch

from rewardflow.rewards.base import Reward


class Brightness(Reward):
    """Mean pixel value: differentiable, and raising it is easy for any method (a fast, checkable objective)."""

    name = "brightness"

    def score(self, media, prompts):
        return media.flatten(1).mean(1)


class NaNReward(Reward):
    """Scores NaN for the samples whose index is in ``bad`` (all when ``bad`` is None)."""

    name = "nan_reward"

    def __init__(self, bad=None):
        super().__init__()
        self.bad = bad

    def score(self, media, prompts):
        s = media.flatten(1).mean(1)
        mask = torch.ones_like(s, dtype=torch.bool) if self.bad is None else torch.zeros_like(s, dtype=torch.bool)
        if self.bad is not None:
            mask[list(self.bad)] = True
        return torch.where(mask, torch.full_like(s, float("nan")), s)


def write_train_yaml(path, method: str, model, out, **overrides):
    """A tiny ``rewardflow train`` config file (toy_clip reward, 2 sampler steps, LoRA r4, no eval, no logging)
    for tests that go through the CLI or a subprocess; ``overrides`` add or replace keys."""
    import yaml

    data = {"method": method, "model": str(model), "reward": "toy_clip", "prompts": "toy:train", "eval_prompts": "",
            "eval_at_start": False, "report_to": "none", "output_dir": str(out), "max_steps": 2, "batch_size": 2,
            "sample_steps": 2, "lora_rank": 4}
    data.update(overrides)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def make_trainer(tmp_path, pipe_dir, method: str, reward=None, generator=None, **overrides):
    from rewardflow.align.trainer import Trainer, split_config
    from rewardflow.toy.generator import ToyGenerator

    data = {"method": method, "output_dir": str(tmp_path), "batch_size": 2, "sample_steps": 2, "lora_rank": 4,
            "eval_prompts": "", "eval_at_start": False, "report_to": "none", "max_steps": 2, "lr": 1e-3,
            "resume": "never"}
    data.update(overrides)
    tcfg, mcfg = split_config(data)
    gen = generator if generator is not None else ToyGenerator.from_pretrained(pipe_dir)
    return Trainer(tcfg, mcfg, generator=gen, reward=reward if reward is not None else Brightness())


@torch.no_grad()
def mean_reward(gen, reward, prompts, steps=2, seed=123) -> float:
    noise = torch.randn((len(prompts), *gen.latent_shape), generator=torch.Generator().manual_seed(seed))
    return float(reward(gen.generate(prompts, steps, noise=noise), prompts).mean())


def read_metrics(run_dir) -> list[dict]:
    import json
    from pathlib import Path

    return [json.loads(ln) for ln in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if ln.strip()]
