"""Policy objectives as plain tensor functions.

Loss normalisations (`norm`), for a per-token loss l[i, t] with mask m[i, t]:
  "token"     sum_{i,t} m l / sum_{i,t} m          every token of the batch weighs the same, so
                                                   long answers weigh more (DAPO's token-level loss);
  "sequence"  mean_i [ sum_t m l / sum_t m ]       each sequence weighs the same, its tokens share
                                                   1/|o_i| (GRPO's original; biased towards long
                                                   wrong and short right answers, per Dr. GRPO);
  "constant"  sum_{i,t} m l / norm_constant        a fixed denominator such as max completion
                                                   length x batch size (Dr. GRPO), so a token's
                                                   weight depends neither on its answer's length
                                                   nor on the batch's.

Pieces. A learner that splits a minibatch across data-parallel ranks and micro-batches must
get the gradient of the whole minibatch's loss, and summing per-piece means does not give it.
So every function here takes `totals` (`LossTotals`: the whole minibatch's token and sequence
counts); with it, the returned loss and every metric are the piece's share, numerator over the
whole's denominator, and summing them over the pieces gives exactly the whole's value:
"token" divides by totals.tokens, "sequence" by totals.sequences, "constant" by the constant.
Without it the piece is the whole (the counts come from `mask`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

LOSS_NORMS = ("token", "sequence", "constant")


@dataclass(frozen=True)
class LossTotals:
    """Counts over a whole minibatch whose loss is computed in pieces (see the module docstring).

    tokens: tokens carrying loss (mask True); sequences: rows with at least one such token.
    """

    tokens: float
    sequences: float

    @classmethod
    def of(cls, mask: torch.Tensor) -> LossTotals:
        """The totals of `mask` [B, L] alone."""
        lengths = mask.sum(1)
        return cls(float(lengths.sum()), float((lengths > 0).sum()))


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref) (Schulman, "Approximating KL divergence").

    k3 = exp(ref - logp) - (ref - logp) - 1, non-negative and unbiased under samples of pi.
    """
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def reduce_loss(
    x: torch.Tensor, mask: torch.Tensor, norm: str = "token", norm_constant: float | None = None, totals: LossTotals | None = None
) -> torch.Tensor:
    """Reduce a per-token [B, L] quantity to a scalar with one of LOSS_NORMS (module docstring).

    totals: the whole minibatch's counts when `x` is one piece of it; the result is then this
    piece's share of the whole's reduction (the shares sum to it). Always connected to `x`'s
    graph, even when nothing is masked in (a data-parallel backward needs every rank's graph).
    """
    if norm not in LOSS_NORMS:
        raise ValueError(f"norm must be one of {LOSS_NORMS}, got {norm!r}")
    totals = totals or LossTotals.of(mask)
    mask = mask.to(x.dtype)
    if norm == "token":
        return (x * mask).sum() / max(totals.tokens, 1.0)
    if norm == "constant":
        if norm_constant is None or norm_constant <= 0:
            raise ValueError("norm='constant' needs norm_constant > 0 (e.g. max completion length x batch size)")
        return (x * mask).sum() / norm_constant
    lengths = mask.sum(1)
    per_seq = (x * mask).sum(1) / lengths.clamp(min=1)  # 0 for rows without tokens
    return per_seq.sum() / max(totals.sequences, 1.0)


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    norm: str = "token",
    norm_constant: float | None = None,
    totals: LossTotals | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-level clipped-ratio policy loss with an optional k3 KL penalty (PPO / GRPO).

        ratio_t = exp(logp_t - old_logp_t)
        L_t     = max(-A ratio_t, -A clip(ratio_t, 1 - eps_low, 1 + eps_high)) + beta * k3_t

    Args:
        logp, old_logp: [B, L] per-token log-probs under the current / rollout-time policy.
        advantages: [B] per sample (broadcast over tokens) or [B, L] per token.
        mask: [B, L] bool, tokens that carry loss.
        ref_logp: [B, L] log-probs under the frozen reference policy (needed when beta > 0).
        norm: "token" | "sequence" | "constant" (module docstring); norm_constant for "constant".
        totals: whole-minibatch counts when this is one piece of it (module docstring).
    Returns:
        (loss, metrics) with clipfrac, approx_kl (to old policy), kl (to reference), ratio mean.
    """
    if norm not in LOSS_NORMS:
        raise ValueError(f"norm must be one of {LOSS_NORMS}, got {norm!r}")
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp")
    mask = mask.to(logp.dtype)
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    ratio = torch.exp(logp - old_logp)
    pg_loss1 = -adv * ratio
    pg_loss2 = -adv * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    per_token = torch.maximum(pg_loss1, pg_loss2)
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    if beta > 0:
        per_token = per_token + beta * kl

    totals = totals or LossTotals.of(mask)

    def reduce(x: torch.Tensor) -> torch.Tensor:
        return reduce_loss(x, mask, norm, norm_constant, totals)

    loss = reduce(per_token)
    with torch.no_grad():
        n = max(totals.tokens, 1.0)
        metrics = {
            "loss/policy": reduce(torch.maximum(pg_loss1, pg_loss2)).item(),
            "kl": float((kl * mask).sum() / n),
            "clipfrac": float(((pg_loss2 > pg_loss1).to(mask.dtype) * mask).sum() / n),
            "approx_kl": float((0.5 * (logp - old_logp) ** 2 * mask).sum() / n),
            "ratio/mean": float((ratio * mask).sum() / n),
        }
    return loss, metrics


def sequence_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    norm: str = "sequence",
    norm_constant: float | None = None,
    totals: LossTotals | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sequence-level clipped ratio, length-normalised (GSPO: Zheng et al., 2025, arXiv:2507.18071).

        s_i = exp( (1/|o_i|) sum_t (logp_it - old_logp_it) )           (geometric-mean ratio)
        L_i = max(-A_i s_i, -A_i clip(s_i, 1 - eps_low, 1 + eps_high)) + beta * mean_t k3_it

    and the loss is the mean of L_i over sequences (norm="sequence", GSPO's). It is computed
    in GSPO-token form, s_it = sg[s_i] * exp(logp_it - sg[logp_it]), whose value is s_i and
    whose gradient averaged over t is grad s_i, so [B, L] per-token advantages also work and
    "token"/"constant" norms reduce the same per-token terms. Clipping is decided per
    sequence, hence GSPO's much smaller default range (3e-4, 4e-4). This is the natural loss
    for sequence-level likelihoods such as the ELBO (mc_elbo estimator).

    Args and returns as `policy_loss`; clipfrac and ratio/mean are per sequence.
    """
    if norm not in LOSS_NORMS:
        raise ValueError(f"norm must be one of {LOSS_NORMS}, got {norm!r}")
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp")
    totals = totals or LossTotals.of(mask)
    m = mask.to(logp.dtype)
    lengths = m.sum(1)
    has = lengths > 0
    seq_log_ratio = ((logp - old_logp) * m).sum(1) / lengths.clamp(min=1)  # [B]
    seq_ratio = torch.exp(seq_log_ratio)
    ratio = seq_ratio.detach()[:, None] * torch.exp(logp - logp.detach())  # value s_i, gradient s_i * grad logp_t
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    pg_loss1 = -adv * ratio
    pg_loss2 = -adv * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    pg = torch.maximum(pg_loss1, pg_loss2)
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    per_token = pg + beta * kl if beta > 0 else pg
    loss = reduce_loss(per_token, m, norm, norm_constant, totals)
    with torch.no_grad():
        n = max(totals.tokens, 1.0)
        nseq = max(totals.sequences, 1.0)
        clipped_seq = ((pg_loss2 > pg_loss1) & mask.bool()).any(1)
        metrics = {
            "loss/policy": reduce_loss(pg, m, norm, norm_constant, totals).item(),
            "kl": float((kl * m).sum() / n),
            "clipfrac": float((clipped_seq & has).sum() / nseq),
            "approx_kl": float((0.5 * (logp - old_logp) ** 2 * m).sum() / n),
            "ratio/mean": float(seq_ratio[has].sum() / nseq),
        }
    return loss, metrics


LOSSES: dict[str, Callable[..., tuple[torch.Tensor, dict[str, float]]]] = {
    "grpo": policy_loss,  # token-level clipped ratio (PPO / GRPO / DAPO)
    "gspo": sequence_policy_loss,  # sequence-level, length-normalised ratio (GSPO)
}
