"""Likelihood estimators for sampled completions of a diffusion LM, behind one interface.

A masked diffusion LM has no tractable sequence likelihood, and the RL papers for dLLMs differ
mostly in how they estimate it. Every estimator here has the same signature,

    estimate(lm, trajs, generator=None, **opts) -> (logp [N, C], mask [N, C])

where N = len(trajs), C = the longest completion, logp[i, c] is the (differentiable) estimate
for completion token c of sample i (0 at padding) and mask[i, c] is True where that estimate
carries loss. `with_entropy=True` adds a third tensor, the entropy [N, C] of the scored
distribution (detached, a metric, 0 where mask is False). An option the estimator does not
take is an error (`EstimatorUnit.check_options`), never silently ignored.

Loss stops at the first EOS (`loss_mask`), for every estimator and family: the first EOS
carries loss (it is the decision to stop), the positions after it do not (no policy loss, KL,
entropy or length count). They are still inputs wherever the family needs them as context: a
full-attention canvas keeps its filler, a block model the rest of its EOS block, exactly as the
sampler saw them. d1 and DiffuCoder mask their loss after the first EOS the same way, and
dLLM-RL drops its filler pads; counting the filler would put most of the token-mean weight of a
short answer on trailing EOS tokens, a length bias.

Only the tokens a pass scores reach the LM head (`DiffusionLM.forward_logprobs`, in vocabulary
chunks): those carrying loss, and of them only the ones that pass masks; an update computes one
head row per loss token and pass that scores it, never passes x completion length.

Inputs. Block-causal models (`lm.traits.block_causal`) score the packed [prompt | clean | noisy]
layout of `algorithms.packing.pack_noisy`, so noisy block j sees the prompt and the clean blocks
before it, exactly as the block sampler did; full-attention models (`lm.traits.full_attention`)
see [prompt | noisy]. Log-probs are always those of `lm.sampling_logprobs(logits, temperature)` with the
trajectory's temperature: the distribution the rollout actually sampled from.

Randomness. The same call serves the old, the reference and the current policy, and their
ratio is only meaningful if all three see the same masks. So no estimator draws from a shared
stream: each sample gets its own `torch.Generator` seeded from a base seed and the sample's
identity (a hash of its prompt and completion ids, plus its occurrence number among identical
samples of the call, or `opts["occurrences"]`: the learner passes `occurrence_index` of the
whole minibatch, so the pieces it scores on several ranks or micro-batches draw the masks the
whole would). The base seed is `opts["seed"]` if given, else `generator.initial_seed()`
(unaffected by draws already taken from it), else 0. Hence two calls with the same seed give
identical masks whatever the weights, and a sample's mask does not depend on which other
samples share its minibatch. Re-drawing masks means passing a new seed to the old, reference
and current calls alike: the learner does so at every inner epoch when
`algorithm.redraw_masks` is on (the default for one_step and coupled, as d1's and DiffuCoder's
`random_masking` draws one mask seed per inner iteration), scoring the old and reference log-probs of every epoch's masks
before the first update.

Estimators (ESTIMATORS, each an `EstimatorUnit`: the function, its typed options, its pass count,
its paper's config defaults and its traits; a plugin unit is named by import path):
  trace         TraceRL: replay the recorded step map (algorithms.trace).
  one_step      diffu-GRPO (d1): completion fully masked, prompt tokens masked with prob p.
  coupled       coupled-GRPO (DiffuCoder): complementary masks, every token scored once.
  mc_elbo       Monte Carlo / quadrature ELBO of masked diffusion, per token (GDPO itself: algorithms.gdpo).
  block_random  one random mask per block (SFT-style masking), loss on the masked tokens.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from algorithms.packing import pack_noisy
from algorithms.sft import random_block_mask
from algorithms.trace import loss_length, trace_logprobs, trace_pass_index, trace_pass_scores
from rollout.families import is_full_attention
from rollout.models import DiffusionLM
from rollout.trajectory import Trajectory

Estimate = tuple[torch.Tensor, ...]


# -- shared pieces ---------------------------------------------------------------------------------
def occurrence_index(trajs: Sequence[Trajectory]) -> list[int]:
    """Per sample, how many identical samples (same prompt and completion ids) come before it."""
    seen: Counter = Counter()
    out = []
    for t in trajs:
        key = (tuple(t.prompt_ids), tuple(t.completion_ids))
        out.append(seen[key])
        seen[key] += 1
    return out


def group_positions(groups: Sequence[int]) -> tuple[list[int], list[int]]:
    """(rank of each sample within its group, in order; that group's size), for
    `EstimatorUnit.estimate_takes_group_ranks`.

    >>> group_positions([4, 9, 4, 4])
    ([0, 0, 1, 2], [3, 1, 3, 3])
    """
    seen: Counter = Counter()
    ranks = []
    for g in groups:
        ranks.append(seen[g])
        seen[g] += 1
    return ranks, [seen[g] for g in groups]


def sample_generators(
    trajs: Sequence[Trajectory], seed: int, occurrences: Sequence[int] | None = None
) -> list[torch.Generator]:
    """One CPU generator per sample, seeded from `seed` and the sample's identity.

    Identity = (prompt ids, completion ids, k) where k counts earlier identical samples in
    `trajs` (`occurrence_index`), so duplicates in a group still get independent masks while a
    sample's masks do not depend on its position in the batch. `occurrences` overrides k: a
    learner that scores a minibatch in pieces (ranks, micro-batches) passes each piece the k
    computed over the whole minibatch, so the pieces draw exactly the whole's masks.
    blake2b, not hash(): stable across processes.
    """
    if occurrences is None:
        occurrences = occurrence_index(trajs)
    elif len(occurrences) != len(trajs):
        raise ValueError(f"{len(trajs)} trajectories but {len(occurrences)} occurrences")
    gens = []
    for t, k in zip(trajs, occurrences):
        key = (tuple(t.prompt_ids), tuple(t.completion_ids))
        digest = hashlib.blake2b(repr((int(seed), key, k)).encode(), digest_size=8).digest()
        gens.append(torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1)))
    return gens


def _base_seed(generator: torch.Generator | None, seed: int | None) -> int:
    if seed is not None:
        return int(seed)
    return int(generator.initial_seed()) if generator is not None else 0


def _temperature(trajs: Sequence[Trajectory]) -> float:
    if not trajs:
        raise ValueError("an estimator needs at least one trajectory")
    temps = {t.temperature for t in trajs}
    if len(temps) != 1:
        raise ValueError(f"an estimator batch must share one sampling temperature, got {sorted(temps)}")
    return temps.pop()


def _block_spans(
    prompt_len: int, completion_len: int, block_size: int | None, *, full_attention: bool | None = None
) -> list[tuple[int, int]]:
    """[start, end) of each completion block on the absolute grid; full attention (the family's
    `traits.full_attention`; None: a None block_size means it): the whole completion."""
    if is_full_attention(block_size, full_attention):
        return [(0, completion_len)] if completion_len else []
    spans, c = [], 0
    while c < completion_len:
        end = min(((prompt_len + c) // block_size + 1) * block_size - prompt_len, completion_len)
        spans.append((c, end))
        c = end
    return spans


def loss_mask(trajs: Sequence[Trajectory], eos_id: int | None, device=None) -> torch.Tensor:
    """[N, C] bool: the completion tokens that carry loss, up to and including the first EOS.

    >>> t = Trajectory([5], [7, 2, 2, 7], [0, 0, 1, 1], [0.0] * 4, None, 1.0, 2, "eos")
    >>> loss_mask([t], eos_id=2).tolist()
    [[True, True, False, False]]
    """
    width = max(len(t.completion_ids) for t in trajs)
    mask = torch.zeros((len(trajs), width), dtype=torch.bool)
    for i, t in enumerate(trajs):
        mask[i, : loss_length(t.completion_ids, eos_id)] = True
    return mask.to(device) if device is not None else mask


def _completion_tensors(trajs: Sequence[Trajectory], lm: DiffusionLM) -> tuple[torch.Tensor, torch.Tensor]:
    """targets [N, C] (completion ids, 0 at padding) and the loss mask [N, C] (`loss_mask`)."""
    width = max(len(t.completion_ids) for t in trajs)
    targets = torch.zeros((len(trajs), width), dtype=torch.long)
    for i, t in enumerate(trajs):
        targets[i, : len(t.completion_ids)] = torch.tensor(t.completion_ids, dtype=torch.long)
    return targets.to(lm.device), loss_mask(trajs, lm.eos_id, lm.device)


def _pad(rows: Sequence[Sequence[float | bool]], width: int, dtype, device) -> torch.Tensor:
    out = torch.zeros((len(rows), width), dtype=dtype)
    for i, r in enumerate(rows):
        if len(r):
            out[i, : len(r)] = torch.tensor(list(r), dtype=dtype)
    return out.to(device)


def _score(
    lm: DiffusionLM,
    trajs: Sequence[Trajectory],
    noisy: Sequence[Sequence[bool]],
    temperature: float,
    targets: torch.Tensor,
    rows: torch.Tensor,
    prompt_noisy: Sequence[Sequence[bool]] | None = None,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One forward pass: log-prob [N, C] of the completion tokens in `rows`, with `noisy` tokens masked.

    rows: [N, C] bool, the tokens this pass scores (those carrying loss). Only they reach the LM
    head, in vocabulary chunks (`DiffusionLM.forward_logprobs`); logp and entropy are 0 elsewhere.
    prompt_noisy: per prompt token, True to mask it too (d1's prompt masking). It is applied
    to every copy of that prompt position in the packed row (the noisy block holding the prompt's
    tail repeats those tokens), so all copies of the context agree.
    """
    traits = lm.traits
    packed = pack_noisy(
        [t.prompt_ids for t in trajs], [t.completion_ids for t in trajs], noisy, traits.block_size, lm.mask_id, lm.pad_id, lm.device,
        full_attention=traits.full_attention, logit_shift=traits.logit_shift,
    )
    input_ids = packed.input_ids
    if prompt_noisy is not None and any(any(p) for p in prompt_noisy):
        plen = max(len(p) for p in prompt_noisy)
        hit = torch.zeros((len(trajs), plen + 1), dtype=torch.bool)
        for i, p in enumerate(prompt_noisy):
            hit[i, : len(p)] = torch.tensor(list(p), dtype=torch.bool)
        hit = hit.to(input_ids.device)
        real = packed.valid  # padding is never a prompt token (select may point into the clean copy: pack_noisy's logit_shift)
        plens = torch.tensor([len(t.prompt_ids) for t in trajs], device=input_ids.device)
        is_prompt = real & (packed.position_ids < plens[:, None])
        masked = is_prompt & hit.gather(1, packed.position_ids.clamp(max=plen))
        input_ids = input_ids.masked_fill(masked, lm.mask_id)
    rows = rows & packed.completion_mask  # pack_noisy's width is the longest completion, as targets'
    lp, ent = lm.forward_logprobs(input_ids, packed.position_ids, packed.attention(lm.flex), packed.select, rows, targets, temperature, with_entropy)
    return _scatter(lp, rows), (_scatter(ent, rows) if with_entropy else None)


def _scatter(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """[n] values of the True slots of `rows` [N, C] (row-major) back to [N, C], 0 elsewhere."""
    out = torch.zeros(rows.shape, dtype=values.dtype, device=values.device)
    return out.index_put(rows.nonzero(as_tuple=True), values)


def _out(logp, mask, entropy, with_entropy: bool) -> Estimate:
    return (logp, mask, entropy) if with_entropy else (logp, mask)


# -- estimators ------------------------------------------------------------------------------------
def trace_estimate(
    lm: DiffusionLM, trajs: Sequence[Trajectory], generator: torch.Generator | None = None, *, shrink: int = 1,
    seed: int | None = None, occurrences: Sequence[int] | None = None, with_entropy: bool = False,
) -> Estimate:
    """TraceRL (Wang et al., 2025, arXiv:2509.06949): log pi(o_c | state where its step group began).

    For shrinkage s, a block's distinct steps are grouped s at a time; pass k masks every token
    decoded at or after its block's k-th group and scores the tokens of that group (all blocks
    in one packed pass). Deterministic: `generator`, `seed` and `occurrences` are unused.
    mask = the real tokens up to and including the first EOS, the only ones scored (each pass's
    LM head sees just its group's loss tokens); logp is their replayed log-prob, 0 elsewhere.
    """
    logp, mask, entropy = trace_logprobs(lm, trajs, shrink=shrink, with_entropy=with_entropy)
    return _out(logp, mask, entropy, with_entropy)


def one_step_estimate(
    lm: DiffusionLM, trajs: Sequence[Trajectory], generator: torch.Generator | None = None, *,
    p_mask_prompt: float = 0.15, seed: int | None = None, occurrences: Sequence[int] | None = None, with_entropy: bool = False,
) -> Estimate:
    """diffu-GRPO's one-step estimator (Zhao et al., 2025, "d1", arXiv:2504.12216).

        log pi(o_c | q) ~= log p_theta(o_c | q', all completion tokens masked)

    q' is the prompt with each token masked independently with probability p_mask_prompt
    (0.15 in d1). One forward pass. Block models: every completion block is fully masked in
    the noisy copy and sees the clean blocks before it (the block-diffusion analogue of d1's
    fully masked canvas). mask = the real tokens up to and including the first EOS (logp is 0
    elsewhere). Shapes: logp, mask [N, C].
    """
    if not 0.0 <= p_mask_prompt < 1.0:
        raise ValueError("p_mask_prompt must be in [0, 1)")
    temperature = _temperature(trajs)
    gens = sample_generators(trajs, _base_seed(generator, seed), occurrences)
    prompt_noisy = [(torch.rand(len(t.prompt_ids), generator=g) < p_mask_prompt).tolist() for t, g in zip(trajs, gens)]
    targets, mask = _completion_tensors(trajs, lm)
    noisy = [[True] * len(t.completion_ids) for t in trajs]
    logp, entropy = _score(lm, trajs, noisy, temperature, targets, mask, prompt_noisy, with_entropy)
    if entropy is not None:
        entropy = entropy * mask
    return _out(logp, mask, entropy, with_entropy)


def coupled_estimate(
    lm: DiffusionLM, trajs: Sequence[Trajectory], generator: torch.Generator | None = None, *,
    t_min: float = 0.2, t_max: float = 0.8, weighted: bool = False, full_mask_pass: bool = False,
    seed: int | None = None, occurrences: Sequence[int] | None = None, with_entropy: bool = False,
) -> Estimate:
    """Coupled sampling of coupled-GRPO (Gong et al., 2025, "DiffuCoder", arXiv:2506.20639).

    Per sample draw t ~ U[t_min, t_max] (DiffuCoder's trainer: [0.2, 0.8]) and a mask M with
    P(c in M) = t; pass 1 masks M, pass 2 masks its complement, so every completion token is
    masked, and scored, in exactly one of the two passes:

        log pi(o_c | q) ~= log p_theta(o_c | q, o with M masked)     if c in M
                           log p_theta(o_c | q, o with ~M masked)    otherwise

    Options reproducing DiffuCoder's released trainer: weighted=True multiplies the pass-1
    score by 1/t and the pass-2 score by 1/(1 - t) (the ELBO weights); full_mask_pass=True adds
    d1's fully masked pass and returns (full + coupled) / 2. Defaults give the plain per-token
    log-prob above (the learner's config defaults to DiffuCoder's form). Two forward passes
    (three with full_mask_pass). mask = the real tokens up to and including the first EOS
    (logp is 0 elsewhere).
    """
    if not 0.0 < t_min <= t_max < 1.0:
        raise ValueError("coupled needs 0 < t_min <= t_max < 1")
    temperature = _temperature(trajs)
    gens = sample_generators(trajs, _base_seed(generator, seed), occurrences)
    first, ts = [], []
    for t, g in zip(trajs, gens):
        ratio = t_min + (t_max - t_min) * torch.rand((), generator=g, dtype=torch.float64).item()
        first.append((torch.rand(len(t.completion_ids), generator=g, dtype=torch.float64) < ratio).tolist())
        ts.append(ratio)
    second = [[not m for m in row] for row in first]
    targets, mask = _completion_tensors(trajs, lm)
    width = mask.shape[1]
    in_first = _pad(first, width, torch.bool, lm.device)
    # Each pass scores only the tokens it masks (and that carry loss): every token once in all.
    lp1, ent1 = _score(lm, trajs, first, temperature, targets, mask & in_first, with_entropy=with_entropy)
    lp2, ent2 = _score(lm, trajs, second, temperature, targets, mask & ~in_first, with_entropy=with_entropy)
    w1 = w2 = None
    if weighted:
        t_col = torch.tensor(ts, dtype=lp1.dtype, device=lm.device)[:, None]
        w1, w2 = 1.0 / t_col, 1.0 / (1.0 - t_col)
    s1 = lp1 if w1 is None else w1 * lp1
    s2 = lp2 if w2 is None else w2 * lp2
    logp = torch.where(in_first, s1, s2)
    entropy = torch.where(in_first, ent1, ent2) if with_entropy else None
    if full_mask_pass:
        lp0, _ = _score(lm, trajs, [[True] * len(t.completion_ids) for t in trajs], temperature, targets, mask)
        logp = 0.5 * (lp0 + logp)
    logp = torch.where(mask, logp, torch.zeros_like(logp))
    if entropy is not None:
        entropy = entropy * mask
    return _out(logp, mask, entropy, with_entropy)


@lru_cache(maxsize=32)
def _gauss_legendre_unit(n: int) -> tuple[tuple[float, float], ...]:
    x, w = np.polynomial.legendre.leggauss(n)  # on [-1, 1], weights sum to 2
    return tuple((float((xi + 1) / 2), float(wi / 2)) for xi, wi in zip(x, w))


def elbo_schedule(n: int, quadrature: bool, generator: torch.Generator, t_min: float = 1e-3) -> list[tuple[float, float]]:
    """(t_k, w_k) for k < n: the noise levels and weights of the ELBO's outer integral over t.

    quadrature=True: n-point Gauss-Legendre nodes and weights mapped to (0, 1) (sum w_k = 1),
    GDPO's semi-deterministic scheme; the randomness left is the masks. quadrature=False:
    t_k = t_min + (1 - t_min) u_k, u_k ~ U(0, 1], w_k = 1/n (plain Monte Carlo; t_min keeps
    the 1/t weight finite, as LLaDA's eps does).
    """
    if n < 1:
        raise ValueError("mc_elbo needs n >= 1 samples")
    if quadrature:
        return list(_gauss_legendre_unit(n))
    u = 1.0 - torch.rand(n, generator=generator, dtype=torch.float64)
    return [(t_min + (1.0 - t_min) * float(ui), 1.0 / n) for ui in u]


def mc_elbo_estimate(
    lm: DiffusionLM, trajs: Sequence[Trajectory], generator: torch.Generator | None = None, *,
    n: int = 4, quadrature: bool = False, t_min: float = 1e-3, seed: int | None = None,
    occurrences: Sequence[int] | None = None, with_entropy: bool = False,
) -> Estimate:
    """Per-token masked-diffusion ELBO (unmask's; GDPO's own sequence-level form is `algorithms.gdpo`).

    The ELBO of masked diffusion (LLaDA / MDLM) bounds the sequence log-likelihood,

        log pi(o | q) >= E_{t ~ U(0,1]} E_{o_t ~ q_t(.|o)} [ (1/t) sum_c 1[o_t^c = M] log p_theta(o^c | o_t, q) ],

    where q_t masks each token independently with probability t. Its per-token terms are
    estimated with n noise levels (t_k, w_k) from `elbo_schedule` and one mask M_k per level:

        logp[c] = sum_k  w_k / t_k * 1[c in M_k] * log p_theta(o^c | q, o with M_k masked)

    so sum_c logp[c] is the ELBO estimate (plain MC: w_k = 1/n, t_k ~ U; quadrature: GDPO's
    Gauss-Legendre nodes). Block models use the block-diffusion ELBO (BD3-LM: Arriola et al.,
    2025), a sum over blocks each with its own t: in pass k every block b draws
    t_kb (plain MC; quadrature shares the node t_k) and is masked with it, conditioned on the
    clean blocks before it. A token unmasked in every pass scores 0, which is its term in the
    sum. n forward passes. mask = the real tokens up to and including the first EOS (the terms
    of the bound that carry loss; logp is 0 elsewhere).
    """
    temperature = _temperature(trajs)
    gens = sample_generators(trajs, _base_seed(generator, seed), occurrences)
    targets, mask = _completion_tensors(trajs, lm)
    width = mask.shape[1]
    # per pass k: noisy masks and per-token weight w/t of every sample
    passes_noisy: list[list[list[bool]]] = [[] for _ in range(n)]
    passes_weight: list[list[list[float]]] = [[] for _ in range(n)]
    for t, g in zip(trajs, gens):
        spans = _block_spans(len(t.prompt_ids), len(t.completion_ids), lm.traits.block_size, full_attention=lm.traits.full_attention)
        # one schedule per block (plain MC draws independent t per block; quadrature is fixed)
        sched = [elbo_schedule(n, quadrature, g, t_min) for _ in spans]
        for k in range(n):
            noisy, weight = [], []
            for (a, b), s in zip(spans, sched):
                tk, wk = s[k]
                m = (torch.rand(b - a, generator=g, dtype=torch.float64) < tk).tolist()
                noisy += m
                weight += [wk / tk if mk else 0.0 for mk in m]
            passes_noisy[k].append(noisy)
            passes_weight[k].append(weight)
    logp = None
    ent_sum = torch.zeros((len(trajs), width), dtype=torch.float64, device=lm.device) if with_entropy else None
    ent_cnt = torch.zeros((len(trajs), width), dtype=torch.float64, device=lm.device) if with_entropy else None
    for k in range(n):
        w = _pad(passes_weight[k], width, torch.float64, lm.device)
        tok_lp, ent = _score(lm, trajs, passes_noisy[k], temperature, targets, mask & (w > 0), with_entropy=with_entropy)
        w = w.to(tok_lp.dtype)
        term = torch.where(w > 0, w * tok_lp, torch.zeros_like(tok_lp))
        logp = term if logp is None else logp + term
        if with_entropy:
            scored = (w > 0).to(ent_sum.dtype)
            ent_sum += ent.to(ent_sum.dtype) * scored
            ent_cnt += scored
    logp = torch.where(mask, logp, torch.zeros_like(logp))
    entropy = (ent_sum / ent_cnt.clamp(min=1)).to(logp.dtype) * mask if with_entropy else None
    return _out(logp, mask, entropy, with_entropy)


def block_random_estimate(
    lm: DiffusionLM, trajs: Sequence[Trajectory], generator: torch.Generator | None = None, *,
    seed: int | None = None, occurrences: Sequence[int] | None = None, with_entropy: bool = False,
) -> Estimate:
    """Random masking per block, the objective of block-diffusion SFT (algorithms.sft).

    Every block b draws t_b ~ U(0, 1] and masks each of its completion tokens with
    probability t_b (at least one per block: `random_block_mask`); one packed forward scores

        logp[c] = log p_theta(o^c | q, clean blocks before b, block b with its mask)   for masked c

    mask = the masked (scored) tokens up to and including the first EOS; tokens left visible
    carry no loss. This is the "random masking" baseline TraceRL is compared against. Full
    attention: one block.
    """
    temperature = _temperature(trajs)
    gens = sample_generators(trajs, _base_seed(generator, seed), occurrences)
    traits = lm.traits
    noisy = [
        random_block_mask(len(t.prompt_ids), len(t.completion_ids), traits.block_size, g, full_attention=traits.full_attention)
        for t, g in zip(trajs, gens)
    ]
    targets, until_eos = _completion_tensors(trajs, lm)
    width = until_eos.shape[1]
    mask = until_eos & _pad(noisy, width, torch.bool, lm.device)
    logp, entropy = _score(lm, trajs, noisy, temperature, targets, mask, with_entropy=with_entropy)
    if entropy is not None:
        entropy = entropy * mask
    return _out(logp, mask, entropy, with_entropy)


# -- estimators as units ---------------------------------------------------------------------------
# Keywords every estimator takes besides its own options (the learner's mask seed and pieces;
# `advantages` only where the unit says estimate_takes_advantages, `group_rank` and `group_size`
# where it says estimate_takes_group_ranks).
CALL_KEYWORDS = frozenset({"seed", "occurrences", "with_entropy", "advantages", "group_rank", "group_size"})


@dataclass(frozen=True)
class EstimatorUnit:
    """One likelihood estimator and everything the learner and the config need to know about it.

    The learner and the config ask the unit; they never compare its name. A new estimator is a
    module that builds one of these and calls `register_estimator` (or is named in a config by
    its import path, `package.module:UNIT`).

    Fields:
        name: the registry key (`algorithm.estimator`).
        estimate: `estimate(lm, trajs, generator=None, *, seed, occurrences, with_entropy, **options)`
            -> (logp [N, C], mask [N, C]) (plus entropy [N, C] with with_entropy).
        options: a dataclass of the estimator's own options, typed and with defaults; any other
            keyword is an error that names the estimator and its keys.
        count_passes: `count_passes(trajs, options) -> int`, the forward passes (calls of
            `lm.forward_logprobs` over the whole batch) one estimate takes.
        paper: where the estimator comes from (shown by `unmask config-help`).
        config_fields: option -> `algorithm.<field>` of the run config that sets it (built-ins;
            a plugin takes its options from `algorithm.options`).
        config_defaults: `algorithm.<field>` -> value this estimator's paper uses, applied to the
            fields a config leaves unset.
        provenance: `algorithm.<field>` -> where that default comes from, one line ("owner/repo
            path: what the code does"), shown by `unmask config-help` and as a comment in the run's
            config.yaml. Optional: a plugin unit may leave it empty.
        replays_trace: scores the recorded step map, deterministically (TraceRL): the rollout's
            log-probs are its likelihoods (overlap), its passes are trace steps (`loss_norm: pass`,
            the value model), and its masks are never redrawn.
        multi_pass: `multi_pass(options) -> bool`, whether one estimate may take several passes
            (the learner then takes the backward pass by pass to bound memory).
        pass_scores: for estimators whose passes score disjoint tokens and combine by a plain
            scatter: `pass_scores(lm, trajs, options, with_entropy)` yielding ((r, c), logp, entropy)
            per pass, so a token-separable loss can back-propagate each pass's share directly.
        objective: the unit's own policy objective, used instead of `algorithm.loss` (wd1's
            weighted likelihood, SPG's sandwiched bounds): called as the `algorithms.losses.LOSSES`
            functions are, `objective(logp, old_logp, advantages, mask, eps_low, eps_high, *,
            ref_logp, beta, norm, norm_constant, totals, pass_index) -> (loss, metrics)`, with
            `advantages` as `advantage_weights` made them. None: the config's `algorithm.loss`.
        needs_old_logp: False for a ratio-free objective: the learner takes no old-policy pass
            (old_logp is None) and the tokens carrying loss are `loss_mask`'s.
        advantage_weights: `advantage_weights(advantages [B], groups [B], lengths [B]) -> [B]`
            (lengths: each sample's loss tokens, up to and including its first EOS), what the
            objective gets as `advantages`, computed once over the whole rollout batch (so a group
            split across minibatches, ranks or micro-batches keeps its statistics). None: as they are.
        attention: the attention kinds the unit's masks are defined for ("full", "block_causal");
            the learner refuses a model of another kind.
        estimate_takes_advantages: the estimate is also called with `advantages=` [n] (the piece's,
            after advantage_weights): for estimators whose likelihood depends on the sign (SPG).
        objective_kl: the objective takes `algorithm.beta` with its own KL form (ESPO's k2 on the
            sequence ELBO): the learner then scores the reference and passes `ref_logp` and `beta`.
        estimate_takes_group_ranks: the estimate is also called with `group_rank=` and `group_size=`
            ([n] each: a sample's rank within its group over the whole rollout batch, in rollout
            order, and the group's size), so the masks can couple a group's samples however the batch
            is split into minibatches, ranks and micro-batches (ESPO's stratified counts).
        loss_weights: `loss_weights(trajs, keep_rows [n], options, eos_id) -> [n, C]` per-token weights
            of the objective, computed once per minibatch over all its samples (`keep_rows`: the
            batch's loss mask per sample) before it is split over ranks and micro-batches; the
            objective is also called with `weights=` (the piece's rows): CJ-GRPO's per-step means. The weights
            may carry a trailing channel axis, [n, C, K], which the objective reads.
        scheduled_weights: `scheduled_weights(options) -> bool`; True: loss_weights is called once per optimizer
            step instead of once per update, with the keywords `advantages=` [n] (as the objective gets them),
            `siblings=` [n] long (`LearnerBatch.siblings`, or None) and `progress=(t, T)`: the optimizer step
            (0-based over the run) and the run's optimizer steps, train.steps x epochs x minibatches (d-TreeRPO's
            self-distillation schedule).
        sibling_minibatches: `sibling_minibatches(options) -> bool`; True: every minibatch holds whole sibling
            groups (the rows sharing a `LearnerBatch.siblings` id; the groups are shuffled, not the rows), for a
            loss that couples a parent's children (d-TreeRPO's self-distillation).
        segment_count: `segment_count(options, tree) -> int | None` (tree: `rollout.sampling.tree` or None): the
            segments one update trains, each for `algorithm.epochs` consecutive optimizer steps in place of the
            epochs x minibatches loop, so an update is epochs x segments optimizer steps (the learning-rate and
            scheduled-weight totals count them); None: the learner's loop (d-TreeRPO's per-parent schedule).
        segments: with segment_count not None, `segments(options, siblings [n], tree, generator) -> [rows of each
            segment]` in training order (`LearnerBatch.siblings`; the generator seeded per update).
        offline_pairs: the unit learns from preference pairs (prompt, chosen, rejected) of the data,
            with no rollouts and no rewards (VRPO): `unmask train` runs `rl.preference`'s pair loop,
            which scores each response with `estimate` (policy and reference on the same seed: the
            same masks) and calls `objective(policy_chosen [B], policy_rejected [B], ref_chosen [B],
            ref_rejected [B], beta, pairs)` on the sequence sums instead of the RL signature above.
        needs_step_predictions: the rollout records every step's predicted canvas (the trainer turns on
            `SamplingParams.record_steps`) and the trainer scores the intermediate answers of the steps
            `scored_steps(num_steps, options) -> [step]` names, through the one scoring path (MDPO).
        scored_steps: see needs_step_predictions.
        step_batch: `step_batch(trajs, step_rewards [B, T], scored, options) -> (rows, advantages [n],
            owner)`: the learner rows the samples and their step rewards become (`owner[r]`: the sample
            of row r), with one advantage per row, in place of the group advantages (MDPO's step rows).
        tree_batch: `tree_batch(leaves, rewards [B], tree, options) -> (rows, advantages [n], owner, siblings [n])`: the
            learner rows a tree rollout (`rollout.sampling.tree`, which the unit's rollout_sampling sets) becomes, one per
            tree edge, with one advantage per row, in place of the group advantages, and each row's parent node
            (`LearnerBatch.siblings`) (d-TreeRPO).
        rollout_sampling: `rollout.sampling` settings the unit's paper decodes with, filled in where a
            run config leaves them unset (`rl.config.RunConfig`): JustGRPO's left-to-right block_length 1.
        planned_rows: for `unmask plan` (rl.plan), where the unit's learner rows are not the samples:
            `planned_rows(options, samples_per_prompt, tree) -> (rows per prompt, rows per prompt of the largest
            optimizer step or None)`; None for the second: the rows split evenly over `algorithm.minibatches`.
            MDPO's step rows (train_steps per sample), d-TreeRPO's tree edges and parent segments. None: the samples.
    """

    name: str
    estimate: Callable[..., Estimate]
    options: type
    count_passes: Callable[[Sequence[Trajectory], Any], int]
    paper: str = ""
    config_fields: Mapping[str, str] = field(default_factory=dict)
    config_defaults: Mapping[str, Any] = field(default_factory=dict)
    provenance: Mapping[str, str] = field(default_factory=dict)
    replays_trace: bool = False
    multi_pass: Callable[[Any], bool] = lambda options: False
    pass_scores: Callable | None = None
    objective: Callable[..., tuple[torch.Tensor, dict[str, float]]] | None = None
    needs_old_logp: bool = True
    advantage_weights: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    attention: frozenset[str] = frozenset({"full", "block_causal"})
    estimate_takes_advantages: bool = False
    objective_kl: bool = False
    estimate_takes_group_ranks: bool = False
    loss_weights: Callable[..., torch.Tensor] | None = None
    scheduled_weights: Callable[[Any], bool] = lambda options: False
    sibling_minibatches: Callable[[Any], bool] = lambda options: False
    segment_count: Callable[[Any, Any], int | None] = lambda options, tree: None
    segments: Callable[..., list[list[int]]] | None = None
    needs_step_predictions: bool = False
    scored_steps: Callable[[int, Any], list[int]] | None = None
    step_batch: Callable[..., tuple[list[Trajectory], torch.Tensor, list[int]]] | None = None
    offline_pairs: bool = False
    tree_batch: Callable[..., tuple[list[Trajectory], torch.Tensor, list[int], torch.Tensor]] | None = None
    rollout_sampling: Mapping[str, Any] = field(default_factory=dict)
    planned_rows: Callable[[Any, int, Any], tuple[int, int | None]] | None = None

    def check_options(self, options: Mapping[str, Any]) -> Any:
        """The options as this unit's dataclass; an unknown key is an error naming the valid ones."""
        known = {f.name for f in dataclasses.fields(self.options)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"estimator {self.name!r} has no option {', '.join(map(repr, unknown))}; its options: {sorted(known) or 'none'}")
        return self.options(**options)

    def __call__(self, lm: DiffusionLM, trajs: Sequence[Trajectory], generator: torch.Generator | None = None, **kwargs: Any) -> Estimate:
        """Run the estimate, checking the options first (the call keywords pass through)."""
        opts = {k: v for k, v in kwargs.items() if k not in CALL_KEYWORDS}
        calls = {k: v for k, v in kwargs.items() if k in CALL_KEYWORDS}
        return self.estimate(lm, trajs, generator, **calls, **dataclasses.asdict(self.check_options(opts)))

    def several_passes(self, **options: Any) -> bool:
        """Whether one estimate with these options may take more than one forward pass."""
        return bool(self.multi_pass(self.check_options(options)))

    def passes(self, trajs: Sequence[Trajectory], **options: Any) -> int:
        """Forward passes one estimate of `trajs` takes with these options."""
        return self.count_passes(trajs, self.check_options(options))


@dataclass(frozen=True)
class TraceOptions:
    shrink: int = 1
    """TraceRL shrinkage s: consecutive distinct steps of a block merged into one pass."""


@dataclass(frozen=True)
class OneStepOptions:
    p_mask_prompt: float = 0.15
    """Probability of masking each prompt token (d1: 0.15)."""


@dataclass(frozen=True)
class CoupledOptions:
    t_min: float = 0.2
    """Lower bound of the masking ratio t ~ U[t_min, t_max] (DiffuCoder: 0.2)."""
    t_max: float = 0.8
    """Upper bound of the masking ratio (DiffuCoder: 0.8)."""
    weighted: bool = False
    """Weight pass 1 by 1/t and pass 2 by 1/(1 - t) (DiffuCoder's trainer)."""
    full_mask_pass: bool = False
    """Add d1's fully masked pass and average it with the coupled estimate."""


@dataclass(frozen=True)
class ElboOptions:
    n: int = 4
    """Noise levels (Monte Carlo samples or quadrature nodes) of t."""
    quadrature: bool = False
    """Gauss-Legendre nodes instead of random t (GDPO)."""
    t_min: float = 1e-3
    """Smallest masking level drawn (keeps 1/t finite)."""


@dataclass(frozen=True)
class NoOptions:
    pass


def _trace_pass_scores(lm: DiffusionLM, trajs: Sequence[Trajectory], options: TraceOptions, with_entropy: bool = False):
    return trace_pass_scores(lm, trajs, options.shrink, with_entropy)


def _trace_passes(trajs: Sequence[Trajectory], o: TraceOptions) -> int:
    return max(max(trace_pass_index(t.step_map, len(t.prompt_ids), t.block_size, o.shrink), default=-1) + 1 for t in trajs)


ESTIMATORS: dict[str, EstimatorUnit] = {}


def register_estimator(unit: EstimatorUnit) -> EstimatorUnit:
    """Add `unit` to the registry under its name (a second unit of the same name is an error)."""
    if unit.name in ESTIMATORS and ESTIMATORS[unit.name] is not unit:
        raise ValueError(f"estimator {unit.name!r} is already registered")
    ESTIMATORS[unit.name] = unit
    return unit


def _preset(**fields: tuple[Any, str]) -> dict[str, dict]:
    """`field=(value, source)` pairs as an EstimatorUnit's config_defaults and provenance."""
    return {"config_defaults": {k: v for k, (v, _) in fields.items()}, "provenance": {k: src for k, (_, src) in fields.items()}}


# Each paper's defaults, read from its authors' code (files at Gen-Verse/dLLM-RL 10b4fd1,
# dllm-reasoning/d1 837888f, apple/ml-diffucoder f735e01). A KL whose partner is not the initial
# policy (unmask's `beta`: k3 to the initial policy) is recorded, not mapped: beta stays 0.
_DLLM_RL, _D1, _DIFFUCODER = "Gen-Verse/dLLM-RL", "dllm-reasoning/d1 diffu-grpo/", "apple/ml-diffucoder"
_TRACERL_CLIP = (0.2, f"{_DLLM_RL} configs/rl_sdar.yaml:68 (rl_trado/rl_llada/rl_dream alike): eps 0.20, clamp(ratio, 1 - eps, 1 + eps) in train/rl_sdar.py:734")
_TRACERL_BETA = (0.0, f"{_DLLM_RL} configs/rl_sdar.yaml:69 beta 0.01 is k3 to the pre-step policy (train/rl_sdar.py:749, logp_new - logp_old), not the initial one: not mapped")
_TRACERL_STD = ("population", f"{_DLLM_RL} reward/rl_reward.py:76: std = sqrt(sum((r - mean)^2) / G), for every training.method")
_D1_CLIP = (0.5, f"{_D1}slurm_scripts/train.yaml:69 epsilon 0.5 (every run script), clamp(ratio, 1 - eps, 1 + eps) at diffu_grpo_trainer.py:115")
_DIFFUCODER_CLIP = (0.5, f"{_DIFFUCODER} recipes/config_coupled_code.yaml:14 epsilon 0.5 (TRL: epsilon_high = epsilon), clamp at src/open_r1/coupled_grpo.py:216")
_DIFFUCODER_T = f"{_DIFFUCODER} src/open_r1/coupled_grpo.py:259: mask_ratio = random.uniform(0.2, 0.8)"
_TRACERL_EPOCHS = (1, f"{_DLLM_RL} configs/rl_sdar.yaml:58 num_train_epochs 1 (rl_trado/rl_llada/rl_dream alike): one pass over each rollout batch, train/rl_sdar.py:769")

for _unit in (
    EstimatorUnit(
        "trace", trace_estimate, TraceOptions, _trace_passes,
        paper="TraceRL (Wang et al., 2025, arXiv:2509.06949; Gen-Verse/dLLM-RL)",
        config_fields={"shrink": "shrink"},
        **_preset(
            advantage=("zscore", f"{_DLLM_RL} reward/rl_reward.py:105: rewards = z_score_normalize(correctness), (r - mean) / std per group"),
            zscore_std=_TRACERL_STD,
            # The LLaDA/Dream trainers' reduction: the SDAR/TraDo one (each pass row's sum / the
            # padded width L1) is `constant` with a width x rows the config cannot know.
            loss_norm=("pass", f"{_DLLM_RL} train/rl_llada.py:591, rl_dream.py:621: each replayed pass's token mean, then the mean over passes (rl_sdar.py:742 divides by the padded width instead)"),
            eps_low=_TRACERL_CLIP, eps_high=_TRACERL_CLIP, beta=_TRACERL_BETA,
            redraw_masks=(False, "the replay is deterministic: no masks to redraw"),
            shrink=(1, f"{_DLLM_RL} configs/rl_sdar.yaml:62, rl_trado.yaml:62: shrink 1 (rl_llada.yaml/rl_dream.yaml use 8)"),
            epochs=_TRACERL_EPOCHS,
        ),
        replays_trace=True, multi_pass=lambda o: True, pass_scores=_trace_pass_scores,
    ),
    EstimatorUnit(
        "one_step", one_step_estimate, OneStepOptions, lambda trajs, o: 1,
        paper="diffu-GRPO (d1: Zhao et al., 2025, arXiv:2504.12216; dllm-reasoning/d1)",
        config_fields={"p_mask_prompt": "p_mask_prompt"},
        **_preset(
            advantage=("mean", f"{_D1}diffu_grpo_trainer.py:539: advantages = rewards - mean (the std, :534, is only logged)"),
            zscore_std=("sample", f"{_D1}diffu_grpo_trainer.py:534: torch .std(dim=1) (G - 1), used only with advantage: zscore"),
            loss_norm=("token", f"{_D1}diffu_grpo_trainer.py:121: (loss * completion_mask).sum() / completion_mask.sum()"),
            eps_low=_D1_CLIP, eps_high=_D1_CLIP,
            beta=(0.04, f"{_D1}slurm_scripts/train.yaml:68 beta 0.04, k3 (diffu_grpo_trainer.py:104) to the base with the LoRA adapter disabled (:474): the initial policy"),
            redraw_masks=(True, f"{_D1}diffu_grpo_trainer.py:451: random_masking (train.yaml:66) draws a mask seed per inner iteration"),
            p_mask_prompt=(0.15, f"{_D1}slurm_scripts/train.yaml:67 p_mask_prompt 0.15 (diffu_grpo_config.py's own default is 0.3)"),
            epochs=(12, f"{_D1}slurm_scripts/train.yaml:70 num_iterations 12 (gsm_base.sbatch:24 and math_*.sbatch NUM_ITER=12; countdown and sudoku 8)"),
        ),
    ),
    EstimatorUnit(
        "coupled", coupled_estimate, CoupledOptions, lambda trajs, o: 3 if o.full_mask_pass else 2,
        paper="coupled-GRPO (DiffuCoder: Gong et al., 2025, arXiv:2506.20639; apple/ml-diffucoder)",
        config_fields={"t_min": "coupled_t_min", "t_max": "coupled_t_max", "weighted": "coupled_weighted", "full_mask_pass": "coupled_full_mask_pass"},
        **_preset(
            advantage=("loo", f"{_DIFFUCODER} src/open_r1/coupled_grpo.py:545-561: leave_one_out = True, r - (sum - r) / (G - 1), unscaled (scale_rewards false)"),
            zscore_std=("sample", f"{_DIFFUCODER} src/open_r1/coupled_grpo.py:562: torch .std (G - 1), only logged"),
            loss_norm=("token", f"{_DIFFUCODER} src/open_r1/coupled_grpo.py:224: (loss * completion_mask).sum() / completion_mask.sum()"),
            eps_low=_DIFFUCODER_CLIP, eps_high=_DIFFUCODER_CLIP,
            beta=(0.0, f"{_DIFFUCODER} recipes/config_coupled_code.yaml:11-13 beta 0.01 is k3 to a reference re-synced every 64 steps (sync_ref_model), not the initial one: not mapped"),
            redraw_masks=(True, f"{_DIFFUCODER} src/open_r1/coupled_grpo.py:458: random_masking (recipe :49) draws a mask seed per inner iteration"),
            coupled_t_min=(0.2, _DIFFUCODER_T), coupled_t_max=(0.8, _DIFFUCODER_T),
            coupled_weighted=(True, f"{_DIFFUCODER} src/open_r1/coupled_grpo.py:279: weights 1/t and 1/(1 - t) on the two coupled passes"),
            coupled_full_mask_pass=(True, f"{_DIFFUCODER} src/open_r1/coupled_grpo.py:122: (fully masked pass + weighted coupled passes) / 2"),
            epochs=(2, f"{_DIFFUCODER} recipes/config_coupled_code.yaml:20 num_iterations 2"),
        ),
        multi_pass=lambda o: True,
    ),
    EstimatorUnit(
        "mc_elbo", mc_elbo_estimate, ElboOptions, lambda trajs, o: int(o.n),
        paper="masked-diffusion ELBO per token, Monte Carlo or Gauss-Legendre quadrature (unmask's own; GDPO's sequence-level form is the gdpo unit)",
        config_fields={"n": "mc_samples", "quadrature": "quadrature"},
        # unmask's own estimator (no paper code; GDPO's is the gdpo unit): these two are unmask's choices.
        **_preset(
            zscore_std=("sample", "unmask's choice (no paper code): TRL GRPO's torch .std, as d1"),
            redraw_masks=(False, "unmask's choice (no paper code): one mask draw per step"),
        ),
        multi_pass=lambda o: o.n > 1,
    ),
    EstimatorUnit(
        "block_random", block_random_estimate, NoOptions, lambda trajs, o: 1,
        paper="random block masking, the SFT objective (TraceRL's random-masking baseline)",
        **_preset(
            zscore_std=_TRACERL_STD,
            loss_norm=("sequence", f"{_DLLM_RL} train/rl_llada.py:591: random_masking rows take their token mean, then the mean over rows (rl_sdar.py:742 divides by the padded width instead)"),
            eps_low=_TRACERL_CLIP, eps_high=_TRACERL_CLIP, beta=_TRACERL_BETA,
            redraw_masks=(False, f"{_DLLM_RL} train/rl_sdar.py:457: masks drawn once per step, before the update"),
            epochs=_TRACERL_EPOCHS,
        ),
    ),
):
    register_estimator(_unit)


def get_estimator(name: str | EstimatorUnit) -> EstimatorUnit:
    """The unit registered as `name`, or the EstimatorUnit at import path `package.module:NAME`
    (importing it registers it); an unknown name is an error that lists the known ones."""
    if isinstance(name, EstimatorUnit):
        return name
    if name in ESTIMATORS:
        return ESTIMATORS[name]
    if ":" in name:
        # The import the reward plugins use: the directory `unmask` was started from is tried too
        # (the console script's own directory comes first on sys.path, not the user's project).
        from rewards.registry import import_user_module

        module, _, attr = name.partition(":")
        try:
            obj: Any = import_user_module(module)
        except ImportError as exc:
            raise ValueError(f"estimator {name!r}: cannot import {module!r}: {exc}") from exc
        for part in attr.split("."):
            obj = getattr(obj, part, None)
        if not isinstance(obj, EstimatorUnit):
            raise ValueError(f"estimator {name!r} is not an algorithms.estimators.EstimatorUnit (got {type(obj).__name__})")
        return register_estimator(obj)
    raise ValueError(f"unknown estimator {name!r}; known: {sorted(ESTIMATORS)} (or a plugin as 'package.module:UNIT')")


def count_forward_passes(name: str | EstimatorUnit, trajs: Sequence[Trajectory], **opts) -> int:
    """Forward passes (calls of `lm.forward_logprobs`, each over the whole batch) one estimate takes.

    trace: max over samples of ceil(distinct steps per block / shrink) (block models) or
    ceil(total steps / shrink) (full attention); one_step, block_random: 1; coupled: 2
    (3 with full_mask_pass); mc_elbo: n.
    """
    return get_estimator(name).passes(trajs, **opts)
