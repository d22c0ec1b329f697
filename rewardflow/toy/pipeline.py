"""The toy text-to-image rectified-flow model, packaged as a real diffusers ``DiffusionPipeline``.

Components are stock library classes, so the toy world exercises the same loading, LoRA and sampling code as a real
model:

* ``unet``: ``diffusers.UNet2DConditionModel`` on pixel-unshuffled images (32x32x3 -> 16x16x12, the "latent"),
  cross-attention to the text tokens, and the pooled text vector added to the time embedding
  (``class_embed_type="projection"``, a FiLM-style conditioning);
* ``text_encoder``: ``transformers.CLIPTextModel`` (2 layers, width 64) over a word-level tokenizer;
* ``tokenizer``: ``transformers.PreTrainedTokenizerFast`` around a ``tokenizers`` WordLevel model;
* ``scheduler``: ``diffusers.FlowMatchEulerDiscreteScheduler`` (shift 1).

There is no VAE: the "latent" is the image in [-1, 1] rearranged by ``pixel_unshuffle(2)``; decoding is the exact
inverse. ``ToyFlowPipeline.__call__`` is a plain diffusers-style sampling loop using ``scheduler.step``; tests check
that the library's generic adapter reproduces it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    UNet2DConditionModel,
)
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from rewardflow.toy.world import VOCAB

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")  # eos id 3 (CLIPTextModel treats eos id 2 as a legacy case)
MAX_TOKENS = 20


def build_tokenizer(words: list[str] | None = None) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the toy grammar: ``<bos> words <eos> <pad>...`` (max 20 tokens)."""
    if words is None:
        words = list(VOCAB)
    vocab = {w: i for i, w in enumerate(list(SPECIAL_TOKENS) + list(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=MAX_TOKENS, padding_side="right")


def build_text_encoder(vocab_size: int, width: int = 64, layers: int = 2) -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width,
                                        num_attention_heads=4, num_hidden_layers=layers,
                                        max_position_embeddings=MAX_TOKENS, pad_token_id=0, bos_token_id=2,
                                        eos_token_id=3, projection_dim=width))


PARAMETRIZATIONS = ("flow", "epsilon")


def build_scheduler(parametrization: str = "flow"):
    """``flow``: ``FlowMatchEulerDiscreteScheduler`` (shift 1), the shipped ``assets/toy/generator``.
    ``epsilon``: ``DDIMScheduler`` over the DDPM ``linear`` betas 1e-4..0.02 (Ho et al. 2020, Sec. 4), so alpha_bar at
    t = 999 is 4e-5 and x_999 keeps only 0.6% of the signal. (The SD ``scaled_linear`` betas keep 6.9%: on the mostly
    black toy images that shifts the noise mean by -0.06, a brightness cue that pure zero-mean noise lacks at
    sampling time; "Common Diffusion Noise Schedules and Sample Steps are Flawed", Lin et al. 2024, Sec. 3.1. Changing
    the betas alone did not fix the grey samples of the first epsilon model; ``eps_skip`` below did.)
    ``trailing`` spacing (a 4-step grid starts at t = 999, ibid. Sec. 3.3) and ``set_alpha_to_one`` so the last step
    returns the x0 prediction: ``assets/toy/generator_eps``."""
    if parametrization == "flow":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    if parametrization == "epsilon":
        return DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                             beta_schedule="linear", prediction_type="epsilon", clip_sample=False,
                             set_alpha_to_one=True, timestep_spacing="trailing", steps_offset=0)
    raise ValueError(f"unknown toy parametrization {parametrization!r}; expected one of {PARAMETRIZATIONS}")


def build_unet(width: int = 64, channels=(32, 64, 96), image_size: int = 32, factor: int = 2,
               parametrization_channels: int = 3) -> UNet2DConditionModel:
    c = parametrization_channels * factor * factor
    return UNet2DConditionModel(
        sample_size=image_size // factor, in_channels=c, out_channels=c, block_out_channels=tuple(channels),
        layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=width,
        norm_num_groups=16, attention_head_dim=8, class_embed_type="projection",
        projection_class_embeddings_input_dim=width)


