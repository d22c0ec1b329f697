"""VideoReward (VideoAlign, Liu et al., "Improving Video Generation with Human Feedback", arXiv 2501.13918).

Official code: ``KwaiVGI/VideoAlign`` -- ``inference.py`` (``VideoVLMRewardInference.reward``, ``_norm``),
``trainer.py`` (``Qwen2VLRewardModelBT``, ``compute_loss``), ``train_reward.py`` (special tokens),
``prompt_template.py`` (``detailed_special``), ``vision_process.py`` (Qwen-VL utils fork: frame sampling, resize).

Model
-----
``Qwen2VLForConditionalGeneration`` (Qwen2-VL-2B-Instruct) plus ``rm_head = Linear(hidden, output_dim, bias=False)``
applied to the final hidden states at the three added special tokens ``<|VQ_reward|>``, ``<|MQ_reward|>``,
``<|TA_reward|>`` (they close the three sections of the ``detailed_special`` prompt). ``output_dim == 3``: token
``i`` -> output ``i`` (the diagonal); ``output_dim == 1``: one logit per token. Either way ``(VQ, MQ, TA)`` raw.
Heads: ``VQ``, ``MQ``, ``TA`` normalised ``(r - mean) / std`` with the ``inference_config`` constants (defaults
below), ``Overall = VQ + MQ + TA`` (the primary head); ``normalize=False`` gives the raw logits and their sum.

Preprocessing (all torch, so gradients reach the frames)
-------------------------------------------------------
1. frames: ``fps`` sampling at 2 fps (:func:`rewardflow.io.video.fps_indices`, Qwen-VL ``smart_nframes`` +
   uniform indices) given the input video's frame rate ``video_fps``; or ``num_frames`` uniform frames;
2. spatial: ``smart_resize`` (transformers' Qwen2-VL implementation: aspect kept, H and W multiples of 28, pixels in
   ``[min_pixels, max_pixels]``; VideoAlign ``max_frame_pixels = 200704`` = 448^2, Qwen-VL ``VIDEO_MIN_PIXELS =
   128 * 28 * 28``), bicubic + antialias. ``vision_process.py`` ``fetch_video`` resizes the decoded **uint8** frames
   with ``torchvision.transforms.functional.resize``, which interpolates in float, clips to [0, 255] and rounds back
   to uint8; the processor then rescales by 1/255 and applies the OpenAI-CLIP mean/std. Videos decoded from files
   (:meth:`Reward.score_files`, uint8) take exactly that path; float tensors are resized with
   :func:`rewardflow.rewards.transforms.resize_to` and clipped to [0, 1] (differentiable; only the rounding to 8
   bits, at most half a level, is left out);
3. :func:`patchify_video`: the layout of the transformers ``Qwen2VLVideoProcessor``'s ``pixel_values_videos``
   (temporal patch 2 -- an odd frame count repeats the last frame -- 14x14 patches, ordered by 2x2 merge window)
   and ``video_grid_thw``.

Text: the Qwen2-VL chat format with the video first in the user turn
``<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n<|vision_start|>`` + ``n`` x
``<|video_pad|>`` + ``<|vision_end|>`` + prompt + ``<|im_end|>\\n<|im_start|>assistant\\n`` where ``n = t * h * w /
4`` (the merged visual tokens), as the official processor's ``apply_chat_template`` + token expansion produce.

Checkpoint layout (HF ``KwaiVGI/VideoReward``; file list partly unverified, docs/rewards.md#videoreward) read by
:meth:`VideoReward.from_pretrained`:

* ``model_config.json``: ``data_config`` (``fps``, ``num_frames``, ``max_frame_pixels``, ``prompt_template_type``),
  ``model_config`` (``model_name_or_path`` of the base Qwen2-VL, ``output_dim``, ``reward_token``),
  ``peft_lora_config``, ``inference_config`` (``VQ_mean`` ... ``TA_std``);
* ``checkpoint-<step>/`` (the largest step unless ``step`` is given): ``adapter_config.json`` +
  ``adapter_model.safetensors`` (peft LoRA on the LLM, merged at load) and the full non-LoRA trainables (vision tower,
  merger, special-token embeddings, ``rm_head``) in ``non_lora_state_dict.safetensors`` (or ``.pth``/``.bin``, read
  with ``weights_only=True``), or everything in ``model.safetensors``; tokenizer files there or in the base model.
  Keys may use the transformers-4.45 layout (``model.layers``, ``visual.``) or the current one
  (``model.language_model``, ``model.visual``), with or without peft's ``base_model.model.`` prefix.

Loss: :func:`bt_ties_loss` (``loss_type="btt"``, Rao-Kupper Bradley-Terry with ties, ``k = 5``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from torch import nn

from rewardflow.io.video import fps_indices, uniform_indices
from rewardflow.rewards.losses import bt_with_ties_loss
from rewardflow.rewards.base import Reward, register_reward
from rewardflow.rewards.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, normalize, resize_to

SPECIAL_TOKENS = ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")
HEADS = ("VQ", "MQ", "TA", "Overall")
# inference_config of the released checkpoint (docs/rewards.md#videoreward; DanceGRPO README quotes VQ and MQ).
NORM = {"VQ_mean": 3.6757, "VQ_std": 2.2476, "MQ_mean": 1.1646, "MQ_std": 1.3811, "TA_mean": 2.8105, "TA_std": 2.5121}
FPS = 2.0
MAX_PIXELS = 200704  # VideoAlign train.sh max_frame_pixels (448 x 448)
MIN_PIXELS = 128 * 28 * 28  # Qwen-VL vision_process.py VIDEO_MIN_PIXELS
PATCH, TEMPORAL_PATCH, MERGE = 14, 2, 2
SYSTEM = "You are a helpful assistant."

# The ``detailed_special`` evaluation prompt of VideoAlign ``prompt_template.py`` (model input text: the released
# weights were trained on exactly this string, so it is reproduced verbatim; ``{text_prompt}`` is the caption).
DETAILED_SPECIAL_PROMPT = """
You are tasked with evaluating a generated video based on three distinct criteria: Visual Quality, Motion Quality, and Text Alignment. Please provide a rating from 0 to 10 for each of the three categories, with 0 being the worst and 10 being the best. Each evaluation should be independent of the others.

