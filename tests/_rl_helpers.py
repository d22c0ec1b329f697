"""Shared helpers of the RL-method tests (GRPO, DDPO, PRDP, DRAGON): a black-box reward, a method context, a plain
optimisation loop over ``collect`` / ``loss`` and a fixed-noise evaluation."""

from __future__ import annotations

import torch

from rewardflow.align.method import MethodContext, get_method
from rewardflow.rewards.base import Reward

PROMPTS = ["a red circle", "a blue square"]


class BrightnessReward(Reward):
    """Black-box reward: mean pixel value (no gradients; ``differentiable = False``)."""

    name = "brightness"
    differentiable = False

    def score(self, media, prompts):
        return media.mean((1, 2, 3))


def make_method(name, gen, reward=None, steps=2, seed=0, **cfg):
    cls = get_method(name)
    ctx = MethodContext(gen, reward if reward is not None else BrightnessReward(),
                        rng=torch.Generator().manual_seed(seed), sample_steps=steps, batch_size=len(PROMPTS))
    return cls(cls.config_class(**cfg), ctx)


def train(method, n_steps, lr, prompts=PROMPTS):
    """The trainer's contract in its simplest form: collect once per optimizer step, accumulate loss/len."""
    gen = method.ctx.generator
    opt = torch.optim.Adam(gen.trainable_parameters(), lr=lr)
    for s in range(n_steps):
        with torch.no_grad():
            batches = method.collect(list(prompts), s)
        opt.zero_grad()
        for b in batches:
            loss, _ = method.loss(b, s)
            (loss / len(batches)).backward()
        opt.step()


@torch.no_grad()
def mean_reward(gen, reward, prompts=PROMPTS, n=4, steps=2, seed=1):
    """Mean reward of ODE samples from fixed noise (deterministic given the weights)."""
    ps = [p for p in prompts for _ in range(n)]
    noise = torch.randn((len(ps), *gen.latent_shape), generator=torch.Generator().manual_seed(seed))
    return float(reward(gen.decode(gen.sample(gen.encode_prompts(ps), steps, noise=noise).final), ps).mean())


def toy_world_run(config: str, tmp_path, *overrides: str) -> dict:
    """A short run of the shared trainer in the toy world (shipped flow generator, toy_clip reward): returns the
    trainer's summary with held-out ``eval_reward`` / ``oracle_accuracy`` before and after."""
    from rewardflow.align.trainer import Trainer, load_train_config

    over = [f"output_dir={tmp_path}", "reward=toy_clip", "eval_every=0", "max_steps=6", "batch_size=4",
            "sample_steps=4", "eval_per_category=4", "report_to=none", "save_every=0", "lr=1e-3", *overrides]
    return Trainer(*load_train_config(config, over)).train()
