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
from rewardflow.config import check_numbers
from rewardflow.io.progress import progress


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

    def __post_init__(self) -> None:
        check_numbers(self, at_least_1=("per_category", "steps", "n_candidates", "iterations"),
                      positive=("lr", "grad_clip"), non_negative=("guidance_scale", "reg_weight", "weights"))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _wrap(text: str, font, width: int, max_lines: int = 3) -> list[str]:
    lines, cur = [], ""
    for word in text.split():
        trial = f"{cur} {word}".strip()
        if font.getlength(trial) <= width or not cur:
            cur = trial
        else:
            lines.append(cur)
            cur = word
    lines.append(cur)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        while lines[-1] and font.getlength(lines[-1] + "...") > width:
            lines[-1] = lines[-1][:-1]
        lines[-1] += "..."
    return lines


PASS, FAIL = (30, 150, 50), (210, 40, 40)


def _grid(before: torch.Tensor, after: torch.Tensor, passed_b, passed_a, path: Path, prompts=None, cols: int = 10,
          scale: int = 4, title: str = "") -> None:
    """One block per prompt: the image before (top) and after (bottom), a green / red bar under each for the exact
    oracle's verdict, and below them the prompt and the verdicts in words (``fail -> pass``); row labels on the
    left, a title and legend on top."""
    from PIL import Image, ImageDraw

    n, _, h, w = before.shape
    prompts = list(prompts) if prompts is not None else [""] * n
    H, W, gap, left, bar = h * scale, w * scale, 12, 58, 5
    font, small, bold = _font(12), _font(11), _font(14)
    cap_lines = 5  # up to 4 lines of prompt + the verdict line
    block_h = 2 * (H + bar + 4) + cap_lines * 14 + 10
    head = 50
    rows = (n + cols - 1) // cols
    canvas = Image.new("RGB", (left + cols * (W + gap), head + rows * (block_h + gap)), (255, 255, 255))
    d = ImageDraw.Draw(canvas)
    d.text((8, 6), title or "rewardflow demo", fill=(0, 0, 0), font=bold)
    legend = [("each prompt: before on top, after below; the bar and the verdict under the prompt are the exact "
               "oracle's: ", (60, 60, 60)), ("pass", PASS), (" / ", (60, 60, 60)), ("fail", FAIL)]
    x = 8
    for text, color in legend:
        d.text((x, 28), text, fill=color, font=small)
        x += d.textlength(text, font=small)
    for i in range(n):
        r, c = divmod(i, cols)
        x0, y0 = left + c * (W + gap), head + r * (block_h + gap)
        for k, (img, ok) in enumerate(((before[i], passed_b[i]), (after[i], passed_a[i]))):
            y = y0 + k * (H + bar + 4)
            arr = (img.permute(1, 2, 0).detach().cpu().clamp(0, 1).numpy() * 255).round().astype(np.uint8)
            canvas.paste(Image.fromarray(np.kron(arr, np.ones((scale, scale, 1), np.uint8))), (x0, y))
            d.rectangle([x0, y + H + 1, x0 + W - 1, y + H + bar], fill=PASS if ok else FAIL)
            if c == 0:
                label = "before" if k == 0 else "after"
                d.text((8, y + H // 2 - 7), label, fill=(0, 0, 0), font=font)
        ty = y0 + 2 * (H + bar + 4) + 2
        for line in _wrap(prompts[i], small, W, max_lines=cap_lines - 1):
            d.text((x0, ty), line, fill=(20, 20, 20), font=small)
            ty += 14
        ty = y0 + 2 * (H + bar + 4) + 2 + (cap_lines - 1) * 14
        change = ("  fixed" if passed_a[i] and not passed_b[i] else "  broken" if passed_b[i] and not passed_a[i]
                  else "")
        parts = [("pass" if passed_b[i] else "fail", PASS if passed_b[i] else FAIL), (" -> ", (60, 60, 60)),
                 ("pass" if passed_a[i] else "fail", PASS if passed_a[i] else FAIL), (change, (0, 0, 0))]
        xx = x0
        for text, color in parts:
            d.text((xx, ty), text, fill=color, font=small)
            xx += d.textlength(text, font=small)
    canvas.save(path)


def run_demo(out: str | Path | None = "demo_out", config: DemoConfig | None = None, generator_path=None,
             reward_paths: dict | None = None, verbose: bool = True) -> dict:
    from rewardflow.align.inference.best_of_n import best_of_n
    from rewardflow.align.inference.reno import ReNO, ReNOConfig
    from rewardflow.rewards.base import load_reward
    from rewardflow.rewards.combine import WeightedReward
    from rewardflow.toy.evaluation import eval_prompts, oracle_report
    from rewardflow.toy.generator import ToyGenerator

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

    stages = 3 + int(cfg.control)
    # 1. before: the candidate-0 noise, plain sampling
    bar = progress(total=n, desc=f"demo 1/{stages}: before (1 sample)", unit="prompt")
    with torch.no_grad():
        before = gen.decode(gen.sample(gen.encode_prompts(prompts), cfg.steps, noise=noise[:, 0]).final)
        r_before = reward(before, prompts)
    rep_before = oracle_report(before, prompts)
    bar.update(n)
    bar.close()
    # 2. best-of-N start
    bar = progress(total=n * cfg.n_candidates, desc=f"demo 2/{stages}: best-of-{cfg.n_candidates}", unit="sample")
    t_b = time.time()
    bon = best_of_n(gen, reward, prompts, cfg.n_candidates, cfg.steps, noise=noise)
    t_bon = time.time() - t_b
    rep_bon = oracle_report(bon.images, prompts)
    bar.update(n * cfg.n_candidates)
    bar.close()
    # 3. ReNO from the selected noise
    reno = ReNO(gen, reward, ReNOConfig(iterations=cfg.iterations, lr=cfg.lr, optimizer=cfg.optimizer,
                                        grad_clip=cfg.grad_clip, reg_weight=cfg.reg_weight, steps=cfg.steps))
    bar = progress(total=cfg.iterations, desc=f"demo 3/{stages}: ReNO", unit="it")
    res = reno.optimize(prompts, bon.noise, callback=lambda it, r: bar.update(1))
    bar.close()
    rep_after = oracle_report(res.images, prompts)
    seconds = time.time() - t_start
    control = None
    if cfg.control:
        # equal wall-clock best-of-M: M = N + (ReNO seconds / seconds per best-of-N candidate)
        m = cfg.n_candidates + max(1, round(res.seconds / max(t_bon / cfg.n_candidates, 1e-6)))
        more = torch.randn((n, m - cfg.n_candidates, *gen.latent_shape), generator=g)
        t_c = time.time()
        bar = progress(total=n * m, desc=f"demo 4/{stages}: control best-of-{m}", unit="sample")
        ctrl = best_of_n(gen, reward, prompts, m, cfg.steps, noise=torch.cat([noise, more], 1))
        bar.update(n * m)
        bar.close()
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
        title = (f"ReNO on {n} held-out prompts: oracle accuracy {100 * rep_before['accuracy']:.0f}% -> "
                 f"{100 * rep_after['accuracy']:.0f}% (best-of-{cfg.n_candidates} start + {cfg.iterations} ReNO "
                 "iterations)")
        _grid(before, res.images, rep_before["passed"], rep_after["passed"], out / "before_after.png", prompts,
              title=title)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        if verbose:
            print(f"wrote {out / 'before_after.png'} (each prompt: before on top, after below, the oracle's verdict "
                  f"under each) and {out / 'summary.json'}")
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