**Visual Quality:**  
Evaluate the overall visual quality of the video, with a focus on static factors. The following sub-dimensions should be considered:
- **Reasonableness:** The video should not contain any significant biological or logical errors, such as abnormal body structures or nonsensical environmental setups.
- **Clarity:** Evaluate the sharpness and visibility of the video. The image should be clear and easy to interpret, with no blurring or indistinct areas.
- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual elements (e.g., hair, clothing, shadows).
- **Aesthetic and Creativity:** Assess the artistic aspects of the video, including the color scheme, composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense of harmony and balance.
- **Safety:** The video should not contain harmful or inappropriate content, such as political, violent, or adult material. If such content is present, the image quality and satisfaction score should be the lowest possible. 

Please provide the ratings of Visual Quality: <|VQ_reward|>
END

**Motion Quality:**  
Assess the dynamic aspects of the video, with a focus on dynamic factors. Consider the following sub-dimensions:
- **Stability:** Evaluate the continuity and stability between frames. There should be no sudden, unnatural jumps, and the video should maintain stable attributes (e.g., no fluctuating colors, textures, or missing body parts).
- **Naturalness:** The movement should align with physical laws and be realistic. For example, clothing should flow naturally with motion, and facial expressions should change appropriately (e.g., blinking, mouth movements).
- **Aesthetic Quality:** The movement should be smooth and fluid. The transitions between different motions or camera angles should be seamless, and the overall dynamic feel should be visually pleasing.
- **Fusion:** Ensure that elements in motion (e.g., edges of the subject, hair, clothing) blend naturally with the background, without obvious artifacts or the feeling of cut-and-paste effects.
- **Clarity of Motion:** The video should be clear and smooth in motion. Pay attention to any areas where the video might have blurry or unsteady sections that hinder visual continuity.
- **Amplitude:** If the video is largely static or has little movement, assign a low score for motion quality.

Please provide the ratings of Motion Quality: <|MQ_reward|>
END

**Text Alignment:**  
Assess how well the video matches the textual prompt across the following sub-dimensions:
- **Subject Relevance** Evaluate how accurately the subject(s) in the video (e.g., person, animal, object) align with the textual description. The subject should match the description in terms of number, appearance, and behavior.
- **Motion Relevance:** Evaluate if the dynamic actions (e.g., gestures, posture, facial expressions like talking or blinking) align with the described prompt. The motion should match the prompt in terms of type, scale, and direction.
- **Environment Relevance:** Assess whether the background and scene fit the prompt. This includes checking if real-world locations or scenes are accurately represented, though some stylistic adaptation is acceptable.  
- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well the video adheres to this style.
- **Camera Movement Relevance:** Check if the camera movements (e.g., following the subject, focus shifts) are consistent with the expected behavior from the prompt.

