"""``rewardflow sample``: generate images from prompts with any adapter (optionally with a LoRA) into PNG files
and a JSON manifest, through :func:`rewardflow.eval.sampling.sample_to_files` (the code path evaluation uses)."""

from __future__ import annotations

from rewardflow import runtime


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sample", help="generate images from prompts (PNGs + manifest.json)",
        description="Generate images, e.g. `rewardflow sample --model stabilityai/sd-turbo --steps 1 --guidance 1 "
                    "--prompt 'a cat' --out samples/`. --model toy uses the shipped toy model.")
    p.add_argument("--model", required=True, metavar="DIR|ID",
                   help="diffusers pipeline directory, hub id, or an embedded model (toy, toy_video)")
    p.add_argument("--adapter", default=None, help="adapter name (default: from model_index.json; see "
                                                   "`rewardflow models`)")
    p.add_argument("--lora", default=None, metavar="DIR", help="LoRA directory (pytorch_lora_weights.safetensors) "
                                                                "saved by training or by diffusers")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt", metavar="TEXT", help="one prompt")
    g.add_argument("--prompts", metavar="FILE", help="one prompt per line, or a .jsonl with a 'prompt' field")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model family's, e.g. 4 for toy)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale (default: the adapter's; 1 = off, use 1 for Turbo models)")
    p.add_argument("--seed", type=int, default=0, help="image j uses noise seed SEED + j")
    p.add_argument("--n-per-prompt", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--height", type=int, default=None, help="image height (real models; default: the model's)")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--device", default=None, help="torch device (default: cuda if available else cpu)")
    p.add_argument("--offload", action="store_true", help="model CPU offload (real diffusers models)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(fn=run_sample)


def run_sample(args) -> int:
    import torch

    from rewardflow.eval.sampling import sample_to_files
    from rewardflow.io.prompts import read_prompt_file
    from rewardflow.pipelines.registry import load_generator, resolve_adapter

    prompts = [args.prompt] if args.prompt is not None else read_prompt_file(args.prompts)
    entry = resolve_adapter(args.model, args.adapter)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    kw: dict = {"device": device}
    if not entry["embedded"]:  # embedded models (the toy) ship one size and dtype
        kw.update(dtype=args.dtype, offload=args.offload)
        if args.height is not None:
            kw["height"] = args.height
        if args.width is not None:
            kw["width"] = args.width
    gen = load_generator(args.model, adapter=args.adapter, **kw)
    if args.lora:
        gen.load_lora(args.lora, trainable=False)
    steps = args.steps or gen.run_defaults["steps"]
    info = {"model": args.model, "adapter": entry["name"], "lora": args.lora, "cpu": runtime.current()}
    man = sample_to_files(gen, prompts, args.out, steps=steps, guidance_scale=args.guidance, seed=args.seed,
                          n_per_prompt=args.n_per_prompt, batch_size=args.batch_size, info=info)
    kind = "videos (mp4)" if man.get("media") == "video" else "images"
    print(f"wrote {len(man['images'])} {kind} and manifest.json to {args.out}")
    return 0
