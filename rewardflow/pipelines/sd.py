"""Adapter for Stable Diffusion 1.x / 2.x and SD-Turbo (``StableDiffusionPipeline``).

The network is a ``UNet2DConditionModel`` conditioned on CLIP text hidden states; the parametrization
(``epsilon`` for SD 1.x / SD 2.x-base, ``v_prediction`` for SD 2.x-768) is read from the scheduler config.
Sampling uses DDIM (Song et al. 2021, eq. 12) on the model's own timestep spacing: the pipeline's scheduler is
replaced by ``DDIMScheduler.from_config(...)`` (as DDPO does, kvablack/ddpo-pytorch ``scripts/train.py``), so
``pipe(...)`` and :meth:`Generator.sample` run the same chain. DDIM's deterministic update is the Euler method of
the probability-flow ODE in the variance-exploding variables (Karras et al. 2022, Sec. 4 / eq. 4), so it reproduces
``EulerDiscreteScheduler`` exactly on the same grid when the chain ends at sigma 0 (``set_alpha_to_one=True`` for
Euler-type source schedulers, e.g. SD-Turbo's trailing one-step sampler).

Everything else (guidance, SDE log-probs, truncated gradients, LoRA) lives in :class:`Generator`.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from rewardflow.pipelines.base import UNET_BLOCK_CLASSES, Conditioning, Generator, StepOutput, prompt_list
from rewardflow.pipelines.loading import (
    load_diffusers_pipeline,
    note_sampler_substitution,
    parametrization_from_scheduler,
)
from rewardflow.pipelines.registry import register_generator
from rewardflow.pipelines.vae import vae_decode, vae_encode


def ddim_from(scheduler):
    """A ``DDIMScheduler`` with the source scheduler's training schedule and timestep spacing.

    ``clip_sample`` / ``thresholding`` are off (the ODE/SDE steps in :class:`Generator` do not clip); the final
    alpha is 1 (chain ends at sigma 0) for Euler-type schedulers, else the source's ``set_alpha_to_one``."""
    from diffusers import DDIMScheduler  # lazy: diffusers is a heavy import

    if isinstance(scheduler, DDIMScheduler) and not scheduler.config.clip_sample and not scheduler.config.thresholding:
        return scheduler
    cfg = dict(scheduler.config)
    name = type(scheduler).__name__
    to_one = True if "Euler" in name else bool(cfg.get("set_alpha_to_one", True))
    if name == "DDIMScheduler":
        note_sampler_substitution("DDIMScheduler with clip_sample / thresholding", "DDIMScheduler without them",
                                  "the ODE / SDE steps do not clip")
    else:
        note_sampler_substitution(name, "DDIMScheduler", "the same training schedule and timestep spacing; "
                                  "training, log-probs and sampling all use DDIM steps")
    return DDIMScheduler.from_config(cfg, clip_sample=False, thresholding=False, set_alpha_to_one=to_one)


@register_generator("sd", pipeline_classes=("StableDiffusionPipeline",),
                    description="Stable Diffusion 1.x / 2.x (UNet; epsilon or v_prediction; DDIM)")
