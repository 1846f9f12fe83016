"""Group-relative advantages (GRPO family)."""

from __future__ import annotations

import torch

ADVANTAGE_MODES = ("zscore", "mean", "loo")


def group_advantages(rewards: torch.Tensor, groups: torch.Tensor, mode: str = "zscore", eps: float = 1e-6) -> torch.Tensor:
    """Advantage of each sample relative to the other samples of its prompt.

    Args:
        rewards: [B] scalar reward per sample.
        groups: [B] prompt index per sample; groups may sit anywhere in the batch.
        mode: "zscore" (r - mean) / (std + eps) as in GRPO (std with Bessel's correction);
              "mean" r - mean (Dr. GRPO); "loo" r - mean of the *other* samples (RLOO).
    Returns:
        [B] advantages. A group whose rewards are all equal gets 0 in every mode.

    >>> group_advantages(torch.tensor([1., 0., 0., 0.]), torch.tensor([0, 0, 1, 1]), "mean").tolist()
    [0.5, -0.5, 0.0, 0.0]
    """
    if mode not in ADVANTAGE_MODES:
        raise ValueError(f"advantage mode must be one of {ADVANTAGE_MODES}, got {mode!r}")
    if rewards.shape != groups.shape or rewards.dim() != 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} and groups {tuple(groups.shape)} must be equal 1-D shapes")
    rewards = rewards.double()
    _, inv = groups.unique(return_inverse=True)  # [B] dense group id
    count = torch.bincount(inv).double()  # [G]
    total = torch.zeros_like(count).index_add_(0, inv, rewards)  # [G]
    mean = total / count
    if mode == "mean":
        adv = rewards - mean[inv]
    elif mode == "loo":
        others = (count[inv] - 1).clamp(min=1)
        adv = torch.where(count[inv] > 1, rewards - (total[inv] - rewards) / others, torch.zeros_like(rewards))
    else:
        sq = torch.zeros_like(count).index_add_(0, inv, (rewards - mean[inv]) ** 2)
        std = (sq / (count - 1).clamp(min=1)).sqrt()
        adv = (rewards - mean[inv]) / (std[inv] + eps)
    return adv.float()
