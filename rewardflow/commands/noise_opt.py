"""``rewardflow noise-opt``: inference-time alignment of a (one- or few-step) generator — ReNO (default),
best-of-N or Flow-NRG — writing the images, the initial images, the per-iteration reward curve (JSON + PNG) and a
summary.

Output: ``OUT/final/`` (in ``--layout``; the default ``plain`` is ``images/*.png`` + ``manifest.json``, with each
image's initial and final reward in its row), ``OUT/initial/`` (plain), ``OUT/curve.json``, ``OUT/curve.png``,
``OUT/summary.json``. With another layout (GenEval, T2I-CompBench) the final images' manifest is
``OUT/manifest.json`` (outside the layout folder, which external evaluators read as they expect it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rewardflow import runtime
from rewardflow.commands._args import (
    finite_float,
    nonneg_float,
    positive_float,
    positive_int,
)
from rewardflow.commands._options import (
    add_generator_options,
    add_reward_weights_option,
    build_reward_from_args,
    load_generator_from_args,
)
from rewardflow.io.progress import add_quiet_flag


def register(sub) -> None:
    p = sub.add_parser("noise-opt", help="ReNO noise optimization / best-of-N / Flow-NRG at inference time",
                       description="e.g. `rewardflow noise-opt --model stabilityai/sd-turbo --prompt 'a cat' "
                                   "--weights hpsv2.1=HPS_v2.1_compressed.pt ...`, or a recipe: `rewardflow "
                                   "noise-opt --config configs/one_step/reno_sd_turbo.yaml --prompts FILE`")
    p.add_argument("--config", default=None, metavar="FILE.yaml",
                   help="a noise-opt recipe: its keys are this command's flags (underscores for dashes) plus "
                        "reward_kwargs {NAME: {option: value}}; flags that differ from their defaults win")
    p.add_argument("--model", default=None, help="diffusers pipeline directory, hub id, or an embedded model (toy)")
    p.add_argument("--reward", default=None,
                   help="reward spec NAME[:WEIGHT],... (default: ReNO's paper set "
                        "hpsv2.1:5,imagereward:1,pickscore:0.05,clip:0.01 with CLIP ViT-H-14 logit-scaled as in "
                        "ReNO; an embedded model's own, e.g. the toy's toy_clip:1,toy_clip_adv:1)")
    add_reward_weights_option(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prompt", help="one prompt")
    g.add_argument("--prompts", help="text file, one prompt per line, or a GenEval metadata .jsonl")
    p.add_argument("--out", default="noise_opt_out")
    p.add_argument("--method", choices=("reno", "best-of-n", "nrg"), default="reno")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="sampler steps (default: 1 for reno, 4 otherwise; an embedded model's own, 4 for the toy)")
    p.add_argument("--iterations", type=positive_int, default=50, help="ReNO iterations")
    p.add_argument("--lr", type=positive_float, default=5.0, help="ReNO learning rate")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    p.add_argument("--grad-clip", type=positive_float, default=0.1)
    p.add_argument("--reg-weight", type=nonneg_float, default=0.01)
    p.add_argument("--autocast", choices=("none", "fp16", "bf16"), default="none")
    p.add_argument("--reward-checkpointing", action="store_true", help="checkpoint reward backbones (memory)")
    p.add_argument("--n", type=positive_int, default=4, help="best-of-N candidates")
    p.add_argument("--nrg-scale", type=finite_float, default=None,
                   help="Flow-NRG guidance scale (default: 30 with a pixel reward; the trained value stored in "
                        "latent_reward.json with --latent-reward)")
    p.add_argument("--latent-reward", default=None, metavar="DIR",
                   help="Flow-NRG on a latent reward model (a `rewardflow train configs/toy/latent_reward.yaml` "
                        "OUTPUT_DIR/final): guidance without VAE decode; --reward then only scores the results")
    p.add_argument("--batch-size", type=positive_int, default=1, help="prompts optimized together")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", default="plain", choices=("plain", "geneval", "t2i-compbench"),
                   help="folder layout of the final images for external evaluators")
    add_quiet_flag(p)
    p.add_argument("--smoke", action="store_true",
                   help="dry run on the CPU: a tiny random model of the same family and random-weight rewards, 2 "
                        "iterations on 2 prompts; prints what the real run would load")
    add_generator_options(p)
    p.set_defaults(fn=run, _defaults={a.dest: a.default for a in p._actions if a.dest != "help"})


def apply_config(args) -> dict:
    """Fill ``args`` from ``--config`` (a flag that differs from its default wins) and return the file's
    ``reward_kwargs``. Unknown keys fail with the valid ones."""
    from rewardflow.config import read_config_dict

    if not args.config:
        return {}
    data = read_config_dict(args.config)
    command = data.pop("command", "noise-opt")
    if command != "noise-opt":
        raise ValueError(f"{args.config} is a `rewardflow {command}` recipe, not a noise-opt one")
    reward_kwargs = data.pop("reward_kwargs", None) or {}
    if not isinstance(reward_kwargs, dict) or not all(isinstance(v, dict) for v in reward_kwargs.values()):
        raise ValueError(f"{args.config}: reward_kwargs must map reward names to options, e.g. "
                         "{clip: {path: FILE}}")
    defaults = args._defaults
    valid = sorted(k for k in defaults if not k.startswith("_") and k not in ("config", "fn"))
    for k, v in data.items():
        if k not in valid:
            import difflib

            close = difflib.get_close_matches(k, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{args.config}: unknown noise-opt key {k!r}.{hint} Valid keys: {', '.join(valid)}, "
                             "reward_kwargs")
        if getattr(args, k) == defaults[k]:
            setattr(args, k, v)
    if args.prompt is not None and args.prompts is not None:  # one from the file, the other on the command line
        if "prompt" in data:
            args.prompt = None
        else:
            args.prompts = None
    return reward_kwargs


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

    from rewardflow.align.inference.reno import (
        RENO_PAPER_REWARD_KWARGS,
        RENO_PAPER_REWARDS,
        ReNO,
        ReNOConfig,
    )
    from rewardflow.commands.eval_rewards import _json_safe
    from rewardflow.eval.layouts import write_layout
    from rewardflow.io.manifest import write_manifest
    from rewardflow.io.progress import progress

    reward_kwargs = apply_config(args)
    if not args.model:
        raise ValueError("noise-opt needs --model (or `model:` in --config)")
    if args.prompt is None and args.prompts is None:
        raise ValueError("noise-opt needs --prompt TEXT or --prompts FILE (or `prompts:` in --config)")
    smoke_root = None
    if args.smoke:
        from rewardflow.testing.smoke import smoke_noise_opt

        smoke_root = smoke_noise_opt(args)
    prompts, meta = read_prompts(args)
    if args.latent_reward and args.method != "nrg":
        raise ValueError("--latent-reward guides Flow-NRG; add --method nrg")
    from rewardflow.pipelines.registry import resolve_adapter

    entry = resolve_adapter(args.model, args.adapter)
    defaults = entry["cls"].run_defaults
    spec = args.reward or defaults.get("reward", RENO_PAPER_REWARDS)
    if spec == RENO_PAPER_REWARDS and not args.reward:  # the paper's set, with its CLIP model (not clip's default)
        reward_kwargs = {**RENO_PAPER_REWARD_KWARGS, **reward_kwargs}
    steps = args.steps or defaults.get("noise_opt_steps") or (1 if args.method == "reno" else 4)
    overrides = {}
    if args.guidance is None and "noise_opt_guidance_scale" in defaults:
        overrides["guidance_scale"] = defaults["noise_opt_guidance_scale"]
    if smoke_root is not None:
        from rewardflow.rewards.combine import parse_reward_spec
        from rewardflow.testing.smoke import describe_rewards, tiny_reward_kwargs

        names = [n for n, _ in parse_reward_spec(spec)]
        print(describe_rewards(names, reward_kwargs))
        reward_kwargs, args.weights = tiny_reward_kwargs(names, reward_kwargs, smoke_root / "rewards"), []
    reward = build_reward_from_args(spec, args.weights, reward_kwargs)
    gen, entry = load_generator_from_args(args, **overrides)
    device = gen.device
    reward = reward.to(device)
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
        bar = progress(total=len(prompts) * cfg.iterations, desc="ReNO", unit="it")
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

        for i in progress(range(0, len(prompts), bs), desc=f"best-of-{args.n}", unit="batch"):
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
        for i in progress(range(0, len(prompts), bs), desc="Flow-NRG", unit="batch"):
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
    info = {"method": args.method, "model": args.model, "reward": spec, "steps": steps, "seed": args.seed}
    num = lambda v: v if math.isfinite(v) else None  # noqa: E731 - JSON has no NaN
    files = write_layout(finals_t, prompts, out / "final", args.layout, metadata=meta,
                         extra=[{"initial_reward": num(r["initial_reward"]), "final_reward": num(r["final_reward"])}
                                for r in rows] if args.layout == "plain" else None, info=info)
    if args.layout != "plain":  # the layout folder stays as its evaluator expects it; the manifest sits beside it
        write_manifest(out, [{"file": Path(f).relative_to(out).as_posix(), "prompt": p, "prompt_index": i}
                             for i, (f, p) in enumerate(zip(files, prompts))], "image", info)
    write_layout(initials_t, prompts, out / "initial", "plain",
                 extra=[{"reward": num(r["initial_reward"])} for r in rows], info=info)
    (out / "curve.json").write_text(json.dumps(_json_safe(curves), allow_nan=False))
    if curves:
        _curve_png(curves, out / "curve.png")
    summary = {"method": args.method, "model": args.model, "reward": spec, "steps": steps, "prompts": len(prompts),
               "seconds": round(time.time() - t0, 2),
               "mean_initial_reward": sum(r["initial_reward"] for r in rows) / len(rows),
               "mean_final_reward": sum(r["final_reward"] for r in rows) / len(rows), "cpu": runtime.current(),
               "per_prompt": rows}
    (out / "summary.json").write_text(json.dumps(_json_safe(summary), indent=1, allow_nan=False))  # NaN -> null
    print(f"{args.method}: mean reward {summary['mean_initial_reward']:.4f} -> {summary['mean_final_reward']:.4f} "
          f"over {len(prompts)} prompts in {summary['seconds']:.1f} s; wrote {out}")
    return 0
