"""VRPO: variance-reduced preference optimisation (LLaDA 1.5: Zhu et al., 2025, arXiv:2505.19223).

DPO on ELBO estimates of a masked diffusion model, trained offline on preference pairs
(prompt x, preferred response y_w, dispreferred y_l): no rollouts, no rewards.

ELBO (the paper's Eq. 3, LLaDA's conditional bound; the prompt is never masked):

    B_pi(y | x) = E_{t ~ U[0,1]} E_{y_t ~ q(y_t | t, y)} [ (1/t) sum_i 1[y_t^i = M] log pi(y^i | y_t, x) ]

where q masks each response token independently with probability t. It is a sum over the
response's tokens (no length normalisation). Its estimate with a budget of n masked samples is

    B^_pi(y) = (1/n_t) sum_j (1/n_m) sum_k l_pi(y_t^(k), t^(j), y),        n = n_t x n_m

Loss (the paper's Eq. 5, DPO with B in place of log pi):

    L = -E_{(x, y_w, y_l)} log sigma( beta [ (B^_theta(y_w) - B^_ref(y_w)) - (B^_theta(y_l) - B^_ref(y_l)) ] )

Variance reduction, all three as the paper states them (Sec. 3, project page):
  budget       n masked samples per ELBO (`n`, algorithm.mc_samples);
  allocation   n_t = n distinct timesteps with one mask each (n_m = 1);
  antithetic   B^_theta(y) and B^_ref(y) share the timesteps and the masks: every response draws
               them from its own generator seeded by (step seed, prompt ids, response ids), so the
               policy and the reference see the same t^(j) and y_t^(j) for the same response (and
               identical models give exactly zero margin: loss log 2).

Code: the authors' training code is not public (ML-GSAI/LLaDA-1.5 released weights and
evaluation only; nothing of it is in the stored index either), so this is the paper's equations
above, not a port. What is the paper's and what is unmask's:
  - t ~ U(t_min, 1] with t_min = 1e-3 (LLaDA's eps in `forward_process`, keeping 1/t finite):
    unmask's choice, as `mc_elbo` draws it (`algorithms.estimators.elbo_schedule`).
  - n = 8: the budget of the paper's LLaDA 1.5 run as recalled from its text (its ablation spans
    n = 1, 2, 4, 8); beta = 0.2 likewise (a third-party port, DIFFA's src/vrpo/vrpo_elbo.py, cites
    "the paper's beta = 0.2" too). Neither is read from the authors' code.
  - `elbo: count` is LLaDA's lower-variance form of the same bound (l ~ U{1..L} tokens masked
    exactly, weight L/l; ML-GSAI/LLaDA get_log_likelihood.py), offered as an option; the default
    `time` is the form the VRPO paper writes.
  - the response is its tokens plus one EOS (the decision to stop); no padding or EOS filler is
    part of y, so padding never carries loss.

Attention: the ELBO above is the full-attention one; block-causal families are refused (a block
model's bound is BD3-LM's per-block sum, which the paper does not use).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from algorithms.estimators import (
    EstimatorUnit,
    _base_seed,
    _completion_tensors,
    _out,
    _pad,
    _preset,
    _score,
    _temperature,
    mc_elbo_estimate,
    register_estimator,
    sample_generators,
)
from algorithms.trace import loss_length
from rollout.models import DiffusionLM
from rollout.trajectory import Trajectory

ELBO_FORMS = ("time", "count")


@dataclass(frozen=True)
class VrpoOptions:
    n: int = 8
    """ELBO budget per response: n timesteps, one mask each (the paper's optimal allocation)."""
    t_min: float = 1e-3
    """Smallest masking level t drawn (keeps 1/t finite; LLaDA's eps). elbo: time only."""
    elbo: str = "time"
    """time: t ~ U(t_min, 1], each token masked with prob t, weight 1/t (the paper's Eq. 3); count:
    l ~ U{1..L} tokens masked exactly, weight L/l (LLaDA's lower-variance form of the same bound)."""

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"vrpo needs n >= 1 ELBO samples, got {self.n}")
        if not 0.0 < self.t_min < 1.0:
            raise ValueError(f"vrpo t_min must be in (0, 1), got {self.t_min}")
        if self.elbo not in ELBO_FORMS:
            raise ValueError(f"vrpo elbo must be one of {ELBO_FORMS}, got {self.elbo!r}")


