"""Shared plumbing of the text-to-image rectified-flow transformer adapters (SD3 in ``sd3.py``, FLUX.1 in
``flux.py``): per-prompt text-encoder cache, differentiable VAE decode / encode with the VAE config's scaling and
shift factors (``vae_decode`` / ``vae_encode`` of ``vae.py``), and the image resolution. Not an adapter itself
(the leading underscore keeps the registry from importing it as one)."""

from __future__ import annotations

import torch

from rewardflow.pipelines.base import Generator
from rewardflow.pipelines.loading import parametrization_from_scheduler
from rewardflow.pipelines.vae import vae_decode, vae_encode


class FlowTransformerGenerator(Generator):
    """Shared plumbing of the text-to-image rectified-flow transformers (SD3, FLUX): per-prompt text cache,
    VAE decode / encode, resolution. Subclasses implement ``_encode_batch``, ``_forward`` and ``latent_shape``."""

    lora_component = "transformer"

    def __init__(self, pipe, guidance_scale: float, height: int | None, width: int | None,
                 max_sequence_length: int, device: str | torch.device | None = None):
        self.pipe = pipe if device is None else pipe.to(device)
        self.denoiser = pipe.transformer
        self.scheduler = pipe.scheduler
        self.parametrization = parametrization_from_scheduler(pipe.scheduler)
        if self.parametrization != "flow":
            raise ValueError(f"{type(self).__name__} needs a flow-matching scheduler, got "
                             f"{type(pipe.scheduler).__name__}")
        self.num_train_timesteps = int(pipe.scheduler.config.num_train_timesteps)
        self.guidance_scale = float(guidance_scale)
        self.max_sequence_length = int(max_sequence_length)
        self.vae_scale_factor = pipe.vae_scale_factor
        default = pipe.default_sample_size * pipe.vae_scale_factor
        self.height, self.width = int(height or default), int(width or default)
        multiple = self._pixel_multiple()
        if self.height % multiple or self.width % multiple:
            raise ValueError(f"height and width must be multiples of {multiple} for {type(self).__name__}, "
                             f"got {self.height}x{self.width}")
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3", "vae"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.requires_grad_(False).eval()
        self._cache: dict[str, dict[str, torch.Tensor]] = {}

    def _pixel_multiple(self) -> int:
        return self.vae_scale_factor * 2

    @property
    def device(self) -> torch.device:
        return self.pipe._execution_device

    # ---------------------------------------------------------------- text
    def _encode_batch(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            emb = self._encode_batch(missing)
            for i, p in enumerate(missing):
                self._cache[p] = {k: v[i] for k, v in emb.items()}
        return {k: torch.stack([self._cache[p][k] for p in prompts]) for k in self._cache[prompts[0]]}

    def clear_prompt_cache(self) -> None:
        self._cache.clear()

    # ---------------------------------------------------------------- VAE
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return vae_decode(self.pipe.vae, latents)

    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None,
                      sample: bool = False) -> torch.Tensor:
        """Pixels in [0, 1] -> latents (posterior mode, or a draw with ``sample=True``)."""
        return vae_encode(self.pipe.vae, images.to(self.device), generator, sample=sample).to(self.dtype)
