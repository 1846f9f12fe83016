"""EBPO: Empirical Bayes Policy Optimization (Han et al., 2026, "EBPO: Empirical Bayes Shrinkage for
Stabilizing Group-Relative Policy Optimization", arXiv:2602.05165), an advantage mode.

EBPO changes only the advantages: each group's baseline is its mean shrunk toward a global prior
kept over the whole run, and the raw advantages are standardised over the batch. The paper's
Algorithm 1 (Appendix B), per step, for M groups of G samples with rewards r_{m,i}:

    update W_r with every r_{m,i}; update W_mu with every group mean mu_m      (Welford, online)
    mu_glob = mean(W_r),  sigma^2 = var(W_r),  tau^2 = var(W_mu)
    S_m     = (sigma^2 / G) / (sigma^2 / G + tau^2)                             (shrinkage factor)
    V_m     = (1 - S_m) mu_m + S_m mu_glob                                      (the EB baseline)
    a_{m,i} = r_{m,i} - V_m
    A_{m,i} = (a_{m,i} - mean(a)) / (std(a) + eps)                              (over the batch)

The running statistics include the current batch (the paper's remark: the bias from that decays as
O(1/T)); tau^2 is the raw variance of the group means, without subtracting sigma^2 / G (the
paper's "conservative" choice, which keeps S in [0, 1]). A group that fails every sample gets
a = -S mu_glob < 0 where GRPO gets 0: the method's point. The objective is GRPO's, unchanged, so
EBPO composes with every estimator (`algorithm.advantage: ebpo`).

What the paper leaves open (no code is public: the paper says it is built on verl, and neither the
repository nor the EBPO changes are released): the divisor of the Welford variances and of the
batch std, and eps. unmask uses the sample variance M2 / (n - 1) (Welford's own), torch's std
(n - 1) for the batch, as verl's GRPO advantage does, and eps = 1e-6 (verl's default). With the
paper's batches (512 samples per step) these change an advantage by about 0.1% after the first
step; the formulas above are the paper's. A group of one sample, or a prior with no spread yet
(sigma^2 = tau^2 = 0: every reward so far equal), gets S = 0, i.e. the group mean.

State. The prior (W_r and W_mu: count, mean, M2 each) lives for the whole run on the driver and is
saved in each checkpoint's trainer_state.json and restored on resume (`EbpoPrior.state_dict`), so
a resumed run computes the advantages the uninterrupted run would have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

EBPO_EPS = 1e-6


@dataclass
class Welford:
    """Running count, mean and sum of squared deviations (M2) of a stream (Welford, 1962)."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def update(self, values) -> None:
        """Add each value of `values` in order: delta = x - mean; mean += delta / n; M2 += delta (x - mean)."""
        for x in values:
            x = float(x)
            self.count += 1
            delta = x - self.mean
            self.mean += delta / self.count
            self.m2 += delta * (x - self.mean)

    @property
    def variance(self) -> float:
        """The sample variance M2 / (n - 1) (0 for fewer than two values).

        >>> w = Welford(); w.update([1.0, 0.0, 0.0, 1.0]); (w.mean, round(w.variance, 6))
        (0.5, 0.333333)
        """
        return self.m2 / (self.count - 1) if self.count > 1 else 0.0


@dataclass
class EbpoPrior:
    """EBPO's global prior: Welford statistics of every reward (W_r) and of every group mean (W_mu)
    seen so far in the run. `advantages` updates it with a batch and returns the batch's advantages."""

    rewards: Welford = field(default_factory=Welford)
    group_means: Welford = field(default_factory=Welford)

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers (JSON: Python floats round-trip exactly), for the checkpoint."""
        return {name: {"count": w.count, "mean": w.mean, "m2": w.m2} for name, w in (("rewards", self.rewards), ("group_means", self.group_means))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned; a missing or malformed part is an error."""
        try:
            self.rewards = Welford(int(state["rewards"]["count"]), float(state["rewards"]["mean"]), float(state["rewards"]["m2"]))
            self.group_means = Welford(int(state["group_means"]["count"]), float(state["group_means"]["mean"]), float(state["group_means"]["m2"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError("EBPO prior state must be what EbpoPrior.state_dict() returns (rewards and group_means, "
                             f"each with count, mean and m2), got {state!r}") from exc

    def advantages(self, rewards: torch.Tensor, groups: torch.Tensor, eps: float = EBPO_EPS) -> tuple[torch.Tensor, dict[str, float]]:
        """Update the prior with this batch, then EBPO's advantages (module docstring).

        Args:
            rewards: [B] reward per sample; groups: [B] prompt index per sample (anywhere in the batch).
        Returns:
            ([B] float advantages, metrics: ebpo/mu_glob, ebpo/sigma2, ebpo/tau2, ebpo/shrinkage (mean S over groups)).
        """
        if rewards.shape != groups.shape or rewards.dim() != 1:
            raise ValueError(f"rewards {tuple(rewards.shape)} and groups {tuple(groups.shape)} must be equal 1-D shapes")
        r = rewards.double()
        order, inv = _groups_in_order(groups)
        count = torch.bincount(inv, minlength=len(order)).double()  # [M] G_m
        mean = torch.zeros_like(count).index_add_(0, inv, r) / count  # [M] mu_m
        for m in range(len(order)):  # Algorithm 1: W_r with the group's rewards, W_mu with its mean
            self.rewards.update(r[inv == m].tolist())
            self.group_means.update([mean[m].item()])
        mu_glob, sigma2, tau2 = self.rewards.mean, self.rewards.variance, self.group_means.variance
        noise = sigma2 / count  # [M] sigma^2 / G
        denom = noise + tau2
        shrink = torch.where(denom > 0, noise / denom.clamp(min=1e-300), torch.zeros_like(noise))  # [M] S_m
        baseline = (1.0 - shrink) * mean + shrink * mu_glob  # [M] V_m
        raw = r - baseline[inv]  # [B]
        std = raw.std() if raw.numel() > 1 else torch.zeros((), dtype=raw.dtype)
        adv = (raw - raw.mean()) / (std + eps)
        metrics = {"ebpo/mu_glob": mu_glob, "ebpo/sigma2": sigma2, "ebpo/tau2": tau2, "ebpo/shrinkage": float(shrink.mean())}
        if not all(math.isfinite(v) for v in metrics.values()):
            raise ValueError(f"EBPO: non-finite prior statistics {metrics} (a reward was nan or inf)")
        return adv.float(), metrics


def _groups_in_order(groups: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    """(group ids in order of first appearance, [B] each sample's index into that list)."""
    order: dict[int, int] = {}
    idx = [order.setdefault(int(g), len(order)) for g in groups.tolist()]
    return list(order), torch.tensor(idx, dtype=torch.long)
