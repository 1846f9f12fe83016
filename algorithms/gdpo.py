"""GDPO: Group Diffusion Policy Optimization (Rojas et al., 2025, arXiv:2510.08554; KevinRojas1499/GDPO).

The whole completion is one action. Its likelihood is the masked-diffusion ELBO of the completion
canvas, with the outer integral over the masking level t taken by Gauss-Legendre quadrature
("semi-deterministic Monte Carlo": fixed nodes, random masks); the importance ratio is that of the
sequence ELBOs, taken per token (divided by the canvas length).

What the authors' code does (KevinRojas1499/GDPO @ 1918683, gdpo/likelihood_estimators.py,
`NumericalIntegrationEstimator`, selected by --logp_estimator gauss-N):

Masks (`forward_process`, :222-236). At node t_k = (x_k + 1)/2 (x_k, w_k: the N-point
Gauss-Legendre rule on [-1, 1], :174-217) each row masks exactly floor(t_k L) of its L completion
positions, chosen uniformly (a permutation's first floor(t_k L)); the prompt is never masked.

ELBO (`get_log_likelihood` :239-290, `get_loss` :292-303), per row i:

    ELBO_i = (1/2) sum_k w_k (1/t_k) sum_{c in M_k} log p(o_c | q, o with M_k masked)

(the 1/2 maps [-1, 1] to [0, 1], :286), each node's inner sum averaged over mc_batch_size masks
and the whole over num_batches repeats (both 1 by default, :239). The sum runs over the whole
completion canvas, the EOS filler after the first EOS included: the completion mask
(gdpo_trainer.py:371) never enters the loss. `canvas: false` stops at the first EOS instead, as
unmask's other units do, with L the answer's length.

Loss (`compute_loss`, gdpo_trainer.py:102-138), per sample i, A_i its advantage (r_i - group mean):

    r_i  = exp((ELBO_i - ELBO_i^old) / L)                                       (:120)
    L_pg = -(1/B) sum_i min(r_i A_i, clip(r_i, 1 - eps, 1 + eps) A_i)           (:121-124, :138)
    L_kl = beta (1/B) sum_i [exp(ELBO^ref_i - ELBO_i) - (ELBO^ref_i - ELBO_i) - 1]   (k3 on the ELBOs, :108-110)

L is the padded completion width of the micro-batch; GDPO's sampler fills a fixed canvas
(max_completion_length) so that is every row's canvas length, which unmask uses per row. B: the
micro-batch; gradient accumulation and DDP average micro-batches, so B is every sample of the
optimizer step (`LossTotals.sequences`). unmask clamps (ELBO_i - ELBO_i^old) / L to [-10, 10]
before exp (algorithms.losses' rule; GDPO does not): only a ratio beyond e^10 differs.

One difference on purpose: GDPO's trainer takes the old-policy ELBOs of every inner iteration in
one call over the batch repeated num_iterations times with the first iteration's seed
(gdpo_trainer.py:388-401), so the old and current ELBOs of an iteration are estimated on different
masks (its ratio is not 1 before the first update). unmask scores old, reference and current on the
same masks (per-sample generators), as the ratio the paper writes (Eq. for r_g: ELBO / ELBO_old of
one estimator) intends.

Differences from unmask's `mc_elbo` (quadrature: true), which also uses Gauss-Legendre nodes:
  - masks: mc_elbo masks each token independently with probability t_k (a random count);
    GDPO masks exactly floor(t_k L) tokens;
  - the sum: mc_elbo stops at the first EOS; GDPO sums over the whole canvas (filler included);
  - the ratio: mc_elbo's per-token terms feed the token-level (grpo) or gspo loss under
    `algorithm.loss_norm`; GDPO has one ratio per sequence, exp(delta ELBO / L), averaged over samples;
  - the KL: mc_elbo takes the learner's per-token k3; GDPO's is k3 on the sequence ELBOs;
  - attention: mc_elbo also scores block-causal models (a BD3-LM ELBO per block); GDPO's masks are
    defined on a full-attention canvas (the paper trains LLaDA), so block-causal families are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from algorithms.estimators import (
    EstimatorUnit,
    _base_seed,
    _completion_tensors,
    _gauss_legendre_unit,
    _out,
    _pad,
    _preset,
    _score,
    _temperature,
    register_estimator,
    sample_generators,
)
from algorithms.espo import sequence_ratio_objective
from algorithms.losses import LossTotals
from rollout.models import DiffusionLM
from rollout.trajectory import Trajectory


@dataclass(frozen=True)
class GdpoOptions:
    nodes: int = 3
    """Gauss-Legendre nodes of t (gdpo/slurm_scripts/countdown_base.sbatch:21 gauss-3; gdpo_config.py:389's own default is gauss-2)."""
    draws: int = 1
    """Masks per node, averaged (GDPO's mc_batch_size x num_batches, 1 x 1 by default, likelihood_estimators.py:239)."""
    canvas: bool = True
    """ELBO over the whole completion canvas, EOS filler included (GDPO); false: up to the first EOS."""


def gdpo_nodes(nodes: int) -> list[tuple[float, float]]:
    """(t_k, w_k/2) of the `nodes`-point Gauss-Legendre rule mapped to [0, 1]: the weights sum to 1.

    >>> [(round(t, 6), round(w, 6)) for t, w in gdpo_nodes(2)]  # x = -+1/sqrt(3), w = 1 on [-1, 1]
    [(0.211325, 0.5), (0.788675, 0.5)]
    """
    if nodes < 1:
        raise ValueError(f"gdpo: nodes must be >= 1, got {nodes}")
    return list(_gauss_legendre_unit(nodes))


def gdpo_masks(lengths: Sequence[int], nodes: Sequence[tuple[float, float]], draws: int, gens: Sequence[torch.Generator]) -> list[list[list[bool]]]:
    """Per pass (node k, draw j: index k * draws + j), per sample, its mask over its L positions:
    exactly floor(t_k L) of them, chosen uniformly from the sample's own generator (GDPO's
    `forward_process`: a permutation's first floor(t_k L))."""
    if draws < 1:
        raise ValueError(f"gdpo: draws must be >= 1, got {draws}")
    out: list[list[list[bool]]] = [[] for _ in range(len(nodes) * draws)]
    for length, g in zip(lengths, gens):
        for k, (t, _) in enumerate(nodes):
            count = int(t * length)  # floor, as GDPO's int(p_mask * target_len)
            for j in range(draws):
                chosen = torch.zeros(length, dtype=torch.bool)
                chosen[torch.randperm(length, generator=g)[:count]] = True
                out[k * draws + j].append(chosen.tolist())
    return out


def gdpo_elbo_terms(lp: torch.Tensor, masked: torch.Tensor, t: float, w: float, draws: int) -> torch.Tensor:
    """One pass's per-token ELBO terms [N, C]: w / (t draws) * lp on the masked tokens, 0 elsewhere.

    lp: [N, C] log-probs of the pass (used where masked); masked: [N, C] bool, its mask within the
    canvas; (t, w): the node and its weight on [0, 1]; draws: masks per node (averaged).
    """
    return torch.where(masked, lp * (w / (t * draws)), torch.zeros_like(lp))


def gdpo_estimate(
    lm: DiffusionLM, trajs: Sequence[Trajectory], generator: torch.Generator | None = None, *,
    nodes: int = 3, draws: int = 1, canvas: bool = True,
    seed: int | None = None, occurrences: Sequence[int] | None = None, with_entropy: bool = False,
) -> tuple[torch.Tensor, ...]:
    """GDPO's quadrature ELBO of each completion as per-token terms (module docstring): nodes x draws passes.

    Returns logp [N, C] whose row sums are ELBO_i, and mask [N, C] = the canvas (canvas: true: every
    completion position; false: up to and including the first EOS) (plus the mean entropy of the
    scored tokens with with_entropy).
    """
    if not lm.traits.full_attention:
        raise ValueError(f"gdpo's masks are defined on a full-attention canvas; family {lm.traits.name!r} is block-causal")
    rule = gdpo_nodes(nodes)
    temperature = _temperature(trajs)
    gens = sample_generators(trajs, _base_seed(generator, seed), occurrences)
    targets, until_eos = _completion_tensors(trajs, lm)
    n, width = until_eos.shape
    if canvas:
        lengths = [len(t.completion_ids) for t in trajs]
        keep = _pad([[True] * n_ for n_ in lengths], width, torch.bool, lm.device)
    else:
        keep = until_eos
        lengths = keep.sum(1).tolist()
    masks = gdpo_masks(lengths, rule, draws, gens)
    logp = torch.zeros((n, width), device=lm.device)
    ent_sum = torch.zeros((n, width), dtype=torch.float64, device=lm.device)
    ent_cnt = torch.zeros((n, width), dtype=torch.float64, device=lm.device)
    for p, rows in enumerate(masks):
        t, w = rule[p // draws]
        # positions past the canvas (canvas: false's filler) stay clean context
        noisy = [row + [False] * (len(tr.completion_ids) - len(row)) for row, tr in zip(rows, trajs)]
        masked = _pad(noisy, width, torch.bool, lm.device) & keep
        lp, ent = _score(lm, trajs, noisy, temperature, targets, masked, with_entropy=with_entropy)
        logp = logp.to(lp.dtype) + gdpo_elbo_terms(lp, masked, t, w, draws)
        if with_entropy:
            ent_sum += torch.where(masked, ent, torch.zeros_like(ent)).to(ent_sum.dtype)
            ent_cnt += masked.to(ent_cnt.dtype)
    logp = torch.where(keep, logp, torch.zeros_like(logp))
    entropy = (ent_sum / ent_cnt.clamp(min=1)).to(logp.dtype) * keep if with_entropy else None
    return _out(logp, keep, entropy, with_entropy)


def gdpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.5,
    eps_high: float = 0.5,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    norm: str = "sequence",
    norm_constant: float | None = None,
    totals: LossTotals | None = None,
    pass_index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GDPO's sequence-level clipped objective with its k3 KL on the ELBOs (module docstring).

    Args:
        logp, old_logp, ref_logp: [B, C] per-token ELBO terms (`gdpo_estimate`); row sums are ELBO_i.
        advantages: [B] per sample; mask: [B, C] the canvas carrying loss, L_i = its row sum.
        totals: whole-minibatch counts; B = totals.sequences (the piece's share otherwise).
        norm, norm_constant, pass_index: not used (GDPO's reduction: a mean over samples).
    Returns:
        (loss, metrics): loss/policy, kl (the k3 term), clipfrac and ratio/mean per sequence, logp/sequence.
    """
    def k3(seq: torch.Tensor, ref_seq: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        delta = ref_seq - seq  # [B] ELBO^ref - ELBO
        return torch.exp(delta) - delta - 1.0

    return sequence_ratio_objective("gdpo", k3, logp, old_logp, advantages, mask, eps_low, eps_high, ref_logp, beta, totals)


def _passes(trajs: Sequence[Trajectory], o: GdpoOptions) -> int:
    return int(o.nodes) * int(o.draws)


_GDPO = "KevinRojas1499/GDPO "
_GDPO_EPS = (0.5, f"{_GDPO}gdpo/slurm_scripts/train.yaml:72 epsilon 0.5, clamp(coef_1, 1 - eps, 1 + eps) at gdpo/gdpo_trainer.py:121")
GDPO = register_estimator(
    EstimatorUnit(
        "gdpo", gdpo_estimate, GdpoOptions, _passes,
        paper="GDPO (Rojas et al., 2025, arXiv:2510.08554; KevinRojas1499/GDPO): Gauss-Legendre quadrature ELBO with exact-count masks, sequence ratio per canvas length",
        **_preset(
            advantage=("mean", f"{_GDPO}gdpo/gdpo_trainer.py:479: advantages = rewards - mean_grouped_rewards (the std, :474, is only logged)"),
            zscore_std=("sample", f"{_GDPO}gdpo/gdpo_trainer.py:474: torch .std (G - 1), only logged"),
            eps_low=_GDPO_EPS, eps_high=_GDPO_EPS,
            beta=(0.0, f"{_GDPO}gdpo/slurm_scripts/train.yaml:71 beta 0.00 (k3 on the sequence ELBOs at gdpo/gdpo_trainer.py:108)"),
            redraw_masks=(True, f"{_GDPO}gdpo/gdpo_trainer.py:376: random_masking (train.yaml:69) draws a mask seed per inner iteration"),
            epochs=(12, f"{_GDPO}gdpo/slurm_scripts/train.yaml:73 num_iterations 12 (countdown_base.sbatch:23 NUM_ITER=12)"),
        ),
        multi_pass=lambda o: True,
        objective=gdpo_loss, objective_kl=True,
        attention=frozenset({"full"}),
    )
)
