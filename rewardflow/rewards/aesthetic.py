"""LAION aesthetic predictor v2 ("improved-aesthetic-predictor"): ``MLP(f / ||f||)`` on the CLIP ViT-L/14 image
embedding, a 1-10 rating scale (SD1.5 outputs score about 5-6, LAION-Aesthetics subsets keep >= 5 / 6 / 6.5).

Source: christophschuhmann/improved-aesthetic-predictor ``simple_inference.py`` (class ``MLP``, ``normalized``);
the same head is reused by DDPO (kvablack/ddpo-pytorch ``ddpo_pytorch/aesthetic_scorer.py``) and Flow-GRPO.
Weights: ``sac+logos+ava1-l14-linearMSE.pth`` (a plain state dict with ``layers.{0,2,4,6,7}.{weight,bias}``,
3.7 MB) in that GitHub repository; the CLIP backbone is OpenAI ViT-L/14 (open_clip ``ViT-L-14`` / ``openai``, or a
transformers ``openai/clip-vit-large-patch14`` directory).

The official script preprocesses with PIL (``clip.load`` transform: Resize(224, bicubic) + CenterCrop + OpenAI
mean/std): files go through exactly that, whatever the CLIP backend (``mode="crop"``); generator tensors through the
same geometry in torch (:mod:`rewardflow.rewards.transforms`) so the score is differentiable (the AlignProp / DRaFT
variant). :class:`LinearMLPHead` is also the ImageReward head (``imagereward.py``).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from rewardflow.rewards.base import Reward, register_reward

AESTHETIC_WEIGHTS = "sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_URL = ("https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
                 "sac+logos+ava1-l14-linearMSE.pth")


class LinearMLPHead(nn.Module):
    """768 -> 1024 -> 128 -> 64 -> 16 -> 1 with dropouts 0.2 / 0.2 / 0.1 and **no activations** (the ReLUs are
    commented out in both official files), so it is an affine map of its input. Module names follow the official
    ``nn.Sequential`` (``layers.0``, ``layers.2``, ``layers.4``, ``layers.6``, ``layers.7``) so the official state
    dicts load as they are. Sources: improved-aesthetic-predictor ``simple_inference.py`` ``MLP``; THUDM/ImageReward
    ``ImageReward/ImageReward.py`` ``MLP``."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def load_state_dict_file(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` (or safetensors) of a state dict file, with a clear error when it is
    missing or is not a flat dict of tensors."""
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(path)
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{what} {path} is not a state dict of tensors (got {type(sd).__name__})")
    return sd


def load_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """``load_state_dict(strict=True)`` that names the missing / unexpected / mis-shaped keys in one message."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if shapes:
            parts.append(f"shape mismatches {shapes[:4]}")
        raise ValueError(f"{what} does not match the expected architecture: " + "; ".join(parts))
    module.load_state_dict(state_dict, strict=True)


def resolve_hub_file(path: str, filename: str, what: str) -> str:
    """``path`` is a file, a directory holding ``filename``, or a hub repo id (downloaded with huggingface_hub,
    honouring ``HF_HUB_OFFLINE`` and the local cache)."""
    from rewardflow.rewards.clip import looks_like_local_path

    path = os.path.expanduser(str(path))
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        return os.path.join(path, filename)  # existence checked by the caller with the full name
    if looks_like_local_path(path) or path.count("/") != 1:
        raise FileNotFoundError(f"{what} not found: {path}")
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(path, filename)
    except Exception as e:  # offline, unknown repo, missing file
        raise FileNotFoundError(f"could not fetch {filename} from the hub repo {path!r} ({type(e).__name__}: {e}). "
                                f"Offline? Download it and pass the local path") from e


class AestheticReward(Reward):
    """``MLP(normalize(clip_image_embedding(x)))`` with a frozen CLIP image tower (the text tower is unused)."""

    name = "aesthetic"
    modality = "image"
    differentiable = True
    file_input = True  # the backbone preprocesses files officially (CLIPBackbone.encode_image)

    def __init__(self, backbone, head: LinearMLPHead):
        super().__init__()
        self.backbone = backbone  # rewardflow.rewards.clip.CLIPBackbone: encode_image -> L2-normalised features
        self.head = head.to(device=backbone.device, dtype=torch.float32).eval().requires_grad_(False)

    def train(self, mode: bool = True):  # frozen reward: dropout stays off inside a trainer
        super().train(mode)
        self.backbone.train(False)
        self.head.eval()
        return self

    def score(self, media: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        emb = self.backbone.encode_image(media)  # [B, 768] float32, already divided by its L2 norm
        return self.head(emb).squeeze(-1)


def load_aesthetic_head(path: str | os.PathLike, input_size: int | None = None) -> LinearMLPHead:
    """The official ``sac+logos+ava1-l14-linearMSE.pth`` (``layers.*`` keys), loaded with ``weights_only=True``.
    ``path``: the file, a directory holding it, or a hub repo id that mirrors it."""
    file = resolve_hub_file(str(path), AESTHETIC_WEIGHTS, "aesthetic predictor weights")
    sd = load_state_dict_file(file, "aesthetic predictor weights")
    if input_size is None:
        first = sd.get("layers.0.weight")
        if first is None:
            raise ValueError(f"aesthetic predictor weights {file} have no 'layers.0.weight'; expected the official "
                             f"{AESTHETIC_WEIGHTS} state dict (keys layers.0/2/4/6/7.weight|bias), got "
                             f"{sorted(sd)[:6]}")
        input_size = first.shape[1]
    head = LinearMLPHead(input_size)
    load_strict(head, sd, f"aesthetic predictor weights {file}")
    return head


@register_reward("aesthetic", description="LAION aesthetic predictor v2: MLP over the normalised CLIP ViT-L/14 image "
                                          "embedding (1-10)")
def _aesthetic(path: str | os.PathLike | None = None, clip_path: str | None = None, model: str = "ViT-L-14",
               pretrained: str | None = "openai", backend: str | None = None, device="cpu",
               dtype=None) -> AestheticReward:
    """``path``: ``sac+logos+ava1-l14-linearMSE.pth`` (file, directory or hub mirror). CLIP: open_clip ``model`` with
    ``pretrained`` (tag or checkpoint file), or ``clip_path`` (an open_clip checkpoint file, or a transformers
    ``CLIPModel`` directory / hub id such as ``openai/clip-vit-large-patch14``)."""
    from rewardflow.rewards.clip import load_clip_backbone

    if path is None:
        raise FileNotFoundError(f"aesthetic needs path= to the predictor weights {AESTHETIC_WEIGHTS} "
                                f"(download: {AESTHETIC_URL})")
    head = load_aesthetic_head(path)
    backbone = load_clip_backbone(clip_path, model=model, pretrained=pretrained, backend=backend, mode="crop",
                                  device=device, dtype=dtype)
    m = backbone.model  # open_clip: visual.output_dim; transformers CLIPModel: config.projection_dim
    dim = getattr(getattr(m, "visual", None), "output_dim", None) or getattr(getattr(m, "config", None),
                                                                           "projection_dim", None)
    if dim is not None and dim != head.input_size:
        raise ValueError(f"aesthetic head expects {head.input_size}-d CLIP embeddings but the CLIP model "
                         f"{model}/{clip_path or pretrained} gives {dim}-d (the official head needs ViT-L/14)")
    return AestheticReward(backbone, head)
