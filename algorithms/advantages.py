"""Group-relative advantages (GRPO family), group filters and the treatment of truncated responses."""

from __future__ import annotations

import torch

ADVANTAGE_MODES = ("zscore", "mean", "loo")
ZSCORE_STDS = ("sample", "population")


def group_advantages(
    rewards: torch.Tensor, groups: torch.Tensor, mode: str = "zscore", eps: float = 1e-6, std: str = "sample"
) -> torch.Tensor:
    """Advantage of each sample relative to the other samples of its prompt.

    Args:
        rewards: [B] scalar reward per sample.
        groups: [B] prompt index per sample; groups may sit anywhere in the batch.
        mode: "zscore" (r - mean) / (std + eps) as in GRPO; "mean" r - mean (Dr. GRPO);
              "loo" r - mean of the *other* samples (RLOO).
        std: the z-score's std over a group of G: "sample" divides the squared deviations by
              G - 1 (Bessel's correction: torch's default std, as TRL's GRPO trainer, which d1
              builds on, computes it); "population" divides by G (TraceRL's dLLM-RL code). For
              G = 8 the sample std is sqrt(8/7) = 1.069x the population one.
    Returns:
        [B] advantages. A group whose rewards are all equal gets 0 in every mode.

    >>> group_advantages(torch.tensor([1., 0., 0., 0.]), torch.tensor([0, 0, 1, 1]), "mean").tolist()
    [0.5, -0.5, 0.0, 0.0]
    >>> [round(a, 4) for a in group_advantages(torch.tensor([1., 0.]), torch.tensor([0, 0]), std="population").tolist()]
    [1.0, -1.0]
    """
    if mode not in ADVANTAGE_MODES:
        raise ValueError(f"advantage mode must be one of {ADVANTAGE_MODES}, got {mode!r}")
    if std not in ZSCORE_STDS:
        raise ValueError(f"z-score std must be one of {ZSCORE_STDS}, got {std!r}")
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
        dof = count - 1 if std == "sample" else count
        sd = (sq / dof.clamp(min=1)).sqrt()
        adv = (rewards - mean[inv]) / (sd[inv] + eps)
    return adv.float()


def _group_stats(rewards: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample: its group's mean, population std and dense group id ([B] each)."""
    rewards = rewards.double()
    _, inv = groups.unique(return_inverse=True)
    count = torch.bincount(inv).double()
    mean = torch.zeros_like(count).index_add_(0, inv, rewards) / count
    var = torch.zeros_like(count).index_add_(0, inv, (rewards - mean[inv]) ** 2) / count
    return mean[inv], var.sqrt()[inv], inv


def filter_groups(
    rewards: torch.Tensor,
    groups: torch.Tensor,
    drop_zero_std: bool = True,
    min_acc: float | None = None,
    max_acc: float | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Which samples to keep, decided per group (DAPO's dynamic sampling).

    A group whose rewards are all equal gets zero advantage in every mode and only dilutes the
    loss normalisation, so drop_zero_std removes it (std <= eps). The accuracy filter drops
    groups whose mean reward (the accuracy, for 0/1 rewards) lies outside [min_acc, max_acc]
    (bounds inclusive; None = unbounded): too easy or too hard prompts.

    Args:
        rewards: [B]; groups: [B] prompt index per sample.
    Returns:
        keep: [B] bool, the same value for every sample of a group.

    >>> filter_groups(torch.tensor([1., 1., 1., 0., 0., 1.]), torch.tensor([0, 0, 1, 1, 2, 2]), True, max_acc=0.5).tolist()
    [False, False, True, True, True, True]
    """
    if rewards.shape != groups.shape or rewards.dim() != 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} and groups {tuple(groups.shape)} must be equal 1-D shapes")
    mean, std, _ = _group_stats(rewards, groups)
    keep = torch.ones_like(rewards, dtype=torch.bool)
    if drop_zero_std:
        keep &= std > eps
    if min_acc is not None:
        keep &= mean >= min_acc - eps
    if max_acc is not None:
        keep &= mean <= max_acc + eps
    return keep


TRUNCATION_MODES = ("mask", "wrong", "keep")


def truncated_rewards(
    rewards: torch.Tensor,
    finish_reasons: list[str],
    mode: str = "keep",
    wrong_reward: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Treatment of responses cut off at the length limit (finish_reason == "length").

    "mask":  keep the rewards, and return a loss mask that is False for truncated samples
             (DAPO's overlong filtering: a cut-off answer is neither right nor wrong). Their
             rewards still count in the group baseline unless the caller filters them first.
    "wrong": score truncated samples as wrong (reward = wrong_reward, default 0), loss mask all True.
    "keep":  rewards as scored, loss mask all True.

    Returns (rewards [B], loss_mask [B] bool).
    """
    if mode not in TRUNCATION_MODES:
        raise ValueError(f"truncation mode must be one of {TRUNCATION_MODES}, got {mode!r}")
    if len(finish_reasons) != rewards.shape[0]:
        raise ValueError(f"{rewards.shape[0]} rewards but {len(finish_reasons)} finish reasons")
    truncated = torch.tensor([r == "length" for r in finish_reasons], dtype=torch.bool, device=rewards.device)
    keep = torch.ones_like(truncated)
    if mode == "mask":
        return rewards.clone(), ~truncated
    if mode == "wrong":
        return torch.where(truncated, torch.full_like(rewards, wrong_reward), rewards), keep
    return rewards.clone(), keep
