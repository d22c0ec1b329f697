"""``rewardflow eval``: sample a fixed prompt set with a generator (optionally + LoRA) and report reward means with
bootstrap confidence intervals, diversity (Vendi score) and, in the toy world, toy-oracle accuracy; optionally
write the images in a GenEval / T2I-CompBench layout (videos: VBench) for external evaluators.

Sampling goes through :func:`rewardflow.eval.sampling.sample_to_files` (the same code path as ``rewardflow
sample``; image j of the run uses noise seed ``SEED + j``), so ``OUT/images/`` holds the PNGs (MP4s for a video
model, scored as decoded from the files) and manifest.json.
Results: ``OUT/eval.json`` with ``{"rewards": {name: {"mean", "ci_low", "ci_high", "std", "n"}}, "diversity":
{...}, "toy_oracle": {...}}``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def register(subparsers) -> None:
    from rewardflow.eval.layouts import LAYOUTS

    p = subparsers.add_parser(
        "eval", help="sample a prompt set and report reward means + CIs, diversity, toy-oracle accuracy",
        description="e.g. `rewardflow eval --model toy --lora runs/grpo/final --prompts toy:heldout --reward "
                    "toy_clip,toy_oracle --out eval_out`")
    p.add_argument("--model", default="toy", metavar="DIR|ID|toy")
    p.add_argument("--adapter", default=None, help="generator adapter (default: from model_index.json)")
    p.add_argument("--lora", default=None, metavar="DIR", help="LoRA directory saved by training or diffusers")
    p.add_argument("--prompts", required=True, metavar="FILE|toy:SPLIT",
                   help="a prompts file (one per line, or .jsonl with 'prompt') or toy:heldout / toy:train")
    p.add_argument("--per-category", type=int, default=10, help="toy:SPLIT prompts per caption category")
    p.add_argument("--reward", required=True, action="append", metavar="NAMES",
                   help="comma-separated rewards, each reported on its own (a weighted spec is one reward)")
    p.add_argument("--n-per-prompt", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default 4 for toy, 30 otherwise)")
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CI (0 = none)")
    p.add_argument("--diversity-encoder", default=None, metavar="NAME",
                   help="image encoder for the Vendi score (toy_clip, toy_clip_adv; default toy_clip for the toy "
                        "model, none otherwise)")
    p.add_argument("--layout", default=None, choices=[x for x in LAYOUTS if x != "plain"],
                   help="also write the samples in this external-evaluator layout under OUT/LAYOUT/ (vbench: video "
                        "models)")
    p.add_argument("--device", default=None)
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(fn=run)


def resolve_prompts(spec: str, per_category: int, seed: int = 0) -> tuple[list[str], bool]:
    """``toy:SPLIT`` -> the toy evaluation prompts (:func:`rewardflow.eval.toy.eval_prompts`); else a file.
    Returns ``(prompts, is_toy)``."""
    if spec.startswith("toy:"):
        from rewardflow.eval.toy import eval_prompts

        split = spec.split(":", 1)[1]
        if split not in ("train", "heldout"):
            raise ValueError(f"--prompts {spec}: the toy splits are toy:train and toy:heldout")
        return eval_prompts(split, per_category, seed=seed), True
    from rewardflow.eval.sampling import read_prompt_file

    return read_prompt_file(spec), False


def mean_ci(values, n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean, sample std and percentile-bootstrap 95% CI of the finite values."""
    import numpy as np

    from rewardflow.eval.accuracy import bootstrap_ci

    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    n = int(v.size)
    lo, hi = bootstrap_ci(lambda ix: float(v[ix].mean()), n, n_boot, seed) if n_boot and n else (math.nan,) * 2
    return {"mean": float(v.mean()) if n else math.nan, "std": float(v.std(ddof=1)) if n > 1 else math.nan,
            "ci_low": lo, "ci_high": hi, "n": n}


def diversity(images, prompts, encoder) -> dict:
    """Vendi score (cosine kernel on the encoder's embeddings) over all images, and the mean over prompts of the
    Vendi score of each prompt's samples (when there are >= 2 per prompt)."""
    from rewardflow.rewards.distributional import vendi_score

    emb = encoder(images)
    out = {"vendi_all": float(vendi_score(emb))}
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    per = [float(vendi_score(emb[ix])) for ix in groups.values() if len(ix) > 1]
    if per:
        out["vendi_per_prompt_mean"] = sum(per) / len(per)
    return out


