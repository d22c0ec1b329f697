"""The Generator interface: one surface over every diffusers model family.

A method (DPO, GRPO, DRaFT, ReNO, ...) only ever talks to a :class:`Generator`. It never knows whether the model
underneath is the toy UNet, SD 1.5 or FLUX. Everything that depends on the *parametrization* (epsilon,
v_prediction, flow) lives here, once: forward noising, training targets, conversions, the ODE/SDE sampler steps
with their log-probabilities, truncated / checkpointed differentiable sampling, and the "editing" mode.

An adapter (one file per model family) implements four small hooks:

``encode_prompts(prompts) -> Conditioning``   text encoding (cached, no grad)
``_forward(x, model_t, cond_embeds) -> out``    one raw denoiser call (no guidance)
``decode(latents) -> pixels in [0, 1]``        differentiable
``latent_shape`` (C, H, W)                      shape of one latent

Math references (ALGORITHMS.md):
  §0.1 DDIM-eta step and its Gaussian policy (DDIM eq. 12/16), used by DDPO-style methods;
  §0.2 rectified-flow interpolant ``x_t = (1-t) x0 + t eps``, target ``eps - x0``;
  §0.3 log-probs averaged over all latent dimensions, computed in fp32;
  §6.1 Flow-GRPO's marginal-preserving SDE, ``sigma_t = a * sqrt(t / (1 - t))``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

PARAMETRIZATIONS = ("epsilon", "v_prediction", "flow")

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)

# the file name diffusers' ``save_lora_weights`` writes and ``load_lora_weights`` looks for
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


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


@dataclass
class StepOutput:
    prev_sample: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor  # scalar std of the Gaussian step (0 for ODE steps)
    log_prob: torch.Tensor | None  # [B] fp32, mean over dims; None for deterministic steps


def _bcast(v: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(v, device=like.device, dtype=torch.float32)
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim)) if v.ndim else v


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std^2 I), averaged over every non-batch dimension, in fp32 (ALGORITHMS.md §0.3)."""
    x, mean = x.float(), mean.float()
    std = _bcast(std, x)
    lp = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    return lp.flatten(1).mean(1)


