"""The Generator interface: one surface over every diffusers model family.

A method (DPO, GRPO, DRaFT, ReNO, ...) only ever talks to a :class:`Generator`. It never knows whether the model
underneath is the toy UNet, SD 1.5 or FLUX. This module holds the interface (:class:`Conditioning`,
:class:`Trajectory`, :class:`StepOutput`, :class:`Generator`), the guided denoiser call and the sampling loop
(ODE / SDE chains with per-step log-probabilities, truncated / checkpointed differentiable sampling, the "editing"
mode). The parts it is built from live next to it, once:

``parametrization.py``  epsilon / v_prediction / flow math: grid, noising, targets, conversions, sampler steps
``lora.py``             LoRA add / save / load and the reference policy
``loading.py``          loading a diffusers pipeline the same way for every adapter
``vae.py``              VAE encode / decode with the latent normalization of ``vae.config``

An adapter (one file per model family) implements four small hooks:

``encode_prompts(prompts) -> Conditioning``   text encoding (cached, no grad)
``_forward(x, model_t, cond_embeds) -> out``    one raw denoiser call (no guidance)
``decode(latents) -> pixels in [0, 1]``        differentiable
``latent_shape`` (C, H, W)                      shape of one latent
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from rewardflow.pipelines.lora import LoraMixin
from rewardflow.pipelines.parametrization import ParametrizationMixin, StepOutput

__all__ = ["UNET_BLOCK_CLASSES", "Conditioning", "Generator", "StepOutput", "Trajectory", "prompt_list"]

# the blocks of diffusers' UNet2DConditionModel (down, mid, up): the units strategy=fsdp shards a UNet by
UNET_BLOCK_CLASSES = ("DownBlock2D", "CrossAttnDownBlock2D", "UNetMidBlock2DCrossAttn", "CrossAttnUpBlock2D",
                      "UpBlock2D")


def prompt_list(prompts: Sequence[str]) -> list[str]:
    """``prompts`` as a non-empty list of strings. A bare string is refused: iterating it would give one prompt
    per character (and one image each)."""
    if isinstance(prompts, (str, bytes)):
        raise TypeError(f"prompts must be a list of strings, got the string {prompts[:40]!r}; wrap one prompt in a "
                        "list: [prompt]")
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("encode_prompts needs a non-empty list of strings")
    return prompts


@dataclass
class Conditioning:
    """Encoded prompts. ``embeds`` / ``uncond`` are dicts of tensors passed to ``Generator._forward``."""

    prompts: list[str]
    embeds: dict[str, torch.Tensor]
    uncond: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    def repeat(self, n: int) -> "Conditioning":
        """Each prompt repeated ``n`` times consecutively (``[p0, p0, p1, p1, ...]``), e.g. for groups."""
        rep = lambda d: None if d is None else {k: v.repeat_interleave(n, 0) for k, v in d.items()}
        return Conditioning([p for p in self.prompts for _ in range(n)], rep(self.embeds), rep(self.uncond))

    def index(self, idx: torch.Tensor | Sequence[int]) -> "Conditioning":
        idx = torch.as_tensor(idx, dtype=torch.long)
        sel = lambda d: None if d is None else {k: v[idx.to(v.device)] for k, v in d.items()}
        return Conditioning([self.prompts[i] for i in idx.tolist()], sel(self.embeds), sel(self.uncond))


@dataclass
class Trajectory:
    """A sampled chain. ``latents[i]`` is the state at grid point ``timesteps[i]`` (detached, for replay);
    ``final`` is the last state and carries gradients when sampling was differentiable.
    ``log_probs[:, i]`` is log pi(latents[i+1] | latents[i]) (fp32, mean over dims) for SDE steps."""

    latents: list[torch.Tensor]
    timesteps: torch.Tensor
    final: torch.Tensor
    noise: torch.Tensor
    log_probs: torch.Tensor | None = None
    grad_steps: list[int] = field(default_factory=list)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps) - 1


class Generator(ParametrizationMixin, LoraMixin):
    """Base class of every generator adapter. See the module docstring for the contract; the parametrization math
    comes from :class:`~rewardflow.pipelines.parametrization.ParametrizationMixin`, LoRA and the reference policy
    from :class:`~rewardflow.pipelines.lora.LoraMixin`.

    Attributes set by adapters: ``parametrization``, ``scheduler`` (a diffusers scheduler), ``denoiser``
    (the trainable ``nn.Module``), ``guidance_scale``, ``modality`` ("image" or "video").
    """

    parametrization: str = "flow"
    modality: str = "image"
    guidance_scale: float = 1.0
    num_train_timesteps: int = 1000
    # what commands use for this model family when the user gives no value: "steps" (sampler steps), and for
    # embedded models that ship their own world (the toy) also "reward", "prompts", "eval_prompts",
    # "diversity_encoder"
    run_defaults: dict[str, Any] = {"steps": 30}
    # class names of the denoiser's transformer / UNet blocks: strategy=fsdp shards each of them, then the whole
    # denoiser (rewardflow/align/trainer/fsdp.py)
    shard_block_classes: tuple[str, ...] = ()
    denoiser: torch.nn.Module
    scheduler: Any

    # ------------------------------------------------------------------ hooks for adapters
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        raise NotImplementedError

    def _forward(self, x: torch.Tensor, model_t: torch.Tensor, embeds: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def latent_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        # a sharded denoiser may keep its parameters in CPU memory (offload) and compute on the accelerator: the
        # trainer then sets _compute_device (rewardflow/align/trainer/fsdp.py, zero.py)
        dev = getattr(self, "_compute_device", None)
        return dev if dev is not None else next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    # ------------------------------------------------------------------ denoiser call with guidance
    def predict(self, x_t: torch.Tensor, t: torch.Tensor | float, cond: Conditioning,
                guidance_scale: float | None = None, detach_uncond: bool = False) -> torch.Tensor:
        """Raw model output (eps / v / flow velocity) with classifier-free guidance applied inside.

        As in diffusers (``do_classifier_free_guidance = guidance_scale > 1`` in the SD / SDXL / SD3 / Wan
        pipelines), ``guidance_scale <= 1`` means no guidance: one forward pass on the prompt, so 0 (the Turbo
        model cards' value) and 1 give the same output."""
        g = self.guidance_scale if guidance_scale is None else guidance_scale
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.float32)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        mt = self.model_time(t)
        if g <= 1.0:
            return self._forward(x_t, mt, cond.embeds)
        if cond.uncond is None:
            raise ValueError(f"guidance_scale={g} needs unconditional embeddings, but this Conditioning has none "
                             "(encode the prompts with an adapter that provides them, or use guidance_scale=1)")
        if detach_uncond:
            with torch.no_grad():
                u = self._forward(x_t, mt, cond.uncond)
            c = self._forward(x_t, mt, cond.embeds)
        else:
            both = {k: torch.cat([cond.uncond[k], cond.embeds[k]]) for k in cond.embeds}
            u, c = self._forward(torch.cat([x_t, x_t]), torch.cat([mt, mt]), both).chunk(2)
        return u + g * (c - u)

    def log_prob(self, x_t: torch.Tensor, x_next: torch.Tensor, t: float, t_next: float, cond: Conditioning,
                 noise_level: float, sigma_max: float | None = None) -> torch.Tensor:
        """log pi_theta(x_next | x_t) of a stored transition under the *current* weights, [B] fp32."""
        out = self.predict(x_t, t, cond)
        res = self.step(out, x_t, t, t_next, noise_level=noise_level, prev_sample=x_next, sigma_max=sigma_max)
        if res.log_prob is None:
            raise ValueError("log_prob needs a stochastic step: noise_level must be > 0 (an ODE step has no density)")
        return res.log_prob

    # ------------------------------------------------------------------ sampling
    def initial_noise(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn((batch, *self.latent_shape), generator=generator).to(self.device, self.dtype)

    def sample(self, cond: Conditioning, steps: int, noise: torch.Tensor | None = None, sde: bool = False,
               noise_level: float | None = None, grad: Literal[None, "all", "last_k"] = None,
               k: int | Literal["random"] = 1, checkpoint: bool = True, x0: torch.Tensor | None = None,
               t0: float | None = None, generator: torch.Generator | None = None,
               guidance_scale: float | None = None,
               step_callback: Callable[[int, float, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
               ) -> Trajectory:
        """Sample a chain.

        sde: stochastic steps with per-step log-probs (Flow-GRPO SDE for flow with ``noise_level`` a = 0.7 by
        default; DDIM eta = ``noise_level`` = 1.0 by default for diffusion).
        grad: None (no graph), "all" (backprop through every step) or "last_k" (only the last ``k`` steps carry
        gradients; ``k="random"`` draws K uniformly in [1, steps] as DRaFT-K/AlignProp do).
        checkpoint: per-step gradient checkpointing, so memory does not grow with activations per step.
        x0, t0: editing mode (InstructVideo / SDEdit): noise ``x0`` to the grid point nearest ``t0`` (fraction of
        the chain, 1 = pure noise) and run the rest of the chain.
        step_callback(i, t, x, out) -> out: lets inference-time guidance (NRG) modify the model output.
        """
        self._check_param()
        if grad not in (None, "all", "last_k"):
            raise ValueError(f"grad must be None, 'all' or 'last_k', got {grad!r}")
        if noise_level is None:
            noise_level = (0.7 if self.parametrization == "flow" else 1.0) if sde else 0.0
        elif not sde:
            noise_level = 0.0
        grid = self.timesteps(steps)
        start = 0
        batch = len(cond)
        if noise is None:
            noise = self.initial_noise(batch, generator)
        if noise.shape[0] != batch:
            raise ValueError(f"noise batch {noise.shape[0]} != number of prompts {batch}")
        if x0 is not None:
            if t0 is None or not 0.0 < t0 <= 1.0:
                raise ValueError(f"editing mode needs 0 < t0 <= 1, got {t0}")
            start = min(steps - 1, max(0, steps - int(round(t0 * steps))))
            x = self.noisy(x0, noise, grid[start].expand(batch).to(x0.device))
        else:
            x = noise
        n_run = steps - start
        if grad is None:
            grad_from = n_run
        elif grad == "all":
            grad_from = 0
        else:
            kk = int(torch.randint(1, n_run + 1, (1,), generator=generator).item()) if k == "random" else int(k)
            if not 1 <= kk:
                raise ValueError(f"k must be >= 1, got {k}")
            grad_from = max(0, n_run - kk)
        sigma_max = float(grid[1]) if self.parametrization == "flow" and len(grid) > 1 else None
        latents, log_probs, grad_steps = [x.detach()], [], []
        for j, i in enumerate(range(start, steps)):
            t, t_next = grid[i], grid[i + 1]
            with_grad = j >= grad_from
            if not with_grad:
                x = x.detach()

            # the step's Gaussian draw is made outside the (checkpointed) step so recomputation is exact
            z = self._randn(x, generator) if noise_level > 0 else None

            def _one(x_in, t=t, t_next=t_next, i=i, z=z):
                out = self.predict(x_in, t, cond, guidance_scale)
                if step_callback is not None:
                    out = step_callback(i, float(t), x_in, out)
                r = self.step(out, x_in, t, t_next, noise_level, sigma_max=sigma_max, z=z)
                return r.prev_sample, (r.log_prob if r.log_prob is not None else x_in.new_zeros(0))

            with torch.set_grad_enabled(with_grad):
                if with_grad and checkpoint:
                    # per-step gradient checkpointing: only x is kept; activations are recomputed in backward
                    x, lp = _checkpoint(_one, x, use_reentrant=False)
                else:
                    x, lp = _one(x)
            if lp.numel():
                log_probs.append(lp.detach())
            if with_grad:
                grad_steps.append(i)
            latents.append(x.detach())
        lp = torch.stack(log_probs, 1) if log_probs else None
        return Trajectory(latents, grid[start:], x, noise, lp, grad_steps)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], steps: int, noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, guidance_scale: float | None = None) -> torch.Tensor:
        """Convenience: prompts -> pixels in [0, 1] (ODE sampling)."""
        cond = self.encode_prompts(prompt_list(prompts))
        traj = self.sample(cond, steps, noise=noise, generator=generator, guidance_scale=guidance_scale)
        return self.decode(traj.final)