class StableDiffusionGenerator(Generator):
    """Stable Diffusion 1.x / 2.x (and SD-Turbo with ``adapter="sd"``: then pass ``guidance_scale=0``, no CFG)."""

    pipeline_class = "StableDiffusionPipeline"
    lora_component = "unet"
    # the attention projections, as diffusers' examples/text_to_image/train_text_to_image_lora.py
    default_lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    shard_block_classes = UNET_BLOCK_CLASSES
    default_guidance_scale = 7.5  # StableDiffusionPipeline.__call__ default
    modality = "image"

    def __init__(self, pipe, guidance_scale: float | None = None, height: int | None = None,
                 width: int | None = None):
        self.pipe = pipe
        self.denoiser = pipe.unet
        self.scheduler = ddim_from(pipe.scheduler)
        pipe.scheduler = self.scheduler  # so pipe(...) runs the same chain as Generator.sample
        self.parametrization = parametrization_from_scheduler(self.scheduler)
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.guidance_scale = float(self.default_guidance_scale if guidance_scale is None else guidance_scale)
        default = int(pipe.unet.config.sample_size) * pipe.vae_scale_factor
        self.height, self.width = int(height or default), int(width or default)
        f = pipe.vae_scale_factor
        if self.height % f or self.width % f:
            raise ValueError(f"height and width must be multiples of the VAE factor {f}, got "
                             f"{self.height}x{self.width}")
        self._cache: dict[str, dict[str, torch.Tensor]] = {}
        self._ddim_prev: dict[tuple[float, float], float] = {}

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None, dtype=None, device=None,
                        guidance_scale: float | None = None, height: int | None = None, width: int | None = None,
                        **load_options) -> "StableDiffusionGenerator":
        """Load from a local ``save_pretrained`` directory or a hub id. ``load_options`` go to
        :func:`rewardflow.pipelines.loading.load_diffusers_pipeline` (offload, VAE slicing/tiling, gradient
        checkpointing, attention, ``variant``, component overrides)."""
        if path is None:
            raise ValueError(f"{cls.__name__} needs a model directory or hub id (e.g. stabilityai/sd-turbo)")
        pipe = load_diffusers_pipeline(cls.pipeline_class, path, dtype=dtype, device=device, **load_options)
        return cls(pipe, guidance_scale=guidance_scale, height=height, width=width)

    # ------------------------------------------------------------------ shapes, device
    @property
    def latent_shape(self) -> tuple[int, ...]:
        f = self.pipe.vae_scale_factor
        return (int(self.denoiser.config.in_channels), self.height // f, self.width // f)

    @property
    def device(self) -> torch.device:
        return self.pipe._execution_device

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def _encode_new(self, prompts: list[str]) -> list[dict[str, torch.Tensor]]:
        """One dict of embeddings per prompt, from the pipeline's own ``encode_prompt`` (tokenizer padding,
        clip_skip = None, attention mask per text-encoder config)."""
        emb, _ = self.pipe.encode_prompt(prompts, self.device, 1, False)
        return [{"encoder_hidden_states": emb[i]} for i in range(len(prompts))]

    def _embeds(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            for p, e in zip(missing, self._encode_new(missing)):
                self._cache[p] = e
        return {k: torch.stack([self._cache[p][k] for p in prompts]) for k in self._cache[prompts[0]]}

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Text embeddings, cached per prompt; the unconditional branch is the empty prompt, as the pipeline
        uses when no negative prompt is given."""
        prompts = prompt_list(prompts)
        return Conditioning(prompts, self._embeds(prompts), self._uncond(len(prompts)))

    def _uncond(self, n: int) -> dict[str, torch.Tensor]:
        return self._embeds([""] * n)

    # ------------------------------------------------------------------ network
    def _forward(self, x, model_t, embeds):
        dt = self.dtype  # the text encoder may be fp16 under a fp32 (fully fine-tuned) UNet
        return self.denoiser(x.to(dt), model_t, encoder_hidden_states=embeds["encoder_hidden_states"].to(dt),
                             return_dict=False)[0]

    # ------------------------------------------------------------------ DDIM grid
    def timesteps(self, steps: int) -> torch.Tensor:
        grid = super().timesteps(steps)
        # DDIMScheduler.step goes from t to t - num_train_timesteps // steps, which is the next grid point except
        # for "trailing" / "linspace" spacings whose step count does not divide 1000; remember DDIM's target per
        # grid transition (keyed by the transition, so log_prob of a stored chain uses the same one)
        stride = self.num_train_timesteps // steps
        for t, t_next in zip(grid[:-1].tolist(), grid[1:].tolist()):
            self._ddim_prev[(t, t_next)] = max(t - stride, -1.0)
        return grid

    def step(self, out, x, t, t_next, *args, **kwargs) -> StepOutput:
        """The base DDIM step (:meth:`Generator.step`) towards DDIM's own previous timestep (see
        :meth:`timesteps`)."""
        t_next = self._ddim_prev.get((float(t), float(t_next)), float(t_next))
        return super().step(out, x, t, t_next, *args, **kwargs)

    # ------------------------------------------------------------------ VAE
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return vae_decode(self.pipe.vae, latents)

    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return vae_encode(self.pipe.vae, images.to(self.device), generator).to(self.dtype)


@register_generator("sd-turbo", pipeline_classes=("StableDiffusionPipeline",), name_pattern=r"turbo",
                    description="SD-Turbo (adversarially distilled SD 2.1): no guidance, one step by default")
class SDTurboGenerator(StableDiffusionGenerator):
    """SD-Turbo: the SD adapter with the model card's defaults, ``guidance_scale=0.0`` (no classifier-free guidance;
    any value <= 1 is the same, see :meth:`Generator.predict`) and one sampler step. Chosen automatically for a
    model whose name contains "turbo"; ``adapter="sd-turbo"`` forces it."""

    default_guidance_scale = 0.0  # stabilityai/sd-turbo model card: pipe(prompt, num_inference_steps=1, guidance_scale=0.0)
    run_defaults = {"steps": 1}
