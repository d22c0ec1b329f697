"""VLM-RM goal-baseline projection reward (Rocamonde et al., "Vision-Language Models are Zero-Shot Reward Models",
ICLR 2024, arXiv 2310.12921, Sec. 3; AlignmentResearch/vlmrm ``src/vlmrm/reward_model.py``).

With ``x`` the normalised CLIP image embedding, ``g`` the mean of the normalised goal-prompt embeddings and ``b`` the
mean of the normalised baseline-prompt embeddings (means not re-normalised, as in the official code),
``d = g - b`` and ``P = alpha * d d^T / |d|^2 + (1 - alpha) * I``:

    R(x) = 1 - 1/2 * |(x - g) P|^2

``alpha = 0`` gives ``1 - |x - g|^2 / 2`` (= cos(x, g) when ``g`` is a unit vector); ``alpha = 1`` keeps only the
component along the baseline -> goal direction. Preprocessing is the official one (``src/vlmrm/contrib/open_clip/
transform.py``): uint8 frames to float, a square (aspect-ignoring) bicubic resize of the float tensor to the model's
image size (antialiased, the overshoot not clipped), then the mean/std; files take that same path.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch

from rewardflow.rewards.base import Reward, register_reward
from rewardflow.rewards.clip import CLIPBackbone, load_clip_backbone


def _as_list(x: str | Sequence[str] | None) -> list[str]:
    if x is None:
        return []
    return [x] if isinstance(x, str) else list(x)


class VLMRMReward(Reward):
    """Goal-baseline projection reward. ``goal=None`` uses each sample's prompt as its (single) goal prompt."""

    name = "vlm_rm"
    modality = "image"
    differentiable = True
    file_input = True

    def __init__(self, backbone: CLIPBackbone, baseline: str | Sequence[str], goal: str | Sequence[str] | None = None,
                 alpha: float = 0.5):
        super().__init__()
        baseline = _as_list(baseline)
        if not baseline:
            raise ValueError("vlm_rm needs baseline= prompts describing the environment without the goal "
                             "(e.g. baseline='a humanoid robot' for the goal 'a humanoid robot kneeling')")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"vlm_rm: alpha must be in [0, 1], got {alpha}")
        self.backbone = backbone
        self.alpha = float(alpha)
        self.baseline = baseline
        self.goal = _as_list(goal) or None

    def _mean_embedding(self, prompts: list[str]) -> torch.Tensor:
        return self.backbone.encode_text(prompts).mean(0)

    def score(self, media, prompts):
        x = self.backbone.encode_image(media)  # [B, D], unit norm
        b = self._mean_embedding(self.baseline)  # [D]
        if self.goal is not None:
            g = self._mean_embedding(self.goal).expand_as(x)
        else:
            g = self.backbone.encode_text(prompts)  # per-sample goal = the sample's prompt
        d = g - b
        d_hat = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        v = x - g
        # v P = alpha * (v . d_hat) d_hat + (1 - alpha) * v    (P symmetric, row-vector convention)
        vp = self.alpha * (v * d_hat).sum(-1, keepdim=True) * d_hat + (1.0 - self.alpha) * v
        return 1.0 - 0.5 * vp.pow(2).sum(-1)


@register_reward("vlm_rm", description="VLM-RM goal-baseline projection reward 1-|(x-g)P_alpha|^2/2 (Rocamonde 2023)")
def _vlm_rm(baseline: str | Sequence[str] | None = None, goal: str | Sequence[str] | None = None, alpha: float = 0.5,
            path: str | None = None, model: str = "ViT-bigG-14", pretrained: str | None = "laion2b_s39b_b160k",
            backend: str | None = None, processor: str | None = None, device="cpu", dtype=None) -> VLMRMReward:
    if not _as_list(baseline):  # fail before loading a multi-GB model
        raise ValueError("vlm_rm needs baseline= prompts describing the environment without the goal "
                         "(e.g. baseline='a humanoid robot' for the goal 'a humanoid robot kneeling')")
    bb = load_clip_backbone(path, model=model, pretrained=pretrained, backend=backend, processor=processor,
                            mode="squash", device=device, dtype=dtype)
    bb.preprocess = replace(bb.preprocess, pil_resize=False)  # float-tensor resize, as the official transform
    return VLMRMReward(bb, baseline=baseline, goal=goal, alpha=alpha)
