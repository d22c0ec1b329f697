"""Latent reward model on noisy latents, ``r_phi(x_t, t, c)`` (Flow-NRG's reward source (b); docs/algorithms.md#latent-reward).

VideoAlign's Flow-NRG trains a reward model directly on noisy latents: its backbone is the first few blocks of the
pretrained generator (which already reads noisy latents at any t and the prompt), followed by a small head, trained
on pairwise preference data at randomly sampled t with the Bradley–Terry-with-ties loss
(:func:`rewardflow.rewards.losses.bt_with_ties_loss`). Guidance then needs no VAE decode and no pixel reward.

The backbone is the generator's own denoiser, run through the adapter's ``predict`` (conditional branch, no CFG) and
stopped right after block ``n_blocks`` by a forward hook, so the same code serves every adapter (UNet ``down_blocks``
or DiT ``transformer_blocks``). The backbone is frozen and shared with the generator (not copied, not saved); only the
head is trained and saved (``head.safetensors`` + ``latent_reward.json``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from rewardflow.io.paths import respect_umask

_BLOCK_LISTS = ("down_blocks", "transformer_blocks", "blocks", "layers")


class _Stop(Exception):
    pass


def feature_blocks(denoiser: nn.Module) -> nn.ModuleList:
    """The denoiser's sequence of main blocks (the first list found among diffusers' attribute names)."""
    for name in _BLOCK_LISTS:
        blocks = getattr(denoiser, name, None)
        if isinstance(blocks, nn.ModuleList) and len(blocks):
            return blocks
    raise ValueError(f"cannot find the blocks of {type(denoiser).__name__} (looked for {', '.join(_BLOCK_LISTS)})")


def _pool(out) -> torch.Tensor:
    """Pool a block's output to ``[B, C]``. Tuples (UNet: (hidden, residuals); SD3: (text, image)) -> the largest
    tensor, which is the image stream."""
    if isinstance(out, (tuple, list)):
        out = max((o for o in out if isinstance(o, torch.Tensor)), key=lambda o: o.numel())
    if out.ndim == 4:  # [B, C, H, W]
        return out.float().mean(dim=(2, 3))
    if out.ndim == 3:  # [B, tokens, C]
        return out.float().mean(dim=1)
    if out.ndim == 5:  # video [B, C, T, H, W]
        return out.float().mean(dim=(2, 3, 4))
    raise ValueError(f"unexpected block output shape {tuple(out.shape)}")


class LatentRewardModel(nn.Module):
    """``scores = lrm.score_heads(x_t, t, cond)`` -> ``{head: Tensor[B]}``; differentiable w.r.t. ``x_t``."""

    def __init__(self, generator, n_blocks: int = 1, heads: tuple[str, ...] = ("score",), hidden: int = 128):
        super().__init__()
        object.__setattr__(self, "gen", generator)  # not a submodule: the backbone is the generator's, frozen
        blocks = feature_blocks(generator.denoiser)
        if not 1 <= n_blocks <= len(blocks):
            raise ValueError(f"n_blocks must be in [1, {len(blocks)}], got {n_blocks}")
        self.n_blocks, self.heads, self.hidden = int(n_blocks), tuple(heads), int(hidden)
        object.__setattr__(self, "_block", blocks[n_blocks - 1])  # the generator's block, not a submodule
        with torch.no_grad():
            x = generator.initial_noise(1, torch.Generator().manual_seed(0))
            dim = self._features(x, torch.tensor([0.5]), generator.encode_prompts([""])).shape[1]
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, len(heads)))
        self.feature_dim = dim

    def _features(self, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        captured = {}

        def hook(_module, _inp, out):
            captured["h"] = out
            raise _Stop

        handle = self._block.register_forward_hook(hook)
        try:
            self.gen.predict(x_t, t, cond, guidance_scale=1.0)
        except _Stop:
            pass
        finally:
            handle.remove()
        if "h" not in captured:
            raise RuntimeError("the latent reward backbone block was not reached by the denoiser's forward")
        return _pool(captured["h"])

    def score_heads(self, x_t: torch.Tensor, t: torch.Tensor | float, cond) -> dict[str, torch.Tensor]:
        t = torch.as_tensor(t, dtype=torch.float32, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        out = self.head(self._features(x_t, t, cond))
        return {h: out[:, i] for i, h in enumerate(self.heads)}

    def forward(self, x_t, t, cond) -> torch.Tensor:
        return self.score_heads(x_t, t, cond)[self.heads[0]]

    # ------------------------------------------------------------------ persistence (head only)
    def save_pretrained(self, path: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                  str(p / "head.safetensors"))
        (p / "latent_reward.json").write_text(json.dumps(
            {"n_blocks": self.n_blocks, "heads": list(self.heads), "hidden": self.hidden,
             "feature_dim": self.feature_dim}, indent=1))
        respect_umask(p / "head.safetensors")

    @classmethod
    def from_pretrained(cls, generator, path: str | os.PathLike) -> "LatentRewardModel":
        from safetensors.torch import load_file

        p = Path(path)
        for f in ("latent_reward.json", "head.safetensors"):
            if not (p / f).is_file():
                raise FileNotFoundError(f"latent reward model file missing: {p / f} (train one with "
                                        "`rewardflow train configs/toy/latent_reward.yaml`)")
        meta = json.loads((p / "latent_reward.json").read_text())
        m = cls(generator, n_blocks=meta["n_blocks"], heads=tuple(meta["heads"]), hidden=meta["hidden"])
        if m.feature_dim != meta["feature_dim"]:
            raise ValueError(f"{p}: head was trained on {meta['feature_dim']}-dim features, but block "
                             f"{meta['n_blocks']} of this generator gives {m.feature_dim}; wrong generator?")
        m.head.load_state_dict(load_file(str(p / "head.safetensors")))
        return m
