"""Reproduce the shipped toy weights: ``rewardflow toy train-generator`` and ``rewardflow toy train-reward``.

Both budget by optimizer steps (not minutes), use fixed seeds and fresh renders every step, and save in the
official formats (a diffusers pipeline directory; a ``ModelMixin`` directory + tokenizer).

Generator (docs/toy-world.md#generator): rectified flow, logit-normal t, AdamW lr 2e-3 (0.9, 0.99), 100 warm-up steps, grad
clip 1, EMA 0.995, 10% caption dropout for classifier-free guidance. The base model is made *misaligned by its
data*, as real models are: a fraction ``caption_noise`` of training captions is corrupted with a minimal false edit
(wrong colour / shape / position / count, swapped attributes), so training longer does not fix it.

Reward (docs/toy-world.md#toy-clip): symmetric InfoNCE over true captions plus minimal-edit hard negatives (swap negatives
up-weighted so the reward sees attribute binding), false negatives masked with the semantic ground truth,
blur / noise augmentation, and optionally FGSM adversarial training with a random start (``adv_eps``), which makes
gradient ascent on the reward change semantics instead of adding speckle.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rewardflow.io.paths import respect_umask
from rewardflow.toy import world
from rewardflow.toy.models import ToyCLIPModel
from rewardflow.toy.pipeline import MAX_TOKENS, ToyFlowPipeline, build_scheduler, build_tokenizer


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def caption_true(layout, scene) -> bool:
    """Semantic ground truth: is ``scene`` (a caption) true of the rendered ``layout`` (objects with positions)?"""
    objs = list(layout)
    if len(objs) != len(scene.objects):
        return False

    def ok(a, b):
        return a.color == b.color and a.shape == b.shape and (b.position is None or a.position == b.position)

    def match(req, avail):
        if not req:
            return True
        return any(ok(avail[i], req[0]) and match(req[1:], avail[:i] + avail[i + 1:]) for i in range(len(avail)))

    return match(list(scene.objects), objs)


def _ema_update(ema: dict, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                ema[k].mul_(decay).add_(v, alpha=1 - decay)
            else:
                ema[k].copy_(v)


def _lr(step: int, base: float, warmup: int, total: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))) * 0.9 + base * 0.1


def _optim_step(opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float) -> bool:
    """Set the lr, backprop, clip the gradient norm to 1 and step; a non-finite loss or gradient skips the step
    (weights are never touched by a NaN) and returns False."""
    params = [p for g in opt.param_groups for p in g["params"]]
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        print(f"skipping a step: non-finite loss {loss.item()}", flush=True)
        return False
    loss.backward()
    if not torch.isfinite(torch.nn.utils.clip_grad_norm_(params, 1.0)):
        print("skipping a step: non-finite gradient norm", flush=True)
        opt.zero_grad(set_to_none=True)
        return False
    opt.step()
    return True


def _log(log: list, step: int, steps: int, every: int, loss: torch.Tensor, t_start: float) -> None:
    if step % every == 0 or step == steps - 1:
        rec = {"step": step, "loss": loss.item(), "seconds": round(time.time() - t_start, 1)}
        log.append(rec)
        print(json.dumps(rec), flush=True)


def train_generator(out: str | Path, steps: int = 700, batch: int = 128, lr: float = 2e-3, seed: int = 0,
                    caption_noise: float = 0.2, cfg_dropout: float = 0.1, ema_decay: float = 0.995,
                    log_every: int = 50, threads: int | None = None, init_from: str | Path | None = None,
                    warmup: int = 100, parametrization: str = "flow", save_every: int = 0) -> dict:
    """Train the toy text-to-image model and save the EMA weights (fp16) as a pipeline.

    ``parametrization``: ``flow`` (rectified flow, the shipped ``generator``) or ``epsilon`` (DDPM noise
    prediction with a DDIM sampler, ``generator_eps``; uniform integer t, target eps, DDPM eq. 14).
    ``init_from``: continue from a saved pipeline (a second stage with a lower lr) instead of from scratch; with a
    parametrization (or noise schedule) different from the saved one, its weights are the initialisation and its
    scheduler is replaced by the current ``build_scheduler(parametrization)``.
    ``save_every``: also save the current EMA weights every N steps (a usable model if the run is cut short)."""
    if threads:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    if init_from is not None:
        torch.manual_seed(seed)
        pipe = ToyFlowPipeline.from_pretrained(str(init_from), dtype=torch.float32)
        pipe.scheduler = build_scheduler(parametrization)  # the schedule trained is always the current one
        pipe.register_to_config(eps_skip=parametrization == "epsilon")
    else:
        pipe = ToyFlowPipeline.from_config_dict(seed=seed, parametrization=parametrization)
    ab = None if parametrization == "flow" else pipe.scheduler.alphas_cumprod.float()
    modules = torch.nn.ModuleDict({"unet": pipe.unet, "text_encoder": pipe.text_encoder}).train()
    opt = torch.optim.AdamW(modules.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    ema = {k: v.detach().clone() for k, v in modules.state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    t_start, log = time.time(), []

    def _meta(done: int, log: list) -> dict:
        return {"steps": done, "batch": batch, "lr": lr, "seed": seed, "caption_noise": caption_noise,
                "init_from": None if init_from is None else str(init_from), "warmup": warmup,
                "cfg_dropout": cfg_dropout, "ema_decay": ema_decay, "seconds": round(time.time() - t_start, 1),
                **({} if parametrization == "flow" else {"parametrization": parametrization,
                                                         "planned_steps": steps}),
                "log": log}

    for step in range(steps):
        scenes = world.sample_scenes(rng, batch, split="train")
        images = _to_tensor(world.render_batch(scenes, rng=rng))
        caps = []
        for s in scenes:
            u = rng.random()
            caps.append("" if u < cfg_dropout else
                        world.corrupt_caption(s, rng, split="train").caption if u < cfg_dropout + caption_noise else s.caption)
        x0 = pipe.encode_images(images)
        noise = torch.randn(x0.shape, generator=g)
        emb = pipe.encode_prompt(caps, "cpu")
        if ab is None:
            t = torch.sigmoid(torch.randn(batch, generator=g))
            s_ = t.view(-1, 1, 1, 1)
            x_t = (1 - s_) * x0 + s_ * noise
            loss = F.mse_loss(pipe.denoise(x_t, t * 1000, emb), noise - x0)
        else:  # DDPM (Ho et al. 2020, Algorithm 1): x_t = sqrt(ab) x0 + sqrt(1 - ab) eps, predict eps
            t = torch.randint(0, len(ab), (batch,), generator=g)
            a = ab[t].view(-1, 1, 1, 1)
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
            loss = F.mse_loss(pipe.denoise(x_t, t, emb), noise)
        if _optim_step(opt, loss, _lr(step, lr, warmup, steps)):
            # EMA with warm-up: decay min(ema_decay, (1+n)/(10+n))
            _ema_update(ema, modules, min(ema_decay, (1 + step) / (10 + step)))
        _log(log, step, steps, log_every, loss, t_start)
        if save_every and (step + 1) % save_every == 0 and step + 1 < steps:
            _save_generator(pipe, modules, ema, out, _meta(step + 1, log))
    meta = _meta(steps, log)
    _save_generator(pipe, modules, ema, out, meta)
    return meta


def _save_generator(pipe, modules: torch.nn.Module, ema: dict, out: str | Path, meta: dict) -> None:
    """Save the EMA weights in fp16 (the live training weights are left untouched) and ``training.json``."""
    live = copy.deepcopy(modules.state_dict())
    modules.load_state_dict(ema)
    out = Path(out)
    pipe.to(torch.float16).save_pretrained(str(out))
    pipe.to(torch.float32)
    modules.load_state_dict(live)
    (out / "training.json").write_text(json.dumps(meta, indent=1))
    respect_umask(out)  # safetensors writes 0600 whatever the umask


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """50%: Gaussian blur sigma in [0.3, 1.0] px; then additive noise sigma in [0, 0.075] (in [0, 1] units)."""
    b = x.shape[0]
    blur = torch.rand(b, generator=gen) < 0.5
    if blur.any():
        sig = 0.3 + 0.7 * torch.rand(int(blur.sum()), generator=gen)
        r = torch.arange(-2, 3, dtype=torch.float32)
        k = torch.exp(-(r[None] ** 2) / (2 * sig[:, None] ** 2))
        k = k / k.sum(1, keepdim=True)  # [n, 5]
        xb = x[blur]
        n = xb.shape[0]
        kh = k.view(n, 1, 1, 5).repeat_interleave(3, 0)
        kv = k.view(n, 1, 5, 1).repeat_interleave(3, 0)
        y = F.conv2d(F.pad(xb.reshape(1, n * 3, *xb.shape[-2:]), (2, 2, 0, 0), mode="replicate"), kh, groups=n * 3)
        y = F.conv2d(F.pad(y, (0, 0, 2, 2), mode="replicate"), kv, groups=n * 3)
        x = x.clone()
        x[blur] = y.view_as(xb)
    sd = 0.075 * torch.rand(b, 1, 1, 1, generator=gen)
    return (x + sd * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def train_reward(out: str | Path, steps: int = 700, batch: int = 128, lr: float = 2e-3, seed: int = 1,
                 swap_negatives: int = 3, adv_eps: float = 0.0, log_every: int = 50,
                 threads: int | None = None) -> dict:
    """Train the tiny CLIP reward (``adv_eps > 0``: FGSM adversarial training with random start, docs/toy-world.md#toy-clip)."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    tok = build_tokenizer()
    model = ToyCLIPModel(vocab_size=len(tok), max_tokens=MAX_TOKENS).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    ids_cache: dict[str, torch.Tensor] = {}

    def ids(caps):
        for c in caps:
            if c not in ids_cache:
                ids_cache[c] = tok(c, padding="max_length", max_length=MAX_TOKENS, return_tensors="pt")["input_ids"][0]
        return torch.stack([ids_cache[c] for c in caps])

    t_start, log = time.time(), []
    for step in range(steps):
        scenes = world.sample_scenes(rng, batch, split="train")
        rendered = [world.render(s, rng=rng, return_layout=True) for s in scenes]
        images = _to_tensor(np.stack([r[0] for r in rendered]))
        layouts = [r[1] for r in rendered]
        negs = []
        for s in scenes:
            k = swap_negatives if len(s.objects) == 2 and s.category != "counting" else 1
            negs.append([world.hard_negative(s, rng, split="train") for _ in range(k)])
        captions = [s.caption for s in scenes] + [n.caption for ns in negs for n in ns]
        cap_scenes = list(scenes) + [n for ns in negs for n in ns]
        uniq = list(dict.fromkeys(captions))
        uscene = {c: sc for c, sc in zip(captions, cap_scenes)}
        # positives: which unique captions are true for each image (false-negative masking)
        truth = torch.tensor([[caption_true(lay, uscene[c]) for c in uniq] for lay in layouts])
        own = torch.tensor([uniq.index(s.caption) for s in scenes])
        tids = ids(uniq)
        x = _augment(images, gen)
        if adv_eps > 0:
            x_adv = (x + adv_eps * (2 * torch.rand(x.shape, generator=gen) - 1)).clamp(0, 1).requires_grad_(True)
            with torch.no_grad():
                te = model.encode_text(tids)
            lg = model.logit_scale.exp() * model.encode_image(x_adv) @ te.T
            lg = lg.masked_fill(truth & ~F.one_hot(own, len(uniq)).bool(), -1e4)
            gx, = torch.autograd.grad(F.cross_entropy(lg, own), x_adv)
            x = (x_adv + adv_eps * gx.sign()).clamp(0, 1).detach()
        ie, te = model.encode_image(x), model.encode_text(tids)
        scale = model.logit_scale.clamp(max=math.log(100)).exp()
        logits = scale * ie @ te.T  # [B, U]
        other_true = truth & ~F.one_hot(own, len(uniq)).bool()
        loss_i = F.cross_entropy(logits.masked_fill(other_true, -1e4), own)
        # text -> image over the batch's images, only for each image's own caption; mask images it is also true of
        lt = logits.T[own]  # [B, B]
        same = truth[:, own].T & ~torch.eye(batch, dtype=torch.bool)
        loss_t = F.cross_entropy(lt.masked_fill(same, -1e4), torch.arange(batch))
        loss = 0.5 * (loss_i + loss_t)
        _optim_step(opt, loss, _lr(step, lr, 50, steps))
        _log(log, step, steps, log_every, loss, t_start)
    out = Path(out)
    model.eval().to(torch.float16).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    meta = {"steps": steps, "batch": batch, "lr": lr, "seed": seed, "swap_negatives": swap_negatives,
            "adv_eps": adv_eps, "seconds": round(time.time() - t_start, 1), "log": log}
    (out / "training.json").write_text(json.dumps(meta, indent=1))
    respect_umask(out)
    return meta
