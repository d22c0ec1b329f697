"""The tiny CLIP-style reward model of the toy world (about 0.5 M parameters).

Image tower: three stages of 2x [conv3x3, GroupNorm, SiLU] + 2x2 average pooling (32/64/128 channels), adaptive
average pooling to 4x4 (keeps the spatial layout so positions are encodable), a linear map to the embedding.
Text tower: word embeddings + learned positions, a 2-layer pre-norm transformer, the ``<eos>`` token's state
through a linear map. Score: cosine similarity of the two L2-normalised embeddings.

Saved with diffusers' ``ModelMixin.save_pretrained``: ``config.json`` + ``diffusion_pytorch_model.safetensors``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(), nn.AvgPool2d(2))


class ToyCLIPModel(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, vocab_size: int = 40, embed_dim: int = 64, width: int = 64, channels=(32, 64, 128),
                 max_tokens: int = 20, image_size: int = 32, eos_token_id: int = 3, pad_token_id: int = 0):
        super().__init__()
        c = list(channels)
        self.image_tower = nn.Sequential(_stage(3, c[0]), _stage(c[0], c[1]), _stage(c[1], c[2]),
                                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(c[2] * 16, embed_dim))
        self.tok = nn.Embedding(vocab_size, width)
        self.pos = nn.Parameter(torch.zeros(max_tokens, width))
        layer = nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.text_tower = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.text_norm = nn.LayerNorm(width)
        self.text_proj = nn.Linear(width, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1/0.07), as CLIP
        nn.init.normal_(self.pos, std=0.02)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images in [0, 1], [B, 3, H, W] -> unit-norm embeddings. Resizing is differentiable (bilinear)."""
        s = self.config.image_size
        if images.shape[-2:] != (s, s):
            images = F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return F.normalize(self.image_tower(images * 2 - 1), dim=-1)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        pad = input_ids == self.config.pad_token_id
        h = self.tok(input_ids) + self.pos[: input_ids.shape[1]]
        h = self.text_norm(self.text_tower(h, src_key_padding_mask=pad))
        eos = (input_ids == self.config.eos_token_id).int().argmax(1)
        return F.normalize(self.text_proj(h[torch.arange(len(h)), eos]), dim=-1)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Cosine similarity per (image, caption) pair, [B]."""
        return (self.encode_image(images) * self.encode_text(input_ids)).sum(-1)
