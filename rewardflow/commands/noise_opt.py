"""``rewardflow noise-opt``: inference-time alignment of a (one- or few-step) generator — ReNO (default),
best-of-N or Flow-NRG — writing the images, the initial images, the per-iteration reward curve (JSON + PNG) and a
summary."""

from __future__ import annotations

import json
from pathlib import Path

from rewardflow import runtime


def register(sub) -> None:
    p = sub.add_parser("noise-opt", help="ReNO noise optimization / best-of-N / Flow-NRG at inference time")
    p.add_argument("--model", required=True, help="diffusers pipeline directory, hub id, or an embedded model (toy)")
    p.add_argument("--adapter", default=None, help="adapter name (default: detected from model_index.json)")
    p.add_argument("--reward", default=None,
                   help="reward spec NAME[:WEIGHT],... (default: ReNO's paper set "
                        "hpsv2.1:5,imagereward:1,pickscore:0.05,clip:0.01; an embedded model's own, e.g. the toy's "
                        "toy_clip:1,toy_clip_adv:1)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt", help="one prompt")
    g.add_argument("--prompts", help="text file, one prompt per line, or a GenEval metadata .jsonl")
    p.add_argument("--out", default="noise_opt_out")
    p.add_argument("--method", choices=("reno", "best-of-n", "nrg"), default="reno")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps (default: 1 for reno, 4 otherwise; an embedded model's own, 4 for the toy)")
    p.add_argument("--iterations", type=int, default=50, help="ReNO iterations")
    p.add_argument("--lr", type=float, default=5.0, help="ReNO learning rate")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    p.add_argument("--grad-clip", type=float, default=0.1)
    p.add_argument("--reg-weight", type=float, default=0.01)
    p.add_argument("--autocast", choices=("none", "fp16", "bf16"), default="none")
    p.add_argument("--reward-checkpointing", action="store_true", help="checkpoint reward backbones (memory)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="checkpoint the generator's denoiser blocks (memory; ReNO and Flow-NRG backpropagate "
                        "through it)")
    p.add_argument("--n", type=int, default=4, help="best-of-N candidates")
    p.add_argument("--nrg-scale", type=float, default=None,
                   help="Flow-NRG guidance scale (default: 30 with a pixel reward; the trained value stored in "
                        "latent_reward.json with --latent-reward)")
    p.add_argument("--latent-reward", default=None, metavar="DIR",
                   help="Flow-NRG on a latent reward model (a `rewardflow train configs/toy/latent_reward.yaml` "
                        "OUTPUT_DIR/final): guidance without VAE decode; --reward then only scores the results")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--batch-size", type=int, default=1, help="prompts optimized together")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--device", default=None)
    p.add_argument("--offload", action="store_true", help="model CPU offload (real diffusers models)")
    p.add_argument("--layout", default="plain", choices=("plain", "geneval", "t2i-compbench"),
                   help="folder layout of the final images for external evaluators")
    p.set_defaults(fn=run)


def read_prompts(args) -> tuple[list[str], list[dict] | None]:
    """The prompts, and for a ``.jsonl`` file (GenEval metadata) each prompt's row for the output layout."""
    if args.prompt is not None:
        if not args.prompt.strip():
            raise ValueError("--prompt is empty")
        return [args.prompt], None
    from rewardflow.io.prompts import read_prompt_rows

    rows = read_prompt_rows(args.prompts)
    return [r["prompt"] for r in rows], (rows if Path(args.prompts).suffix.lower() == ".jsonl" else None)