def _geneval_metadata(spec: str, rows: list[dict]) -> list[dict] | None:
    """GenEval's evaluator needs each prompt's full metadata line (``tag``, ``include``...): with a ``.jsonl``
    prompts file (GenEval ``evaluation_metadata.jsonl``) every image gets its prompt's line; else None."""
    if not spec.endswith(".jsonl"):
        return None
    lines = [json.loads(ln) for ln in Path(spec).read_text(encoding="utf-8").splitlines() if ln.strip()]
    return [lines[r["prompt_index"]] for r in rows]


def run(args: argparse.Namespace) -> int:
    import torch

    from rewardflow.commands.eval_rewards import _json_safe, split_reward_specs
    from rewardflow.commands.sample import TOY_MODELS
    from rewardflow.eval.sampling import sample_to_files
    from rewardflow.io.images import load_image
    from rewardflow.pipelines.registry import load_generator
    from rewardflow.rewards.combine import build_reward

    prompts, toy_prompts = resolve_prompts(args.prompts, args.per_category)
    specs = split_reward_specs(args.reward)
    toy = args.model in TOY_MODELS or args.adapter in TOY_MODELS
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gen = load_generator(args.model, adapter=args.adapter, device=device)
    if args.lora:
        gen.load_lora(args.lora, trainable=False)
    out = Path(args.out)
    man = sample_to_files(gen, prompts, out / "images", steps=args.steps or (4 if toy else 30),
                          guidance_scale=args.guidance, seed=args.seed, n_per_prompt=args.n_per_prompt,
                          batch_size=args.batch_size, info={"model": args.model, "lora": args.lora})
    rows = man["images"]
    video = man.get("media") == "video"
    if video:  # score what external evaluators will read: the decoded MP4s
        from rewardflow.io.video import load_video

        images = torch.stack([load_video(out / "images" / r["file"]) for r in rows])
    else:
        images = torch.stack([load_image(out / "images" / r["file"]) for r in rows])
    all_prompts = [r["prompt"] for r in rows]

    result: dict = {"model": args.model, "lora": args.lora, "prompts": args.prompts, "n_images": len(rows),
                    "n_per_prompt": args.n_per_prompt, "seed": args.seed, "rewards": {}}
    for spec in specs:
        reward = build_reward(spec).to(device).eval()
        with torch.no_grad():
            s = torch.cat([reward(images[i:i + args.batch_size].to(device), all_prompts[i:i + args.batch_size])
                           .float().cpu() for i in range(0, len(rows), args.batch_size)])
        result["rewards"][spec] = mean_ci(s.tolist(), args.bootstrap, args.seed)
    enc_name = args.diversity_encoder or ("toy_clip" if toy else None)
    if enc_name and video:
        print("[rewardflow] eval: diversity (Vendi) is computed on images only; skipped for video samples")
        enc_name = None
    if enc_name:
        from rewardflow.rewards.distributional import load_encoder

        result["diversity"] = {"encoder": enc_name, **diversity(images, all_prompts, load_encoder(enc_name))}
    if (toy_prompts or toy) and not video:
        from rewardflow.eval.toy import oracle_report

        try:
            rep = oracle_report(images, all_prompts)
            result["toy_oracle"] = {k: rep[k] for k in ("accuracy", "partial", "per_category")}
        except ValueError as e:  # prompts outside the toy grammar
            result["toy_oracle"] = {"error": str(e)}
    if args.layout:
        from rewardflow.eval.layouts import write_layout

        write_layout(images, all_prompts, out / args.layout, args.layout,
                     sample_index=[r["sample_index"] for r in rows],
                     extra=[{"fps": man.get("fps", 8.0)}] * len(rows),
                     metadata=_geneval_metadata(args.prompts, rows) if args.layout == "geneval" else None)
        result["layout"] = str(out / args.layout)

    w = max([6] + [len(s) for s in specs])
    print(f"{'reward':<{w}}  {'mean':>10}  95% CI")
    for spec, r in result["rewards"].items():
        print(f"{spec:<{w}}  {r['mean']:>10.4f}  [{r['ci_low']:.4f}, {r['ci_high']:.4f}]  (n={r['n']})")
    if "diversity" in result:
        print("diversity: " + ", ".join(f"{k}={v:.3f}" for k, v in result["diversity"].items() if k != "encoder"))
    if "accuracy" in result.get("toy_oracle", {}):
        print(f"toy oracle accuracy: {result['toy_oracle']['accuracy']:.3f} "
              f"(partial {result['toy_oracle']['partial']:.3f})")
    (out / "eval.json").write_text(json.dumps(_json_safe(result), indent=1, allow_nan=False) + "\n")
    print(f"wrote {out / 'eval.json'}")
    return 0
