"""Flow-DPO and Diffusion-DPO: one preference loss over the generator's parametrization (docs/algorithms.md#diffusion-dpo, docs/algorithms.md#flow-dpo).

For a pair (winner ``w``, loser ``l``) with ONE shared noise ``eps`` and ONE shared ``t`` (Diffusion-DPO
``train.py``: the first half's timesteps and noise are repeated for the second half):

    x_t^* = gen.noisy(x0^*, eps, t)          e^* = mean_dims || gen.target(x0^*, eps, t) - model(x_t^*, t) ||^2
    inside = -(beta_t / 2) * [ (e_theta^w - e_ref^w) - (e_theta^l - e_ref^l) ]
    L = -mean log sigmoid(inside)

With an epsilon generator ``target = eps`` and this *is* Diffusion-DPO (Wallace et al., arXiv 2311.12908, Sec. 4 eq. 14,
official ``SalesforceAIResearch/DiffusionDPO/train.py``); with a flow generator ``target = eps - x0`` and it is
Flow-DPO (VideoAlign, arXiv 2501.13918; flow_grpo ``scripts/train_sd3_dpo.py``). ``beta_schedule: one_minus_t_sq``
uses ``beta_t = beta (1 - t)^2``, the faithful port of the epsilon-space loss to velocity space (docs/algorithms.md#flow-dpo-beta); the paper
and the public code use a constant beta, the default. Timesteps come from the generator's own training density
(logit-normal sigmas for flow, uniform integers for diffusion).

Pairs: ``pairs: on_policy`` samples ``num_samples_per_prompt`` images per prompt (from the reference, as flow_grpo
does, or from the current policy) and keeps the best and the worst by the reward; ``pairs: offline`` reads a
preference dataset from disk (:class:`PreferencePairs`). ``ref_update_every`` copies the policy into the reference
every N steps (online DPO, flow_grpo ``ref_update_step``).
"""

from __future__ import annotations

import copy
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from rewardflow.align.common.samples import (
    best_worst_pairs,
    draw_noise_and_t,
    per_sample_error,
    sample_and_score,
)
from rewardflow.align.method import Method, register_method
from rewardflow.config import check_numbers, option
from rewardflow.io.images import load_image
from rewardflow.io.preferences import PreferenceDataset, check_preference_columns
from rewardflow.rewards.base import finite_mask

BETA_SCHEDULES = ("constant", "one_minus_t_sq")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class DPOConfig:
    beta: float = option(100.0, "DPO temperature on mean-over-dims errors (100: flow_grpo's SD3.5 Flow-DPO, "
                                "config/dpo.py; the -0.5 * beta convention of Diffusion-DPO)")
    beta_schedule: str = option("constant", "'constant' or 'one_minus_t_sq' (beta (1-t)^2, flow generators only)")
    pairs: str = option("on_policy", "'on_policy' or 'offline'")
    num_samples_per_prompt: int = option(4, "on-policy group size; the pair is its best and worst sample")
    sample_from: str = option("reference", "on-policy samples from the 'reference' or the current 'policy'")
    min_reward_gap: float = option(0.0, "drop on-policy pairs whose reward gap is <= this (ties)")
    timesteps_per_pair: int = option(1, "(noise, t) draws per pair per loss (flow_grpo: 39 over the chain)")
    ref_update_every: int = option(0, "copy policy -> reference every N steps (online DPO); 0 = frozen base")
    dataset: str | None = option(None, "offline pairs: Pick-a-Pic parquet shards (caption, jpg_0, jpg_1, label_0) or a "
                                 "folder of them, .jsonl / .csv (same columns, or prompt, chosen, rejected), or a "
                                 "saved HF dataset", path=True)
    resolution: int = option(0, "resize offline images to this size before encoding (0 = as stored)")
    sft_weight: float = option(0.0, "optional denoising loss on the winners (Diffusion-DPO ``--sft``-style)")

    def __post_init__(self) -> None:
        check_numbers(self, where="dpo: ", non_negative=("min_reward_gap", "resolution", "sft_weight"))
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}")
        if self.pairs not in ("on_policy", "offline"):
            raise ValueError(f"pairs must be on_policy or offline, got {self.pairs!r}")
        if self.sample_from not in ("reference", "policy"):
            raise ValueError(f"sample_from must be reference or policy, got {self.sample_from!r}")
        if self.timesteps_per_pair < 1:
            raise ValueError("timesteps_per_pair must be >= 1")
        if self.pairs == "offline" and not self.dataset:
            raise ValueError("pairs=offline needs dataset=PATH (Pick-a-Pic parquet shards or a folder of them, a "
                             ".jsonl / .csv with caption, jpg_0, jpg_1, label_0 or prompt, chosen, rejected, or a "
                             "saved HF dataset)")
        if self.pairs == "offline" and Path(self.dataset).exists():
            # the columns, from the files' schema, before any model loads (a missing dataset is reported when the
            # run starts, so `--print-config` of a recipe works before its data is downloaded)
            try:
                check_preference_columns(self.dataset)
            except (OSError, ValueError) as e:
                raise type(e)(f"dataset: {e}") from None
        if self.pairs == "on_policy" and self.num_samples_per_prompt < 2:
            raise ValueError("num_samples_per_prompt must be >= 2 to form a (best, worst) pair")
        if self.ref_update_every < 0:
            raise ValueError(f"ref_update_every must be >= 0 (0 = frozen base), got {self.ref_update_every}")


