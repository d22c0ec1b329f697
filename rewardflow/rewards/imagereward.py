"""ImageReward v1.0 (Xu et al., NeurIPS 2023, arXiv 2304.05977): a BLIP image-grounded text encoder and a linear MLP
head, standardised: ``reward = (mlp(h_cls) - 0.16717362830052426) / 1.0333394966054072`` (typically -2 ... +2).

Source: THUDM/ImageReward ``ImageReward/ImageReward.py`` (``ImageReward.score`` / ``score_gard``, ``MLP``,
``_transform``), ``ImageReward/utils.py`` (``load``), BLIP: ``train/src/models/blip_pretrain.py`` and salesforce/BLIP
``models/vit.py``, ``models/med.py``.

Architecture, rebuilt from transformers blocks:

* image: BLIP ViT-L/16 (``BLIP_Pretrain(vit="large")``: width 1024, 24 blocks, 16 heads, pre-norm, LayerNorm eps 1e-6,
  exact GELU, a final LayerNorm; all 197 tokens are returned) == transformers ``BlipVisionModel``;
* text: BLIP's "med" BERT (``med_config.json``: BERT-base with a cross-attention block in every layer whose keys /
  values read the ``encoder_width = 1024`` image tokens; no token-type embeddings) == transformers ``BlipTextModel``
  built with ``is_decoder=True`` (which adds the cross-attention layers) and run with ``is_decoder=False``
  (bidirectional self-attention), as BLIP's ITM / ImageReward call it;
* the feature is the text encoder's last hidden state at position 0 ([CLS]) after cross-attending to the image;
* head: :class:`~rewardflow.rewards.aesthetic.LinearMLPHead` (768 -> 1024 -> 128 -> 64 -> 16 -> 1, no activations).

Tokenizer: ``bert-base-uncased`` plus BLIP's ``[DEC]`` bos and ``[ENC]`` special tokens (BLIP ``init_tokenizer``;
vocab 30524 in ``med_config.json``), ``padding="max_length", truncation=True, max_length=35``. Preprocessing
(``ImageReward.py`` ``_transform``): Resize(224, bicubic) of the short side + CenterCrop(224) on the PIL image, then
RGB, ToTensor, OpenAI CLIP mean/std. Files go through exactly that
(:func:`~rewardflow.rewards.transforms.pil_transform`); generator tensors through its differentiable torch
equivalent (like ReFL's ``score_gard`` path), within ~2 uint8 levels of it.

Text caching: the text encoder cross-attends to the image, so its output depends on the pixels and cannot be cached;
only the tokenisation (``input_ids``, ``attention_mask``) is cached per prompt.

Weights: hub ``THUDM/ImageReward``: ``ImageReward.pt`` (a plain state dict: ``blip.visual_encoder.*``,
``blip.text_encoder.*``, ``blip.vision_proj.*``, ``blip.text_proj.*``, ``mlp.layers.*``) and ``med_config.json``.
The official names are mapped onto the transformers modules by :data:`RENAME_TABLE`.
"""

from __future__ import annotations

import json
import os
import re
from typing import Sequence

import torch
from torch import nn

from rewardflow.rewards.aesthetic import LinearMLPHead, load_state_dict_file, load_strict, resolve_hub_file
from rewardflow.rewards.base import Reward, register_reward
from rewardflow.rewards.clip import PreprocessSpec, check_local, parse_dtype

IMAGEREWARD_HUB_ID = "THUDM/ImageReward"
IMAGEREWARD_WEIGHTS = "ImageReward.pt"
MED_CONFIG = "med_config.json"
# ImageReward/ImageReward.py ``ImageReward.__init__``: statistics of the raw head output on the training set.
IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072
MAX_PROMPT_TOKENS = 35  # ImageReward.score: tokenizer(..., padding="max_length", truncation=True, max_length=35)