class Generator:
    """Base class of every generator adapter. See the module docstring for the contract.

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
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    # ------------------------------------------------------------------ schedule
    def _check_param(self):
        if self.parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"unknown parametrization {self.parametrization!r}; expected one of {PARAMETRIZATIONS}")

    def alphas_cumprod(self) -> torch.Tensor:
        return self.scheduler.alphas_cumprod.float()

    def _alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_bar at integer timesteps t; t < 0 means 'after the last step' (the scheduler's final alpha)."""
        ac = self.alphas_cumprod().to(t.device)
        final = torch.as_tensor(float(getattr(self.scheduler, "final_alpha_cumprod", 1.0)), device=t.device)
        ti = t.long()
        return torch.where(ti >= 0, ac[ti.clamp(min=0)], final)

    def timesteps(self, steps: int) -> torch.Tensor:
        """The sampling grid with ``steps + 1`` points, as the diffusers scheduler computes it.

        flow: sigmas in [0, 1] (shift / dynamic shift included), last point 0.
        epsilon / v_prediction: integer timesteps, last point -1 (meaning alpha_bar = final_alpha_cumprod).
        """
        self._check_param()
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        kw = self._set_timesteps_kwargs(steps)
        self.scheduler.set_timesteps(steps, **kw)
        if self.parametrization == "flow":
            return self.scheduler.sigmas.detach().float().cpu().clone()
        ts = self.scheduler.timesteps.detach().cpu().float()
        return torch.cat([ts, torch.tensor([-1.0])])

    def _set_timesteps_kwargs(self, steps: int) -> dict:
        return {}

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The timestep value the network is conditioned on (diffusers convention: sigma * 1000 for flow)."""
        return t * self.num_train_timesteps if self.parametrization == "flow" else t

    # ------------------------------------------------------------------ parametrization
    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward noising q(x_t | x0). ``t``: [B] sigmas in [0,1] (flow) or integer timesteps (diffusion)."""
        self._check_param()
        t = torch.as_tensor(t, device=x0.device)
        if self.parametrization == "flow":
            s = _bcast(t, x0)
            return ((1 - s) * x0.float() + s * noise.float()).to(x0.dtype)
        ab = _bcast(self._alpha_bar(t), x0)
        return (ab.sqrt() * x0.float() + (1 - ab).sqrt() * noise.float()).to(x0.dtype)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Regression target of the parametrization: eps, v = sqrt(ab) eps - sqrt(1-ab) x0, or eps - x0."""
        self._check_param()
        if self.parametrization == "epsilon":
            return noise
        if self.parametrization == "flow":
            return noise - x0
        ab = _bcast(self._alpha_bar(torch.as_tensor(t, device=x0.device)), x0)
        return (ab.sqrt() * noise.float() - (1 - ab).sqrt() * x0.float()).to(x0.dtype)

    def convert(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Model output -> (x0_hat, eps_hat), exact per parametrization (ALGORITHMS.md §0.1-0.2)."""
        self._check_param()
        out, x = out.float(), x_t.float()
        if self.parametrization == "flow":
            s = _bcast(torch.as_tensor(t, device=x.device), x)
            return x - s * out, x + (1 - s) * out
        ab = _bcast(self._alpha_bar(torch.as_tensor(t, device=x.device)), x)
        if self.parametrization == "epsilon":
            return (x - (1 - ab).sqrt() * out) / ab.sqrt(), out
        return ab.sqrt() * x - (1 - ab).sqrt() * out, ab.sqrt() * out + (1 - ab).sqrt() * x

    def sample_t(self, batch: int, generator: torch.Generator | None = None, dist: str = "logit_normal") -> torch.Tensor:
        """Training timesteps: logit-normal sigmas (SD3) for flow, uniform integers for diffusion."""
        if self.parametrization == "flow":
            if dist == "uniform":
                return torch.rand(batch, generator=generator)
            return torch.sigmoid(torch.randn(batch, generator=generator))
        return torch.randint(0, self.num_train_timesteps, (batch,), generator=generator).float()

    # ------------------------------------------------------------------ denoiser call with guidance
    def predict(self, x_t: torch.Tensor, t: torch.Tensor | float, cond: Conditioning,
                guidance_scale: float | None = None, detach_uncond: bool = False) -> torch.Tensor:
        """Raw model output (eps / v / flow velocity) with classifier-free guidance applied inside."""
        g = self.guidance_scale if guidance_scale is None else guidance_scale
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.float32)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        mt = self.model_time(t)
        if g == 1.0:
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

    # ------------------------------------------------------------------ one sampler step
    def step(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor | float, t_next: torch.Tensor | float,
             noise_level: float = 0.0, prev_sample: torch.Tensor | None = None,
             generator: torch.Generator | None = None, sigma_max: float | None = None,
             z: torch.Tensor | None = None) -> StepOutput:
        """One step from grid point t to t_next.

        flow: Euler ODE when ``noise_level == 0``, else Flow-GRPO's SDE step with a = noise_level (§6.1).
        diffusion: DDIM with eta = noise_level (§0.1); eta = 0 is the deterministic DDIM ODE.
        If ``prev_sample`` is given, it is used instead of drawing noise (log-prob of a stored transition);
        ``z`` supplies the standard-normal draw (else it is drawn from ``generator``).
        """
        xf = x.float()
        t = float(t)
        t_next = float(t_next)
        if self.parametrization == "flow":
            dt = t_next - t  # negative
            if noise_level > 0:
                denom_sigma = sigma_max if (t >= 1.0 and sigma_max is not None) else t
                std_t = noise_level * math.sqrt(t / max(1 - denom_sigma, 1e-8))
                v = out.float()
                mean = xf * (1 + std_t**2 / (2 * t) * dt) + v * (1 + std_t**2 * (1 - t) / (2 * t)) * dt
                std = std_t * math.sqrt(-dt)
            else:
                mean, std = xf + dt * out.float(), 0.0
        else:
            x0, eps = self.convert(out, x, torch.tensor(t))
            ab = self._alpha_bar(torch.tensor(t)).item()
            ab_prev = self._alpha_bar(torch.tensor(t_next)).item()
            var = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
            std = noise_level * math.sqrt(max(var, 0.0))
            mean = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - std**2, 0.0)) * eps
        std_t = torch.tensor(std, dtype=torch.float32, device=x.device)
        if std == 0.0:
            return StepOutput(mean.to(x.dtype), mean, std_t, None)
        if prev_sample is None:
            if z is None:
                z = self._randn(x, generator)
            prev_sample = (mean + std * z.to(x.device)).to(x.dtype)
        return StepOutput(prev_sample, mean, std_t, gaussian_log_prob(prev_sample.detach(), mean, std_t))

    @staticmethod
    def _randn(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        dev = like.device if generator is None else generator.device
        return torch.randn(like.shape, generator=generator, device=dev).to(like.device)

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
        cond = self.encode_prompts(list(prompts))
        traj = self.sample(cond, steps, noise=noise, generator=generator, guidance_scale=guidance_scale)
        return self.decode(traj.final)

    # ------------------------------------------------------------------ training helpers
    def add_lora(self, rank: int = 4, alpha: float | None = None, target_modules: Sequence[str] | None = None,
                 init: str | bool = "gaussian") -> None:
        """Attach a peft LoRA adapter to the denoiser; only its weights are trainable afterwards."""
        from peft import LoraConfig

        targets = list(target_modules or self.default_lora_targets)
        self.denoiser.requires_grad_(False)
        self.denoiser.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights=init,
                                             target_modules=targets))

    default_lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")

    # set by each adapter: the diffusers pipeline class (its ``save_lora_weights`` writes the LoRA file) and the
    # name of the denoiser component in that pipeline ("unet" or "transformer")
    pipeline_class: Any = None
    lora_component: str = "unet"

    def save_lora(self, save_directory: str | os.PathLike, adapter_name: str = "default") -> str:
        """Write the denoiser's LoRA so plain diffusers reads it: ``pipe.load_lora_weights(save_directory)``.

        As the diffusers training scripts do (``examples/text_to_image/train_text_to_image_lora.py`` for UNets,
        ``examples/dreambooth/train_dreambooth_lora_sd3.py`` for transformers): the peft state dict
        (``get_peft_model_state_dict``), converted to the diffusers key layout for UNets
        (``convert_state_dict_to_diffusers``), written by the pipeline class's ``save_lora_weights`` together
        with the LoRA config (rank, alpha, targets) as adapter metadata. Returns the path of the written file.
        """
        from peft.utils import get_peft_model_state_dict

        if not self.has_lora() or adapter_name not in getattr(self.denoiser, "peft_config", {}):
            raise ValueError(f"save_lora: the denoiser has no LoRA adapter {adapter_name!r} "
                             "(attach one with gen.add_lora(...) or gen.load_lora(DIR))")
        if self.lora_component not in ("unet", "transformer"):
            raise ValueError(f"lora_component must be 'unet' or 'transformer', got {self.lora_component!r}")
        writer = self._lora_writer()
        state = get_peft_model_state_dict(self.denoiser, adapter_name=adapter_name)
        state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        if self.lora_component == "unet":
            from diffusers.utils import convert_state_dict_to_diffusers

            state = convert_state_dict_to_diffusers(state)
        meta = self.denoiser.peft_config[adapter_name].to_dict()
        os.makedirs(save_directory, exist_ok=True)
        writer.save_lora_weights(str(save_directory), **{f"{self.lora_component}_lora_layers": state,
                                                       f"{self.lora_component}_lora_adapter_metadata": meta})
        return os.path.join(str(save_directory), LORA_WEIGHT_NAME)

    def _lora_writer(self):
        cls = self.pipeline_class
        if isinstance(cls, str):
            import diffusers

            cls = getattr(diffusers, cls)
        if cls is not None and hasattr(cls, "save_lora_weights"):
            return cls
        if self.lora_component == "unet":
            # a UNet pipeline without LoRA support of its own (the toy one): the SD 1.x file layout
            from diffusers.loaders import StableDiffusionLoraLoaderMixin

            return StableDiffusionLoraLoaderMixin
        raise ValueError(f"{type(self).__name__}.pipeline_class ({cls!r}) has no save_lora_weights; set "
                         "pipeline_class to the diffusers pipeline class of this model family")

    def load_lora(self, lora_dir: str | os.PathLike, adapter_name: str = "default", trainable: bool = True,
                  weight_name: str | None = None) -> None:
        """Load a LoRA saved by :meth:`save_lora` (or any diffusers LoRA file of this family's denoiser) into
        the adapter, through diffusers' ``load_lora_adapter`` (the per-model half of ``pipe.load_lora_weights``:
        prefix filtering, key conversion, rank/alpha from the stored metadata). The base weights are frozen;
        ``trainable``: the LoRA weights require grad (as after :meth:`add_lora`), else they are frozen too."""
        path = str(lora_dir)
        if os.path.isdir(path):
            f = os.path.join(path, weight_name or LORA_WEIGHT_NAME)
            if not os.path.isfile(f):
                raise FileNotFoundError(f"LoRA file not found: {f} (write one with gen.save_lora(DIR) or "
                                        "pipe.save_lora_weights(DIR, ...))")
        elif not os.path.isfile(path):
            raise FileNotFoundError(f"LoRA directory or file not found: {path}")
        else:
            path, weight_name = os.path.dirname(path) or ".", os.path.basename(path)
        if adapter_name in getattr(self.denoiser, "peft_config", {}):
            raise ValueError(f"the denoiser already has a LoRA adapter named {adapter_name!r}; pass another "
                             "adapter_name")
        weight_name = weight_name or LORA_WEIGHT_NAME
        from safetensors import safe_open

        with safe_open(os.path.join(path, weight_name), framework="pt") as fh:
            prefixes = {k.split(".", 1)[0] for k in fh.keys()}
        if self.lora_component not in prefixes:
            raise ValueError(f"{os.path.join(path, weight_name)} holds no LoRA weights for the "
                             f"{self.lora_component!r} component (key prefixes: {sorted(prefixes)}); files in other "
                             "layouts (kohya / A1111) load with diffusers' pipe.load_lora_weights")
        if prefixes - {self.lora_component}:
            import warnings

            warnings.warn(f"{os.path.join(path, weight_name)}: only the {self.lora_component} LoRA is loaded; "
                          f"the weights for {sorted(prefixes - {self.lora_component})} are ignored", stacklevel=2)
        self.denoiser.load_lora_adapter(path, prefix=self.lora_component, adapter_name=adapter_name,
                                        weight_name=weight_name)
        self.denoiser.requires_grad_(False)
        if trainable:
            for n, p in self.denoiser.named_parameters():
                if "lora_" in n and f".{adapter_name}." in f"{n}.":
                    p.requires_grad_(True)

    def has_lora(self) -> bool:
        return bool(getattr(self.denoiser, "_hf_peft_config_loaded", False))

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.denoiser.parameters() if p.requires_grad]

    def snapshot_reference(self) -> None:
        """For full fine-tuning: keep a frozen copy of the current denoiser as the reference policy."""
        self._reference = copy.deepcopy(self.denoiser).requires_grad_(False).eval()

    @contextlib.contextmanager
    def reference(self):
        """Run the reference policy inside the block: LoRA adapters disabled, or the snapshot from
        :meth:`snapshot_reference` swapped in."""
        if self.has_lora():
            self.denoiser.disable_adapters()
            try:
                yield self
            finally:
                self.denoiser.enable_adapters()
        elif getattr(self, "_reference", None) is not None:
            policy, self.denoiser = self.denoiser, self._reference
            try:
                yield self
            finally:
                self.denoiser = policy
        else:
            raise RuntimeError("reference() needs LoRA adapters (gen.add_lora(...)) or a frozen copy "
                               "(gen.snapshot_reference()) for full fine-tuning")

    def enable_gradient_checkpointing(self) -> None:
        if hasattr(self.denoiser, "enable_gradient_checkpointing"):
            self.denoiser.enable_gradient_checkpointing()


