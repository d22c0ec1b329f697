"""HPSv2 and HPSv2.1 (Human Preference Score v2, Wu et al. 2023, arXiv 2306.09341).

Official scoring (tgxs002/HPSv2 ``hpsv2/img_score.py``): an open_clip ``ViT-H-14`` whose full weights were
fine-tuned on HPD v2, loaded from ``HPS_v2_compressed.pt`` / ``HPS_v2.1_compressed.pt`` (hub repo ``xswu/HPSv2``;
a torch pickle of fp16 tensors, the weights under the ``state_dict`` key); score = ``cos(f_img, f_txt)`` of the
normalised open_clip features (no logit scale). Eval preprocessing (``hpsv2/src/open_clip/transform.py``,
``image_transform(..., resize_longest_max=True)``): ``ToTensor`` first, then ``ResizeMaxSize`` on the float tensor
(longest side -> 224, bicubic, antialiased, the overshoot *not* clipped), zero pad to 224 x 224, OpenAI mean/std --
not a centre crop. That pipeline is differentiable as it stands, so files and generator tensors take the same path
and a file scores as with the official package (an RGBA file, which the official transform keeps as 4 channels and
then fails on, is scored on its RGB channels; a non-square file of longest side 224 is padded, see
:mod:`rewardflow.rewards.transforms`).

The architecture is built with ``pretrained=None`` and only the HPS state dict is loaded (the official loader first
downloads the laion2B base weights and then overwrites all of them).
"""

from __future__ import annotations

import os

import torch

from rewardflow.rewards.base import register_reward
from rewardflow.rewards.clip import (CLIPReward, OpenCLIPBackbone, PreprocessSpec, build_open_clip_model,
                                     looks_like_local_path)

HPS_HUB_REPO = "xswu/HPSv2"
HPS_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
HPS_MODEL = "ViT-H-14"


def resolve_hps_checkpoint(path: str | os.PathLike | None, version: str) -> str:
    """``path``: the checkpoint file, a directory holding the official file name, or a hub repo id (default
    ``xswu/HPSv2``, fetched with ``huggingface_hub``)."""
    if version not in HPS_FILES:
        raise ValueError(f"unknown HPS version {version!r}; use one of {sorted(HPS_FILES)}")
    filename = HPS_FILES[version]
    ref = str(path) if path is not None else HPS_HUB_REPO
    if os.path.isfile(ref):
        return ref
    if os.path.isdir(ref):
        file = os.path.join(ref, filename)
        if not os.path.isfile(file):
            raise FileNotFoundError(f"HPS {version} checkpoint not found: {file} (download {filename} from the hub "
                                    f"repo {HPS_HUB_REPO})")
        return file
    if looks_like_local_path(ref):
        raise FileNotFoundError(f"HPS {version} checkpoint not found: {ref} (expected the file {filename} or a "
                                "directory that holds it)")
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(ref, filename)
    except Exception as e:  # offline, missing repo/file, ...
        name = "hpsv2" if version == "v2.0" else "hpsv2.1"
        raise FileNotFoundError(f"could not fetch {filename} from hub repo {ref!r}: {e}. Offline? Download it and "
                                f"give its path: --weights {name}=/path/to/{filename} on the command line (path= in "
                                "Python)") from e


def load_hps_state_dict(file: str) -> dict[str, torch.Tensor]:
    """The official checkpoint: ``{"state_dict": {name: fp16 tensor}}`` (a DDP ``module.`` prefix is dropped)."""
    ckpt = torch.load(file, map_location="cpu", weights_only=True)
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not sd:
        raise ValueError(f"{file} is not an HPS checkpoint: expected a dict with a 'state_dict' of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_hps_backbone(path: str | None = None, version: str = "v2.1", *, model: str = HPS_MODEL, device=None,
                      dtype=None) -> OpenCLIPBackbone:
    import open_clip

    file = resolve_hps_checkpoint(path, version)
    clip_model = build_open_clip_model(model)
    sd = load_hps_state_dict(file)
    own = clip_model.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    wrong = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(f"{file} does not match open_clip {model}: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, wrong shapes {wrong[:5]} (is it an HPS {version} checkpoint for {model}?)")
    clip_model.load_state_dict(sd)
    size = clip_model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    # ToTensor, ResizeMaxSize on the float tensor (no clipping), OpenAI mean/std: files and tensors alike
    spec = PreprocessSpec(size=size, mode="pad", pil_resize=False)
    return OpenCLIPBackbone(clip_model, open_clip.get_tokenizer(model), spec, device=device, dtype=dtype,
                            name=f"HPS {version} ({file})")


@register_reward("hpsv2", description="HPSv2.0 cosine on open_clip ViT-H-14 (xswu/HPSv2 HPS_v2_compressed.pt)")
def _hpsv2(path: str | None = None, model: str = HPS_MODEL, device="cpu", dtype=None) -> CLIPReward:
    bb = load_hps_backbone(path, "v2.0", model=model, device=device, dtype=dtype)
    return CLIPReward(bb, name="hpsv2")


@register_reward("hpsv2.1", description="HPSv2.1 cosine on open_clip ViT-H-14 (xswu/HPSv2 HPS_v2.1_compressed.pt)")
def _hpsv21(path: str | None = None, model: str = HPS_MODEL, device="cpu", dtype=None) -> CLIPReward:
    bb = load_hps_backbone(path, "v2.1", model=model, device=device, dtype=dtype)
    return CLIPReward(bb, name="hpsv2.1")