def count_elbo_estimate(
    lm: DiffusionLM, trajs: Sequence[Trajectory], generator: torch.Generator | None = None, *, n: int = 8,
    seed: int | None = None, occurrences: Sequence[int] | None = None, with_entropy: bool = False,
) -> tuple[torch.Tensor, ...]:
    """LLaDA's exact-count ELBO per token: logp[c] = (1/n) sum_k (L / l_k) 1[c in M_k] log p(o_c | M_k masked).

    L = the response's scored tokens (up to and including the first EOS); pass k draws l_k ~ U{1..L}
    and masks exactly l_k of them, uniformly. Shapes: logp, mask [N, C]. n forward passes.
    """
    temperature = _temperature(trajs)
    gens = sample_generators(trajs, _base_seed(generator, seed), occurrences)
    targets, mask = _completion_tensors(trajs, lm)
    width = mask.shape[1]
    noisy: list[list[list[bool]]] = [[] for _ in range(n)]
    weight: list[list[list[float]]] = [[] for _ in range(n)]
    for t, g in zip(trajs, gens):
        length, size = loss_length(t.completion_ids, lm.eos_id), len(t.completion_ids)
        for k in range(n):
            l_k = int(torch.randint(1, length + 1, (), generator=g)) if length else 0
            chosen = torch.randperm(length, generator=g)[:l_k].tolist() if length else []
            m = [False] * size
            for c in chosen:
                m[c] = True
            noisy[k].append(m)
            weight[k].append([length / l_k / n if mk else 0.0 for mk in m])
    logp, ent_sum, ent_cnt = None, 0.0, 0.0
    for k in range(n):
        w = _pad(weight[k], width, torch.float64, lm.device)
        lp, ent = _score(lm, trajs, noisy[k], temperature, targets, mask & (w > 0), with_entropy=with_entropy)
        term = torch.where(w > 0, w.to(lp.dtype) * lp, torch.zeros_like(lp))
        logp = term if logp is None else logp + term
        if with_entropy:  # the mean entropy over the passes that scored each token (a metric)
            ent_sum, ent_cnt = ent_sum + ent, ent_cnt + (w > 0).to(ent.dtype)
    logp = torch.where(mask, logp, torch.zeros_like(logp))
    entropy = ent_sum / ent_cnt.clamp(min=1) * mask if with_entropy else None
    return _out(logp, mask, entropy, with_entropy)


