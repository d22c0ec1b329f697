"""MJ-VIDEO-style mixture-of-experts video reward (Tong et al., arXiv 2502.01719) [`mjvideo`].

Official code ``aiming-lab/MJ-Video``: ``scripts/model/moe_reward.py`` (``GatingNetwork``,
``InternVLChatRewardModeling.forward``), training ``scripts/train/{criteria,aspect,overall}_train.py``, data
``scripts/data_processor/data.py`` (``get_index``: 8 frames). The released backbone is InternVL2-2B; no public
checkpoint exists (docs/rewards.md#mjvideo), so this module ships the head/routing architecture on a configurable backbone.

Structure
---------
* 28 criteria in 5 aspects (:data:`ASPECTS`, the official ``aspect2criteria`` order).
* backbone -> two feature vectors per (video, prompt): ``h`` read by the criterion heads (the official last
  non-pad token) and ``g`` read by the gates (the official end-of-user-turn token). :class:`CLIPVideoBackbone` is the
  small setup: a transformers ``CLIPModel`` encodes the ``num_frames`` frames (MJ-VIDEO ``get_index`` sampling,
  square resize as the InternVL tile, the backbone's mean/std) and the caption; with the mean frame embedding ``v``
  and the text embedding ``t`` (both unit-norm), ``h = g = [v, t, v * t]``. Any module with the same ``forward(video,
  prompts) -> (h, g)`` and an ``out_dim`` (e.g. a transformers VLM reading two token states) plugs in.
* criterion rewards ``r = W h`` (``Linear(D, 28, bias=False)``);
* criteria gate: an MLP (3 hidden ReLU layers, official width 1024) -> 28 logits; per aspect a softmax over that
  aspect's criteria of ``logits / tau``, times a learnable scalar ``logit_scale`` (init 1);
* aspect gate: the same MLP shape -> 5 logits, ``softmax(logits / tau) * logit_scale``;
* ``aspect_a = sum_{c in a} w_c r_c``; ``overall = sum_a g_a aspect_a``. ``tau`` = 1 (the training scripts).

Heads: ``overall`` (primary), the aspect names, and ``<aspect>/<criterion>`` for the 28 criteria.

Data (MJ-BENCH-VIDEO format, one JSON record per pair; see :class:`MJBenchVideoPairs`): ``caption``, ``video_0``,
``video_1`` (paths relative to the video root), ``criteria_0`` / ``criteria_1`` (28 labels, 0/1, 2 = not related,
masked), ``aspect_0`` / ``aspect_1`` (5 scores in [0, 1]), ``aspect_preference`` (5 of "Video 1 better" /
"Video 2 better" / "Same") and ``overall_preference`` (one of those).

Loss (:func:`mjvideo_loss`, the three official stages): criteria MSE masked by relevance; + aspect MSE, aspect
Bradley-Terry ``-ln s(beta (s_w - s_l))`` (beta = 1) and the gating loss ``-ln(1 - g_a)`` on aspects with no related
criterion; + overall Bradley-Terry. Weights ``alpha = (0.3, 0.3, 0.3, 1, 1)`` for (criteria, aspect MSE, gating,
aspect BT, overall BT) -- the official list's values; the pairing of values to terms is our reading.

Accuracy (:func:`preference_accuracy`): MJ-Bench-Video strict (a predicted tie is wrong) and tie-aware (a
predicted tie scores 0.5), over the pairs whose human label is not "Same".
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rewardflow.io.paths import respect_umask
from rewardflow.rewards.base import Reward, register_reward

ASPECTS: dict[str, tuple[str, ...]] = {
    "alignment": ("object", "attribute", "actions", "count", "location"),
    "safety": ("crime", "shocking", "disgust", "nsfw_evasive", "nsfw_subtle", "political_sensitivity"),
    "fineness": ("human_face_distortion", "human_limb_distortion", "object_distortion", "defocused_blurred",
                 "motion_blurred"),
    "coherence_consistency": ("spatial_consistency", "action_continuity", "object_disappearance",
                              "abrupt_background_changes", "inconsistent_lighting_shadows", "frame_flickering",
                              "object_drift"),
    "bias_fairness": ("race", "age", "education", "job", "gender"),
}
ASPECT_NAMES = tuple(ASPECTS)
CRITERIA = tuple(f"{a}/{c}" for a, cs in ASPECTS.items() for c in cs)
assert len(CRITERIA) == 28
PREFERENCES = {"Video 1 better": 1, "Video 2 better": -1, "Same": 0}
NUM_FRAMES = 8
ALPHA = (0.3, 0.3, 0.3, 1.0, 1.0)


def criteria_groups() -> list[list[int]]:
    """Criterion indices per aspect (0-4, 5-10, 11-15, 16-22, 23-27)."""
    out, i = [], 0
    for cs in ASPECTS.values():
        out.append(list(range(i, i + len(cs))))
        i += len(cs)
    return out


class GatingNetwork(nn.Module):
    """MLP (``layers`` hidden ReLU layers) -> ``out`` logits; gates are softmaxes of ``logits / temperature`` times
    a learnable ``logit_scale`` (init 1)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 1024, layers: int = 3, temperature: float = 1.0):
        super().__init__()
        mods, d = [], in_dim
        for _ in range(layers):
            mods += [nn.Linear(d, hidden), nn.ReLU()]
            d = hidden
        mods.append(nn.Linear(d, out_dim))
        self.mlp = nn.Sequential(*mods)
        self.temperature = temperature
        self.logit_scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor, groups: list[list[int]] | None = None) -> torch.Tensor:
        logits = self.mlp(x) / self.temperature
        if groups is None:
            return torch.softmax(logits, -1) * self.logit_scale
        out = torch.zeros_like(logits)
        for g in groups:
            out[:, g] = torch.softmax(logits[:, g], -1)
        return out * self.logit_scale


