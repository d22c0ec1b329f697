"""lambda-Harmonic reward of RPO (Miao et al., "Subject-driven Text-to-Image Generation via Preference-based
Reinforcement Learning", arXiv 2407.12164, Sec. 3; andrew-miao/RPO ``evaluation_metrics.py``
``RewardModel.mix_up_similarity_fn``).

    I = (mean_r cos(f_ref_r, f_img) + 1) / 2        image-image similarity to the subject's reference images
    T = (cos(f_txt, f_img) + 1) / 2                  image-text similarity
    R = 1 / (lambda / (I + 1e-8) + (1 - lambda) / (T + 1e-8))     (weighted harmonic mean; RPO default lambda 0.3)

The official encoder is ALIGN base (``kakaobrain/align-base``, transformers ``AlignModel``); any dual encoder of
:mod:`rewardflow.rewards.clip` works. Reference-image embeddings are computed once and cached.
"""

from __future__ import annotations

import glob
import os
from typing import Sequence

import torch

from rewardflow.io.images import open_image
from rewardflow.rewards.base import Reward, register_reward
from rewardflow.rewards.clip import CLIPBackbone, load_clip_backbone

ALIGN_MODEL = "kakaobrain/align-base"
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def read_reference_images(references: str | os.PathLike | Sequence[str | os.PathLike]) -> list:
    """A directory, a glob or a list of image files -> ``PIL.Image`` list as decoded (scored through the backbone's
    official file preprocessing, as RPO's ``evaluation_metrics.py`` feeds its processor)."""
    if isinstance(references, (str, os.PathLike)):
        ref = str(references)
        if os.path.isdir(ref):
            files = sorted(f for f in glob.glob(os.path.join(ref, "*")) if f.lower().endswith(_IMAGE_EXTS))
        else:
            files = sorted(glob.glob(ref)) if any(c in ref for c in "*?[") else [ref]
    else:
        files = [str(f) for f in references]
    if not files:
        raise FileNotFoundError(f"no reference images found in {references!r} (png/jpg/webp)")
    for f in files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"reference image not found: {f}")
    return [open_image(f) for f in files]


class LambdaHarmonicReward(Reward):
    name = "lambda_harmonic"
    modality = "image"
    differentiable = True
    file_input = True  # the backbone preprocesses files officially (CLIPBackbone.encode_image)
    heads = ("score", "image_sim", "text_sim")

    def __init__(self, backbone: CLIPBackbone, references, lam: float = 0.3):
        super().__init__()
        if not 0.0 <= float(lam) <= 1.0:
            raise ValueError(f"lambda_harmonic: lam must be in [0, 1], got {lam}")
        self.backbone = backbone
        self.lam = float(lam)
        self.set_references(references)

    @torch.no_grad()
    def set_references(self, references) -> None:
        """Cache the embeddings of the reference images: a ``[N, 3, H, W]`` tensor in [0, 1], a list of
        ``[3, H, W]`` tensors (any sizes), or files (a directory, glob or list of paths)."""
        if isinstance(references, torch.Tensor):
            if references.ndim != 4 or references.shape[1] != 3:
                raise ValueError(f"lambda_harmonic: references must be [N, 3, H, W], got {tuple(references.shape)}")
            feats = self.backbone.encode_image(references.float())
        else:
            is_files = isinstance(references, (str, os.PathLike)) or (
                isinstance(references, (list, tuple)) and references and not isinstance(references[0], torch.Tensor))
            if not references:
                raise ValueError("lambda_harmonic needs at least one reference image")
            if is_files:
                feats = self.backbone.encode_image(read_reference_images(references))  # official file path
            else:
                feats = torch.cat([self.backbone.encode_image(r[None].float()) for r in references])
        self.ref_features = feats.detach()  # [N, D], unit norm

    def score_heads(self, media, prompts):
        x = self.backbone.encode_image(media)  # [B, D]
        txt = self.backbone.encode_text(prompts)
        image_sim = ((x @ self.ref_features.to(x.device).T).mean(-1) + 1.0) / 2.0
        text_sim = ((x * txt).sum(-1) + 1.0) / 2.0
        score = 1.0 / (self.lam / (image_sim + 1e-8) + (1.0 - self.lam) / (text_sim + 1e-8))
        return {"score": score, "image_sim": image_sim, "text_sim": text_sim}


@register_reward("lambda_harmonic", description="RPO lambda-Harmonic: weighted harmonic mean of image-image and "
                                                "image-text similarity (ALIGN by default)")
def _lambda_harmonic(references=None, lam: float = 0.3, path: str | None = ALIGN_MODEL, model: str = "ViT-B-32",
                     pretrained: str | None = "openai", backend: str | None = None, processor: str | None = None,
                     device="cpu", dtype=None) -> LambdaHarmonicReward:
    if references is None:
        raise ValueError("lambda_harmonic needs references= (reference images of the subject: a directory, a glob, "
                         "a list of files or an [N, 3, H, W] tensor in [0, 1])")
    bb = load_clip_backbone(path, model=model, pretrained=pretrained, backend=backend, processor=processor,
                            device=device, dtype=dtype)
    return LambdaHarmonicReward(bb, references, lam=lam)
