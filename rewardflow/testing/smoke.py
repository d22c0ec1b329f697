"""``rewardflow train RECIPE --smoke``: a recipe run on the CPU in seconds, before anyone spends GPU hours on it.

The recipe is read and validated as the real run would read it; then

* the model is swapped for a tiny random model of the same family (the builders of :mod:`rewardflow.testing`:
  SD / SD-Turbo, SDXL, SD3, FLUX.1 [dev] / [schnell], Wan 2.1, CogVideoX, LTX-Video), saved with
  ``save_pretrained`` and loaded through the real loading code;
* each reward is swapped for a random-weight instance of the same reward class, written in the official file
  layout (:mod:`rewardflow.testing.tiny_rewards`); its other options (``logit_scale``, ...) are kept;
* the sizes are capped so two optimizer steps run on the CPU (batch, group size, sampler steps, resolution,
  frames, text length, evaluation prompts); a prompt file or an offline pair dataset that is not on this machine
  is replaced by a stand-in (the summary says which files the real run needs);
* after training, the saved weights (``final/``) are loaded into a plain diffusers pipeline
  (``load_lora_weights``, or the fine-tuned denoiser through ``from_pretrained``) whose output must change.

:func:`describe_real_run` prints what the real run would load: model id, adapter, dtype, resolution, per-process
batch, steps, the reward files it expects, the prompt files and dataset.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from rewardflow.align.trainer import Trainer, load_train_config
from rewardflow.io.prompts import read_prompt_file
from rewardflow.pipelines.registry import resolve_adapter
from rewardflow.rewards.combine import parse_reward_spec
from rewardflow.testing import tiny_flow, tiny_rewards, tiny_sd, tiny_video

# adapter -> (builder of the tiny pipeline, generator options of the tiny model)
TINY_MODELS = {
    "sd": (lambda d: tiny_sd.build_tiny_sd(d), {}),
    "sd-turbo": (lambda d: tiny_sd.build_tiny_sd(d, turbo=True), {}),
    "sdxl": (lambda d: tiny_sd.build_tiny_sdxl(d), {}),
    "sdxl-turbo": (lambda d: tiny_sd.build_tiny_sdxl(d, turbo=True), {}),
    "sd3": (lambda d: tiny_flow.build_tiny_sd3(d), {"max_sequence_length": 16}),
    "sd3-turbo": (lambda d: tiny_flow.build_tiny_sd3(d), {"max_sequence_length": 16}),
    # FluxPipeline's default size is 128 latent pixels whatever the transformer: the tiny model's 32 px are set
    "flux": (lambda d: tiny_flow.build_tiny_flux(d, guidance_embeds=True),
             {"height": 32, "width": 32, "max_sequence_length": 16}),
    "flux-schnell": (lambda d: tiny_flow.build_tiny_flux(d, guidance_embeds=False),
                     {"height": 32, "width": 32, "max_sequence_length": 16}),
    "wan": (lambda d: tiny_video.build_tiny_wan(d), {"height": 64, "width": 64, "num_frames": 9,
                                                      "max_sequence_length": 16}),
    "cogvideox": (lambda d: tiny_video.build_tiny_cogvideox(d), {"height": 32, "width": 32, "num_frames": 9,
                                                                  "max_sequence_length": 16}),
    "ltx": (lambda d: tiny_video.build_tiny_ltx(d), {"height": 32, "width": 32, "num_frames": 9,
                                                      "max_sequence_length": 16}),
}
# the model family of a hub id that is not on this machine (its model_index.json cannot be read offline)
HUB_FAMILIES = ((r"sdxl-turbo", "sdxl-turbo"), (r"sd-turbo", "sd-turbo"), (r"sdxl|stable-diffusion-xl", "sdxl"),
                (r"stable-diffusion-3.*turbo", "sd3-turbo"), (r"stable-diffusion-3", "sd3"),
                (r"flux.*schnell", "flux-schnell"), (r"flux", "flux"), (r"wan", "wan"), (r"cogvideox", "cogvideox"),
                (r"ltx", "ltx"), (r"stable-diffusion|sd-?1|sd-?2", "sd"))
# sizes capped for the dry run (only the keys a config has): key -> the dry run's value
SIZE_CAPS = {"batch_size": 2, "grad_accum": 1, "sample_steps": 2, "group_size": 2, "num_samples_per_prompt": 2,
             "samples_per_prompt": 2, "rollout_steps": 2, "timesteps_per_pair": 1, "lv_samples": 2,
             "updates_per_rollout": 1}
SIZE_ZERO = ("global_batch_size", "micro_batch_size")
REWARD_FILE_OPTIONS = ("path", "model", "pretrained", "backend", "processor", "clip_path", "med_config", "tokenizer",
                       "base_model", "dtype", "device", "step", "mode")
SMOKE_PROMPTS = ["a red circle on grass", "two blue dogs in the snow"]
# what each reward loads when its options name no file (the factories' defaults)
DEFAULT_WEIGHTS = {"clip": "open_clip ViT-B-32 'openai' weights",
                   "clipscore": "open_clip ViT-B-32 'openai' weights",
                   "hpsv2": "HPS_v2_compressed.pt of hub repo xswu/HPSv2",
                   "hpsv2.1": "HPS_v2.1_compressed.pt of hub repo xswu/HPSv2",
                   "pickscore": "hub repo yuvalkirstain/PickScore_v1 + laion/CLIP-ViT-H-14-laion2B-s32B-b79K processor",
                   "imagereward": "ImageReward.pt + med_config.json of hub repo THUDM/ImageReward, bert-base-uncased",
                   "aesthetic": "path= required: sac+logos+ava1-l14-linearMSE.pth; CLIP ViT-L-14 'openai' weights",
                   "videoreward": "hub repo KwaiVGI/VideoReward + its base model Qwen/Qwen2-VL-2B-Instruct"}


class SmokeError(RuntimeError):
    """The dry run found a problem (e.g. the saved weights do not change the pipeline's output)."""


def family_adapter(model: str, adapter: str | None) -> str:
    """The adapter of the recipe's model: ``adapter`` if set, the one of a local pipeline directory, or the family
    read off a hub id's name (offline, the hub cannot be asked)."""
    if adapter:
        return resolve_adapter(model, adapter)["name"]
    if os.path.exists(str(model)) or not re.fullmatch(r"[\w.-]+/[\w.-]+", str(model)):
        return resolve_adapter(model)["name"]
    name = str(model).lower()
    for pattern, fam in HUB_FAMILIES:
        if re.search(pattern, name):
            return fam
    raise ValueError(f"--smoke cannot tell the model family of {model!r}: set `adapter:` in the recipe "
                     f"(one of {', '.join(sorted(TINY_MODELS))})")


# ------------------------------------------------------------------------------------------------------ rewards
def _reward_names(tcfg) -> list[str]:
    specs = ([tcfg.reward] if tcfg.reward else []) + list(tcfg.heldout_rewards)
    return list(dict.fromkeys(n for s in specs for n, _ in parse_reward_spec(s)))


def tiny_reward_kwargs(names: list[str], reward_kwargs: dict, root: Path) -> dict[str, dict]:
    """Random-weight files of the same reward classes for ``names``, written under ``root``; the options of
    ``reward_kwargs`` that are not about files (``logit_scale``, ``fps``, ...) are kept."""
    out: dict[str, dict] = {}
    clip_name = None

    def open_clip_name() -> str:
        nonlocal clip_name
        clip_name = clip_name or tiny_rewards.register_tiny_open_clip(root / "open_clip_config", "rf-smoke-clip-64",
                                                                      image_size=64, patch_size=16)
        return clip_name

    for n in names:
        keep = {k: v for k, v in (reward_kwargs.get(n) or {}).items() if k not in REWARD_FILE_OPTIONS}
        d = root / n
        if n in ("clip", "clipscore", "pickscore", "vlm_rm"):
            files = {"path": str(tiny_rewards.write_hf_clip(d, 64, 16))}
        elif n in ("hpsv2", "hpsv2.1"):
            files = {"path": str(tiny_rewards.write_hps_checkpoints(d, open_clip_name())), "model": open_clip_name()}
        elif n == "imagereward":
            files = {"path": str(tiny_rewards.write_imagereward(d))}
        elif n == "aesthetic":
            ckpt = tiny_rewards.write_open_clip_checkpoint(d / "clip.pt", open_clip_name())
            head = tiny_rewards.write_aesthetic_head(d / "sac+logos+ava1-l14-linearMSE.pth", 32)
            files = {"path": str(head), "pretrained": str(ckpt), "model": open_clip_name()}
        elif n == "videoreward":
            files = {"path": str(tiny_rewards.write_videoreward(d))}
        else:  # computed rewards (jpeg_*), embedded ones (toy_*): the same reward as the real run
            files = {k: v for k, v in (reward_kwargs.get(n) or {}).items() if k in REWARD_FILE_OPTIONS}
        out[n] = {**keep, **files}
    return out


# ------------------------------------------------------------------------------------------------------ summary
def _file_note(path: str | None) -> str:
    if not path:
        return ""
    return " (found)" if os.path.exists(os.path.expanduser(str(path))) else " (not on this machine: supply it)"


def _prompt_note(spec: str | None) -> str:
    if not spec:
        return "none"
    if os.path.isfile(spec):
        return f"{spec} ({len(read_prompt_file(spec))} prompts)"
    if ":" in spec and os.path.sep not in spec:
        return f"{spec} (registered source)"
    return f"{spec} (not on this machine: supply it)"


def describe_real_run(tcfg, mcfg, adapter: str) -> str:
    """What the real run loads and does, in a few lines."""
    size = "x".join(str(v) for v in (tcfg.height, tcfg.width) if v) or "the pipeline's default size"
    frames = f", {tcfg.num_frames} frames" if tcfg.num_frames else ""
    train = f"LoRA r={tcfg.lora_rank} alpha={tcfg.lora_alpha or tcfg.lora_rank}" if tcfg.lora_rank else \
        "full fine-tuning"
    if tcfg.global_batch_size:
        batch = (f"global_batch_size {tcfg.global_batch_size} prompts per optimizer step = per-process batch "
                 f"{tcfg.global_batch_size} / (GPUs x grad_accum {tcfg.grad_accum})")
    else:
        batch = f"per-process batch {tcfg.batch_size} prompts x grad_accum {tcfg.grad_accum} x GPUs per optimizer step"
    per = [f"{k} {getattr(mcfg, k)}" for k in ("group_size", "num_samples_per_prompt", "samples_per_prompt")
           if hasattr(mcfg, k)]
    lines = [f"the real run: method {tcfg.method}, model {tcfg.model} (adapter {adapter}), dtype {tcfg.dtype or 'fp32'}"
             f" (mixed precision {tcfg.mixed_precision}), {size}{frames}, {train}",
             f"  {tcfg.max_steps} optimizer steps, {batch}" + (f", {', '.join(per)}" if per else "")
             + f", sampler steps {tcfg.sample_steps}, guidance {tcfg.guidance_scale}"]
    lines.append(f"  prompts: {_prompt_note(tcfg.prompts)}; eval_prompts: {_prompt_note(tcfg.eval_prompts)}")
    if getattr(mcfg, "pairs", None) == "offline":
        lines.append(f"  preference pairs: {mcfg.dataset}{_file_note(mcfg.dataset)}")
    return "\n".join("[smoke] " + ln for ln in lines) + "\n" + describe_rewards(_reward_names(tcfg), tcfg.reward_kwargs)


# ------------------------------------------------------------------------------------------------------ stand-ins
def _prompt_file(spec: str | None, path: Path, n: int) -> str | None:
    """The first ``n`` prompts of ``spec`` (a stand-in list when the file is not on this machine) as a file."""
    if spec is None or spec == "":
        return spec
    if ":" in spec and not os.path.isfile(spec) and os.path.sep not in spec:
        return spec  # a registered source (toy:train)
    prompts = read_prompt_file(spec)[:n] if os.path.isfile(spec) else SMOKE_PROMPTS[:n]
    path.write_text("\n".join(prompts) + "\n")
    return str(path)


def _pairs_file(root: Path, gen_size: tuple[int, int]) -> str:
    """Four random preference pairs (PNG files + a .jsonl with the Pick-a-Pic columns) at the tiny model's size."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(4):
        for j in (0, 1):
            px = (torch.rand(gen_size[0], gen_size[1], 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(px).save(root / f"{i}_{j}.png")
        rows.append({"caption": SMOKE_PROMPTS[i % 2], "image_0": f"{i}_0.png", "image_1": f"{i}_1.png",
                     "label_0": float(i % 2)})
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(root / "pairs.jsonl")


def smoke_configs(tcfg, mcfg, adapter: str, root: Path):
    """The dry run's (TrainConfig, method config): tiny model and rewards, capped sizes, stand-in files."""
    root.mkdir(parents=True, exist_ok=True)
    if adapter in TINY_MODELS:
        builder, opts = TINY_MODELS[adapter]
        model_dir = root / "tiny_model"
        if not (model_dir / "model_index.json").is_file():
            builder(model_dir)
        model = str(model_dir)
    else:  # an embedded model (the toy) is already small
        model, opts = tcfg.model, {}
    t = {"model": model, "adapter": adapter, "max_steps": 2, "device": "cpu", "mixed_precision": "no",
         "dtype": None, "attention": None, "report_to": "none", "resume": "never", "save_every": 1,
         "keep_checkpoints": 2, "eval_every": 0, "vae_slicing": False, "vae_tiling": False,
         "height": opts.get("height"), "width": opts.get("width"), "num_frames": opts.get("num_frames"),
         "max_sequence_length": opts.get("max_sequence_length"), "early_stop_patience": 0, "best_metric": "",
         "prompts": _prompt_file(tcfg.prompts, root / "prompts.txt", 8),
         "eval_prompts": _prompt_file(tcfg.eval_prompts, root / "eval_prompts.txt", 2),
         "reward_kwargs": tiny_reward_kwargs(_reward_names(tcfg), tcfg.reward_kwargs, root / "rewards")}
    for k, cap in SIZE_CAPS.items():
        if hasattr(tcfg, k) and getattr(tcfg, k) > cap:
            t[k] = cap
    for k in SIZE_ZERO:
        if hasattr(tcfg, k):
            t[k] = 0
    m = {k: min(getattr(mcfg, k), cap) for k, cap in SIZE_CAPS.items() if hasattr(mcfg, k)
         and isinstance(getattr(mcfg, k), int) and getattr(mcfg, k) > 0}
    m.update({k: 0 for k in SIZE_ZERO if hasattr(mcfg, k)})
    if hasattr(mcfg, "k") and getattr(mcfg, "k") > SIZE_CAPS["sample_steps"]:
        m["k"] = SIZE_CAPS["sample_steps"]
    if getattr(mcfg, "pairs", None) == "offline":
        from rewardflow.pipelines.registry import load_generator

        gen = load_generator(model, adapter=adapter, **{k: v for k, v in opts.items() if k in ("height", "width")})
        m.update(dataset=_pairs_file(root / "pairs", (gen.height, gen.width)), resolution=0)
    return dataclasses.replace(tcfg, **t), dataclasses.replace(mcfg, **m)


# ------------------------------------------------------------------------------------------------------ checks
def pipeline_output_change(model_dir: str, final_dir: Path, gen) -> float:
    """Load the run's saved weights into a plain diffusers pipeline; the largest change of its output latents
    (a fixed seed, 2 steps, before vs after)."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(model_dir)
    kw: dict[str, Any] = {"prompt": SMOKE_PROMPTS[0], "num_inference_steps": 2, "output_type": "latent",
                          "height": gen.height, "width": gen.width}
    if gen.modality == "video":
        kw["num_frames"] = gen.num_frames
    if getattr(gen, "max_sequence_length", None) and "max_sequence_length" in _call_params(pipe):
        kw["max_sequence_length"] = gen.max_sequence_length

    def run() -> torch.Tensor:
        return pipe(**kw, generator=torch.Generator().manual_seed(0))[0].float()

    before = run()
    component = gen.lora_component
    if (final_dir / "pytorch_lora_weights.safetensors").is_file():
        pipe.load_lora_weights(str(final_dir))
    else:
        sub = final_dir / component
        if not (sub / "config.json").is_file():
            raise SmokeError(f"{final_dir} holds neither pytorch_lora_weights.safetensors nor {component}/")
        setattr(pipe, component, type(getattr(pipe, component)).from_pretrained(str(sub)))
    return float((run() - before).abs().max())


def _call_params(pipe) -> set[str]:
    import inspect

    return set(inspect.signature(type(pipe).__call__).parameters)


def run_train_smoke(config: str, overrides: list[str], root: str | os.PathLike | None = None) -> dict:
    """The dry run of a training recipe (see the module docstring); returns the trainer's summary with
    ``output_change`` (the largest change of the plain pipeline's output) added."""
    tcfg, mcfg = load_train_config(config, overrides)
    adapter = family_adapter(tcfg.model, tcfg.adapter)
    print(describe_real_run(tcfg, mcfg, adapter))
    root = Path(root) if root is not None else Path(tcfg.output_dir) / "smoke_assets"
    s_tcfg, s_mcfg = smoke_configs(tcfg, mcfg, adapter, root)
    sized = (*SIZE_CAPS, *SIZE_ZERO, "k", "height", "width", "num_frames", "max_sequence_length")
    changed = {k: (getattr(old, k), getattr(new, k)) for old, new in ((tcfg, s_tcfg), (mcfg, s_mcfg))
               for k in sized if hasattr(old, k) and getattr(old, k) != getattr(new, k)}
    print(f"[smoke] this dry run: a tiny random {adapter} model ({s_tcfg.model}) and random-weight rewards, 2 steps "
          "on the CPU" + (", sizes " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
                          if changed else ""))
    trainer = Trainer(s_tcfg, s_mcfg)
    summary = trainer.train()
    final = Path(s_tcfg.output_dir) / "final"
    files = sorted(p.name for p in final.glob("*.safetensors"))
    if not files:
        raise SmokeError(f"the run wrote no weights into {final}")
    if trainer.trains_generator and adapter in TINY_MODELS:
        change = pipeline_output_change(s_tcfg.model, final, trainer.gen)
        if not change > 0:
            raise SmokeError(f"the weights saved in {final} do not change the output of a plain diffusers pipeline")
        summary["output_change"] = change
        print(f"[smoke] OK: {', '.join(files)} in {final}; loaded into a plain diffusers pipeline, its output "
              f"changes by up to {change:.3g}")
    else:
        print(f"[smoke] OK: {', '.join(files)} in {final}")
    return summary


# ------------------------------------------------------------------------------------------------------ noise-opt
def smoke_noise_opt(args, root: str | os.PathLike | None = None) -> Path:
    """``rewardflow noise-opt ... --smoke``: print what the real run would load, then make ``args`` the dry run
    (a tiny random model of the family, 2 iterations on 2 prompts on the CPU, the model's own size and dtype).
    The rewards are swapped by the caller with :func:`tiny_reward_kwargs` once the spec is known. Returns the
    folder for the stand-in files."""
    adapter = family_adapter(args.model, args.adapter)
    size = "x".join(str(v) for v in (args.height, args.width) if v) or "the pipeline's default size"
    print(f"[smoke] the real run: {args.method} on model {args.model} (adapter {adapter}), dtype "
          f"{args.dtype or 'fp32'}, {size}, {args.iterations} iterations at lr {args.lr} ({args.optimizer}), "
          f"sampler steps {args.steps or 'the family default'}\n[smoke]   prompts: "
          f"{_prompt_note(args.prompts) if args.prompts else repr(args.prompt)}")
    root = Path(root) if root is not None else Path(args.out) / "smoke_assets"
    root.mkdir(parents=True, exist_ok=True)
    if adapter in TINY_MODELS:
        builder, opts = TINY_MODELS[adapter]
        if not (root / "tiny_model" / "model_index.json").is_file():
            builder(root / "tiny_model")
        args.model, args.adapter = str(root / "tiny_model"), adapter
        for k in ("height", "width", "num_frames", "max_sequence_length"):
            setattr(args, k, opts.get(k))
    args.dtype, args.attention, args.offload, args.device = None, None, False, "cpu"
    args.iterations = min(args.iterations, 2)
    args.n = min(args.n, 2)
    if args.prompts:
        args.prompts = _prompt_file(args.prompts, root / "prompts.txt", 2)
    print(f"[smoke] this dry run: a tiny random {adapter} model and random-weight rewards, {args.iterations} "
          "iterations on the CPU")
    return root


def describe_rewards(names: list[str], reward_kwargs: dict) -> str:
    lines = []
    for n in names:
        kw = reward_kwargs.get(n) or {}
        files = ", ".join(f"{k}={v}{_file_note(v) if k in ('path', 'pretrained', 'clip_path') else ''}"
                          for k, v in kw.items() if k in REWARD_FILE_OPTIONS)
        default = DEFAULT_WEIGHTS.get(n, "no weight files" if n.startswith(("jpeg", "toy")) else "its defaults")
        lines.append(f"[smoke]   reward {n}: {files or default}")
    return "\n".join(lines)
