"""Toy world: which held-out reward level an oracle gain corresponds to, read off best-of-N on the base generator.

    python benchmarks/toy_reward_calibration.py [--reward toy_clip_adv:0.5,toy_clip:0.5] [--max-n 16] [--threads 2]

Best-of-N (N = 1, 2, 4, ...) with the training configs' reward on the 250 held-out prompts of the method benchmark
(50 per category, 4 Euler steps, cfg 1; candidate 0 is the trainer's evaluation noise). The candidates are nested (best-of-2 draws from best-of-4's first two noises),
so each row selects harder from the same samples. A fine-tuned generator whose held-out reward (``reward_after`` in
``toy_methods.json``) matches a row here is, as far as the reward can tell, as good as that row: the rows tell how far
a method has to move the reward for a given oracle gain. Writes ``benchmarks/results/toy_reward_calibration.json``
and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reward", default="toy_clip_adv:0.5,toy_clip:0.5")
    ap.add_argument("--model", default="toy")
    ap.add_argument("--max-n", type=int, default=16)
    ap.add_argument("--per-category", type=int, default=50)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "toy_reward_calibration.json"))
    a = ap.parse_args(argv)
    for k in ("max_n", "per_category", "steps"):
        if getattr(a, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be >= 1, got {getattr(a, k)}")
    torch.set_num_threads(a.threads)
    from rewardflow.align.inference.best_of_n import best_of_n
    from rewardflow.toy.evaluation import eval_prompts, oracle_report
    from rewardflow.pipelines.registry import load_generator
    from rewardflow.rewards.combine import build_reward

    gen, reward = load_generator(a.model), build_reward(a.reward)
    prompts = eval_prompts("heldout", a.per_category)
    # candidate 0 is the trainer's evaluation noise (seed ``--seed``), so best-of-1 is the benchmark's "before"
    shape = (len(prompts), *gen.latent_shape)
    first = torch.randn(shape, generator=torch.Generator().manual_seed(a.seed))
    rest = torch.randn((len(prompts), a.max_n - 1, *shape[1:]), generator=torch.Generator().manual_seed(a.seed + 1))
    noise = torch.cat([first[:, None], rest], 1)
    rows, n = [], 1
    while n <= a.max_n:
        t0 = time.time()
        res = best_of_n(gen, reward, prompts, n, a.steps, noise=noise[:, :n])
        rep = oracle_report(res.images, prompts)
        rows.append({"n": n, "oracle_accuracy": rep["accuracy"], "reward": float(res.scores.mean()),
                     "per_category": rep["per_category"], "seconds": round(time.time() - t0, 1)})
        print(f"best-of-{n}: oracle {100 * rep['accuracy']:.1f}%, reward {rows[-1]['reward']:.3f}", flush=True)
        n *= 2
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"reward": a.reward, "model": a.model, "prompts": len(prompts), "steps": a.steps, "seed": a.seed}
    out.write_text(json.dumps({**meta, "rows": rows}, indent=1))
    cats = list(rows[0]["per_category"])
    md = [f"Best-of-N on the base toy generator ({a.model}), reward `{a.reward}`, {len(prompts)} held-out prompts, "
          f"{a.steps} steps, cfg 1.", "",
          "| N | held-out oracle | Δ vs N=1 (points) | reward (best) | " + " | ".join(cats) + " |",
          "|---|---|---|---|" + "---|" * len(cats)]
    base = rows[0]["oracle_accuracy"]
    for r in rows:
        md.append(f"| {r['n']} | {100 * r['oracle_accuracy']:.1f}% | {100 * (r['oracle_accuracy'] - base):+.1f} | "
                  f"{r['reward']:.3f} | " + " | ".join(f"{100 * r['per_category'][c]:.0f}%" for c in cats) + " |")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
