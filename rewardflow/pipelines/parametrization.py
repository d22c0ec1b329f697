"""The parametrization math of a :class:`~rewardflow.pipelines.base.Generator`, in one place.

Everything that depends on whether a model predicts epsilon, v (v_prediction) or a flow velocity: the sampling grid
from the diffusers scheduler, forward noising, training targets, output conversion to (x0, eps), training-timestep
sampling, and one sampler step (DDIM with eta for diffusion, Euler ODE or Flow-GRPO's SDE for flow) with the
Gaussian log-probability of the step.

Math (docs/algorithms.md#shared-math):
  DDIM-eta step and its Gaussian policy (DDIM eq. 12/16), used by DDPO-style methods: docs/algorithms.md#ddim-eta;
  rectified-flow interpolant ``x_t = (1-t) x0 + t eps``, target ``eps - x0``: docs/algorithms.md#rectified-flow;
  log-probs averaged over all latent dimensions, computed in fp32: docs/algorithms.md#log-probs;
  Flow-GRPO's marginal-preserving SDE, ``sigma_t = a * sqrt(t / (1 - t))``: docs/algorithms.md#flow-sde.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

PARAMETRIZATIONS = ("epsilon", "v_prediction", "flow")

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class StepOutput:
    prev_sample: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor  # scalar std of the Gaussian step (0 for ODE steps)
    log_prob: torch.Tensor | None  # [B] fp32, mean over dims; None for deterministic steps


def _bcast(v: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(v, device=like.device, dtype=torch.float32)
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim)) if v.ndim else v


def shift_sigmas(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """The static time shift of SD3 (Esser et al. 2024, Sec. 5.3.2), ``shift * s / (1 + (shift - 1) * s)``: the
    formula ``FlowMatchEulerDiscreteScheduler`` applies to its table when ``use_dynamic_shifting`` is off
    (docs/algorithms.md#timestep-sampling). ``shift = 1`` is the identity."""
    if shift == 1.0:
        return sigma
    return shift * sigma / (1 + (shift - 1) * sigma)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std^2 I), averaged over every non-batch dimension, in fp32 (docs/algorithms.md#log-probs)."""
    x, mean = x.float(), mean.float()
    std = _bcast(std, x)
    lp = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    return lp.flatten(1).mean(1)



class ParametrizationMixin:
    """The schedule and parametrization half of :class:`~rewardflow.pipelines.base.Generator`.

    Uses ``parametrization`` ("epsilon", "v_prediction" or "flow"), ``scheduler`` (a diffusers scheduler) and
    ``num_train_timesteps``; adapters change the grid through :meth:`_set_timesteps_kwargs` (or override
    :meth:`timesteps` / :meth:`step` where their scheduler differs).
    """

    parametrization: str
    num_train_timesteps: int
    scheduler: Any

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
        """Model output -> (x0_hat, eps_hat), exact per parametrization
        (docs/algorithms.md#diffusion-parametrizations, docs/algorithms.md#rectified-flow)."""
        self._check_param()
        out, x = out.float(), x_t.float()
        if self.parametrization == "flow":
            s = _bcast(torch.as_tensor(t, device=x.device), x)
            return x - s * out, x + (1 - s) * out
        ab = _bcast(self._alpha_bar(torch.as_tensor(t, device=x.device)), x)
        if self.parametrization == "epsilon":
            return (x - (1 - ab).sqrt() * out) / ab.sqrt(), out
        return ab.sqrt() * x - (1 - ab).sqrt() * out, ab.sqrt() * out + (1 - ab).sqrt() * x

    @property
    def train_shift(self) -> float:
        """The shift of the flow *training* timesteps: the scheduler's static ``shift``, or 1 when the scheduler
        shifts dynamically (FLUX.1-dev, LTX-Video).

        This is what diffusers' training scripts get by looking sigmas up in the scheduler's init-time table
        (``train_dreambooth_lora_sd3.py``, ``train_dreambooth_lora_flux.py``; flow_grpo ``train_sd3_dpo.py``):
        the table is shifted with the static shift (3.0 for SD3 / SD3.5), and left unshifted when
        ``use_dynamic_shifting`` is on, since the resolution shift ``mu`` is only computed at sampling time
        (docs/algorithms.md#timestep-sampling)."""
        cfg = getattr(self.scheduler, "config", None) or {}
        if self.parametrization != "flow" or cfg.get("use_dynamic_shifting", False):
            return 1.0
        return float(cfg.get("shift", 1.0) or 1.0)

    def sample_t(self, batch: int, generator: torch.Generator | None = None,
                 dist: str = "logit_normal", shift: float | None = None) -> torch.Tensor:
        """Training timesteps.

        flow: ``u = sigmoid(n), n ~ N(0, 1)`` (SD3's logit-normal) or ``u ~ U(0, 1)`` (``dist="uniform"``),
        mapped through the training shift, ``sigma = shift * u / (1 + (shift - 1) * u)`` (``shift`` default:
        :attr:`train_shift`, i.e. 3.0 on SD3 / SD3.5: median sigma 0.75).
        diffusion: uniform integers in ``[0, num_train_timesteps)``."""
        if self.parametrization == "flow":
            if dist not in ("logit_normal", "uniform"):
                raise ValueError(f"dist must be 'logit_normal' or 'uniform', got {dist!r}")
            u = torch.rand(batch, generator=generator) if dist == "uniform" else \
                torch.sigmoid(torch.randn(batch, generator=generator))
            return shift_sigmas(u, self.train_shift if shift is None else float(shift))
        return torch.randint(0, self.num_train_timesteps, (batch,), generator=generator).float()

    # ------------------------------------------------------------------ one sampler step
    def step(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor | float, t_next: torch.Tensor | float,
             noise_level: float = 0.0, prev_sample: torch.Tensor | None = None,
             generator: torch.Generator | None = None, sigma_max: float | None = None,
             z: torch.Tensor | None = None) -> StepOutput:
        """One step from grid point t to t_next.

        flow: Euler ODE when ``noise_level == 0``, else Flow-GRPO's SDE step with a = noise_level
        (docs/algorithms.md#flow-sde).
        diffusion: DDIM with eta = noise_level (docs/algorithms.md#ddim-eta); eta = 0 is the deterministic DDIM ODE.
        If ``prev_sample`` is given, it is used instead of drawing noise (log-prob of a stored transition);
        ``z`` supplies the standard-normal draw (else it is drawn from ``generator``).
        """
        xf = x.float()
        t = float(t)
        t_next = float(t_next)
        if self.parametrization == "flow":
            dt = t_next - t  # negative
            if noise_level > 0:
                # at t = 1 the SDE's sqrt(t / (1 - t)) is infinite: flow_grpo uses the grid's second point there
                # (sd3_sde_with_logprob: sigma_max = sigmas[1]), which is t_next on the first step of a chain
                denom_sigma = t if t < 1.0 else (sigma_max if sigma_max is not None else t_next)
                std_t = noise_level * math.sqrt(t / max(1 - denom_sigma, 1e-8))
                v = out.float()
                mean = xf * (1 + std_t**2 / (2 * t) * dt) + v * (1 + std_t**2 * (1 - t) / (2 * t)) * dt
                std = std_t * math.sqrt(-dt)
            else:
                mean, std = xf + dt * out.float(), 0.0
        else:
            if noise_level > 0 and t_next < 0:
                # the last stochastic DDIM step goes to timestep 0, not to the scheduler's final alpha: ddpo-pytorch
                # clamps the previous timestep to [0, 999] (ddim_with_logprob.py), so the step keeps a Gaussian
                # (and a log-prob) even when set_alpha_to_one=True (SD-Turbo) would make it deterministic
                t_next = 0.0
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
