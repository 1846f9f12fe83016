"""Policy objectives as plain tensor functions.

Loss normalisations (`norm`), for a per-token loss l[i, t] with mask m[i, t]:
  "token"     sum_{i,t} m l / sum_{i,t} m          every token of the batch weighs the same, so
                                                   long answers weigh more (DAPO's token-level
                                                   loss);
  "sequence"  mean_i [ sum_t m l / sum_t m ]       each sequence weighs the same, its tokens share
                                                   1/|o_i| (GRPO's original, DeepSeekMath; GSPO's;
                                                   biased towards long wrong and short right
                                                   answers, per Dr. GRPO);
  "constant"  sum_{i,t} m l / norm_constant        a fixed denominator such as max completion
                                                   length x batch size (Dr. GRPO), so a token's
                                                   weight depends neither on its answer's length
                                                   nor on the batch's;
  "pass"      mean_{(i,k)} [ sum_{t in P_ik} m l / |P_ik| ]
                                                   P_ik = the tokens of sample i scored in trace
                                                   pass k (`pass_index`): the mean within each
                                                   pass, then over every (sample, pass) with
                                                   tokens: dLLM-RL's LLaDA/Dream/MMaDA TraceRL
                                                   trainers (each replayed pass's tokens, then the
                                                   passes; its SDAR/TraDo trainers divide each
                                                   row's sum by the padded width instead, and
                                                   CJ-GRPO reduces per step over the batch, then
                                                   over steps). Passes that commit
                                                   few tokens (threshold decoding, an uneven last
                                                   shrink group) weigh as much as full ones.

Numerical safety. Every log-ratio is clamped to [-10, 10] before `exp` (the importance ratio,
GSPO's sequence ratio and the k3 KL), as dLLM-RL does: the gradient of a ratio is the ratio
itself, so a token whose log-prob moved by 11.5 nats would give ~1e5 and swamp the step (with
A < 0 the PPO max keeps the unclipped ratio, so clipping alone does not stop it). Beyond the
clamp the token's gradient is 0.

Pieces. A learner that splits a minibatch across data-parallel ranks and micro-batches must
get the gradient of the whole minibatch's loss, and summing per-piece means does not give it.
So every function here takes `totals` (`LossTotals`: the whole minibatch's token, sequence and
pass counts); with it, the returned loss and every metric are the piece's share, numerator over
the whole's denominator, and summing them over the pieces gives exactly the whole's value:
"token" divides by totals.tokens, "sequence" by totals.sequences, "pass" by totals.passes,
"constant" by the constant. Without it the piece is the whole (the counts come from `mask`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

LOSS_NORMS = ("token", "sequence", "constant", "pass")
LOG_RATIO_CLAMP = 10.0  # |log-ratio| bound before exp (module docstring)


@dataclass(frozen=True)
class LossTotals:
    """Counts over a whole minibatch whose loss is computed in pieces (see the module docstring).

    tokens: tokens carrying loss (mask True); sequences: rows with at least one such token;
    passes: (row, trace pass) pairs with at least one such token (norm "pass" only).
    """

    tokens: float
    sequences: float
    passes: float = 0.0

    @classmethod
    def of(cls, mask: torch.Tensor, pass_index: torch.Tensor | None = None) -> LossTotals:
        """The totals of `mask` [B, L] alone (`pass_index` [B, L] for the pass count)."""
        lengths = mask.sum(1)
        passes = 0.0 if pass_index is None else float(_pass_groups(mask, pass_index)[2].sum())
        return cls(float(lengths.sum()), float((lengths > 0).sum()), passes)


def _pass_groups(mask: torch.Tensor, pass_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat (row, pass) group of every loss token: (sel [B, L] bool, group id [n_sel], has [B * K] bool)."""
    if pass_index.shape != mask.shape:
        raise ValueError(f"pass_index {tuple(pass_index.shape)} must have the mask's shape {tuple(mask.shape)}")
    sel = mask.bool() & (pass_index >= 0)
    k = int(pass_index.max()) + 1 if sel.any() else 1
    rows = torch.arange(mask.shape[0], device=mask.device)[:, None]
    group = (rows * k + pass_index.clamp(min=0))[sel]  # [n_sel]
    count = torch.bincount(group, minlength=mask.shape[0] * k)
    return sel, group, count > 0