# Official ``ImageReward.pt`` key -> key of :class:`ImageRewardModel` (regex, replacement), applied in order; the
# first matching rule wins. BLIP's ViT is timm's layout; transformers' BlipVisionModel stores the same tensors
# (qkv fused in the same [q; k; v] order, heads split the same way) under other names. BLIP's med BERT and
# transformers' BlipTextModel share the layout, so the text encoder only changes prefix.
RENAME_TABLE: tuple[tuple[str, str], ...] = (
    (r"^blip\.visual_encoder\.cls_token$", "vision.embeddings.class_embedding"),
    (r"^blip\.visual_encoder\.pos_embed$", "vision.embeddings.position_embedding"),
    (r"^blip\.visual_encoder\.patch_embed\.proj\.", "vision.embeddings.patch_embedding."),
    (r"^blip\.visual_encoder\.blocks\.(\d+)\.norm1\.", r"vision.encoder.layers.\1.layer_norm1."),
    (r"^blip\.visual_encoder\.blocks\.(\d+)\.attn\.qkv\.", r"vision.encoder.layers.\1.self_attn.qkv."),
    (r"^blip\.visual_encoder\.blocks\.(\d+)\.attn\.proj\.", r"vision.encoder.layers.\1.self_attn.projection."),
    (r"^blip\.visual_encoder\.blocks\.(\d+)\.norm2\.", r"vision.encoder.layers.\1.layer_norm2."),
    (r"^blip\.visual_encoder\.blocks\.(\d+)\.mlp\.(fc[12])\.", r"vision.encoder.layers.\1.mlp.\2."),
    (r"^blip\.visual_encoder\.norm\.", "vision.post_layernorm."),
    (r"^blip\.text_encoder\.", "text."),
    (r"^mlp\.layers\.", "head.layers."),
)
# Official keys the reward does not use: BLIP's image-text-contrastive projections (not on the ImageReward path) and
# the text position-id buffer (rebuilt by transformers as a non-persistent buffer).
IGNORED_KEYS: tuple[str, ...] = (
    r"^blip\.vision_proj\.",
    r"^blip\.text_proj\.",
    r"^blip\.text_encoder\.embeddings\.position_ids$",
)


