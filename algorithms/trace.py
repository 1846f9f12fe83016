"""TraceRL's trajectory-aware likelihood: replay the steps the sampler actually took.

For shrinkage s, the distinct steps of each block are grouped s at a time. Pass k masks,
in every block at once, the tokens decoded at or after the first step of that block's
k-th group, and scores the tokens decoded in that group (Wang et al., 2025, "Revolutionizing
Reinforcement Learning Framework for Diffusion Large Language Models", TraceRL). A block
model's response thus costs ceil(max steps per block / s) forward passes. A full-attention
model's response is one block: ceil(total steps / s) passes, each over [prompt | response].
"""

from __future__ import annotations

from typing import Sequence

import torch

from algorithms.packing import pack_noisy
from rollout.families import is_full_attention
from rollout.models import DiffusionLM
from rollout.trajectory import Trajectory, answer_length


def trace_pass_index(
    step_map: Sequence[int], prompt_len: int, block_size: int | None, shrink: int, *, full_attention: bool | None = None
) -> list[int]:
    """Pass in which each completion token is scored: its step group's rank inside its block.

    full_attention (the family's `traits.full_attention`): the whole completion is one block,
    whatever block_size says. Left None, a None block_size (a Trajectory's record of full
    attention) means the same (`rollout.families.is_full_attention`).

    >>> # block size 2, prompt of 2: blocks {0,1} and {2,3}; steps 0,1 then 2,2
    >>> trace_pass_index([1, 0, 2, 2], prompt_len=2, block_size=2, shrink=1)
    [1, 0, 0, 0]
    """
    if shrink < 1:
        raise ValueError("shrink must be >= 1")
    full = is_full_attention(block_size, full_attention)
    block_of = [0 if full else (prompt_len + c) // block_size for c in range(len(step_map))]
    blocks: dict[int, set[int]] = {}
    for b, step in zip(block_of, step_map):
        blocks.setdefault(b, set()).add(step)
    rank = {b: {s: i for i, s in enumerate(sorted(st))} for b, st in blocks.items()}
    return [rank[b][s] // shrink for b, s in zip(block_of, step_map)]


def trace_step_index(
    step_map: Sequence[int], prompt_len: int, block_size: int | None, shrink: int, *, full_attention: bool | None = None
) -> list[int]:
    """Merged training step of each completion token: the MDP step the value model and GAE walk.

    With shrinkage s, each group of s consecutive distinct steps of a block (the tokens one
    replayed pass scores in that block) is one state, and the groups are numbered in decoding
    order: block 0's groups, then block 1's (steps are monotone over blocks), so discounting
    and lambda count merged steps, never raw ones. With s = 1 the ranks of the distinct steps.
    full_attention as in `trace_pass_index`.

    >>> trace_step_index([0, 1, 2, 3], prompt_len=4, block_size=4, shrink=2)  # one block, 2 groups
    [0, 0, 1, 1]
    >>> trace_step_index([0, 1, 2, 3], prompt_len=0, block_size=2, shrink=2)  # 2 blocks of 1 group
    [0, 0, 1, 1]
    """
    passes = trace_pass_index(step_map, prompt_len, block_size, shrink, full_attention=full_attention)
    full = is_full_attention(block_size, full_attention)
    block_of = [0 if full else (prompt_len + c) // block_size for c in range(len(step_map))]
    groups: dict[int, int] = {}  # block -> number of groups
    for b, k in zip(block_of, passes):
        groups[b] = max(groups.get(b, 0), k + 1)
    offset, start = {}, 0
    for b in sorted(groups):
        offset[b] = start
        start += groups[b]
    return [offset[b] + k for b, k in zip(block_of, passes)]


def trace_logprobs(
    lm: DiffusionLM, trajs: Sequence[Trajectory], shrink: int = 1, with_entropy: bool = False, canvas: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs of sampled completions on the trajectory the sampler took.

    Only tokens that carry loss are scored (`trace_passes`): the completion up to and including
    its first EOS. Each pass sends just the tokens of its step group through the LM head, so
    an update computes as many head rows as it has loss tokens, whatever the number of passes.
    canvas=True scores every completion token, the filler after the first EOS too (CJ-GRPO's loss).

    Returns:
        logp: [N, C] log-prob of each scored token (0 elsewhere: padding, filler after the first EOS), differentiable.
        mask: [N, C] bool, True for the scored tokens.
        entropy: [N, C] entropy of the sampling distribution at each scored token (if asked), detached.
    """
    n, width = len(trajs), max(len(t.completion_ids) for t in trajs)
    mask = torch.zeros((n, width), dtype=torch.bool, device=lm.device)
    for i, t in enumerate(trajs):
        mask[i, : len(t.completion_ids) if canvas else loss_length(t.completion_ids, lm.eos_id)] = True
    dtype = torch.promote_types(lm.model.dtype, torch.float32)
    logp = torch.zeros((n, width), device=lm.device, dtype=dtype)
    entropy = torch.zeros((n, width), device=lm.device, dtype=dtype) if with_entropy else None
    for index, lp, ent in trace_pass_scores(lm, trajs, shrink, with_entropy, canvas):
        logp = logp.index_put(index, lp.to(dtype))
        if entropy is not None:
            entropy[index] = ent.to(dtype)
    return logp, mask, entropy


def trace_pass_scores(lm: DiffusionLM, trajs: Sequence[Trajectory], shrink: int = 1, with_entropy: bool = False, canvas: bool = False):
    """The scores of `trace_logprobs`, one replayed pass at a time.

    Yields ((r, c), logp [n_k], entropy [n_k] or None) per pass: (r, c) index the [N, C]
    completion grid (sample, token) of the n_k tokens the pass scores, each token in exactly
    one pass. A learner can take each pass's backward before running the next, so only one
    pass's activations are alive at a time (rl.learner: `learner.backward_per_pass`).
    """
    temps = {t.temperature for t in trajs}
    if len(temps) != 1:
        raise ValueError(f"a TraceRL batch must share one sampling temperature, got {sorted(temps)}")
    temperature, device = temps.pop(), lm.device
    targets = torch.zeros((len(trajs), max(len(t.completion_ids) for t in trajs)), dtype=torch.long)
    for i, t in enumerate(trajs):
        targets[i, : len(t.completion_ids)] = torch.tensor(t.completion_ids)
    targets = targets.to(device)
    for rows, packed, (ri, ci) in trace_passes(lm, trajs, shrink, canvas):
        scored = torch.zeros(packed.select.shape, dtype=torch.bool, device=device)
        scored[ri, ci] = True  # this pass's step group: (ri, ci) is row-major, as forward_logprobs orders its output
        lp, ent = lm.forward_logprobs(
            packed.input_ids, packed.position_ids, packed.attention(lm.flex), packed.select, scored, targets[rows, : scored.shape[1]], temperature, with_entropy
        )  # [n_k]
        yield (rows[ri], ci), lp, ent


# Completion tokens that carry loss: the answer, up to and including the first EOS.
loss_length = answer_length


def trace_passes(lm: DiffusionLM, trajs: Sequence[Trajectory], shrink: int = 1, canvas: bool = False):
    """The replayed TraceRL passes of a batch, in order.

    Yields (rows, packed, (ri, ci)) per pass k: `rows` [r] indexes the samples that have a step
    group k, `packed` is their input with every token of group >= k masked (pack_noisy), and
    (ri, ci) index, within the pass's [r, Cr] outputs, the tokens decoded in group k that carry
    loss (up to and including the first EOS; every completion token with canvas=True), which this
    pass scores; in row-major order. The filler after the first EOS stays in the input as context
    and gets no score (unless canvas). Log-probs
    (trace_logprobs) and values (algorithms.value) both read these passes.
    """
    device, traits = lm.device, lm.traits
    passes = [trace_pass_index(t.step_map, len(t.prompt_ids), traits.block_size, shrink, full_attention=traits.full_attention) for t in trajs]
    width = max(len(t.completion_ids) for t in trajs)
    pass_of = torch.full((len(trajs), width), -1, dtype=torch.long)  # -1: padding or no loss
    for i, (t, p) in enumerate(zip(trajs, passes)):
        keep = len(t.completion_ids) if canvas else loss_length(t.completion_ids, lm.eos_id)
        pass_of[i, :keep] = torch.tensor(p[:keep])
    pass_of = pass_of.to(device)
    for k in range(max(max(p) for p in passes) + 1):
        rows = [i for i, p in enumerate(passes) if max(p) >= k]
        packed = pack_noisy(
            [trajs[i].prompt_ids for i in rows],
            [trajs[i].completion_ids for i in rows],
            [[q >= k for q in passes[i]] for i in rows],
            traits.block_size,
            lm.mask_id,
            lm.pad_id,
            device,
            full_attention=traits.full_attention,
            logit_shift=traits.logit_shift,
        )
        r_idx = torch.tensor(rows, device=device)
        yield r_idx, packed, (pass_of[r_idx, : packed.select.shape[1]] == k).nonzero(as_tuple=True)