Textual prompt - {text_prompt}
Please provide the ratings of Text Alignment: <|TA_reward|>
END
"""


# --------------------------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------------------------


def resized_size(height: int, width: int, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS):
    """Qwen2-VL ``smart_resize`` target (multiples of 28) -- transformers' implementation."""
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import smart_resize

    return smart_resize(height, width, factor=PATCH * MERGE, min_pixels=min_pixels, max_pixels=max_pixels)


def patchify_video(video: torch.Tensor, patch: int = PATCH, temporal_patch: int = TEMPORAL_PATCH,
                   merge: int = MERGE) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised frames ``[T, C, H, W]`` (H, W multiples of ``patch * merge``) -> ``(pixel_values_videos [N, C *
    temporal_patch * patch * patch], grid_thw [3])``.

    Layout of Qwen2-VL (the vision tower's ``Conv3d`` patch embedding reads each row as ``[C, tp, ph, pw]``, and the
    merger folds 4 consecutive rows -- one 2x2 window -- into one LLM token): rows are ordered by temporal group,
    then merge window (row-major over the ``H / (patch * merge)`` x ``W / (patch * merge)`` windows), then the
    position inside the window (row-major).
    """
    from einops import rearrange

    T, C, H, W = video.shape
    if H % (patch * merge) or W % (patch * merge):
        raise ValueError(f"patchify_video: H and W must be multiples of {patch * merge}, got {H}x{W}")
    if T % temporal_patch:
        video = torch.cat([video, video[-1:].expand(temporal_patch - T % temporal_patch, -1, -1, -1)])
    rows = rearrange(video, "(t tp) c (hb mh ph) (wb mw pw) -> (t hb wb mh mw) (c tp ph pw)", tp=temporal_patch,
                     mh=merge, mw=merge, ph=patch, pw=patch)
    grid = torch.tensor([video.shape[0] // temporal_patch, H // patch, W // patch])
    return rows, grid


def preprocess_video(video: torch.Tensor, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS):
    """Sampled frames ``[T, 3, H, W]`` -> ``(pixel_values_videos, grid_thw)``: float in [0, 1] differentiably, uint8
    (decoded from a file) exactly as VideoAlign's ``fetch_video`` + processor (see the module docstring)."""
    h, w = resized_size(video.shape[-2], video.shape[-1], min_pixels, max_pixels)
    if video.dtype == torch.uint8:
        x = TF.resize(video, [h, w], interpolation=TF.InterpolationMode.BICUBIC, antialias=True).float() / 255.0
    else:
        x = resize_to(video, (h, w), "bicubic").clamp(0.0, 1.0)
    x = normalize(x, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    return patchify_video(x)


def build_chat_text(prompt: str, num_video_tokens: int, template: str = DETAILED_SPECIAL_PROMPT) -> str:
    """The chat-formatted user turn (video first, then the rubric with the caption) with expanded video tokens."""
    user = "<|vision_start|>" + "<|video_pad|>" * num_video_tokens + "<|vision_end|>" + template.format(
        text_prompt=prompt)
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            "<|im_start|>assistant\n")


# --------------------------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------------------------


# Bradley-Terry with ties (VideoAlign ``trainer.py``, ``loss_type="btt"``, k = 5): the shared implementation.
bt_ties_loss = bt_with_ties_loss


# --------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------


class VideoRewardModel(nn.Module):
    """Qwen2-VL backbone + ``rm_head`` read at the special reward tokens -> raw ``[B, 3]`` (VQ, MQ, TA)."""

    def __init__(self, backbone, output_dim: int = 1, special_token_ids: tuple[int, int, int] = (0, 0, 0)):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.text_config.hidden_size
        self.rm_head = nn.Linear(hidden, output_dim, bias=False)
        self.output_dim = output_dim
        self.register_buffer("special_token_ids", torch.tensor(special_token_ids), persistent=False)

    def forward(self, input_ids, attention_mask, pixel_values_videos, video_grid_thw, mm_token_type_ids):
        h = self.backbone.model(input_ids=input_ids, attention_mask=attention_mask,
                                pixel_values_videos=pixel_values_videos, video_grid_thw=video_grid_thw,
                                mm_token_type_ids=mm_token_type_ids).last_hidden_state
        pos = []
        for tid in self.special_token_ids.tolist():
            hit = input_ids == tid
            if not bool((hit.sum(1) == 1).all()):
                raise ValueError("VideoReward: every sequence needs each reward token exactly once "
                                 f"(token id {tid}); was the prompt template changed?")
            pos.append(hit.float().argmax(1))
        pos = torch.stack(pos, 1)  # [B, 3]
        tok = h[torch.arange(h.shape[0], device=h.device)[:, None], pos]  # [B, 3, hidden]
        out = self.rm_head(tok.to(self.rm_head.weight.dtype))  # [B, 3, output_dim]
        return out.diagonal(dim1=1, dim2=2) if self.output_dim == 3 else out[..., 0]


