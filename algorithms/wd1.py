"""wd1: ratio-free weighted-likelihood policy optimisation (Tang et al., 2025, arXiv:2507.08838).

The objective replaces the clipped importance ratio of GRPO by a weighted log-likelihood of the
sampled completions, so only the current policy's likelihood is estimated: no old-policy pass,
no reference pass. With group advantages A_i (r_i - mean of the group) and, per group g,

    w+_i = softmax_g(A)_i = exp(A_i) / sum_{j in g} exp(A_j)        (raise good answers)
    w-_i = softmax_g(-A)_i                                          (push down bad answers)

the group's loss is  -sum_{i in g} (w+_i - w-_i) log pi(o_i | q), with the sequence likelihood
log pi(o_i | q) = sum_c logp_ic from d1's one-step estimator (completion fully masked, prompt
tokens masked with probability p_mask_prompt), summed over the tokens up to the first EOS (no
length normalisation), and the step's loss is the mean over groups.

What the authors' code does (xiaohangt/wd1 @ 0898985, `trainer_type: wll_d1_neg`, the trainer
every run/wll_*NP* script uses): wd1/trainers/rev_grpo_trainer.py:145-160 takes softmax(A) and
softmax(-A) over dim 0 of a device's micro-batch, temperature 1; train.yaml's
per_device_train_batch_size 6 equals num_generations 6 and TRL's sampler repeats each prompt
num_generations times in a row, so that micro-batch is exactly one group. The trainer divides by
gradient_accumulation_steps and DDP averages the ranks: the mean over groups.

unmask writes this as a mean over samples with self-normalised weights (`wd1_weights`),

    omega_i = |g| (w+_i - w-_i)        (mean of w+ and of w- over a group is 1/|g|)
    L       = -(1/N) sum_i omega_i sum_c m_ic logp_ic

which is the same number for equal-size groups (the mean over groups of each group's sum) and
splits over minibatches, ranks and micro-batches like any per-sample loss: the weights are taken
once over the whole rollout batch (`EstimatorUnit.advantage_weights`), so a group that a
minibatch splits keeps its softmax.
"""

from __future__ import annotations

import torch

from algorithms.estimators import (
    EstimatorUnit,
    OneStepOptions,
    _preset,
    one_step_estimate,
    register_estimator,
)
from algorithms.losses import LossTotals


def wd1_weights(advantages: torch.Tensor, groups: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """omega [B] = |g| * (softmax_g(A) - softmax_g(-A)) per sample, g its group (any order of rows).

    advantages: [B] group advantages; groups: [B] group ids; lengths: unused (the
    `EstimatorUnit.advantage_weights` call). Each group's omega sums to 0 and
    each of its two softmaxes, scaled by |g|, averages 1 (module docstring).

    >>> wd1_weights(torch.tensor([1.0, -1.0, 0.5]), torch.tensor([0, 0, 1])).tolist()  # doctest: +ELLIPSIS
    [1.523..., -1.523..., 0.0]
    """
    if advantages.shape != groups.shape or advantages.dim() != 1:
        raise ValueError(f"wd1 weights need one advantage per sample and its group, got {tuple(advantages.shape)} and {tuple(groups.shape)}")
    a = advantages.double()
    _, inv = torch.unique(groups, return_inverse=True)  # [B] dense group index
    k = int(inv.max()) + 1 if inv.numel() else 0
    size = torch.bincount(inv, minlength=k).to(a.dtype)  # [k]

    def softmax(x: torch.Tensor) -> torch.Tensor:  # per-group softmax of x [B]
        top = torch.full((k,), float("-inf"), dtype=x.dtype).scatter_reduce(0, inv, x, "amax")
        e = torch.exp(x - top[inv])
        return e / torch.zeros(k, dtype=x.dtype).index_add(0, inv, e)[inv]

    return (size[inv] * (softmax(a) - softmax(-a))).to(advantages.dtype)


def wd1_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.0,
    eps_high: float = 0.0,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    norm: str = "token",
    norm_constant: float | None = None,
    totals: LossTotals | None = None,
    pass_index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """wd1's weighted negative log-likelihood, L = -(1/N) sum_i omega_i sum_c m_ic logp_ic.

    Args:
        logp: [B, C] current log-probs (d1's one-step estimate); old_logp: unused (ratio-free).
        advantages: [B] the weights omega of `wd1_weights` (the learner applies them).
        mask: [B, C] tokens carrying loss (up to and including the first EOS).
        totals: whole-minibatch counts; N = totals.sequences (the piece's share otherwise).
        eps_low, eps_high, norm, norm_constant, pass_index: not used (no ratio; the reduction is
            wd1's own: a sequence's sum, a mean over samples). ref_logp, beta: wd1 has no KL term,
            so beta must be 0.
    Returns:
        (loss, metrics): loss/policy, and the mean sequence log-likelihood `logp/sequence`.
    """
    if beta > 0:
        raise ValueError("wd1 has no KL term (its trainer takes no reference pass): beta must be 0")
    if advantages.dim() != 1:
        raise ValueError(f"wd1 weighs whole sequences: advantages must be [B], got {tuple(advantages.shape)}")
    totals = totals or LossTotals.of(mask)
    m = mask.to(logp.dtype)
    seq_logp = (logp * m).sum(1)  # [B] log pi(o_i | q), summed over the loss tokens
    loss = -(advantages.to(logp.dtype) * seq_logp).sum() / max(totals.sequences, 1.0)
    with torch.no_grad():
        metrics = {"loss/policy": loss.item(), "logp/sequence": float(seq_logp.sum()) / max(totals.sequences, 1.0)}
    return loss, metrics


_WD1 = "xiaohangt/wd1 "
WD1 = register_estimator(
    EstimatorUnit(
        "wd1", one_step_estimate, OneStepOptions, lambda trajs, o: 1,
        paper="wd1 (Tang et al., 2025, arXiv:2507.08838; xiaohangt/wd1): ratio-free weighted likelihood, d1's one-step estimator",
        config_fields={"p_mask_prompt": "p_mask_prompt"},
        **_preset(
            advantage=("mean", f"{_WD1}wd1/trainers/rev_grpo_trainer.py:638: advantages = rewards - mean (the std, :629, is only logged); then softmax(A), softmax(-A) at :145, :156"),
            zscore_std=("sample", f"{_WD1}wd1/trainers/rev_grpo_trainer.py:629: torch .std(dim=1) (G - 1), only logged"),
            beta=(0.0, f"{_WD1}wd1/trainers/rev_grpo_trainer.py:160: loss = ce_loss + min_likeli_loss, no KL (train.yaml:70 beta 0.04 is unused by this trainer)"),
            redraw_masks=(True, f"{_WD1}wd1/trainers/rev_grpo_trainer.py:550: random_masking (train.yaml:68) draws a mask seed per inner iteration"),
            p_mask_prompt=(0.15, f"{_WD1}wd1/train.yaml:69 p_mask_prompt 0.15 (diffu_grpo_config.py's own default is 0.3)"),
            epochs=(12, f"{_WD1}run/wll_NP_gsm8k.sh:22 NUM_ITER=12 (countdown and math 12, sudoku 8)"),
        ),
        objective=wd1_loss, needs_old_logp=False, advantage_weights=wd1_weights,
    )
)
