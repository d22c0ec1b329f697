"""Preference losses for training reward models on pairs.

Bradley–Terry with ties (Rao & Kupper 1967), as VideoAlign trains VideoReward (docs/rewards.md#bt-with-ties;
``KwaiVGI/VideoAlign`` trainer, loss_type "btt", k = 5) and as Flow-NRG trains its latent reward model
(docs/algorithms.md#latent-reward):

    P(A > B) = sigmoid(r_A - r_B - ln k),   P(B > A) = sigmoid(r_B - r_A - ln k),
    P(tie)   = (k^2 - 1) * sigmoid(r_A - r_B - ln k) * sigmoid(r_B - r_A - ln k)      (the three sum to 1)

Labels: 1 = A preferred, -1 = B preferred, 0 = tie; any other value (VideoAlign uses 22) is masked out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def bt_with_ties_loss(r_a: torch.Tensor, r_b: torch.Tensor, label: torch.Tensor, k: float = 5.0,
                      reduction: str = "mean") -> torch.Tensor:
    """Negative log-likelihood of ``label`` under Rao–Kupper BT-with-ties; ``k > 1`` (k = 1 is plain BT without
    ties, whose tie probability is 0). Works element-wise over any shape (e.g. ``[B, heads]``)."""
    if k <= 1.0:
        raise ValueError(f"bt_with_ties_loss needs k > 1 (ties have probability 0 at k = 1), got {k}")
    label = label.to(r_a.device)
    d = r_a.float() - r_b.float()
    lnk = math.log(k)
    win_a = -F.logsigmoid(d - lnk)
    win_b = -F.logsigmoid(-d - lnk)
    tie = win_a + win_b - math.log(k * k - 1)
    nll = torch.where(label == 1, win_a, torch.where(label == -1, win_b, tie))
    valid = (label == 1) | (label == -1) | (label == 0)
    if reduction == "none":
        return torch.where(valid, nll, torch.zeros_like(nll))
    if not valid.any():
        raise ValueError("bt_with_ties_loss: no valid labels (expected 1, -1 or 0; other values are masked)")
    return nll[valid].mean() if reduction == "mean" else nll[valid].sum()


def bt_with_ties_probs(r_a: torch.Tensor, r_b: torch.Tensor, k: float = 5.0) -> torch.Tensor:
    """``[..., 3]`` probabilities (A wins, B wins, tie)."""
    d = r_a.float() - r_b.float()
    lnk = math.log(k)
    pa, pb = torch.sigmoid(d - lnk), torch.sigmoid(-d - lnk)
    return torch.stack([pa, pb, (k * k - 1) * pa * pb], -1)
