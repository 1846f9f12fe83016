"""Policy objectives as plain tensor functions."""

from __future__ import annotations

import torch

LOSS_NORMS = ("token", "sequence")


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref) (Schulman, "Approximating KL divergence").

    k3 = exp(ref - logp) - (ref - logp) - 1, non-negative and unbiased under samples of pi.
    """
    d = ref_logp - logp
    return torch.exp(d) - d - 1


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
) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-level clipped-ratio policy loss with an optional k3 KL penalty (PPO / GRPO).

        ratio_t = exp(logp_t - old_logp_t)
        L_t     = max(-A ratio_t, -A clip(ratio_t, 1 - eps_low, 1 + eps_high)) + beta * k3_t

    Args:
        logp, old_logp: [B, L] per-token log-probs under the current / rollout-time policy.
        advantages: [B] per sample (broadcast over tokens) or [B, L] per token.
        mask: [B, L] bool, tokens that carry loss.
        ref_logp: [B, L] log-probs under the frozen reference policy (needed when beta > 0).
        norm: "token" averages over all tokens of the batch (long answers weigh more);
              "sequence" averages tokens within a sequence, then sequences (GRPO's original).
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

    def reduce(x: torch.Tensor) -> torch.Tensor:
        if norm == "token":
            return (x * mask).sum() / mask.sum().clamp(min=1)
        per_seq = (x * mask).sum(1) / mask.sum(1).clamp(min=1)
        return per_seq[mask.sum(1) > 0].mean() if (mask.sum(1) > 0).any() else per_seq.sum() * 0

    loss = reduce(per_token)
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        metrics = {
            "loss/policy": reduce(torch.maximum(pg_loss1, pg_loss2)).item(),
            "kl": float((kl * mask).sum() / n),
            "clipfrac": float(((pg_loss2 > pg_loss1).to(mask.dtype) * mask).sum() / n),
            "approx_kl": float((0.5 * (logp - old_logp) ** 2 * mask).sum() / n),
            "ratio/mean": float((ratio * mask).sum() / n),
        }
    return loss, metrics
