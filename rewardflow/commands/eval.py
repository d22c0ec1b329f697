"""``rewardflow eval``: sample a fixed prompt set with a generator (optionally + LoRA) and report reward means with
bootstrap confidence intervals, diversity (Vendi score) and the metrics of the prompt source's evaluation hooks
(the toy world's ``toy:heldout`` prompts: exact-oracle accuracy); optionally
write the images in a GenEval / T2I-CompBench layout (videos: VBench) for external evaluators.

Sampling goes through :func:`rewardflow.eval.sampling.sample_to_files` (the same code path as ``rewardflow
sample``; image j of the run uses noise seed ``SEED + j``), so ``OUT/images/`` holds the PNGs (MP4s for a video
model, scored as decoded from the files) and manifest.json.
Results: ``OUT/eval.json`` with ``{"rewards": {name: {"mean", "ci_low", "ci_high", "std", "n"}}, "diversity":
{...}, "hooks": {metric: value}}``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from rewardflow import runtime
from rewardflow.commands._args import nonneg_int, positive_int
from rewardflow.commands._options import (
    add_generator_options,
    add_reward_weights_option,
    build_reward_from_args,
    check_weights_names,
    load_generator_from_args,
)
from rewardflow.io.progress import add_quiet_flag


def register(subparsers) -> None:
    # torch-free: building the parser must not load torch (rewardflow/runtime.py)
    from rewardflow.eval.layout_names import LAYOUTS

    p = subparsers.add_parser(
        "eval", help="sample a prompt set and report reward means + CIs, diversity, evaluation hooks (toy oracle)",
        description="e.g. `rewardflow eval --model toy --lora runs/grpo/final --prompts toy:heldout --reward "
                    "toy_clip,toy_oracle --out eval_out`")
    p.add_argument("--model", required=True, metavar="DIR|ID|toy", help="pipeline directory, hub id, or an embedded "
                                                                          "model (toy)")
    p.add_argument("--prompts", required=True, metavar="FILE|SOURCE",
                   help="a prompts file (one per line, .jsonl with 'prompt', or a manifest.json: its prompts) or a "
                        "registered source (toy:heldout / toy:train)")
    p.add_argument("--per-category", type=positive_int, default=10,
                   help="prompts per group of a grouped source (the toy's caption categories)")
    p.add_argument("--reward", required=True, action="append", metavar="NAMES",
                   help="comma-separated rewards, each reported on its own (a weighted spec is one reward)")
    add_reward_weights_option(p)
    p.add_argument("--n-per-prompt", type=positive_int, default=1)
    p.add_argument("--steps", type=positive_int, default=None,
                   help="sampler steps (default: the model family's, 4 for toy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--bootstrap", type=nonneg_int, default=1000, help="bootstrap resamples for the 95%% CI (0 = none)")
    p.add_argument("--diversity-encoder", default=None, metavar="NAME",
                   help="image encoder for the Vendi score (clip, toy_clip, ...; default: the model family's, "
                        "toy_clip for the toy model, none otherwise)")
    p.add_argument("--layout", default=None, choices=[x for x in LAYOUTS if x != "plain"],
                   help="also write the samples in this external-evaluator layout under OUT/LAYOUT/ (vbench: video "
                        "models)")
    p.add_argument("--out", required=True, metavar="DIR")
    add_quiet_flag(p)
    add_generator_options(p)
    p.set_defaults(fn=run)


def resolve_prompts(spec: str, per_category: int, seed: int = 0):
    """The evaluation prompts of ``spec`` (a prompt file or a registered source) and the source itself (its
    ``eval_hooks`` apply to the samples)."""
    from rewardflow.io.prompts import load_prompt_source

    source = load_prompt_source(spec)
    return source.eval_list(per_category, seed=seed), source


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
    from rewardflow.eval.benchmarks import decode_media
    from rewardflow.eval.hooks import run_eval_hooks
    from rewardflow.eval.sampling import sample_to_files
    from rewardflow.io.images import pil_to_tensor
    from rewardflow.io.progress import progress

    prompts, source = resolve_prompts(args.prompts, args.per_category)
    specs = split_reward_specs(args.reward)
    check_weights_names(args.weights, specs)
    # the rewards first (on the CPU): a missing weight file fails before the generator loads and samples
    rewards = {spec: build_reward_from_args(spec, args.weights, strict=False) for spec in specs}
    gen, _ = load_generator_from_args(args)
    device = gen.device
    out = Path(args.out)
    man = sample_to_files(gen, prompts, out / "images", steps=args.steps or gen.run_defaults["steps"],
                          seed=args.seed, n_per_prompt=args.n_per_prompt, batch_size=args.batch_size,
                          info={"model": args.model, "lora": args.lora,
                                                     "cpu": runtime.current()})
    rows = man["images"]
    video = man.get("media") == "video"
    # score what external evaluators will read: the files as decoded (PIL images / uint8 MP4 frames), each reward
    # with its official file preprocessing (Reward.score_files); the float tensors serve diversity, oracle, layouts
    decoded = [decode_media(str(out / "images" / r["file"]), "video" if video else "image") for r in rows]
    images = torch.stack([d.float() / 255 if video else pil_to_tensor(d) for d in decoded])
    all_prompts = [r["prompt"] for r in rows]

    result: dict = {"model": args.model, "lora": args.lora, "prompts": args.prompts, "n_images": len(rows),
                    "n_per_prompt": args.n_per_prompt, "seed": args.seed, "rewards": {}}
    for spec in specs:
        reward = rewards[spec].to(device).eval()
        s = torch.cat([reward.score_files(decoded[i:i + args.batch_size], all_prompts[i:i + args.batch_size])
                       [reward.primary_head] for i in progress(range(0, len(rows), args.batch_size),
                                                               desc=f"scoring {spec}", unit="batch")])
        result["rewards"][spec] = mean_ci(s.tolist(), args.bootstrap, args.seed)
    enc_name = args.diversity_encoder or gen.run_defaults.get("diversity_encoder")
    if enc_name and video:
        print("[rewardflow] eval: diversity (Vendi) is computed on images only; skipped for video samples")
        enc_name = None
    if enc_name:
        from rewardflow.rewards.distributional import load_encoder

        result["diversity"] = {"encoder": enc_name, **diversity(images, all_prompts, load_encoder(enc_name))}
    if source.eval_hooks and not video:
        result["hooks"] = run_eval_hooks(source.eval_hooks, images, all_prompts)
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
    if result.get("hooks"):
        print(", ".join(f"{k}={v:.3f}" for k, v in result["hooks"].items()))
    (out / "eval.json").write_text(json.dumps(_json_safe(result), indent=1, allow_nan=False) + "\n")
    print(f"wrote {out / 'eval.json'}")
    return 0