def vrpo_estimate(
    lm: DiffusionLM, trajs: Sequence[Trajectory], generator: torch.Generator | None = None, *, n: int = 8,
    t_min: float = 1e-3, elbo: str = "time", seed: int | None = None, occurrences: Sequence[int] | None = None,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Per-token terms of B^_pi(y | x) (module docstring): (logp [N, C], mask [N, C]), row sums = the ELBOs.

    elbo time: n timesteps t_j ~ U(t_min, 1], one Bernoulli(t_j) mask each, weight 1/(n t_j)
    (`mc_elbo_estimate` without quadrature: the same draws). elbo count: `count_elbo_estimate`.
    The masks come from each response's own generator (`sample_generators`): the same seed gives the
    policy and the reference the same timesteps and masks (antithetic sampling).
    """
    VrpoOptions(n=n, t_min=t_min, elbo=elbo)  # the checks
    if elbo == "count":
        return count_elbo_estimate(lm, trajs, generator, n=n, seed=seed, occurrences=occurrences, with_entropy=with_entropy)
    return mc_elbo_estimate(lm, trajs, generator, n=n, quadrature=False, t_min=t_min, seed=seed, occurrences=occurrences, with_entropy=with_entropy)


def sequence_elbo(lm: DiffusionLM, trajs: Sequence[Trajectory], seed: int, occurrences: Sequence[int] | None = None, **options) -> torch.Tensor:
    """B^_pi(y | x) [N] of each response: the row sums of `vrpo_estimate` over its scored tokens."""
    logp, mask = vrpo_estimate(lm, trajs, None, seed=seed, occurrences=occurrences, **options)
    return (logp * mask.to(logp.dtype)).sum(1)


def vrpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    pairs: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO on ELBOs: L = -(1/P) sum_p log sigma(beta [(B_theta(y_w) - B_ref(y_w)) - (B_theta(y_l) - B_ref(y_l))]).

    Args:
        policy_chosen, policy_rejected: [B] the policy's ELBOs of y_w and y_l (differentiable).
        ref_chosen, ref_rejected: [B] the reference's ELBOs on the same timesteps and masks.
        beta: DPO's beta (> 0), algorithm.beta.
        pairs: P, the pairs of the whole optimizer step (a micro-batch's share of the loss); None: B.
    Returns:
        (loss, metrics) with TRL DPOTrainer's names: rewards/chosen, rewards/rejected (beta x the
        ELBO differences), rewards/margins, rewards/accuracies (margin > 0), and elbo/chosen,
        elbo/rejected (the policy's ELBOs); sums over the piece divided by P, so pieces add up.

    >>> loss, m = vrpo_loss(torch.tensor([-3.0]), torch.tensor([-5.0]), torch.tensor([-4.0]), torch.tensor([-4.0]), beta=0.5)
    >>> round(loss.item(), 4), m["rewards/margins"], m["rewards/accuracies"]  # -log sigma(0.5 * (1 - (-1)))
    (0.3133, 1.0, 1.0)
    """
    if beta <= 0:
        raise ValueError(f"vrpo is DPO: beta must be > 0, got {beta}")
    if not policy_chosen.shape == policy_rejected.shape == ref_chosen.shape == ref_rejected.shape or policy_chosen.dim() != 1:
        raise ValueError("vrpo_loss takes four [B] tensors of sequence ELBOs, one per pair")
    p = float(pairs if pairs is not None else policy_chosen.numel())
    chosen_reward = beta * (policy_chosen - ref_chosen.detach())  # [B]
    rejected_reward = beta * (policy_rejected - ref_rejected.detach())  # [B]
    margin = chosen_reward - rejected_reward  # [B]
    loss = -F.logsigmoid(margin).sum() / max(p, 1.0)
    with torch.no_grad():
        metrics = {
            "loss/policy": loss.item(),
            "rewards/chosen": float(chosen_reward.sum()) / p,
            "rewards/rejected": float(rejected_reward.sum()) / p,
            "rewards/margins": float(margin.sum()) / p,
            "rewards/accuracies": float((margin > 0).to(margin.dtype).sum()) / p,
            "elbo/chosen": float(policy_chosen.sum()) / p,
            "elbo/rejected": float(policy_rejected.sum()) / p,
        }
    return loss, metrics


def _passes(trajs: Sequence[Trajectory], o: VrpoOptions) -> int:
    return int(o.n)


_PAPER = "LLaDA 1.5 (Zhu et al., 2025, arXiv:2505.19223)"
_NO_CODE = "the authors' training code is not public (ML-GSAI/LLaDA-1.5 ships weights and evaluation only)"
VRPO = register_estimator(
    EstimatorUnit(
        "vrpo", vrpo_estimate, VrpoOptions, _passes,
        paper=f"VRPO, {_PAPER}: DPO on masked-diffusion ELBOs from preference pairs, n timesteps with one mask each, "
        "masks shared by policy and reference (offline: no rollouts, no rewards)",
        config_fields={"n": "mc_samples"},
        **_preset(
            beta=(0.2, f"{_PAPER}, as recalled from its text (DIFFA's third-party port src/vrpo/vrpo_elbo.py cites beta 0.2 too); {_NO_CODE}"),
            mc_samples=(8, f"{_PAPER} Sec. 3: budget n = 8 ELBO samples per response, n_t = 8 timesteps x n_mask = 1; {_NO_CODE}"),
            redraw_masks=(False, "one mask draw per step, shared by policy and reference (antithetic sampling); no inner epochs"),
        ),
        multi_pass=lambda o: o.n > 1,
        objective=vrpo_loss, objective_kl=True, needs_old_logp=False,
        attention=frozenset({"full"}),
        offline_pairs=True,
    )
)
