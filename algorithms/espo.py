"""ESPO: ELBO-based sequence-level policy optimisation (Ou et al., 2025; ML-GSAI/ESPO).

The whole completion is one action. Its likelihood is the masked-diffusion ELBO of the completion
canvas, estimated with exact-count masks and a complement pass; the importance ratio is that of
the sequence ELBOs, taken per token (divided by the canvas length); the KL to the reference is a
sequence-level k2 of the ELBOs.

What the authors' code does (ML-GSAI/ESPO @ b5f2dac, espo/espo_trainer.py):

Masks (`forward_process`, :55-75). A micro-batch of b rows (per_device_train_batch_size; the
recipes' micro-batch is b consecutive samples of one group, b dividing num_generations) with a
canvas of L completion positions draws one k ~ U{0..L} and gives row i the count

    x_i = round(linspace(k, k + (b - 1)(L + 1)/b, b))_i  mod (L + 1)           (stratified over rows)

then masks exactly x_i of its L positions, chosen uniformly (a permutation of arange(L) < x_i).
The prompt is never masked. p_i = x_i / (L + 1).

ELBO (`_get_elbo`, :376-438; reduce_var is always on: compute_loss :180 and the old/reference
passes :483 call it with its default True, so the recipes' --reduce_var false does nothing):

    pass 1 (M masked):    e_c = log p(o_c | M masked)  / p_i                   c in M
    pass 2 (~M masked):   e_c = log p(o_c | ~M masked) / (L/(L + 1) - p_i)     c not in M
    ELBO_i = (1/2) sum_{c < L} e_c,  averaged over num_mc independent draws (:440-474)

The sum runs over the whole canvas, the EOS filler after the first EOS included: the completion
mask (:606) never enters the loss (the filler is what LLaDA sampled there). `canvas: false`
stops at the first EOS instead, as unmask's other units do, with L the answer's length.

Loss (`compute_loss`, :191-201), per sample i, A_i its advantage:

    r_i  = exp((ELBO_i - ELBO_i^old) / L)
    L_pg = -(1/B) sum_i min(r_i A_i, clip(r_i, 1 - eps_low, 1 + eps_high) A_i)
    L_kl = beta (1/B) sum_i (ELBO_i - ELBO_i^ref)^2 / (2 L)                     (k2, :199-201)

B: the micro-batch; gradient accumulation and DDP average micro-batches, so B is every sample of
the optimizer step (`LossTotals.sequences`). unmask clamps (ELBO_i - ELBO_i^old) / L to [-10, 10]
before exp (algorithms.losses' rule; ESPO does not): only a ratio beyond e^10 differs.

In unmask. Old, reference and current passes draw the same masks (per-sample generators). The
stratification couples the b samples of a cell: the learner gives every sample its rank within
its group over the whole rollout batch (`EstimatorUnit.estimate_takes_group_ranks`), cell =
rank // b, row = rank % b, and the cell's k comes from a generator keyed by (seed, group, cell,
draw), so the cell draws ESPO's joint counts however the batch is split into pieces. Called
without ranks, a sample's rank is counted among the trajectories of the call.
Attention: the masks are defined on a full-attention canvas; block-causal families are refused.
"""

from __future__ import annotations

import hashlib
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
    group_positions,
    register_estimator,
    sample_generators,
)
from algorithms.losses import LOG_RATIO_CLAMP, LossTotals
from rollout.models import DiffusionLM
from rollout.trajectory import Trajectory


@dataclass(frozen=True)
class EspoOptions:
    num_mc: int = 2
    """Independent mask draws averaged per estimate (recipes/run_*_llada.sh --num_mc 2); 2 passes each."""
    strata: int = 3
    """Samples of a group whose mask counts are stratified together (ESPO's micro-batch: --per_device_train_batch_size 3)."""
    canvas: bool = True
    """ELBO over the whole completion canvas, EOS filler included (ESPO); false: up to the first EOS."""


