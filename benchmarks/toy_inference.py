"""Toy world: held-out oracle accuracy vs wall time of the inference-time methods at equal compute.

    python benchmarks/toy_inference.py [--per-category 12] [--threads 2] [--latent-reward runs/lrm/final]

Rows: the base sample; Flow-NRG (pixel reward on the predicted x0; and the latent reward model given by
``--latent-reward DIR`` or shipped in ``assets/toy/latent_reward``); ReNO from the base noise; the demo's
best-of-4 + ReNO; and, for every guided method, best-of-N with N chosen so that best-of-N takes the same wall time
(the equal-compute control). All methods optimize the same reward (toy_clip + toy_clip_adv, the demo's ensemble);
the oracle is never optimized.
Writes ``benchmarks/results/toy_inference.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--per-category", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--nrg-scale", type=float, default=30.0)
    ap.add_argument("--reno-iterations", type=int, default=12)
    ap.add_argument("--latent-reward", default=None, help="a trained latent reward dir (rewardflow train "
                    "configs/toy/latent_reward.yaml -> OUTPUT_DIR/final); default: assets/toy/latent_reward if shipped")
    ap.add_argument("--latent-scales", default=None, metavar="S1,S2,...",
                    help="NRG scales for the latent reward rows (default: the nrg_scale in latent_reward.json)")
    ap.add_argument("--no-reno", action="store_true", help="skip the ReNO rows (the slow ones)")
    ap.add_argument("--out", default=str(RESULTS / "toy_inference"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from rewardflow.align.inference.best_of_n import best_of_n
    from rewardflow.align.inference.nrg import NRG, NRGConfig
    from rewardflow.align.inference.reno import ReNO, ReNOConfig
    from rewardflow.toy.evaluation import eval_prompts, oracle_report
    from rewardflow.toy.generator import ToyGenerator
    from rewardflow.rewards.base import load_reward
    from rewardflow.rewards.combine import WeightedReward
    from rewardflow.toy.assets import assets_root
    from rewardflow.commands.demos.image import DemoConfig

    demo = DemoConfig()
    gen = ToyGenerator.from_pretrained(guidance_scale=demo.guidance_scale)
    reward = WeightedReward([load_reward(n) for n in demo.rewards], demo.weights)
    prompts = eval_prompts("heldout", a.per_category, seed=0)
    n = len(prompts)
    g = torch.Generator().manual_seed(0)
    base_noise = torch.randn((n, *gen.latent_shape), generator=g)
    pool = torch.randn((n, 200, *gen.latent_shape), generator=g)  # extra candidates for the best-of-N controls
    cond = gen.encode_prompts(prompts)
    rows = []

    def record(name, images, seconds, extra=None):
        with torch.no_grad():
            r = float(reward(images, prompts).mean())
        rep = oracle_report(images, prompts)
        row = {"method": name, "oracle_accuracy": rep["accuracy"], "reward": r, "seconds": round(seconds, 2),
               "per_category": rep["per_category"]}
        row.update(extra or {})
        rows.append(row)
        print(f"{name:<34} acc {100 * rep['accuracy']:5.1f}%  reward {r:.3f}  {seconds:7.1f} s", flush=True)
        return row

    def bon_control(seconds: float, label: str):
        # N so that best-of-N costs the same wall time: N = seconds / (seconds per single sample)
        m = max(2, min(pool.shape[1] + 1, round(seconds / t_base)))
        noise = torch.cat([base_noise[:, None], pool[:, :m - 1]], 1)
        t0 = time.time()
        res = best_of_n(gen, reward, prompts, m, a.steps, noise=noise)
        record(f"  best-of-{m} (equal time to {label})", res.images, time.time() - t0, {"n": m, "control_for": label})

    t0 = time.time()
    with torch.no_grad():
        base = gen.decode(gen.sample(cond, a.steps, noise=base_noise).final)
    t_base = time.time() - t0
    record("base (1 sample)", base, t_base)

    t0 = time.time()
    img = NRG(gen, reward, NRGConfig(scale=a.nrg_scale, steps=a.steps)).generate(prompts, base_noise)
    t = time.time() - t0
    record(f"Flow-NRG pixel (scale {a.nrg_scale:g})", img, t, {"scale": a.nrg_scale})
    bon_control(t, "Flow-NRG pixel")

    lrm_dir = a.latent_reward or assets_root() / "toy" / "latent_reward"
    if a.latent_reward and not Path(lrm_dir, "latent_reward.json").is_file():
        raise SystemExit(f"--latent-reward {lrm_dir}: no latent_reward.json there (train one with rewardflow train "
                         "configs/toy/latent_reward.yaml output_dir=DIR and pass DIR/final)")
    if Path(lrm_dir).is_dir():
        from rewardflow.rewards.latent import LatentRewardModel

        lrm = LatentRewardModel.from_pretrained(gen, lrm_dir)
        meta = json.loads((Path(lrm_dir) / "latent_reward.json").read_text())
        scales = ([float(x) for x in a.latent_scales.split(",")] if a.latent_scales
                  else [float(meta.get("nrg_scale", 1.0))])
        for scale in scales:
            t0 = time.time()
            img = NRG(gen, lrm, NRGConfig(scale=scale, weights={lrm.heads[0]: 1.0}, steps=a.steps),
                      source="latent").generate(prompts, base_noise)
            t = time.time() - t0
            record(f"Flow-NRG latent RM (scale {scale:g})", img, t, {"scale": scale})
        bon_control(t, "Flow-NRG latent")

    if a.no_reno:
        write_results(rows, a, n, demo)
        return

    cfg = ReNOConfig(iterations=a.reno_iterations, lr=demo.lr, optimizer=demo.optimizer, grad_clip=demo.grad_clip,
                     reg_weight=demo.reg_weight, steps=a.steps)
    res = ReNO(gen, reward, cfg).optimize(prompts, base_noise)
    record(f"ReNO ({a.reno_iterations} it, from base noise)", res.images, res.seconds)
    bon_control(res.seconds, "ReNO")

    t0 = time.time()
    noise4 = torch.cat([base_noise[:, None], pool[:, :demo.n_candidates - 1]], 1)
    bon = best_of_n(gen, reward, prompts, demo.n_candidates, a.steps, noise=noise4)
    res = ReNO(gen, reward, cfg).optimize(prompts, bon.noise)
    t = time.time() - t0
    record(f"best-of-{demo.n_candidates} + ReNO (the demo)", res.images, t)
    bon_control(t, "best-of-4 + ReNO")

    write_results(rows, a, n, demo)


def write_results(rows: list, a, n: int, demo) -> None:
    """Write the rows as ``OUT.json`` and a Markdown table ``OUT.md`` and print the table."""
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"prompts": n, "split": "heldout", "steps": a.steps, "guidance_scale": demo.guidance_scale,
            "reward": "toy_clip:1,toy_clip_adv:1", "threads": a.threads, "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    lines = ["| method | held-out oracle acc | reward | wall s |", "|---|---|---|---|"]
    lines += [f"| {r['method'].strip()} | {100 * r['oracle_accuracy']:.1f}% | {r['reward']:.3f} | {r['seconds']:.1f} |"
              for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