def dpo_loss(err_w: torch.Tensor, err_l: torch.Tensor, ref_err_w: torch.Tensor, ref_err_l: torch.Tensor,
             beta: torch.Tensor | float) -> tuple[torch.Tensor, dict[str, float]]:
    """``-mean log sigmoid(-(beta/2) [(e_w - e_ref_w) - (e_l - e_ref_l)])`` (Diffusion-DPO ``train.py``, the
    ``-0.5 * beta`` factor and the per-pair mean) plus the diagnostics of docs/algorithms.md#diffusion-dpo-objective."""
    inside = -0.5 * torch.as_tensor(beta, device=err_w.device, dtype=torch.float32) * (
        (err_w - ref_err_w) - (err_l - ref_err_l))
    loss = -F.logsigmoid(inside).mean()
    err_w, err_l, inside = err_w.detach(), err_l.detach(), inside.detach()
    diag = {"implicit_acc": float((inside > 0).float().mean()),
            "mse_w_policy": float(err_w.mean()), "mse_w_ref": float(ref_err_w.mean()),
            "mse_l_policy": float(err_l.mean()), "mse_l_ref": float(ref_err_l.mean()),
            "dpo_inside": float(inside.mean())}
    return loss, diag


# ---------------------------------------------------------------------------------------------------- offline