def stratified_counts(k: int, length: int, rows: int) -> list[int]:
    """Masked-token count of each of `rows` rows: round(linspace(k, k + (rows - 1)(L + 1)/rows)) mod (L + 1).

    ESPO's `forward_process` arithmetic (float32 linspace, round half to even), L = `length`.

    >>> stratified_counts(0, 5, 3)  # spacing 6/3 = 2
    [0, 2, 4]
    >>> stratified_counts(5, 5, 3)  # 5, 7, 9 mod 6
    [5, 1, 3]
    """
    end = torch.tensor(k) + (rows - 1) * ((length + 1) / rows)  # int64 + float: float32, as theirs
    x = torch.round(torch.linspace(float(k), float(end), steps=rows)).long()
    return (x % (length + 1)).tolist()


def _cell_generator(seed: int, group: int, cell: int) -> torch.Generator:
    digest = hashlib.blake2b(repr(("espo-cell", int(seed), int(group), int(cell))).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


def espo_masks(
    lengths: Sequence[int], groups: Sequence[int], ranks: Sequence[int], sizes: Sequence[int],
    strata: int, num_mc: int, seed: int, sample_gens: Sequence[torch.Generator],
) -> list[list[list[bool]]]:
    """Per draw j < num_mc, per sample, the pass-1 mask M over its L positions (module docstring).

    Cell of a sample = rank // strata, its row = rank % strata, the cell's rows =
    min(strata, size - cell * strata). The cell's u_j ~ U[0, 1) gives k = floor(u_j (L + 1)),
    uniform on {0..L} and one k for a cell of equal L (ESPO's); the positions come from the
    sample's own generator.
    """
    if strata < 1 or num_mc < 1:
        raise ValueError(f"espo: strata and num_mc must be >= 1, got {strata} and {num_mc}")
    out: list[list[list[bool]]] = [[] for _ in range(num_mc)]
    for length, group, rank, size, g in zip(lengths, groups, ranks, sizes, sample_gens):
        cell, row = divmod(rank, strata)
        rows = min(strata, size - cell * strata)
        u = torch.rand(num_mc, generator=_cell_generator(seed, group, cell), dtype=torch.float64).tolist()
        for j in range(num_mc):
            k = min(int(u[j] * (length + 1)), length)
            x = stratified_counts(k, length, rows)[row]
            perm = torch.randperm(length, generator=g)
            out[j].append((perm < x).tolist())
    return out


def espo_elbo_terms(
    lp1: torch.Tensor, lp2: torch.Tensor, masked: torch.Tensor, counts: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """Per-token ELBO terms [N, C] of one draw; their row sums are ESPO's ELBO_i.

    lp1, lp2: [N, C] log-probs with M, resp. its complement, masked (used where scored);
    masked: [N, C] bool, M (within the canvas); counts: [N] x_i = |M_i|; lengths: [N] L_i.
    e_c = lp1_c / p (c in M), lp2_c / (L/(L + 1) - p) (c in the canvas, not in M), halved.
    """
    L = lengths.to(torch.float64)[:, None]
    p = counts.to(torch.float64)[:, None] / (L + 1)
    w1 = (1.0 / p.clamp(min=1e-12)).to(lp1.dtype)
    w2 = (1.0 / (L / (L + 1) - p).clamp(min=1e-12)).to(lp2.dtype)
    canvas = torch.arange(lp1.shape[1], device=lp1.device)[None] < lengths[:, None].to(lp1.device)
    zero = torch.zeros_like(lp1)
    e1 = torch.where(masked & canvas, lp1 * w1, zero)
    e2 = torch.where(~masked & canvas, lp2 * w2, zero)
    return (e1 + e2) / 2


def espo_estimate(
    lm: DiffusionLM, trajs: Sequence[Trajectory], generator: torch.Generator | None = None, *,
    num_mc: int = 2, strata: int = 3, canvas: bool = True,
    group_rank: Sequence[int] | None = None, group_size: Sequence[int] | None = None,
    seed: int | None = None, occurrences: Sequence[int] | None = None, with_entropy: bool = False,
) -> tuple[torch.Tensor, ...]:
    """ESPO's ELBO of each completion as per-token terms (module docstring): 2 x num_mc passes.

    group_rank, group_size: [n] each sample's rank within its group over the whole rollout batch
    and the group's size (the learner's); None: counted among `trajs`.
    Returns logp [N, C] whose row sums are ELBO_i, and mask [N, C] = the canvas (canvas: true: every
    completion position; false: up to and including the first EOS) (plus the mean entropy of the
    scored tokens with with_entropy).
    """
    if not lm.traits.full_attention:
        raise ValueError(f"espo's masks are defined on a full-attention canvas; family {lm.traits.name!r} is block-causal")
    temperature = _temperature(trajs)
    base = _base_seed(generator, seed)
    gens = sample_generators(trajs, base, occurrences)
    targets, until_eos = _completion_tensors(trajs, lm)
    n, width = until_eos.shape
    if canvas:
        lengths = [len(t.completion_ids) for t in trajs]
        keep = _pad([[True] * n_ for n_ in lengths], width, torch.bool, lm.device)
    else:
        keep = until_eos
        lengths = keep.sum(1).tolist()
    if group_rank is None or group_size is None:
        group_rank, group_size = group_positions([t.group for t in trajs])
    masks = espo_masks(lengths, [t.group for t in trajs], list(map(int, group_rank)), list(map(int, group_size)), strata, num_mc, base, gens)
    len_t = torch.tensor(lengths, device=lm.device)
    logp = None
    ent_sum = torch.zeros((n, width), dtype=torch.float64, device=lm.device)
    for draw in masks:
        # M, then ~M, on each canvas; positions past it (canvas: false's filler) stay clean context
        noisy1 = [row + [False] * (len(t.completion_ids) - len(row)) for row, t in zip(draw, trajs)]
        noisy2 = [[not m for m in row] + [False] * (len(t.completion_ids) - len(row)) for row, t in zip(draw, trajs)]
        first = _pad(noisy1, width, torch.bool, lm.device)  # [N, C] M
        lp1, ent1 = _score(lm, trajs, noisy1, temperature, targets, keep & first, with_entropy=with_entropy)
        lp2, ent2 = _score(lm, trajs, noisy2, temperature, targets, keep & ~first, with_entropy=with_entropy)
        terms = espo_elbo_terms(lp1, lp2, first, first.sum(1), len_t)
        logp = terms if logp is None else logp + terms
        if with_entropy:
            ent_sum += torch.where(first, ent1, ent2).to(ent_sum.dtype)
    logp = torch.where(keep, logp / num_mc, torch.zeros_like(logp))
    entropy = (ent_sum / num_mc).to(logp.dtype) * keep if with_entropy else None
    return _out(logp, keep, entropy, with_entropy)


def espo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    norm: str = "sequence",
    norm_constant: float | None = None,
    totals: LossTotals | None = None,
    pass_index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """ESPO's sequence-level clipped objective with its k2 KL on the ELBO (module docstring).

    Args:
        logp, old_logp, ref_logp: [B, C] per-token ELBO terms (`espo_estimate`); row sums are ELBO_i.
        advantages: [B] per sample; mask: [B, C] the canvas carrying loss, L_i = its row sum.
        totals: whole-minibatch counts; B = totals.sequences (the piece's share otherwise).
        norm, norm_constant, pass_index: not used (ESPO's reduction: a mean over samples).
    Returns:
        (loss, metrics): loss/policy, kl (the k2 term), clipfrac and ratio/mean per sequence, logp/sequence.
    """
    def k2(seq: torch.Tensor, ref_seq: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        return (seq - ref_seq) ** 2 / 2 / length.clamp(min=1)

    return sequence_ratio_objective("espo", k2, logp, old_logp, advantages, mask, eps_low, eps_high, ref_logp, beta, totals)


def sequence_ratio_objective(
    name: str,
    kl_of,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float,
    eps_high: float,
    ref_logp: torch.Tensor | None,
    beta: float,
    totals: LossTotals | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The sequence-level clipped ELBO-ratio objective ESPO and GDPO share: r_i = exp((ELBO_i -
    ELBO_i^old) / L_i), -min(r A, clip(r) A) and beta * KL averaged over samples; `kl_of(seq, ref_seq,
    length) -> [B]` is the paper's KL on the ELBOs (ESPO's k2 per length, GDPO's k3)."""
    if advantages.dim() != 1:
        raise ValueError(f"{name}'s ratio is per sequence: advantages must be [B], got {tuple(advantages.shape)}")
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp")
    totals = totals or LossTotals.of(mask)
    m = mask.to(logp.dtype)
    length = m.sum(1)  # [B] L_i
    has = (length > 0).to(logp.dtype)
    seq = (logp * m).sum(1)  # [B] ELBO_i
    log_ratio = (((seq - (old_logp * m).sum(1)) / length.clamp(min=1))).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)  # [B] r_i
    adv = advantages.to(logp.dtype)
    pg1, pg2 = ratio * adv, torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    pg = -torch.minimum(pg1, pg2)  # [B]
    nseq = max(totals.sequences, 1.0)
    kl = kl_of(seq, (ref_logp * m).sum(1), length) if ref_logp is not None else torch.zeros_like(seq)
    loss = (pg * has).sum() / nseq
    if beta > 0:
        loss = loss + beta * (kl * has).sum() / nseq
    with torch.no_grad():
        metrics = {
            "loss/policy": float((pg * has).sum() / nseq),
            "kl": float((kl * has).sum() / nseq),
            "clipfrac": float(((pg2 < pg1).to(logp.dtype) * has).sum() / nseq),
            "ratio/mean": float((ratio * has).sum() / nseq),
            "logp/sequence": float((seq * has).sum() / nseq),
        }
    return loss, metrics


_ESPO = "ML-GSAI/ESPO "
_ESPO_EPS = (0.2, f"{_ESPO}recipes/train.yaml:18 epsilon 0.2 (run_gsm8k/math/sudoku/code keep it; TRL epsilon_high = epsilon), clamp at espo/espo_trainer.py:192")
ESPO = register_estimator(
    EstimatorUnit(
        "espo", espo_estimate, EspoOptions, lambda trajs, o: 2 * int(o.num_mc),
        paper="ESPO (Ou et al., 2025; ML-GSAI/ESPO): sequence-level ELBO ratio per canvas length, stratified exact-count masks with a complement pass, k2 KL",
        **_preset(
            advantage=("loo", f"{_ESPO}espo/espo_trainer.py:694-710: leave_one_out = True, r - (sum - r) / (G - 1), unscaled (train.yaml:19 scale_rewards false)"),
            zscore_std=("sample", f"{_ESPO}espo/espo_trainer.py:711: torch .std (G - 1), only logged"),
            eps_low=_ESPO_EPS, eps_high=_ESPO_EPS,
            beta=(1e-3, f"{_ESPO}recipes/run_gsm8k_llada.sh:28 --beta 1e-3 (math 1e-3, countdown 3e-3, sudoku 1e-2), k2 on the ELBO at espo/espo_trainer.py:199; use_peft true: the reference is the base with the adapter off (the initial policy; TRL syncs only a separate ref_model)"),
            redraw_masks=(True, f"{_ESPO}espo/espo_trainer.py:177-178: mask seed of the inner iteration this_itr_idx (num_iterations 8); old ELBOs for every iteration at :621"),
            epochs=(8, f"{_ESPO}recipes/run_gsm8k_llada.sh:3 NUM_ITER=8 (every run_*.sh; recipes/train.yaml:24's 2 is overridden)"),
        ),
        multi_pass=lambda o: True,
        objective=espo_loss, objective_kl=True, estimate_takes_group_ranks=True,
        attention=frozenset({"full"}),
    )
)