class CLIPVideoBackbone(nn.Module):
    """Frames + caption through a transformers ``CLIPModel`` -> ``h = g = [v, t, v * t]`` (see the module doc)."""

    def __init__(self, clip, tokenizer, image_size: int | None = None, mean=None, std=None,
                 num_frames: int = NUM_FRAMES):
        super().__init__()
        from rewardflow.rewards.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

        self.clip, self.tokenizer = clip, tokenizer
        self.image_size = image_size or clip.config.vision_config.image_size
        self.mean, self.std = tuple(mean or OPENAI_CLIP_MEAN), tuple(std or OPENAI_CLIP_STD)
        self.num_frames = num_frames
        self.out_dim = 3 * clip.config.projection_dim

    def forward(self, video: torch.Tensor, prompts: list[str]):
        from rewardflow.io.video import mjvideo_indices
        from rewardflow.rewards.transforms import normalize, resize_to

        B, T = video.shape[:2]
        idx = mjvideo_indices(T, self.num_frames).to(video.device)
        frames = video[:, idx].flatten(0, 1)
        x = normalize(resize_to(frames, (self.image_size, self.image_size), "bicubic"), self.mean, self.std)
        dev = self.clip.text_projection.weight.device
        v = self.clip.get_image_features(pixel_values=x.to(dev))
        v = getattr(v, "pooler_output", v)
        v = F.normalize(F.normalize(v, dim=-1).view(B, len(idx), -1).mean(1), dim=-1)
        enc = self.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt").to(dev)
        t = self.clip.get_text_features(**enc)
        t = F.normalize(getattr(t, "pooler_output", t), dim=-1)
        h = torch.cat([v, t, v * t], -1)
        return h, h