class PreferencePairs:
    """Offline (prompt, winner, loser) pairs, read by :class:`rewardflow.io.preferences.PreferenceDataset` (the
    reader ``rewardflow eval-rewards`` uses): Pick-a-Pic v1 / v2 as published (``caption``, ``jpg_0``, ``jpg_1``,
    ``label_0``; ``label_0`` 1 means image 0 wins, 0 image 1, 0.5 is a tie and is dropped, as Diffusion-DPO does)
    or ``prompt`` / ``chosen`` / ``rejected``. A folder with a ``train`` split (Pick-a-Pic's ``train-*.parquet``)
    trains on that split only. An image is encoded bytes, a file path (PNG/JPEG/WebP, relative to the dataset's
    folder) or a ``.safetensors`` file with an encoded ``latent`` tensor."""

    def __init__(self, path: str, root: str | None = None):
        self.path = path
        data = PreferenceDataset(path)
        if len(data._parts) > 1 and any(name == "train" for name, _ in data._parts):
            data = PreferenceDataset(path, splits=("train",))
        self.data = data
        if root:
            self.data.roots.insert(0, Path(root))
        self.root = self.data.roots[0]
        self.index = [i for i, lab in enumerate(self.data.labels()) if lab != 0]  # ties dropped
        if not self.index:
            raise ValueError(f"{path}: no usable preference pairs (all ties or empty)")
        self._check_files()

    def _check_files(self) -> None:
        """Every file a pair names exists (checked now, not at the step that first reads it)."""
        used = set(self.index)
        missing = []
        for i, item in self.data.string_cells():
            if i in used and not any((r / item).is_file() for r in self.data.roots) and not Path(item).is_file():
                missing.append((i, item))
        if missing:
            i, item = missing[0]
            raise FileNotFoundError(
                f"{self.path}: {len(missing)} file(s) named by the preference pairs do not exist, e.g. row {i}: "
                f"{item!r} -> {self.root / item}. Paths are relative to the dataset's folder ({self.root}); fix "
                "or drop those records")

    def pair(self, k: int) -> tuple[str, Any, Any]:
        """Pair ``k`` as ``(prompt, winner, loser)`` (a file path or encoded bytes each)."""
        r = self.data[self.index[k]]
        return (r.prompt, r.a, r.b) if r.label > 0 else (r.prompt, r.b, r.a)

    @property
    def pairs(self) -> list[tuple[str, Any, Any]]:
        """Every pair (reads every row: for small datasets and tests)."""
        return [self.pair(k) for k in range(len(self))]

    def __len__(self) -> int:
        return len(self.index)

    def load_item(self, item: Any, gen, resolution: int = 0) -> torch.Tensor:
        """One winner / loser -> latent [C, H, W] through the generator's own image encoder."""
        if isinstance(item, str) and item.endswith(".safetensors"):
            f = Path(item)
            if not f.is_file():
                raise FileNotFoundError(f"latent file not found: {f}")
            t = load_file(str(f))
            if "latent" not in t:
                raise ValueError(f"{f} must hold a tensor named 'latent' (has {sorted(t)})")
            lat = t["latent"]
            return lat[0] if lat.ndim == len(gen.latent_shape) + 1 else lat
        img = self._load_image(item)
        if resolution and img.shape[-2:] != (resolution, resolution):
            img = F.interpolate(img[None], size=(resolution, resolution), mode="bilinear", antialias=True,
                                align_corners=False)[0]
        if not hasattr(gen, "encode_images"):
            raise ValueError(f"{type(gen).__name__} has no encode_images(); store encoded latents "
                             "(.safetensors with a 'latent' tensor) in the dataset instead of images")
        with torch.no_grad():
            return gen.encode_images(img[None].to(gen.device, gen.dtype))[0]

    def _load_image(self, item: Any) -> torch.Tensor:
        if isinstance(item, str):
            f = Path(item)
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                raise ValueError(f"unsupported preference item {item!r}: expected an image file "
                                 f"({', '.join(IMAGE_SUFFIXES)}) or a .safetensors latent")
            if not f.is_file():
                raise FileNotFoundError(f"image not found: {f}")
            return load_image(f)  # a corrupt / truncated file raises ImageReadError naming it
        if isinstance(item, (bytes, bytearray)):  # a binary column (Pick-a-Pic v2's jpg_0 / jpg_1)
            im = Image.open(io.BytesIO(item))
        elif isinstance(item, dict) and item.get("bytes") is not None:
            im = Image.open(io.BytesIO(item["bytes"]))
        elif hasattr(item, "convert"):
            im = item
        else:
            raise ValueError(f"unsupported preference item of type {type(item).__name__}")
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1)


# ---------------------------------------------------------------------------------------------------- method


