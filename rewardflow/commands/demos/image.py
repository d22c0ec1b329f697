"""``rewardflow demo``: inference-time alignment in the toy world, measured by the exact oracle.

On the shipped toy generator and rewards, over a fixed set of held-out prompts (compositions never seen in training):

1. **before**: one sample per prompt from a fixed noise;
2. **best-of-N start**: N candidate noises per prompt (candidate 0 is the "before" noise), keep the one the reward
   ensemble scores highest;
3. **ReNO** (docs/algorithms.md#reno) from that noise: gradient ascent on the reward ensemble (the standard and the
   adversarially trained toy CLIP; an ensemble is harder to hack than one reward, as the ReNO paper argues) plus the
   chi-norm prior on the noise; the best iterate is kept.

Reward and oracle are reported side by side: a reward that rises while the oracle does not is reward hacking.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from rewardflow import runtime


@dataclass
class DemoConfig:
    per_category: int = 12  # held-out prompts per caption category (5 categories)
    steps: int = 4  # sampler steps of the toy generator
    guidance_scale: float = 2.0  # classifier-free guidance of the toy generator
    n_candidates: int = 4  # best-of-N start for ReNO (1 = plain ReNO from the base noise)
    iterations: int = 12  # ReNO iterations
    lr: float = 2.0
    optimizer: str = "sgd"
    grad_clip: float = 0.1
    reg_weight: float = 0.01
    seed: int = 0
    control: bool = False  # also run best-of-M at the same wall-clock as best-of-N + ReNO (equal-compute control)
    rewards: tuple[str, ...] = ("toy_clip", "toy_clip_adv")
    weights: tuple[float, ...] = (1.0, 1.0)


def _grid(before: torch.Tensor, after: torch.Tensor, passed_b, passed_a, path: Path, cols: int = 10,
          scale: int = 3) -> None:
    """Pairs of rows (before / after); a green or red bar under each image shows the oracle verdict."""
    from PIL import Image

    n, _, h, w = before.shape
    H, W = h * scale, w * scale
    rows = (n + cols - 1) // cols
    canvas = np.full((rows * (2 * (H + 4) + 6), cols * (W + 2), 3), 40, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        for k, (img, ok) in enumerate(((before[i], passed_b[i]), (after[i], passed_a[i]))):
            y = r * (2 * (H + 4) + 6) + k * (H + 4)
            x = c * (W + 2)
            arr = (img.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
            canvas[y:y + H, x:x + W] = np.kron(arr, np.ones((scale, scale, 1), np.uint8))
            canvas[y + H:y + H + 3, x:x + W] = (40, 200, 60) if ok else (220, 40, 40)
    Image.fromarray(canvas).save(path)


def run_demo(out: str | Path | None = "demo_out", config: DemoConfig | None = None, generator_path=None,
             reward_paths: dict | None = None, verbose: bool = True) -> dict:
    from rewardflow.align.inference.best_of_n import best_of_n
    from rewardflow.align.inference.reno import ReNO, ReNOConfig
    from rewardflow.toy.evaluation import eval_prompts, oracle_report
    from rewardflow.toy.generator import ToyGenerator
    from rewardflow.rewards.base import load_reward
    from rewardflow.rewards.combine import WeightedReward

    cfg = config or DemoConfig()
    if cfg.n_candidates < 1 or cfg.iterations < 1 or cfg.per_category < 1 or cfg.steps < 1:
        raise ValueError("demo: n_candidates, iterations, per_category and steps must all be >= 1, got "
                         f"{cfg.n_candidates}, {cfg.iterations}, {cfg.per_category}, {cfg.steps}")
    if len(cfg.rewards) != len(cfg.weights):
        raise ValueError(f"demo: {len(cfg.rewards)} rewards but {len(cfg.weights)} weights")
    t_start = time.time()
    gen = ToyGenerator.from_pretrained(generator_path, guidance_scale=cfg.guidance_scale)
    reward_paths = reward_paths or {}
    comps = [load_reward(name, path=reward_paths.get(name)) for name in cfg.rewards]
    reward = WeightedReward(comps, cfg.weights)
    prompts = eval_prompts("heldout", cfg.per_category, seed=cfg.seed)
    n = len(prompts)
    g = torch.Generator().manual_seed(cfg.seed)
    # candidate 0 (the "before" sample) does not depend on the number of candidates
    noise = torch.randn((n, 1, *gen.latent_shape), generator=g)
    noise = torch.cat([noise, torch.randn((n, cfg.n_candidates - 1, *gen.latent_shape), generator=g)], 1)

    # 1. before: the candidate-0 noise, plain sampling
    with torch.no_grad():
        before = gen.decode(gen.sample(gen.encode_prompts(prompts), cfg.steps, noise=noise[:, 0]).final)
        r_before = reward(before, prompts)
    rep_before = oracle_report(before, prompts)
    # 2. best-of-N start
    t_b = time.time()
    bon = best_of_n(gen, reward, prompts, cfg.n_candidates, cfg.steps, noise=noise)
    t_bon = time.time() - t_b
    rep_bon = oracle_report(bon.images, prompts)
    # 3. ReNO from the selected noise
    reno = ReNO(gen, reward, ReNOConfig(iterations=cfg.iterations, lr=cfg.lr, optimizer=cfg.optimizer,
                                        grad_clip=cfg.grad_clip, reg_weight=cfg.reg_weight, steps=cfg.steps))
    res = reno.optimize(prompts, bon.noise)
    rep_after = oracle_report(res.images, prompts)
    seconds = time.time() - t_start
    control = None
    if cfg.control:
        # equal wall-clock best-of-M: M = N + (ReNO seconds / seconds per best-of-N candidate)
        m = cfg.n_candidates + max(1, round(res.seconds / max(t_bon / cfg.n_candidates, 1e-6)))
        more = torch.randn((n, m - cfg.n_candidates, *gen.latent_shape), generator=g)
        t_c = time.time()
        ctrl = best_of_n(gen, reward, prompts, m, cfg.steps, noise=torch.cat([noise, more], 1))
        control = {"m": m, "oracle_accuracy": oracle_report(ctrl.images, prompts)["accuracy"],
                   "reward_mean": float(ctrl.scores.mean()), "seconds": round(time.time() - t_c + t_bon, 2)}

    summary = {
        "num_prompts": n,
        "oracle_accuracy_before": rep_before["accuracy"],
        "oracle_accuracy_best_of_n": rep_bon["accuracy"],
        "oracle_accuracy_after": rep_after["accuracy"],
        "oracle_partial_before": rep_before["partial"],
        "oracle_partial_after": rep_after["partial"],
        "reward_mean_before": float(r_before.mean()),
        "reward_mean_best_of_n": float(bon.scores.mean()),
        "reward_mean_after": float(res.best_reward.mean()),
        "per_category_before": rep_before["per_category"],
        "per_category_after": rep_after["per_category"],
        "fixed_vs_before": int(sum(a and not b for a, b in zip(rep_after["passed"], rep_before["passed"]))),
        "broken_vs_before": int(sum(b and not a for a, b in zip(rep_after["passed"], rep_before["passed"]))),
        "reward_curve_mean": [float(np.mean(c)) for c in res.curve],
        "seconds_total": round(seconds, 2),
        "seconds_per_prompt": round(seconds / n, 3),
        "seconds_reno": round(res.seconds, 2),
        "seconds_best_of_n": round(t_bon, 2),
        "control_best_of_m_equal_time": control,
        "config": asdict(cfg),
        "cpu": runtime.current(),  # threads and OpenMP wait policy (rewardflow/runtime.py)
    }
    if verbose:
        print(format_table(summary))
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        _grid(before, res.images, rep_before["passed"], rep_after["passed"], out / "before_after.png")
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        if verbose:
            print(f"wrote {out / 'before_after.png'} (top row of each pair: before, bottom: after; "
                  f"bar = oracle pass/fail) and {out / 'summary.json'}")
    return summary


def format_table(s: dict) -> str:
    rows = [("stage", "oracle acc", "reward"),
            ("before (1 sample)", f"{100 * s['oracle_accuracy_before']:.1f}%", f"{s['reward_mean_before']:.3f}"),
            (f"best-of-{s['config']['n_candidates']} start", f"{100 * s['oracle_accuracy_best_of_n']:.1f}%",
             f"{s['reward_mean_best_of_n']:.3f}"),
            ("after ReNO", f"{100 * s['oracle_accuracy_after']:.1f}%", f"{s['reward_mean_after']:.3f}")]
    lines = [f"{a:<22}{b:>12}{c:>10}" for a, b, c in rows]
    cats = " | ".join(f"{c} {100 * s['per_category_before'][c]:.0f}->{100 * s['per_category_after'][c]:.0f}"
                      for c in s["per_category_before"])
    lines.append(f"per category (held-out, %): {cats}")
    c = s.get("control_best_of_m_equal_time")
    if c:
        lines.append(f"{'control: best-of-' + str(c['m']):<22}{100 * c['oracle_accuracy']:>11.1f}%"
                     f"{c['reward_mean']:>10.3f}   (same wall-clock as best-of-N + ReNO)")
    lines.append(f"{s['num_prompts']} held-out prompts, {s['seconds_total']:.1f} s total, "
                 f"{s['seconds_per_prompt']:.2f} s/prompt; vs before: {s['fixed_vs_before']} prompts fixed, "
                 f"{s['broken_vs_before']} broken")
    return "\n".join(lines)