def clamped_log_ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a - b clamped to [-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP], the exponent of every ratio here."""
    return (a - b).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def clipped_surrogate(ratio: torch.Tensor, adv: torch.Tensor, eps_low: float, eps_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's pessimistic clipped surrogate per token, the body every clipped objective here shares:
    (max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)), whether the clipped side won: clipfrac's count).
    `ratio` and `adv` broadcast ([B, L] and [B, 1] or [B, L])."""
    unclipped, clipped = -adv * ratio, -adv * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref) (Schulman, "Approximating KL divergence").

    k3 = exp(d) - d - 1 with d = ref - logp clamped to [-10, 10] (module docstring),
    non-negative and unbiased under samples of pi.
    """
    d = clamped_log_ratio(ref_logp, logp)
    return torch.exp(d) - d - 1


def reduce_loss(
    x: torch.Tensor,
    mask: torch.Tensor,
    norm: str = "token",
    norm_constant: float | None = None,
    totals: LossTotals | None = None,
    pass_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce a per-token [B, L] quantity to a scalar with one of LOSS_NORMS (module docstring).

    totals: the whole minibatch's counts when `x` is one piece of it; the result is then this
    piece's share of the whole's reduction (the shares sum to it). pass_index: [B, L] long, the
    trace pass that scores each token (-1 = none), needed by norm "pass". Always connected to
    `x`'s graph, even when nothing is masked in (a data-parallel backward needs every rank's graph).
    """
    if norm not in LOSS_NORMS:
        raise ValueError(f"norm must be one of {LOSS_NORMS}, got {norm!r}")
    if norm == "pass" and pass_index is None:
        raise ValueError("norm='pass' needs pass_index (the trace pass of each token)")
    totals = totals or LossTotals.of(mask, pass_index)
    if norm == "pass":
        sel, group, has = _pass_groups(mask, pass_index)
        num = x.new_zeros(has.numel()).index_add(0, group, x[sel])  # [B * K] per-pass sums
        cnt = torch.bincount(group, minlength=has.numel()).to(x.dtype)
        per_pass = num / cnt.clamp(min=1)  # 0 for (row, pass) pairs without tokens
        return per_pass.sum() / max(totals.passes, 1.0)  # index_add keeps x's graph even with no tokens
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
    pass_index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-level clipped-ratio policy loss with an optional k3 KL penalty (PPO / GRPO).

        ratio_t = exp(clamp(logp_t - old_logp_t, -10, 10))
        L_t     = max(-A ratio_t, -A clip(ratio_t, 1 - eps_low, 1 + eps_high)) + beta * k3_t

    Args:
        logp, old_logp: [B, L] per-token log-probs under the current / rollout-time policy.
        advantages: [B] per sample (broadcast over tokens) or [B, L] per token.
        mask: [B, L] bool, tokens that carry loss.
        ref_logp: [B, L] log-probs under the frozen reference policy (needed when beta > 0).
        norm: one of LOSS_NORMS (module docstring); norm_constant for "constant".
        totals: whole-minibatch counts when this is one piece of it (module docstring).
        pass_index: [B, L] long, the trace pass scoring each token (-1 = none); norm "pass" only.
    Returns:
        (loss, metrics) with clipfrac, approx_kl (to old policy), kl (to reference), ratio mean.
    """
    if norm not in LOSS_NORMS:
        raise ValueError(f"norm must be one of {LOSS_NORMS}, got {norm!r}")
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp")
    mask = mask.to(logp.dtype)
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    ratio = torch.exp(clamped_log_ratio(logp, old_logp))
    pg, clipped = clipped_surrogate(ratio, adv, eps_low, eps_high)
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    per_token = pg + beta * kl if beta > 0 else pg

    totals = totals or LossTotals.of(mask, pass_index)

    def reduce(x: torch.Tensor) -> torch.Tensor:
        return reduce_loss(x, mask, norm, norm_constant, totals, pass_index)

    loss = reduce(per_token)
    with torch.no_grad():
        n = max(totals.tokens, 1.0)
        metrics = {
            "loss/policy": reduce(pg).item(),
            "kl": float((kl * mask).sum() / n),
            "clipfrac": float((clipped.to(mask.dtype) * mask).sum() / n),
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
    pass_index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sequence-level clipped ratio, length-normalised (GSPO: Zheng et al., 2025, arXiv:2507.18071).

        s_i = exp( (1/|o_i|) sum_t (logp_it - old_logp_it) )           (geometric-mean ratio;
                                                                         exponent clamped to [-10, 10])
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
    totals = totals or LossTotals.of(mask, pass_index)
    m = mask.to(logp.dtype)
    lengths = m.sum(1)
    has = lengths > 0
    seq_log_ratio = ((logp - old_logp) * m).sum(1) / lengths.clamp(min=1)  # [B]
    seq_ratio = torch.exp(seq_log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    ratio = seq_ratio.detach()[:, None] * torch.exp(logp - logp.detach())  # value s_i, gradient s_i * grad logp_t
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    pg, clipped = clipped_surrogate(ratio, adv, eps_low, eps_high)
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    per_token = pg + beta * kl if beta > 0 else pg
    loss = reduce_loss(per_token, m, norm, norm_constant, totals, pass_index)
    with torch.no_grad():
        n = max(totals.tokens, 1.0)
        nseq = max(totals.sequences, 1.0)
        clipped_seq = (clipped & mask.bool()).any(1)
        metrics = {
            "loss/policy": reduce_loss(pg, m, norm, norm_constant, totals, pass_index).item(),
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
# Losses whose term for a token depends on that token's log-prob alone (its weights, the counts
# of `totals`, are fixed in advance), so the gradient can be taken piece by piece of the tokens
# (rl.learner's backward per trace pass). GSPO's sequence ratio couples every token of a sample.
SEPARABLE_LOSSES = frozenset({"grpo"})