class _DPOBase(Method):
    config_class = DPOConfig
    uses_reference = True

    def __init__(self, config: DPOConfig, ctx):
        super().__init__(config, ctx)
        c = config
        if c.beta_schedule == "one_minus_t_sq" and ctx.generator.parametrization != "flow":
            raise ValueError("beta_schedule=one_minus_t_sq ports epsilon-space DPO to a *flow* generator "
                             f"(docs/algorithms.md#flow-dpo-beta); this generator is {ctx.generator.parametrization!r}, whose "
                             "errors are already in its own space: use beta_schedule=constant")
        self.data = None
        if c.pairs == "offline":
            self.data = PreferencePairs(c.dataset)
            self.samples_per_prompt = 2
        else:
            if ctx.reward is None:
                raise ValueError(f"{self.name} with pairs=on_policy needs a reward to rank samples")
            self.samples_per_prompt = c.num_samples_per_prompt
        self.cursor = 0
        self._ref = None  # online DPO: a frozen copy of the policy (LoRA included), refreshed every N steps
        self._refreshed_at = 0
        if c.ref_update_every > 0:
            self._ref = copy.deepcopy(ctx.generator.denoiser).requires_grad_(False).eval()

    @classmethod
    def sharding_conflict(cls, config: DPOConfig, strategy: str) -> str | None:
        if config.ref_update_every > 0 and strategy in ("fsdp", "zero3"):
            return ("ref_update_every > 0 keeps an unsharded copy of the policy as the reference; set "
                    "ref_update_every=0 (the frozen base is the reference) or use strategy=zero2 / ddp")
        return None

    # -- reference handling (frozen base via gen.reference(), or the refreshed copy)
    def _reference(self):
        gen, ref = self.ctx.generator, self._ref
        if ref is None:
            return gen.reference()

        class _Swap:
            def __enter__(self_):
                self_.policy, gen.denoiser = gen.denoiser, ref
                return gen

            def __exit__(self_, *a):
                gen.denoiser = self_.policy
                return False

        return _Swap()

    def _maybe_refresh(self, step: int) -> None:
        n = self.config.ref_update_every
        if self._ref is not None and step > 0 and step % n == 0 and step != self._refreshed_at:
            self._ref.load_state_dict(self.ctx.generator.denoiser.state_dict())
            self._refreshed_at = step
            self.ctx.log({"ref_refreshed": 1.0})

    # -- data
    def collect(self, prompts: list[str], step: int) -> list[dict[str, Any]]:
        self._maybe_refresh(step)
        if self.data is not None:
            return self._collect_offline(len(prompts))
        c, ctx = self.config, self.ctx
        if c.sample_from == "reference":
            with self._reference():
                s = sample_and_score(ctx.generator, ctx.reward, prompts, c.num_samples_per_prompt,
                                     ctx.sample_steps, generator=ctx.rng)
        else:
            s = sample_and_score(ctx.generator, ctx.reward, prompts, c.num_samples_per_prompt, ctx.sample_steps,
                                 generator=ctx.rng)
        ok = finite_mask(s.rewards)
        pairs = best_worst_pairs(s.rewards, c.num_samples_per_prompt, c.min_reward_gap)
        ctx.log({"reward_mean": float(s.rewards[ok].mean()) if ok.any() else float("nan"),
                 "nonfinite_rewards": float((~ok).sum()), "pairs": float(len(pairs)),
                 "reward_gap": float(sum(s.rewards[w] - s.rewards[l] for w, l in pairs) / max(1, len(pairs)))})
        if not pairs:
            return []
        w = torch.tensor([p[0] for p in pairs], device=s.latents.device)
        l = torch.tensor([p[1] for p in pairs], device=s.latents.device)
        return [{"prompts": [s.prompts[i] for i in w.tolist()], "x0_w": s.latents[w], "x0_l": s.latents[l]}]

    def _collect_offline(self, n: int) -> list[dict[str, Any]]:
        """The next ``n`` pairs of a per-epoch permutation (seeded by the epoch, so resuming is exact). With several
        processes, process ``r`` of ``P`` takes positions ``[cursor + r*n, cursor + (r+1)*n)`` of the shared stream
        and every process advances the cursor by ``n * P``: no pair is used twice within a step."""
        gen, N = self.ctx.generator, len(self.data)
        prompts, xw, xl = [], [], []
        start = self.cursor + self.ctx.process_index * n
        for i in range(n):
            epoch, pos = divmod(start + i, N)
            perm = torch.randperm(N, generator=torch.Generator().manual_seed(10007 * epoch + 17))
            p, w, l = self.data.pair(int(perm[pos]))
            prompts.append(p)
            xw.append(self.data.load_item(w, gen, self.config.resolution))
            xl.append(self.data.load_item(l, gen, self.config.resolution))
            for item, x in ((w, xw[-1]), (l, xl[-1])):
                if x.shape != xw[0].shape:  # torch.stack below needs one size
                    label = Path(item).name if isinstance(item, str) else type(item).__name__
                    raise ValueError(f"{self.data.path}: preference item {label!r} (prompt {p!r}) gives latents "
                                     f"{tuple(x.shape)} but the batch's first winner gives {tuple(xw[0].shape)}: "
                                     "the pair images differ in size; set resolution=N to resize every pair image "
                                     "to N x N")
        self.cursor += n * max(1, self.ctx.num_processes)
        dev, dt = gen.device, gen.dtype
        return [{"prompts": prompts, "x0_w": torch.stack(xw).to(dev, dt), "x0_l": torch.stack(xl).to(dev, dt)}]

    # -- loss
    def loss(self, batch: dict[str, Any], step: int):
        c, gen = self.config, self.ctx.generator
        x_w, x_l = batch["x0_w"], batch["x0_l"]
        n = x_w.shape[0]
        cond = gen.encode_prompts(batch["prompts"]).repeat(2)  # [p0, p0, p1, p1, ...]: (w, l) interleaved
        x0 = torch.stack([x_w, x_l], 1).flatten(0, 1)
        total, diags = 0.0, {}
        for _ in range(c.timesteps_per_pair):
            noise, t = draw_noise_and_t(gen, x_w, self.ctx.rng)  # one noise and one t per PAIR, shared by w and l
            noise2, t2 = noise.repeat_interleave(2, 0), t.repeat_interleave(2, 0)
            x_t, target = gen.noisy(x0, noise2, t2), gen.target(x0, noise2, t2)
            err = per_sample_error(gen.predict(x_t, t2, cond, guidance_scale=1.0), target).view(n, 2)
            with torch.no_grad(), self._reference():
                ref_err = per_sample_error(gen.predict(x_t, t2, cond, guidance_scale=1.0), target).view(n, 2)
            beta = c.beta * (1 - t.float()) ** 2 if c.beta_schedule == "one_minus_t_sq" else c.beta
            loss, d = dpo_loss(err[:, 0], err[:, 1], ref_err[:, 0], ref_err[:, 1], beta)
            if c.sft_weight > 0:
                loss = loss + c.sft_weight * err[:, 0].mean()
            total = total + loss / c.timesteps_per_pair
            for k, v in d.items():
                diags[k] = diags.get(k, 0.0) + v / c.timesteps_per_pair
        return total, diags

    # -- resume
    shared_state_keys = ("ref",)  # the refreshed reference is the same on every process: saved once

    def state_dict(self) -> dict[str, Any]:
        st: dict[str, Any] = {"cursor": self.cursor, "refreshed_at": self._refreshed_at}
        if self._ref is not None:
            names = {n for n, p in self.ctx.generator.denoiser.named_parameters() if p.requires_grad}
            st["ref"] = {k: v.detach().cpu().clone() for k, v in self._ref.state_dict().items() if k in names}
        return st

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursor = int(state.get("cursor", 0))
        self._refreshed_at = int(state.get("refreshed_at", 0))
        if self._ref is not None and "ref" in state:
            self._ref.load_state_dict(state["ref"], strict=False)


@dataclass
class DiffusionDPOConfig(DPOConfig):
    """:class:`DPOConfig` with Diffusion-DPO's temperature."""

    beta: float = option(5000.0, "DPO temperature on mean-over-dims errors (5000: Diffusion-DPO's SD 1.5 launcher "
                                 "--beta_dpo; the -0.5 * beta convention)")


@register_method("flow_dpo")
class FlowDPO(_DPOBase):
    """Flow-DPO (VideoAlign): the DPO loss on a flow generator's velocity errors (same code as Diffusion-DPO)."""


@register_method("diffusion_dpo")
class DiffusionDPO(_DPOBase):
    """Diffusion-DPO (Wallace et al. 2023): the DPO loss on an epsilon / v generator's errors (same code)."""

    config_class = DiffusionDPOConfig