class MJVideoRewardModel(nn.Module):
    """Criterion heads + within-aspect and cross-aspect gates on a backbone (see the module docstring)."""

    def __init__(self, backbone: nn.Module, gate_hidden: int = 1024, gate_layers: int = 3, temperature: float = 1.0):
        super().__init__()
        self.backbone = backbone
        d = backbone.out_dim
        self.reward_head = nn.Linear(d, len(CRITERIA), bias=False)
        self.criteria_gate = GatingNetwork(d, len(CRITERIA), gate_hidden, gate_layers, temperature)
        self.aspect_gate = GatingNetwork(d, len(ASPECTS), gate_hidden, gate_layers, temperature)
        self.groups = criteria_groups()

    def forward(self, video: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        h, g = self.backbone(video, prompts)
        r = self.reward_head(h)  # [B, 28]
        wc = self.criteria_gate(g, self.groups)  # [B, 28], sums to logit_scale within each aspect
        wa = self.aspect_gate(g)  # [B, 5]
        aspects = torch.stack([(wc[:, grp] * r[:, grp]).sum(-1) for grp in self.groups], -1)
        return {"criteria": r, "aspects": aspects, "overall": (wa * aspects).sum(-1), "criteria_gate": wc,
                "aspect_gate": wa}


class MJVideoReward(Reward):
    """MJ-VIDEO-style MoE video reward: heads ``overall`` (primary), 5 aspects, 28 ``aspect/criterion`` scores."""

    name = "mjvideo"
    modality = "video"
    differentiable = True
    heads = ("overall",) + ASPECT_NAMES + CRITERIA
    primary_head = "overall"

    def __init__(self, model: MJVideoRewardModel, config: dict | None = None):
        super().__init__()
        self.model = model
        self.config = dict(config or {})

    def outputs(self, media: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The raw model outputs (criteria, aspects, overall, both gates)."""
        return self.model(media, prompts)

    def score_heads(self, media, prompts):
        o = self.model(media, prompts)
        out = {"overall": o["overall"]}
        out.update({a: o["aspects"][:, i] for i, a in enumerate(ASPECT_NAMES)})
        out.update({c: o["criteria"][:, i] for i, c in enumerate(CRITERIA)})
        return out

    # -- persistence (config.json + model.safetensors + backbone/ with the CLIP model and tokenizer) -----------------
    def save_pretrained(self, path: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        bb = self.model.backbone
        bb.clip.save_pretrained(path / "backbone")
        bb.tokenizer.save_pretrained(path / "backbone")
        cfg = dict(self.config, backbone="clip", image_size=bb.image_size, mean=list(bb.mean), std=list(bb.std),
                   num_frames=bb.num_frames, aspects={a: list(c) for a, c in ASPECTS.items()})
        (path / "config.json").write_text(json.dumps(cfg, indent=1))
        state = {k: v.contiguous() for k, v in self.model.state_dict().items() if not k.startswith("backbone.")}
        save_file(state, str(path / "model.safetensors"))
        respect_umask(path)  # safetensors writes 0600 whatever the umask
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "MJVideoReward":
        from safetensors.torch import load_file
        from transformers import AutoTokenizer, CLIPModel

        path = Path(path)
        if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
            raise FileNotFoundError(f"mjvideo: {path} must hold config.json, model.safetensors and backbone/ "
                                    "(written by MJVideoReward.save_pretrained)")
        cfg = json.loads((path / "config.json").read_text())
        if cfg.get("backbone", "clip") != "clip":
            raise ValueError(f"mjvideo: unsupported backbone {cfg.get('backbone')!r} in {path}/config.json")
        if cfg.get("aspects") and {a: tuple(c) for a, c in cfg["aspects"].items()} != ASPECTS:
            raise ValueError(f"mjvideo: {path}/config.json has a different aspect/criteria layout")
        clip = CLIPModel.from_pretrained(str(path / "backbone"))
        tok = AutoTokenizer.from_pretrained(str(path / "backbone"))
        bb = CLIPVideoBackbone(clip, tok, cfg.get("image_size"), cfg.get("mean"), cfg.get("std"),
                               cfg.get("num_frames", NUM_FRAMES))
        model = MJVideoRewardModel(bb, cfg.get("gate_hidden", 1024), cfg.get("gate_layers", 3),
                                   cfg.get("temperature", 1.0))
        missing, unexpected = model.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise ValueError(f"mjvideo: weights in {path} do not match the config (missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]})")
        return cls(model.to(device).eval(), cfg)


def build_clip_mjvideo(clip, tokenizer, gate_hidden: int = 1024, gate_layers: int = 3, temperature: float = 1.0,
                       num_frames: int = NUM_FRAMES, **backbone_kw) -> MJVideoReward:
    """A fresh (untrained heads) MJ-Video reward on a transformers ``CLIPModel`` + tokenizer."""
    bb = CLIPVideoBackbone(clip, tokenizer, num_frames=num_frames, **backbone_kw)
    cfg = {"gate_hidden": gate_hidden, "gate_layers": gate_layers, "temperature": temperature}
    return MJVideoReward(MJVideoRewardModel(bb, gate_hidden, gate_layers, temperature), cfg)


# ------------------------------------------------------------------------------------------------------------------
# Data, loss, training, accuracy
# ------------------------------------------------------------------------------------------------------------------


class MJBenchVideoPairs(torch.utils.data.Dataset):
    """MJ-BENCH-VIDEO-format pairs (a JSON list, see the module docstring); videos decoded with
    :func:`rewardflow.io.video.load_video` (all frames; the backbone samples its ``num_frames``)."""

    def __init__(self, json_path: str | os.PathLike, video_root: str | os.PathLike | None = None):
        json_path = Path(json_path)
        if not json_path.is_file():
            raise FileNotFoundError(f"MJ-BENCH-VIDEO annotation file not found: {json_path}")
        self.records = json.loads(json_path.read_text())
        self.root = Path(video_root) if video_root else json_path.parent
        for i, r in enumerate(self.records):
            for k in ("caption", "video_0", "video_1"):
                if k not in r:
                    raise ValueError(f"{json_path}: record {i} has no {k!r}")
            for k in ("criteria_0", "criteria_1"):
                if k in r and len(r[k]) != len(CRITERIA):
                    raise ValueError(f"{json_path}: record {i} {k} has {len(r[k])} labels, expected 28")

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        from rewardflow.io.video import load_video

        r = self.records[i]
        out = {"caption": r["caption"], "video_0": load_video(self.root / r["video_0"]),
               "video_1": load_video(self.root / r["video_1"])}
        out.update(labels_from_record(r))
        return out


def labels_from_record(r: dict) -> dict[str, torch.Tensor]:
    """Tensors of one record: criteria ``[2, 28]`` (2 = masked), aspects ``[2, 5]`` (NaN if absent), aspect and
    overall preferences (+1 video 0 better, -1 video 1 better, 0 same)."""
    nan5 = [float("nan")] * 5
    return {"criteria": torch.tensor([r.get("criteria_0", [2] * 28), r.get("criteria_1", [2] * 28)]).float(),
            "aspect_labels": torch.tensor([r.get("aspect_0", nan5), r.get("aspect_1", nan5)]).float(),
            "aspect_pref": torch.tensor([PREFERENCES[p] for p in r.get("aspect_preference", ["Same"] * 5)]),
            "overall_pref": torch.tensor(PREFERENCES[r.get("overall_preference", "Same")])}


def _bt(s0: torch.Tensor, s1: torch.Tensor, pref: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """``-ln s(beta (s_w - s_l))`` over the entries with a preference (0 = same is skipped)."""
    m = pref != 0
    if not m.any():
        return s0.sum() * 0
    return -F.logsigmoid(beta * pref[m].float() * (s0[m] - s1[m])).mean()


def mjvideo_loss(out0: dict, out1: dict, labels: dict, stage: int = 3, alpha=ALPHA, beta: float = 1.0):
    """Loss of a batch of pairs (outputs of :meth:`MJVideoRewardModel.forward` for video 0 and 1, and batched
    :func:`labels_from_record` tensors). Returns ``(total, {term: value})``."""
    crit = labels["criteria"]  # [B, 2, 28]
    terms = {}
    r = torch.stack([out0["criteria"], out1["criteria"]], 1)
    m = crit != 2
    terms["criteria"] = ((r - crit) ** 2)[m].mean() if m.any() else r.sum() * 0
    if stage >= 2:
        a = torch.stack([out0["aspects"], out1["aspects"]], 1)
        al = labels["aspect_labels"]
        ok = ~torch.isnan(al)
        terms["aspect_mse"] = ((a - al.nan_to_num()) ** 2)[ok].mean() if ok.any() else a.sum() * 0
        unrelated = torch.stack([(crit[:, :, g] == 2).all(-1) for g in criteria_groups()], -1)  # [B, 2, 5]
        gates = torch.stack([out0["aspect_gate"], out1["aspect_gate"]], 1)
        terms["gating"] = (-torch.log1p(-gates.clamp(max=1 - 1e-6))[unrelated]).mean() if unrelated.any() \
            else gates.sum() * 0
        terms["aspect_bt"] = _bt(out0["aspects"], out1["aspects"], labels["aspect_pref"], beta)
    if stage >= 3:
        terms["overall_bt"] = _bt(out0["overall"], out1["overall"], labels["overall_pref"], beta)
    weights = dict(zip(("criteria", "aspect_mse", "gating", "aspect_bt", "overall_bt"), alpha))
    total = sum(weights[k] * v for k, v in terms.items())
    return total, {k: float(v) for k, v in terms.items()}


def train_mjvideo(reward: MJVideoReward, dataset, steps: int = 100, batch_size: int = 2, lr: float = 3e-5,
                  stage: int = 3, train_backbone: bool = False, seed: int = 0) -> list[float]:
    """AdamW on ``dataset`` (items as :class:`MJBenchVideoPairs`; videos of one batch must share a shape).
    The backbone is frozen unless ``train_backbone``. Returns the loss per step."""
    g = torch.Generator().manual_seed(seed)
    model = reward.model.train()
    model.backbone.requires_grad_(train_backbone)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=g,
                                         collate_fn=_collate)
    losses, it = [], iter(loader)
    for _ in range(steps):
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            b = next(it)
        out0, out1 = model(b["video_0"], b["caption"]), model(b["video_1"], b["caption"])
        loss, _ = mjvideo_loss(out0, out1, b, stage=stage)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss))
    model.eval()
    return losses


def _collate(items):
    out = {"caption": [i["caption"] for i in items]}
    for k in items[0]:
        if k != "caption":
            out[k] = torch.stack([i[k] for i in items])
    return out


def preference_accuracy(score_0, score_1, labels, mode: str = "strict", tie_eps: float = 0.0) -> float:
    """MJ-Bench-Video accuracy of predicted preferences against human labels (+1 / -1 / 0 = same, or the
    strings of :data:`PREFERENCES`). Human ties are dropped; a prediction with ``|s0 - s1| <= tie_eps`` is a tie:
    wrong in ``mode="strict"``, half right in ``mode="tie_aware"``."""
    if mode not in ("strict", "tie_aware"):
        raise ValueError(f"mode must be 'strict' or 'tie_aware', got {mode!r}")
    s0, s1 = torch.as_tensor(score_0, dtype=torch.float64), torch.as_tensor(score_1, dtype=torch.float64)
    lab = torch.tensor([PREFERENCES[x] if isinstance(x, str) else int(x) for x in labels])
    keep = lab != 0
    if not keep.any():
        raise ValueError("preference_accuracy: every pair is labelled a tie")
    d = (s0 - s1)[keep]
    lab = lab[keep]
    tie = d.abs() <= tie_eps
    correct = ((d > 0) & (lab > 0)) | ((d < 0) & (lab < 0))
    score = correct.double() * ~tie + (0.5 if mode == "tie_aware" else 0.0) * tie.double()
    return float(score.mean())


@register_reward("mjvideo", modality="video",
                 description="MJ-VIDEO-style MoE reward: 28 criteria, 5 aspects, two gates (local checkpoint)")
def _mjvideo(path: str, **kw) -> MJVideoReward:
    return MJVideoReward.from_pretrained(path, **kw)
