"""``rewardflow demo --video``: inference-time alignment of the toy text-to-video generator, measured by the exact
video oracle (content and motion).

Over the held-out video captions (colour/shape pairs never seen in training), from fixed noise:

1. **before**: one sample per caption;
2. **best-of-N**: N candidate noises per caption (candidate 0 is the "before" noise), keep the one the reward scores
   highest (:func:`rewardflow.align.inference.best_of_n.best_of_n`);
3. **ReNO** (docs/algorithms.md#reno, :class:`rewardflow.align.inference.reno.ReNO`) from the best-of-N noise: gradient ascent on
   the differentiable video reward through the whole (few-step) chain plus the chi-norm prior; best iterate kept.

The reward is the tiny video reward ``toy_video`` (content and motion). Writes ``summary.json`` (oracle content /
motion / exact accuracy and mean reward per stage) and ``grid.gif`` + ``grid.mp4`` (rows: before, best-of-N, ReNO;
one column per caption; a green / red bar under each clip shows the oracle verdict).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rewardflow import runtime
from rewardflow.config import check_numbers
from rewardflow.io.progress import progress


@dataclass
class VideoDemoConfig:
    per_caption: int = 1          # videos per held-out caption (16 captions)
    steps: int = 4                # sampler steps of the toy video generator
    n_candidates: int = 4         # best-of-N
    iterations: int = 8           # ReNO iterations
    lr: float = 2.0
    grad_clip: float = 0.1
    reg_weight: float = 0.01
    reward: str = "toy_video"
    seed: int = 0

    def __post_init__(self) -> None:
        check_numbers(self, at_least_1=("per_caption", "steps", "n_candidates", "iterations"),
                      positive=("lr", "grad_clip"), non_negative=("reg_weight",))


def _bar(video: torch.Tensor, ok: bool) -> torch.Tensor:
    """[T, 3, H, W] -> [T, 3, H + 3, W] with a green (pass) or red (fail) bar underneath."""
    T, _, H, W = video.shape
    color = torch.tensor([0.16, 0.78, 0.24] if ok else [0.86, 0.16, 0.16]).view(1, 3, 1, 1)
    return torch.cat([video, color.expand(T, 3, 3, W)], 2)


def video_grid(rows: list[torch.Tensor], passed: list[list[bool]], scale: int = 3, pad: int = 2) -> torch.Tensor:
    """Rows of ``[N, T, 3, H, W]`` videos -> one ``[T, 3, H', W']`` video (each clip with its oracle bar)."""
    T = rows[0].shape[1]
    tiles = [[_bar(v, ok) for v, ok in zip(r, p)] for r, p in zip(rows, passed)]
    h, w = tiles[0][0].shape[-2:]
    n = len(tiles[0])
    out = torch.full((T, 3, len(rows) * (h + pad) + pad, n * (w + pad) + pad), 0.16)
    for i, row in enumerate(tiles):
        for j, clip in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[:, :, y:y + h, x:x + w] = clip
    out = torch.nn.functional.interpolate(out, scale_factor=scale, mode="nearest")
    return out[..., : out.shape[-2] // 2 * 2, : out.shape[-1] // 2 * 2]  # even size for yuv420p mp4


def run_video_demo(out: str | Path, cfg: VideoDemoConfig | None = None, generator_path: str | None = None,
                   reward_path: str | None = None) -> dict:
    from rewardflow.align.inference.best_of_n import best_of_n
    from rewardflow.align.inference.reno import ReNO, ReNOConfig
    from rewardflow.io.video import save_video
    from rewardflow.rewards.base import load_reward
    from rewardflow.toy.video import video_oracle
    from rewardflow.toy.video_gen_train import oracle_summary, train_captions
    from rewardflow.toy.video_generator import ToyVideoGenerator

    cfg = cfg or VideoDemoConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    gen = ToyVideoGenerator.from_pretrained(generator_path)
    gen.denoiser.requires_grad_(False)
    reward = load_reward(cfg.reward, **({"path": reward_path} if reward_path else {}))
    prompts = [c for c in train_captions("heldout") for _ in range(cfg.per_caption)]
    g = torch.Generator().manual_seed(cfg.seed)
    noise = torch.randn((len(prompts), cfg.n_candidates, *gen.latent_shape), generator=g)

    stages: dict[str, dict] = {}
    n = len(prompts)
    bar = progress(total=n, desc="video demo 1/3: before (1 sample)", unit="prompt")
    with torch.no_grad():
        before = gen.generate(prompts, cfg.steps, noise=noise[:, 0])
        r_before = reward(before, prompts)
    bar.update(n)
    bar.close()
    bar = progress(total=n * cfg.n_candidates, desc=f"video demo 2/3: best-of-{cfg.n_candidates}", unit="sample")
    bon = best_of_n(gen, reward, prompts, cfg.n_candidates, cfg.steps, noise=noise)
    bar.update(n * cfg.n_candidates)
    bar.close()
    reno = ReNO(gen, reward, ReNOConfig(iterations=cfg.iterations, lr=cfg.lr, grad_clip=cfg.grad_clip,
                                        reg_weight=cfg.reg_weight, steps=cfg.steps, seed=cfg.seed))
    bar = progress(total=cfg.iterations, desc="video demo 3/3: ReNO", unit="it")
    res = reno.optimize(prompts, noise=bon.noise, callback=lambda it, r: bar.update(1))
    bar.close()
    videos = {"before": before, "best_of_n": bon.images, "reno": res.images}
    rewards = {"before": r_before, "best_of_n": bon.scores, "reno": res.best_reward}
    for k, v in videos.items():
        stages[k] = {**oracle_summary(v, prompts), "reward": float(rewards[k].float().mean())}
        print(f"{k:10s} " + json.dumps(stages[k]), flush=True)
    passed = [[video_oracle(v, p) for v, p in zip(videos[k], prompts)] for k in videos]
    grid = video_grid(list(videos.values()), passed)
    save_video(grid, out / "grid.gif", fps=4)
    save_video(grid, out / "grid.mp4", fps=4)
    summary = {"config": asdict(cfg), "prompts": prompts, "stages": stages, "seconds": round(time.time() - t_start, 1),
               "grid": ["grid.gif", "grid.mp4"], "rows": list(videos), "cpu": runtime.current()}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