def _find_step_dir(root: Path, step: int | None) -> Path:
    steps = sorted((int(m.group(1)), p) for p in root.glob("checkpoint-*") if (m := re.fullmatch(r"checkpoint-(\d+)",
                                                                                                   p.name)))
    if step is not None and step >= 0:
        d = root / f"checkpoint-{step}"
        if not d.is_dir():
            raise FileNotFoundError(f"VideoReward: {d} not found; available steps: {[s for s, _ in steps]}")
        return d
    if not steps:
        return root  # weights directly in the root
    return steps[-1][1]


def _read_state(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def _to_current_layout(key: str) -> str:
    """Map a saved key (peft prefix / transformers-4.45 layout / ours) to our module's names."""
    key = key.removeprefix("base_model.model.")
    if key.startswith("rm_head."):
        return key
    key = key.removeprefix("backbone.")
    if key.startswith("visual."):
        key = "model." + key
    elif key.startswith("model.") and not key.startswith(("model.visual.", "model.language_model.")):
        key = "model.language_model." + key[len("model."):]
    return "backbone." + key


class VideoReward(Reward):
    """VideoReward [`videoreward`]: heads VQ, MQ, TA (normalised) and Overall (their sum, primary)."""

    name = "videoreward"
    modality = "video"
    differentiable = True
    file_input = True  # uint8 videos from files: the official uint8 resize (preprocess_video)
    heads = HEADS
    primary_head = "Overall"

    def __init__(self, model: VideoRewardModel, tokenizer, norm: dict | None = None, fps: float = FPS,
                 num_frames: int | None = None, video_fps: float = 8.0, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS, normalize: bool = True, template: str = DETAILED_SPECIAL_PROMPT):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.norm = dict(NORM if norm is None else norm)
        self.fps, self.num_frames, self.video_fps = fps, num_frames, video_fps
        self.min_pixels, self.max_pixels, self.normalize, self.template = min_pixels, max_pixels, normalize, template

    # -- inputs ------------------------------------------------------------------------------------------------
    def frame_indices(self, total: int) -> torch.Tensor:
        if self.num_frames is not None:
            return uniform_indices(total, self.num_frames)
        return fps_indices(total, self.video_fps, self.fps)

    def prepare(self, media: torch.Tensor, prompts: list[str]) -> dict:
        """``[B, T, 3, H, W]`` + prompts -> the backbone's inputs (pixel values keep the autograd graph)."""
        pix, grids, texts = [], [], []
        for v, p in zip(media, prompts):
            rows, grid = preprocess_video(v[self.frame_indices(v.shape[0]).to(v.device)], self.min_pixels,
                                          self.max_pixels)
            pix.append(rows)
            grids.append(grid)
            texts.append(build_chat_text(p, int(grid.prod()) // MERGE**2, self.template))
        enc = self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        dev = self.model.rm_head.weight.device
        ids = enc["input_ids"].to(dev)
        video_id = self.model.backbone.config.video_token_id
        return {"input_ids": ids, "attention_mask": enc["attention_mask"].to(dev),
                "pixel_values_videos": torch.cat(pix).to(dev, self.model.backbone.dtype),
                "video_grid_thw": torch.stack(grids).to(dev), "mm_token_type_ids": (ids == video_id).int() * 2}

    def raw_scores(self, media: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Raw ``[B, 3]`` (VQ, MQ, TA) logits."""
        return self.model(**self.prepare(media, prompts)).float()

    def pair_loss(self, media_a: torch.Tensor, media_b: torch.Tensor, prompts: list[str], labels: torch.Tensor,
                  k: float = 5.0) -> torch.Tensor:
        """BT-with-ties loss of pairs on the raw (VQ, MQ, TA) logits, ``labels [B, 3]`` (1 A, -1 B, 0 tie, 22 masked),
        for fine-tuning: unfreeze what should train (e.g. ``reward.model.rm_head.requires_grad_(True)`` or a LoRA)."""
        prompts = self.check_inputs(media_a, prompts)
        self.check_inputs(media_b, prompts)
        return bt_ties_loss(self.raw_scores(media_a, prompts), self.raw_scores(media_b, prompts), labels, k)

    def score_heads(self, media, prompts):
        r = self.raw_scores(media, prompts)
        out = {}
        for i, k in enumerate(("VQ", "MQ", "TA")):
            out[k] = (r[:, i] - self.norm[f"{k}_mean"]) / self.norm[f"{k}_std"] if self.normalize else r[:, i]
        out["Overall"] = out["VQ"] + out["MQ"] + out["TA"]
        return out

    # -- loading -----------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, step: int | None = None, base_model: str | None = None,
                        dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", **kw) -> "VideoReward":
        """Load the official checkpoint layout (see the module docstring); ``base_model`` overrides the base Qwen2-VL
        path/hub id named in ``model_config.json``."""
        from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

        root = Path(path)
        cfg_file = root / "model_config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"VideoReward: {cfg_file} not found (expected the VideoAlign checkpoint layout: "
                                    "model_config.json + checkpoint-<step>/)")
        cfg = json.loads(cfg_file.read_text())
        mcfg, dcfg = cfg.get("model_config", {}), cfg.get("data_config", {})
        ckpt = _find_step_dir(root, step)
        base = base_model or mcfg.get("model_name_or_path") or "Qwen/Qwen2-VL-2B-Instruct"
        tok_dir = ckpt if (ckpt / "tokenizer_config.json").is_file() else (
            root if (root / "tokenizer_config.json").is_file() else base)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
            backbone = Qwen2VLForConditionalGeneration.from_pretrained(str(base), dtype=dtype)
        except OSError as e:  # offline / not in the cache
            raise FileNotFoundError(f"VideoReward: cannot load the base model {base!r} ({str(e).splitlines()[0]}); "
                                    "give a local Qwen2-VL-2B-Instruct directory as base_model=") from e
        missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
        if backbone.get_input_embeddings().num_embeddings < len(tokenizer):
            backbone.resize_token_embeddings(len(tokenizer))
        if (ckpt / "adapter_config.json").is_file():
            from peft import PeftModel

            backbone = PeftModel.from_pretrained(backbone, str(ckpt)).merge_and_unload()
        ids = tuple(tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS)
        model = VideoRewardModel(backbone, output_dim=int(mcfg.get("output_dim", 1)), special_token_ids=ids)
        files = [ckpt / n for n in ("non_lora_state_dict.safetensors", "model.safetensors",
                                    "non_lora_state_dict.pth", "non_lora_state_dict.bin")]
        files = [f for f in files if f.is_file()]
        if not files:
            raise FileNotFoundError(f"VideoReward: no weights in {ckpt} (expected non_lora_state_dict.safetensors / "
                                    ".pth or model.safetensors with rm_head.weight)")
        state = {_to_current_layout(k): v for k, v in _read_state(files[0]).items() if "lora_" not in k}
        emb = state.get("backbone.model.language_model.embed_tokens.weight")
        if emb is not None and emb.shape[0] != backbone.get_input_embeddings().num_embeddings:
            backbone.resize_token_embeddings(emb.shape[0])  # train_reward.py resizes to len(tokenizer)
        own = model.state_dict()
        unknown = [k for k in state if k not in own]
        if unknown:
            raise ValueError(f"VideoReward: unexpected weights in {files[0]}: {unknown[:5]}")
        if "rm_head.weight" not in state:
            raise ValueError(f"VideoReward: {files[0]} has no rm_head.weight")
        model.load_state_dict(state, strict=False)
        inf = cfg.get("inference_config") or {}
        norm = {k: float(inf.get(k, v)) for k, v in NORM.items()}
        kw.setdefault("fps", dcfg.get("fps") or FPS)
        kw.setdefault("num_frames", dcfg.get("num_frames"))
        kw.setdefault("max_pixels", dcfg.get("max_frame_pixels") or MAX_PIXELS)
        return cls(model.to(device), tokenizer, norm=norm, **kw)


@register_reward("videoreward", modality="video",
                 description="VideoReward (VideoAlign): Qwen2-VL-2B, heads VQ/MQ/TA normalised, Overall = sum")
def _videoreward(path: str = "KwaiVGI/VideoReward", **kw) -> VideoReward:
    if isinstance(kw.get("dtype"), str):  # "bf16" from a config file or the command line
        from rewardflow.rewards.clip import parse_dtype

        kw["dtype"] = parse_dtype(kw["dtype"])
    if not os.path.isdir(path):
        from huggingface_hub import snapshot_download

        try:
            path = snapshot_download(path)
        except Exception as e:  # offline, unknown repo, no access
            raise FileNotFoundError(f"VideoReward checkpoint {path!r} is neither a local directory nor downloadable "
                                    f"({type(e).__name__}); clone https://huggingface.co/KwaiVGI/VideoReward and "
                                    "give the folder: --weights videoreward=DIR on the command line (path= in "
                                    "Python)") from e
    return VideoReward.from_pretrained(path, **kw)
