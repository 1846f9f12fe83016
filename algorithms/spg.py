"""SPG: sandwiched policy gradient for masked diffusion LMs (Wang et al., 2025, arXiv:2510.09541).

A masked diffusion LM's sequence likelihood is bounded from below by the ELBO and, for beta >= 1,
from above by an evidence upper bound (EUBO). SPG maximises a lower bound of the policy-gradient
objective: a completion with a positive advantage has its ELBO raised, one with a non-positive
advantage has its EUBO (or a mixture of EUBO and ELBO) lowered. Ratio-free: no old-policy pass.

Masks (facebookresearch/SPG @ a1c7120 spg/spg_trainer.py:334-379, forward_type block_random). The
completion canvas is cut into blocks of `block_length` from its first position (LLaDA's
semi-autoregressive blocks); of each sample's real tokens (up to and including its first EOS,
length l) n_b = ceil(l / block_length) blocks hold some. One permutation of the canvas's blocks
per sample, taken modulo n_b, picks the block k_j of each of the num_t passes. Pass j masks:
  - in block k_j, m_j of its real tokens at random, m_j ~ U{max(int(len_k min_t), 1) .. min(int(len_k max_t), len_k)};
  - every position after block k_j, and every position after the first EOS;
  - each position before block k_j (prompt and earlier completion blocks) with probability
    p_mask_prompt (spg_trainer.py:374, `~is_mask & rand < p`: the earlier completion too).
The pass scores the masked real tokens M_j (logp_jc), n_j = |M_j|, t_j = n_j / l (:534).

Bounds per sequence (:529-550):
    ELBO_i = (1/num_t) sum_j (1/n_j) sum_{c in M_j} logp_jc
    a_c    = (1/num_t) sum_j 1[c in M_j] p_jc^beta / t_j                 (p = exp(logp))
    EUBO_i = (1/beta) (1/K) sum_{c: a_c > 0} log a_c,   K = #{c: a_c > 0}
    mix    = w EUBO_i + (1 - w) ELBO_i
and S_i = ELBO_i where A_i > 0, else the configured bound (:552, reward_mask = A > 0 at :721).
The estimate returns per-token terms whose row sums are S_i (logp [N, C]), so the sequence
objective below is the plain weighted sum of the estimate.

Loss (:116-118): per micro-batch, -sum_i A_i l_i S_i / sum_i l_i; the runs' micro-batch is one
group (per_device_train_batch_size 6 = num_generations 6), and the step averages micro-batches.
unmask writes it per sample with omega_i = A_i l_i / mean_{j in g} l_j (`spg_weights`), so
L = -(1/N) sum_i omega_i S_i (`wd1.wd1_loss`'s form), the same number, and splittable.

Attention: the masks are defined on a full-attention canvas; block-causal families are refused
(a noisy block there sees clean earlier blocks, not the masked ones SPG conditions on).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from algorithms.estimators import (
    EstimatorUnit,
    _base_seed,
    _completion_tensors,
    _out,
    _pad,
    _preset,
    _score,
    _temperature,
    register_estimator,
    sample_generators,
)
from algorithms.losses import LossTotals
from algorithms.wd1 import wd1_loss
from rollout.models import DiffusionLM
from rollout.trajectory import Trajectory

BOUNDS = ("elbo", "eubo", "mix")


@dataclass(frozen=True)
class SpgOptions:
    num_t: int = 2
    """Masked passes per estimate (SPG's num_t; every slurm_scripts/spg_* run: 2)."""
    block_length: int = 32
    """Block length of the masks on the completion canvas (slurm_scripts/train.yaml:62: 32)."""
    min_t: float = 0.0
    """Smallest fraction of block k_j's real tokens masked (spg_* runs: 0; at least one token)."""
    max_t: float = 1.0
    """Largest fraction of block k_j's real tokens masked (spg_* runs: 1)."""
    p_mask_prompt: float = 0.15
    """Probability of masking each position before block k_j (train.yaml:67, use_mask_prompt true)."""
    bound: str = "mix"
    """Likelihood for non-positive advantages: eubo, mix (spg_mix runs) or elbo (logp_estimation)."""
    eubo_beta: float = 1.5
    """beta of the EUBO (spg_mix gsm8k/math/countdown: 1.5; sudoku: 1.0; spg_eubo countdown: 2.0)."""
    mix_weight: float = 0.5
    """Weight w of the EUBO in the mixture (spg_mix runs: 0.5)."""


def spg_masks(
    prompt_len: int, length: int, width: int, options: SpgOptions, generator: torch.Generator
) -> list[tuple[list[bool], list[bool]]]:
    """(prompt mask [prompt_len], completion mask [width]) of each of the num_t passes (module docstring).

    length: the real tokens (up to and including the first EOS); width: the completion canvas.
    """
    o, bl = options, options.block_length
    blocks = -(-width // bl)  # canvas blocks
    real_blocks = (length - 1) // bl + 1
    perm = torch.randperm(blocks, generator=generator)
    if o.num_t > blocks:
        # A canvas with fewer blocks than passes (the authors' is gen_length / block_length = 8 >= num_t;
        # unmask's stops at the block after the first EOS): the permutation repeats, each pass still
        # drawing its own count and tokens.
        perm = perm.repeat(-(-o.num_t // blocks))
    picks = (perm % real_blocks)[: o.num_t].tolist()
    out = []
    for k in picks:
        start = k * bl
        span = min(bl, length - start)  # real tokens of block k
        lo, hi = max(int(span * o.min_t), 1), min(int(span * o.max_t), span)
        m = int(torch.randint(lo, hi + 1, (1,), generator=generator))
        chosen = torch.randperm(span, generator=generator)[:m].tolist()
        comp = [c >= start + bl or c >= length for c in range(width)]
        for c in chosen:
            comp[start + c] = True
        before = (torch.rand(prompt_len + start, generator=generator) < o.p_mask_prompt).tolist()
        comp[:start] = before[prompt_len:]
        out.append((before[:prompt_len], comp))
    return out


def spg_bounds(
    pass_logp: torch.Tensor, scored: torch.Tensor, real: torch.Tensor, positive: torch.Tensor,
    bound: str = "mix", eubo_beta: float = 1.5, mix_weight: float = 0.5,
) -> torch.Tensor:
    """Per-token terms [N, C] whose row sums are each sample's bound S_i (module docstring).

    pass_logp: [T, N, C] log-probs of pass j (used where `scored`); scored: [T, N, C] bool, M_j
    (masked real tokens); real: [N, C] bool, the tokens up to and including the first EOS;
    positive: [N] bool, A_i > 0 (ELBO), else `bound` (elbo, eubo or mix).
    """
    if bound not in BOUNDS:
        raise ValueError(f"spg: bound must be one of {BOUNDS}, got {bound!r}")
    lp = pass_logp.to(torch.float64)
    zero = torch.zeros_like(lp)
    count = scored.sum(2, keepdim=True).to(lp.dtype)  # [T, N, 1] n_j
    t = count / real.sum(1).to(lp.dtype)[None, :, None]  # [T, N, 1] empirical masking ratio t_j
    elbo = torch.where(scored, lp / count.clamp(min=1), zero).mean(0)  # [N, C]
    avg_p = torch.where(scored, torch.exp(eubo_beta * lp) / t.clamp(min=1e-8), zero).mean(0)  # a_c
    hit = avg_p > 0
    eubo = torch.where(hit, torch.log(torch.where(hit, avg_p, torch.ones_like(avg_p))), torch.zeros_like(avg_p))
    eubo = eubo / (hit.sum(1, keepdim=True).clamp(min=1) * eubo_beta)
    negative = {"elbo": elbo, "eubo": eubo, "mix": mix_weight * eubo + (1 - mix_weight) * elbo}[bound]
    return torch.where(positive[:, None], elbo, negative).to(pass_logp.dtype)


def spg_estimate(
    lm: DiffusionLM, trajs: Sequence[Trajectory], generator: torch.Generator | None = None, *,
    num_t: int = 2, block_length: int = 32, min_t: float = 0.0, max_t: float = 1.0, p_mask_prompt: float = 0.15,
    bound: str = "mix", eubo_beta: float = 1.5, mix_weight: float = 0.5,
    advantages: torch.Tensor | None = None, seed: int | None = None, occurrences: Sequence[int] | None = None, with_entropy: bool = False,
) -> tuple[torch.Tensor, ...]:
    """SPG's sandwiched sequence likelihood as per-token terms (module docstring): num_t passes.

    advantages: [N], the sign picks the bound (> 0: ELBO; else `bound`); None: ELBO for all.
    Returns logp [N, C] whose row sums are S_i, and mask [N, C] = the real tokens up to and
    including the first EOS (plus the mean entropy of the scored tokens with with_entropy).
    """
    if bound not in BOUNDS:
        raise ValueError(f"spg: bound must be one of {BOUNDS}, got {bound!r}")
    if not lm.traits.full_attention:
        raise ValueError(f"spg's block masks are defined on a full-attention canvas; family {lm.traits.name!r} is block-causal")
    options = SpgOptions(num_t, block_length, min_t, max_t, p_mask_prompt, bound, eubo_beta, mix_weight)
    temperature = _temperature(trajs)
    gens = sample_generators(trajs, _base_seed(generator, seed), occurrences)
    targets, real = _completion_tensors(trajs, lm)  # real: [N, C] up to and including the first EOS
    n, width = real.shape
    lengths = real.sum(1).tolist()
    draws = [spg_masks(len(t.prompt_ids), int(length), len(t.completion_ids), options, g) for t, length, g in zip(trajs, lengths, gens)]
    ent_sum = torch.zeros((n, width), dtype=torch.float64, device=lm.device)
    ent_cnt = torch.zeros((n, width), dtype=torch.float64, device=lm.device)
    pass_logp, pass_scored = [], []
    for j in range(num_t):
        noisy = [d[j][1] for d in draws]
        scored = real & _pad(noisy, width, torch.bool, lm.device)  # [N, C] M_j
        lp, ent = _score(lm, trajs, noisy, temperature, targets, scored, [d[j][0] for d in draws], with_entropy)
        pass_logp.append(lp)
        pass_scored.append(scored)
        if with_entropy:
            ent_sum += ent.to(ent_sum.dtype) * scored
            ent_cnt += scored
    positive = torch.ones(n, dtype=torch.bool, device=lm.device) if advantages is None else advantages.to(lm.device) > 0
    logp = spg_bounds(torch.stack(pass_logp), torch.stack(pass_scored), real, positive, bound, eubo_beta, mix_weight)
    entropy = (ent_sum / ent_cnt.clamp(min=1)) * real if with_entropy else None
    out_dtype = next(lm.model.parameters()).dtype
    return _out(logp.to(out_dtype), real, None if entropy is None else entropy.to(out_dtype), with_entropy)


def spg_weights(advantages: torch.Tensor, groups: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """omega [B] = A_i l_i / mean_{j in g} l_j: SPG's length-weighted sum per group (module docstring).

    >>> spg_weights(torch.tensor([0.5, -0.5]), torch.tensor([0, 0]), torch.tensor([3, 1])).tolist()
    [0.75, -0.25]
    """
    _, inv = torch.unique(groups, return_inverse=True)
    k = int(inv.max()) + 1 if inv.numel() else 0
    ell = lengths.to(torch.float64)
    mean = torch.zeros(k, dtype=ell.dtype).index_add(0, inv, ell) / torch.bincount(inv, minlength=k).to(ell.dtype)
    return (advantages.double() * ell / mean[inv].clamp(min=1)).to(advantages.dtype)


def spg_loss(
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
    """SPG's loss, L = -(1/N) sum_i omega_i S_i, S_i = sum_c logp_ic (the estimate's bound terms).

    advantages: [B] the omega of `spg_weights`; the reduction is `wd1.wd1_loss`'s (a sequence's
    sum, a mean over samples). SPG has no KL term (spg_trainer.py:124 raises for beta != 0).
    """
    if beta > 0:
        raise ValueError("SPG has no KL term (its trainer raises NotImplementedError for beta != 0): beta must be 0")
    return wd1_loss(logp, old_logp, advantages, mask, totals=totals)


_SPG = "facebookresearch/SPG spg/"
SPG = register_estimator(
    EstimatorUnit(
        "spg", spg_estimate, SpgOptions, lambda trajs, o: int(o.num_t),
        paper="SPG (Wang et al., 2025, arXiv:2510.09541; facebookresearch/SPG): ELBO for A > 0, EUBO/mixture for A <= 0, block masks",
        config_fields={"p_mask_prompt": "p_mask_prompt"},
        **_preset(
            advantage=("mean", f"{_SPG}spg_trainer.py:720: advantages = rewards - mean (no std)"),
            beta=(0.0, f"{_SPG}slurm_scripts/spg_mix/*.sbatch --beta 0.0; spg_trainer.py:124 raises NotImplementedError for beta != 0"),
            redraw_masks=(True, f"{_SPG}spg_trainer.py:655: random_masking (slurm_scripts/train.yaml:66) draws a mask seed per inner iteration"),
            p_mask_prompt=(0.15, f"{_SPG}slurm_scripts/train.yaml:67 p_mask_prompt 0.15 with use_mask_prompt true (:73)"),
            epochs=(4, f"{_SPG}slurm_scripts/spg_mix/gsm_base_spg_mix_beta1.5_weight0.5.sbatch:28 NUM_ITER=4 (every spg_mix and spg_eubo script; train.yaml:70's 12 is overridden)"),
        ),
        multi_pass=lambda o: o.num_t > 1,
        objective=spg_loss, needs_old_logp=False, advantage_weights=spg_weights, estimate_takes_advantages=True,
        attention=frozenset({"full"}),
    )
)