def parametrization_from_scheduler(scheduler) -> str:
    """'flow' for flow-matching schedulers, else the scheduler's ``prediction_type`` (epsilon / v_prediction)."""
    name = type(scheduler).__name__
    if "FlowMatch" in name:
        return "flow"
    pt = getattr(scheduler.config, "prediction_type", "epsilon")
    if pt not in ("epsilon", "v_prediction"):
        raise ValueError(f"unsupported prediction_type {pt!r} of {name}; expected epsilon or v_prediction")
    return pt


# ---------------------------------------------------------------------------------------------- loading
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """``torch.float32`` / ``"fp16"`` / ``"bfloat16"`` / None (fp32) -> a torch dtype."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    return _DTYPES[key]


def check_pipeline_dir(path: str | os.PathLike) -> dict:
    """Check a local diffusers pipeline directory before loading, so a missing piece is reported by file name.

    Reads ``model_index.json`` and, for every component it lists, checks the component folder and its files:
    ``config.json`` + a weight file for models, ``scheduler_config.json`` for schedulers, a vocabulary file for
    tokenizers. Returns the parsed ``model_index.json``.
    """
    import json

    path = str(path)
    index_file = os.path.join(path, "model_index.json")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"pipeline directory not found: {path}")
    if not os.path.isfile(index_file):
        raise FileNotFoundError(f"{path} is not a diffusers pipeline directory: {index_file} is missing")
    with open(index_file) as f:
        index = json.load(f)
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, (list, tuple)) or len(spec) != 2 or spec[0] is None:
            continue
        lib, cls_name = spec
        sub = os.path.join(path, name)
        if not os.path.isdir(sub):
            raise FileNotFoundError(f"component {name!r} ({lib}.{cls_name}) listed in {index_file} is missing: "
                                    f"no folder {sub}")
        files = os.listdir(sub)
        if "Scheduler" in cls_name:
            need = ["scheduler_config.json"]
        elif "Tokenizer" in cls_name or "Processor" in cls_name:
            vocab = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model", "vocab.txt",
                     "preprocessor_config.json")
            if not any(v in files for v in vocab):
                raise FileNotFoundError(f"component {name!r} ({cls_name}): no vocabulary file in {sub} "
                                        f"(expected one of {', '.join(vocab)})")
            continue
        else:
            need = ["config.json"]
            if not any(f.endswith(_WEIGHT_SUFFIXES) for f in files):
                raise FileNotFoundError(f"component {name!r} ({cls_name}): no weight file in {sub} (expected "
                                        f"e.g. {os.path.join(sub, 'diffusion_pytorch_model.safetensors')} or "
                                        f"{os.path.join(sub, 'model.safetensors')})")
        for fn in need:
            if fn not in files:
                raise FileNotFoundError(f"component {name!r} ({cls_name}): {os.path.join(sub, fn)} is missing")
    return index


def _denoiser_of(pipe) -> torch.nn.Module | None:
    for name in ("transformer", "unet"):
        m = getattr(pipe, name, None)
        if isinstance(m, torch.nn.Module):
            return m
    return None


def load_diffusers_pipeline(pipeline_cls: Any, path: str | os.PathLike, dtype: torch.dtype | str | None = None,
                            device: str | torch.device | None = None, *, enable_model_cpu_offload: bool = False,
                            vae_slicing: bool = False, vae_tiling: bool = False,
                            gradient_checkpointing: bool = False, attention: str = "auto", offload: bool = False,
                            **from_pretrained_kw):
    """Load a diffusers pipeline the same way for every adapter.

    Args:
        pipeline_cls: the diffusers pipeline class (or its name, e.g. ``"StableDiffusionXLPipeline"``).
        path: a local ``save_pretrained`` directory (checked first by :func:`check_pipeline_dir`, so a missing
            component is reported by file name) or a hub id (``"stabilityai/sd-turbo"``).
        dtype: torch dtype or ``"fp32" | "fp16" | "bf16"`` (default fp32) for every component.
        device: where to move the pipeline (default ``"cpu"``); ignored with ``enable_model_cpu_offload``.
        enable_model_cpu_offload: diffusers' model offloading (each component moves to the GPU only while it runs);
            ``offload=True`` is the same (the name the CLI commands pass).
        vae_slicing / vae_tiling: decode batch elements one at a time / in tiles (``vae.enable_slicing()`` /
            ``vae.enable_tiling()``); both stay differentiable.
        gradient_checkpointing: ``enable_gradient_checkpointing()`` on the denoiser (``transformer`` or ``unet``).
        attention: ``"auto"`` (xformers when installed and the pipeline runs on CUDA, else PyTorch SDPA, the
            diffusers default), ``"sdpa"`` or ``"xformers"`` (error if unavailable).
        from_pretrained_kw: passed on to ``pipeline_cls.from_pretrained`` (``variant="fp16"``, ``revision``,
            component overrides such as ``vae=...``).

    Every component is put in eval mode and the non-denoiser modules are frozen (``requires_grad_(False)``); the
    chosen attention backend is stored as ``pipe.rewardflow_attention``. Returns the pipeline.
    """
    import diffusers

    if isinstance(pipeline_cls, str):
        if not hasattr(diffusers, pipeline_cls):
            raise ValueError(f"unknown diffusers pipeline class {pipeline_cls!r}")
        pipeline_cls = getattr(diffusers, pipeline_cls)
    if attention not in ("auto", "sdpa", "xformers"):
        raise ValueError(f"attention must be 'auto', 'sdpa' or 'xformers', got {attention!r}")
    path = str(path)
    # a hub id is "owner/name"; anything else (or anything that exists on disk) is a local path
    local = os.path.exists(path) or not re.fullmatch(r"[\w.-]+/[\w.-]+", path) or path.startswith(".")
    if local:
        check_pipeline_dir(path)  # FileNotFoundError naming the missing file
    try:
        pipe = pipeline_cls.from_pretrained(path, dtype=resolve_dtype(dtype), **from_pretrained_kw)
    except OSError as e:  # diffusers / hub: not found, no connection, missing file
        raise FileNotFoundError(f"cannot load {pipeline_cls.__name__} from {path!r}: {e}") from e
    for comp in pipe.components.values():
        if isinstance(comp, torch.nn.Module):
            comp.eval()
    den = _denoiser_of(pipe)
    for comp in pipe.components.values():
        if isinstance(comp, torch.nn.Module) and comp is not den:
            comp.requires_grad_(False)
    if enable_model_cpu_offload or offload:
        pipe.enable_model_cpu_offload()
        run_device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    else:
        run_device = torch.device(device or "cpu")
        pipe.to(run_device)
    vae = getattr(pipe, "vae", None)
    if vae_slicing and vae is not None:
        vae.enable_slicing()
    if vae_tiling and vae is not None:
        vae.enable_tiling()
    if gradient_checkpointing and den is not None and hasattr(den, "enable_gradient_checkpointing"):
        den.enable_gradient_checkpointing()
    from diffusers.utils import is_xformers_available

    xformers_ok = is_xformers_available() and run_device.type == "cuda"
    if attention == "xformers" and not xformers_ok:
        raise ValueError("attention='xformers' needs the xformers package and a CUDA device; use 'sdpa'")
    backend = "xformers" if attention == "xformers" or (attention == "auto" and xformers_ok) else "sdpa"
    if backend == "xformers":
        pipe.enable_xformers_memory_efficient_attention()
    pipe.rewardflow_attention = backend
    return pipe


# ---------------------------------------------------------------------------------------------- VAE
def _vae_stats(vae, like: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float, float]:
    """(mean, std, scaling) of the latent normalization in ``vae.config``: ``latents_mean`` / ``latents_std`` when
    present (some SDXL VAEs), else ``shift_factor`` (SD3, FLUX; 0 when absent) and std 1."""
    cfg = vae.config
    scaling = float(cfg.scaling_factor)
    lm, ls = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    if lm is not None and ls is not None:
        shape = (1, -1) + (1,) * (like.ndim - 2)
        mean = torch.tensor(lm, device=like.device, dtype=like.dtype).view(shape)
        std = torch.tensor(ls, device=like.device, dtype=like.dtype).view(shape)
        return mean, std, scaling
    return float(getattr(cfg, "shift_factor", None) or 0.0), 1.0, scaling


def vae_decode(vae, latents: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """Differentiable decode of denoiser latents to pixels in [0, 1], undoing the latent normalization exactly as
    the diffusers pipelines do before ``vae.decode`` (``latents / scaling_factor + shift_factor``, or
    ``latents * latents_std / scaling_factor + latents_mean``), then ``(x / 2 + 0.5).clamp(0, 1)`` as
    ``VaeImageProcessor.postprocess`` does. Slicing / tiling follow ``vae.enable_slicing()`` / ``enable_tiling()``."""
    vdtype = next(vae.parameters()).dtype
    z = latents.to(vdtype)
    mean, std, scaling = _vae_stats(vae, z)
    z = z * std / scaling + mean
    x = vae.decode(z, return_dict=False)[0].float()
    x = x / 2 + 0.5
    return x.clamp(0, 1) if clamp else x


def vae_encode(vae, images: torch.Tensor, generator: torch.Generator | None = None,
               sample: bool = False) -> torch.Tensor:
    """Pixels in [0, 1] -> normalized denoiser latents (the inverse of :func:`vae_decode`): the posterior mean
    (``sample=False``) or a draw from it, then ``(z - shift) * scaling`` (or ``(z - mean) * scaling / std``)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"vae_encode expects images [B, 3, H, W] in [0, 1], got {tuple(images.shape)}")
    vdtype = next(vae.parameters()).dtype
    dist = vae.encode((images * 2 - 1).to(vdtype)).latent_dist
    z = dist.sample(generator) if sample else dist.mode()
    mean, std, scaling = _vae_stats(vae, z)
    return (z - mean) * scaling / std
