"""PickScore v1 (Kirstain et al. 2023, Pick-a-Pic, arXiv 2305.01569).

Official inference (yuvalkirstain/PickScore README): ``AutoModel.from_pretrained("yuvalkirstain/PickScore_v1")``
(a transformers ``CLIPModel``, ViT-H-14), processor ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (shortest edge 224
bicubic, centre crop 224, OpenAI mean/std; text padded/truncated to 77), score
``logit_scale.exp() * cos(f_txt, f_img)`` (~17-24 on SD-class images; Flow-GRPO divides by 26).

The CLIPProcessor's PIL path is replaced by the equivalent batched torch preprocessing, so the score is
differentiable in the pixels.
"""

from __future__ import annotations

import os

from rewardflow.rewards.base import register_reward
from rewardflow.rewards.clip import CLIPReward, load_transformers_backbone

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class PickScoreReward(CLIPReward):
    """``logit_scale.exp() * cos(f_img, f_txt)``."""

    def score(self, media, prompts):
        cos = self.cosine(media, prompts)
        return self.backbone.logit_scale().to(cos.device) * cos


def _has_processor(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "preprocessor_config.json"))


@register_reward("pickscore", description="PickScore v1: logit_scale.exp()*cos on transformers CLIP ViT-H-14")
def _pickscore(path: str = PICKSCORE_MODEL, processor: str | None = None, device="cpu",
               dtype=None) -> PickScoreReward:
    """``path``: the model (save_pretrained dir or hub id); ``processor``: tokenizer + image processor (default: the
    model directory when it holds a ``preprocessor_config.json``, else the official laion processor repo)."""
    path = str(path)
    processor = processor or (path if _has_processor(path) else PICKSCORE_PROCESSOR)
    bb = load_transformers_backbone(path, processor, device=device, dtype=dtype)
    return PickScoreReward(bb, name="pickscore")