class ToyFlowPipeline(DiffusionPipeline):
    """Text-to-image rectified flow on 32x32 toy scenes. ``pipe(prompts)`` -> images in [0, 1].

    The same pipeline class with a ``DDIMScheduler`` (epsilon prediction) is the toy *diffusion* model
    (``assets/toy/generator_eps``): the sampling loop below only calls ``scheduler.step``."""

    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(self, unet: UNet2DConditionModel, text_encoder: CLIPTextModel, tokenizer: PreTrainedTokenizerFast,
                 scheduler: FlowMatchEulerDiscreteScheduler | DDIMScheduler, eps_skip: bool = False):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
        # eps_skip (epsilon models; saved in model_index.json): the denoiser's output is still the noise prediction,
        # computed as eps = sqrt(alpha_bar) F + sqrt(1 - alpha_bar) x_t from the network output F (the skip
        # preconditioning of Karras et al. 2022, "Elucidating the Design Space", Sec. 5 / Table 1, here with the
        # coefficients of the v-parametrization, Salimans & Ho 2022, Sec. 4). Without it the tiny UNet has to copy x_t
        # to its output to predict eps at high noise; it does so with an error of ~0.1 per pixel, which the DDIM
        # x0 estimate amplifies by sqrt(1 - alpha_bar) / sqrt(alpha_bar) (~150 at t = 999): grey samples, 0% oracle.
        self.register_to_config(eps_skip=bool(eps_skip))

    @classmethod
    def from_config_dict(cls, width: int = 64, channels=(32, 64, 96), image_size: int = 32, seed: int = 0,
                         parametrization: str = "flow"):
        """A freshly initialised (random) toy pipeline (``parametrization``: see :func:`build_scheduler`)."""
        scheduler = build_scheduler(parametrization)
        torch.manual_seed(seed)
        tok = build_tokenizer()
        return cls(build_unet(width, channels, image_size), build_text_encoder(len(tok), width), tok, scheduler,
                   eps_skip=parametrization == "epsilon")

    # -- geometry ---------------------------------------------------------------------------------------
    @property
    def factor(self) -> int:
        return int(round(math.sqrt(self.unet.config.in_channels / 3)))

    @property
    def image_size(self) -> int:
        return self.unet.config.sample_size * self.factor

    def latent_shape(self) -> tuple[int, int, int]:
        s = self.unet.config.sample_size
        return (self.unet.config.in_channels, s, s)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [0,1] -> latents [B,12,H/2,W/2] in [-1,1] (exact inverse of ``decode_latents``)."""
        return F.pixel_unshuffle(images * 2 - 1, self.factor)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return (F.pixel_shuffle(latents, self.factor) * 0.5 + 0.5).clamp(0, 1)

    # -- text -----------------------------------------------------------------------------------------------
    def encode_prompt(self, prompts: list[str], device=None) -> dict[str, torch.Tensor]:
        device = device or self.unet.device
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=MAX_TOKENS, truncation=True,
                             return_tensors="pt")
        ids = {k: v.to(device) for k, v in ids.items()}
        out = self.text_encoder(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
        return {"encoder_hidden_states": out.last_hidden_state, "pooled": out.pooler_output,
                "encoder_attention_mask": ids["attention_mask"]}

    def denoise(self, x: torch.Tensor, timestep: torch.Tensor, embeds: dict[str, torch.Tensor],
                unet: UNet2DConditionModel | None = None) -> torch.Tensor:
        """One network call; ``unet`` overrides the pipeline's own (a reference copy, for example)."""
        out = (unet or self.unet)(x, timestep, encoder_hidden_states=embeds["encoder_hidden_states"],
                                  class_labels=embeds["pooled"].to(x.dtype),
                                  encoder_attention_mask=embeds["encoder_attention_mask"]).sample
        if not self.config.get("eps_skip", False):
            return out
        ab_all = self.scheduler.alphas_cumprod
        t = torch.as_tensor(timestep, device=ab_all.device).round().long().clamp(0, len(ab_all) - 1)
        ab = ab_all[t].to(x.device, torch.float32).reshape(-1, *([1] * (x.ndim - 1)))
        return (ab.sqrt() * out.float() + (1 - ab).sqrt() * x.float()).to(out.dtype)

    # -- the plain diffusers-style loop -------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_inference_steps: int = 8, guidance_scale: float = 1.0,
                 generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                 output_type: str = "pt"):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        device = self.unet.device
        cond = self.encode_prompt(prompts, device)
        if guidance_scale > 1.0:
            unc = self.encode_prompt([""] * len(prompts), device)
            cond = {k: torch.cat([unc[k], cond[k]]) for k in cond}
        if latents is None:
            latents = torch.randn((len(prompts), *self.latent_shape()), generator=generator).to(device)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for t in self.progress_bar(self.scheduler.timesteps):
            inp = torch.cat([latents] * 2) if guidance_scale > 1.0 else latents
            out = self.denoise(inp, t.expand(inp.shape[0]), cond)
            if guidance_scale > 1.0:
                u, c = out.chunk(2)
                out = u + guidance_scale * (c - u)
            latents = self.scheduler.step(out, t, latents).prev_sample
        images = self.decode_latents(latents)
        if output_type == "np":
            return (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
        return images
