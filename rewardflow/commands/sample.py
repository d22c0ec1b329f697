"""``rewardflow sample``: generate images from prompts with any adapter (optionally with a LoRA) into PNG files
and a JSON manifest, through :func:`rewardflow.eval.sampling.sample_to_files` (the code path evaluation uses)."""

from __future__ import annotations

from rewardflow import runtime
from rewardflow.commands._args import positive_int
from rewardflow.commands._options import add_generator_options, load_generator_from_args
from rewardflow.io.progress import add_quiet_flag


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sample", help="generate images from prompts (PNGs + manifest.json)",
        description="Generate images, e.g. `rewardflow sample --model stabilityai/sd-turbo --prompt 'a cat' --out "
                    "samples/` (Turbo models: one step, no guidance by default). --model toy uses the shipped toy "
                    "model.")
    p.add_argument("--model", required=True, metavar="DIR|ID",
                   help="diffusers pipeline directory, hub id, or an embedded model (toy, toy_video)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt", metavar="TEXT", help="one prompt")
    g.add_argument("--prompts", metavar="FILE", help="one prompt per line, a .jsonl with a 'prompt' field, or a "
                                                   "manifest.json (its prompts)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="sampler steps (default: the model family's, e.g. 4 for toy, 1 for Turbo)")
    p.add_argument("--seed", type=int, default=0, help="image j uses noise seed SEED + j")
    p.add_argument("--n-per-prompt", type=positive_int, default=1)
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--out", required=True, metavar="DIR")
    add_quiet_flag(p)
    add_generator_options(p)
    p.set_defaults(fn=run_sample)


def run_sample(args) -> int:
    from rewardflow.eval.sampling import sample_to_files
    from rewardflow.io.prompts import read_prompt_file

    prompts = [args.prompt] if args.prompt is not None else read_prompt_file(args.prompts)
    gen, entry = load_generator_from_args(args)
    steps = args.steps or gen.run_defaults["steps"]
    info = {"model": args.model, "adapter": entry["name"], "lora": args.lora, "cpu": runtime.current()}
    man = sample_to_files(gen, prompts, args.out, steps=steps, seed=args.seed, n_per_prompt=args.n_per_prompt,
                          batch_size=args.batch_size, info=info)
    kind = "videos (mp4)" if man.get("media") == "video" else "images"
    print(f"wrote {len(man['images'])} {kind} and manifest.json to {args.out}")
    return 0