def convert_imagereward_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official ``ImageReward.pt`` state dict to :class:`ImageRewardModel` keys (:data:`RENAME_TABLE`);
    drops :data:`IGNORED_KEYS`; a key matching no rule is an error (it is not an ImageReward checkpoint)."""
    out, unknown = {}, []
    for key, value in state_dict.items():
        if any(re.match(p, key) for p in IGNORED_KEYS):
            continue
        for pattern, repl in RENAME_TABLE:
            if re.match(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unexpected keys in the ImageReward checkpoint (expected the official blip.visual_encoder.*, "
                         f"blip.text_encoder.*, mlp.layers.* names): {unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
    return out


def _vision_config(state_dict: dict[str, torch.Tensor], num_heads: int | None):
    """BLIP ViT hyper-parameters read from the tensor shapes (``create_vit``: base 768 / 12 heads, large 1024 / 16
    heads, i.e. 64-d heads; LayerNorm eps 1e-6; mlp_ratio 4)."""
    from transformers import BlipVisionConfig

    prefix = "blip.visual_encoder."
    try:
        patch = state_dict[prefix + "patch_embed.proj.weight"]
        pos = state_dict[prefix + "pos_embed"]
    except KeyError as e:
        raise ValueError(f"the ImageReward checkpoint has no {e.args[0]!r}: expected the official ImageReward.pt "
                         f"(blip.visual_encoder.* keys), got {sorted(state_dict)[:6]}") from None
    width, patch_size = patch.shape[0], patch.shape[-1]
    grid = int(round((pos.shape[1] - 1) ** 0.5))
    if grid * grid != pos.shape[1] - 1:
        raise ValueError(f"blip.visual_encoder.pos_embed has {pos.shape[1]} positions, not 1 + a square grid")
    depth = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(re.escape(prefix) + r"blocks\.(\d+)\.", k)))
    mlp = state_dict[prefix + "blocks.0.mlp.fc1.weight"].shape[0]
    return BlipVisionConfig(hidden_size=width, intermediate_size=mlp, num_hidden_layers=depth,
                            num_attention_heads=num_heads or max(width // 64, 1), image_size=grid * patch_size,
                            patch_size=patch_size, hidden_act="gelu", layer_norm_eps=1e-6, attention_dropout=0.0)


def _text_config(med_config: dict, encoder_width: int):
    """transformers ``BlipTextConfig`` equivalent to BLIP's ``BertConfig.from_json_file(med_config)`` with
    ``encoder_width`` set to the vision width (``BLIP_Pretrain.__init__``)."""
    from transformers import BlipTextConfig

    if not med_config.get("add_cross_attention", False):
        raise ValueError("med_config.json must set add_cross_attention: true (BLIP's image-grounded text encoder)")
    if med_config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"unsupported position_embedding_type {med_config['position_embedding_type']!r} in "
                         "med_config.json (BLIP uses 'absolute')")
    return BlipTextConfig(
        vocab_size=med_config["vocab_size"], hidden_size=med_config["hidden_size"], encoder_hidden_size=encoder_width,
        intermediate_size=med_config["intermediate_size"], num_hidden_layers=med_config["num_hidden_layers"],
        num_attention_heads=med_config["num_attention_heads"],
        max_position_embeddings=med_config["max_position_embeddings"],
        hidden_act=med_config.get("hidden_act", "gelu"), layer_norm_eps=med_config.get("layer_norm_eps", 1e-12),
        hidden_dropout_prob=med_config.get("hidden_dropout_prob", 0.1),
        attention_probs_dropout_prob=med_config.get("attention_probs_dropout_prob", 0.1),
        pad_token_id=med_config.get("pad_token_id", 0), bos_token_id=None, eos_token_id=None, sep_token_id=None,
        is_decoder=True,  # builds the cross-attention layers; forward() runs with is_decoder=False (bidirectional)
    )


class ImageRewardModel(nn.Module):
    """BLIP ViT + image-grounded BLIP text encoder + linear head; ``forward(pixels, input_ids, attention_mask)`` ->
    raw (unstandardised) head output ``[B]``."""

    def __init__(self, vision_config, text_config):
        super().__init__()
        from transformers import BlipTextModel, BlipVisionModel

        self.vision = BlipVisionModel(vision_config)
        self.text = BlipTextModel(text_config, add_pooling_layer=False)
        self.head = LinearMLPHead(text_config.hidden_size)

    @property
    def image_size(self) -> int:
        return int(self.vision.config.image_size)

    def text_features(self, image_embeds: torch.Tensor, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor) -> torch.Tensor:
        """[CLS] state of the text encoder cross-attending to all image tokens (``ImageReward.score``)."""
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        out = self.text(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds,
                        encoder_attention_mask=image_atts, is_decoder=False)
        return out.last_hidden_state[:, 0, :]

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        image_embeds = self.vision(pixel_values=pixels).last_hidden_state
        feats = self.text_features(image_embeds, input_ids, attention_mask)
        return self.head(feats.to(self.head.layers[0].weight.dtype)).squeeze(-1)


class ImageRewardReward(Reward):
    """ImageReward: ``(head(h_cls(image, prompt)) - mean) / std``, differentiable w.r.t. the pixels."""

    name = "imagereward"
    modality = "image"
    differentiable = True
    file_input = True

    def __init__(self, model: ImageRewardModel, tokenizer, *, mean: float = IMAGEREWARD_MEAN,
                 std: float = IMAGEREWARD_STD, max_length: int = MAX_PROMPT_TOKENS, device=None, dtype=None):
        super().__init__()
        model.to(device=device, dtype=parse_dtype(dtype))
        model.head.to(torch.float32)  # the head runs on float features, as ImageReward.score (``.float()``)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.mean, self.std, self.max_length = float(mean), float(std), int(max_length)
        self._token_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def train(self, mode: bool = True):  # frozen reward: dropout stays off inside a trainer
        super().train(mode)
        self.model.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.model.vision.embeddings.patch_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.vision.embeddings.patch_embedding.weight.dtype

    def preprocess(self, images: torch.Tensor | Sequence) -> torch.Tensor:
        """Resize(short side, bicubic) + CenterCrop + OpenAI CLIP mean/std (ImageReward.py ``_transform``): on a
        float tensor ``[B, 3, H, W]`` the differentiable torch path, on ``PIL.Image`` files the official one."""
        spec = PreprocessSpec(size=self.model.image_size, mode="crop")
        return spec(images) if isinstance(images, torch.Tensor) else spec.files(images)

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids``, ``attention_mask`` ``[B, 35]``; each distinct prompt is tokenised once and cached (the
        encoder output itself depends on the image, so only the tokens can be cached)."""
        new = list(dict.fromkeys(p for p in prompts if p not in self._token_cache))
        if new:
            tok = self.tokenizer(new, padding="max_length", truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
            self._token_cache.update(zip(new, zip(tok["input_ids"], tok["attention_mask"])))
        ids = torch.stack([self._token_cache[p][0] for p in prompts]).to(self.device)
        mask = torch.stack([self._token_cache[p][1] for p in prompts]).to(self.device)
        return ids, mask

    def raw_score(self, media: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Head output before standardisation."""
        pixels = self.preprocess(media.to(self.device) if isinstance(media, torch.Tensor) else media)
        pixels = pixels.to(self.device, self.dtype)
        ids, mask = self.tokenize(prompts)
        return self.model(pixels, ids, mask)

    def score(self, media: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return (self.raw_score(media, prompts) - self.mean) / self.std


def _resolve_files(path: str | os.PathLike, med_config: str | os.PathLike | None) -> tuple[str, str]:
    path = os.path.expanduser(str(path))
    if os.path.isfile(path):
        weights = path
        med = med_config or os.path.join(os.path.dirname(weights), MED_CONFIG)
    else:
        weights = resolve_hub_file(path, IMAGEREWARD_WEIGHTS, "ImageReward checkpoint")
        med = med_config or resolve_hub_file(path, MED_CONFIG, "ImageReward med_config.json")
    for file, what in ((weights, "ImageReward checkpoint"), (med, "ImageReward med_config.json")):
        if not os.path.isfile(os.path.expanduser(str(file))):
            raise FileNotFoundError(f"{what} not found: {file} (the hub repo {IMAGEREWARD_HUB_ID} has "
                                    f"{IMAGEREWARD_WEIGHTS} and {MED_CONFIG}; pass their directory)")
    return weights, os.path.expanduser(str(med))


def load_blip_tokenizer(tokenizer: str | os.PathLike = "bert-base-uncased"):
    """BLIP ``init_tokenizer``: a BERT WordPiece tokenizer plus ``[DEC]`` (bos) and ``[ENC]`` special tokens.
    ``tokenizer``: a hub id or a local directory (``vocab.txt`` / ``tokenizer.json``)."""
    from transformers import BertTokenizer

    ref = str(tokenizer)
    check_local(ref, "BERT tokenizer directory")
    try:
        tok = BertTokenizer.from_pretrained(ref)
    except OSError as e:
        raise FileNotFoundError(f"could not load the BERT tokenizer {ref!r}: {e}. Offline? Pass tokenizer= a local "
                                "bert-base-uncased directory (vocab.txt)") from e
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


def load_imagereward(path: str | os.PathLike = IMAGEREWARD_HUB_ID, *, med_config: str | os.PathLike | None = None,
                     tokenizer: str | os.PathLike | None = None, vision_heads: int | None = None,
                     device=None, dtype=None) -> ImageRewardReward:
    """Load the official ImageReward v1.0.

    ``path``: ``ImageReward.pt``, a directory with ``ImageReward.pt`` + ``med_config.json``, or the hub id
    (default ``THUDM/ImageReward``). ``med_config``: overrides the config location. ``tokenizer``: the BERT tokenizer,
    a hub id or directory (default: the checkpoint's directory when it holds ``vocab.txt`` / ``tokenizer.json``,
    else ``bert-base-uncased`` as the official ``init_tokenizer``). ``vision_heads``: ViT heads (default width / 64,
    as BLIP ViT-B and ViT-L).
    """
    weights, med_file = _resolve_files(path, med_config)
    with open(med_file) as f:
        med = json.load(f)
    if tokenizer is None:  # a tokenizer saved next to the checkpoint (offline use), else the official one
        here = os.path.dirname(weights)
        has_tok = any(os.path.isfile(os.path.join(here, f)) for f in ("vocab.txt", "tokenizer.json"))
        tokenizer = here if has_tok else "bert-base-uncased"
    tok = load_blip_tokenizer(tokenizer)  # before the 1.8 GB checkpoint, so an offline hub fails fast
    state_dict = load_state_dict_file(weights, "ImageReward checkpoint")
    vision_cfg = _vision_config(state_dict, vision_heads)
    text_cfg = _text_config(med, encoder_width=vision_cfg.hidden_size)
    model = ImageRewardModel(vision_cfg, text_cfg)
    load_strict(model, convert_imagereward_state_dict(state_dict), f"ImageReward checkpoint {weights}")
    if len(tok) > text_cfg.vocab_size:
        raise ValueError(f"tokenizer {tokenizer!r} has {len(tok)} tokens (with [DEC], [ENC]) but med_config.json "
                         f"vocab_size is {text_cfg.vocab_size}; use bert-base-uncased")
    return ImageRewardReward(model, tok, device=device, dtype=dtype)


@register_reward("imagereward", description="ImageReward v1.0 (BLIP ViT-L/16 + cross-attention BERT + MLP), "
                                            "standardised")
def _imagereward(path: str | os.PathLike = IMAGEREWARD_HUB_ID, med_config: str | os.PathLike | None = None,
                 tokenizer: str | os.PathLike | None = None, vision_heads: int | None = None, device="cpu",
                 dtype=None) -> ImageRewardReward:
    return load_imagereward(path, med_config=med_config, tokenizer=tokenizer, vision_heads=vision_heads,
                            device=device, dtype=dtype)