def _curve_png(curves: list[list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    for c in curves:
        ax.plot(c, alpha=0.35, lw=1)
    if curves:
        n = max(len(c) for c in curves)
        mean = [sum(c[i] for c in curves if i < len(c)) / sum(1 for c in curves if i < len(c)) for i in range(n)]
        ax.plot(mean, color="k", lw=2, label="mean")
        ax.legend()
    ax.set_xlabel("iteration")
    ax.set_ylabel("reward")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(args) -> int:
    import time

    import torch
    from tqdm.auto import tqdm

    from rewardflow.align.inference.reno import RENO_PAPER_REWARDS, ReNO, ReNOConfig
    from rewardflow.eval.layouts import write_layout
    from rewardflow.rewards.combine import build_reward

    prompts, meta = read_prompts(args)
    if args.latent_reward and args.method != "nrg":
        raise ValueError("--latent-reward guides Flow-NRG; add --method nrg")
    from rewardflow.pipelines.registry import load_generator, resolve_adapter

    entry = resolve_adapter(args.model, args.adapter)
    defaults = entry["cls"].run_defaults
    spec = args.reward or defaults.get("reward", RENO_PAPER_REWARDS)
    steps = args.steps or defaults.get("noise_opt_steps") or (1 if args.method == "reno" else 4)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    kw = {"device": device}
    if args.guidance is not None:
        kw["guidance_scale"] = args.guidance
    elif "noise_opt_guidance_scale" in defaults:
        kw["guidance_scale"] = defaults["noise_opt_guidance_scale"]
    if not entry["embedded"]:  # embedded models (the toy) ship one dtype
        kw.update(dtype=dtype, offload=args.offload)
    gen = load_generator(args.model, adapter=args.adapter, **kw)
    if args.gradient_checkpointing:
        gen.enable_gradient_checkpointing()
    reward = build_reward(spec).to(device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    finals, initials, curves, rows = [], [], [], []
    bs = max(1, args.batch_size)
    noise_gen = torch.Generator().manual_seed(args.seed)
    if args.method == "reno":
        cfg = ReNOConfig(iterations=args.iterations, lr=args.lr, optimizer=args.optimizer, grad_clip=args.grad_clip,
                         reg_weight=args.reg_weight, steps=steps, autocast=args.autocast,
                         reward_checkpointing=args.reward_checkpointing, seed=args.seed)
        reno = ReNO(gen, reward, cfg)
        bar = tqdm(total=len(prompts) * cfg.iterations, desc="ReNO", unit="it")
        for i in range(0, len(prompts), bs):
            chunk = prompts[i:i + bs]
            noise = torch.randn((len(chunk), *gen.latent_shape), generator=noise_gen)
            res = reno.optimize(chunk, noise, callback=lambda it, r: bar.update(1))
            finals.append(res.images.cpu())
            initials.append(res.initial_images.cpu())
            for j, p in enumerate(chunk):
                curves.append([c[j] for c in res.curve])
                rows.append({"prompt": p, "initial_reward": float(res.initial_reward[j]),
                             "final_reward": float(res.best_reward[j]), "best_iteration": int(res.best_iteration[j])})
        bar.close()
    elif args.method == "best-of-n":
        from rewardflow.align.inference.best_of_n import best_of_n

        for i in tqdm(range(0, len(prompts), bs), desc=f"best-of-{args.n}"):
            chunk = prompts[i:i + bs]
            noise = torch.randn((len(chunk), args.n, *gen.latent_shape), generator=noise_gen)
            res = best_of_n(gen, reward, chunk, args.n, steps, noise=noise)
            with torch.no_grad():
                first = gen.decode(gen.sample(gen.encode_prompts(chunk), steps,
                                              noise=noise[:, 0].to(gen.device, gen.dtype)).final)
            finals.append(res.images.cpu())
            initials.append(first.cpu())
            for j, p in enumerate(chunk):
                curves.append(res.all_scores[j].tolist())
                rows.append({"prompt": p, "initial_reward": float(res.all_scores[j, 0]),
                             "final_reward": float(res.scores[j])})
    else:
        from rewardflow.align.inference.nrg import NRG, NRGConfig

        if args.latent_reward:
            from rewardflow.rewards.latent import LatentRewardModel

            guide = LatentRewardModel.from_pretrained(gen, args.latent_reward).to(device)
            lrm_meta = json.loads((Path(args.latent_reward) / "latent_reward.json").read_text())
            scale = args.nrg_scale if args.nrg_scale is not None else float(lrm_meta.get("nrg_scale", 1.0))
            nrg = NRG(gen, guide, NRGConfig(scale=scale, weights={guide.heads[0]: 1.0}, steps=steps,
                                            seed=args.seed), source="latent")
        else:
            scale = args.nrg_scale if args.nrg_scale is not None else 30.0
            nrg = NRG(gen, reward, NRGConfig(scale=scale, steps=steps, seed=args.seed))
        for i in tqdm(range(0, len(prompts), bs), desc="Flow-NRG"):
            chunk = prompts[i:i + bs]
            noise = torch.randn((len(chunk), *gen.latent_shape), generator=noise_gen).to(gen.device, gen.dtype)
            img = nrg.generate(chunk, noise)
            with torch.no_grad():
                base = gen.decode(gen.sample(gen.encode_prompts(chunk), steps, noise=noise).final)
                r0, r1 = reward(base.float(), chunk), reward(img.float(), chunk)
            finals.append(img.cpu())
            initials.append(base.cpu())
            for j, p in enumerate(chunk):
                rows.append({"prompt": p, "initial_reward": float(r0[j]), "final_reward": float(r1[j])})
    finals_t, initials_t = torch.cat(finals), torch.cat(initials)
    write_layout(finals_t, prompts, out / "final", args.layout, metadata=meta)
    write_layout(initials_t, prompts, out / "initial", "plain")
    (out / "curve.json").write_text(json.dumps(curves))
    if curves:
        _curve_png(curves, out / "curve.png")
    summary = {"method": args.method, "model": args.model, "reward": spec, "steps": steps, "prompts": len(prompts),
               "seconds": round(time.time() - t0, 2),
               "mean_initial_reward": sum(r["initial_reward"] for r in rows) / len(rows),
               "mean_final_reward": sum(r["final_reward"] for r in rows) / len(rows), "cpu": runtime.current(),
               "per_prompt": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{args.method}: mean reward {summary['mean_initial_reward']:.4f} -> {summary['mean_final_reward']:.4f} "
          f"over {len(prompts)} prompts in {summary['seconds']:.1f} s; wrote {out}")
    return 0
