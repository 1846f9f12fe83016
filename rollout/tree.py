"""Tree rollouts (d-TreeRPO: Pan et al., 2025, arXiv:2512.09675; THU-BPM/d-TreeRPO).

A prompt's decode branches mid-way: the root (every completion position masked) is decoded for the
steps up to the first branch point into `num_tree_samples` children; each child is continued from
its partial canvas, with its step map, into `tree_branch_factor` children up to the next branch
point, and so on until the decode ends. The leaves are the prompt's samples. Branch points follow
the authors' `_perform_tree_search_and_compute_advantages` (dtreerpo/dtreerpo_trainer.py:273-276):
with T total denoising steps and contraction factor s, the tree branches after int(k T / s) steps,
k = 1 .. s - 1 (their list [T, T - int(T/s), ..., 0] of steps left).

The decode is `rollout.engine.tree_generate` (generate with `SamplingParams.tree`); this module holds the
tree's shape. Every expansion is a `rollout.engine._FullDecoder` resumed from the parent's canvas
(`_FullDecoder.resume`): LLaDA's semi-autoregressive low-confidence decoder, as their
`_generate_partial` (:506-642) is, whose schedule for the rest of a block (the remaining masked
tokens split evenly over the block's remaining steps, remainder first) is the straight decode's.
So a leaf is an ordinary trajectory: its step map records the whole decode (its ancestors' steps
first) and replays it; leaves under one node share that node's tokens and steps below its branch
step. Leaves come out in tree order: for each prompt, leaf j's path is j's digits in the mixed
radix (num_tree_samples, tree_branch_factor, ..., tree_branch_factor), most significant first.

Their sampler draws by Gumbel-max at the temperature (:595-596, the distribution softmax(logits / T)
that unmask samples by multinomial) and ranks the tokens to commit by the sampled token's untempered
probability (:600-601): `confidence: raw_prob`, which the d_tree_rpo preset sets. Differences, unmask's
sampler rules: the mask id and the padded vocabulary are never sampled (theirs keep them in the
softmax); their Gumbel noise is in the model's dtype (bf16 in their config), unmask's sampling
distribution in at least fp32. cfg_scale (0 in their config) is not implemented.
"""

from __future__ import annotations

from collections.abc import Sequence

from rollout.sampling import SamplingParams


def tree_leaves(tree: tuple[int, int, int]) -> int:
    """Leaves per prompt of a tree (num_tree_samples, tree_branch_factor, s): n bf^(s - 1).

    >>> tree_leaves((4, 4, 2)), tree_leaves((2, 3, 3))
    (16, 18)
    """
    n, bf, s = tree
    return n * bf ** (s - 1)


def branch_steps(total_steps: int, s: int) -> list[int]:
    """Steps done at each tree level, from 0 to `total_steps`: their branch points
    sorted(set([T] + [T - int(k T / s) for k in 1..s]), reverse=True), as steps done (T - point).

    >>> branch_steps(128, 2), branch_steps(10, 3)
    ([0, 64, 128], [0, 3, 6, 10])
    """
    points = sorted(set([total_steps] + [total_steps - int(k * total_steps / s) for k in range(1, s + 1)]), reverse=True)
    return [total_steps - p for p in points]


def total_steps(params: SamplingParams, completion_len: int) -> int:
    """Denoising steps of a full-attention static decode of `completion_len` tokens: each semi-AR
    block of block_length takes min(steps_per_block, its length) steps (`transfer_schedule`)."""
    length = params.block_length or completion_len
    return sum(min(params.steps_per_block or length, min(length, completion_len - a)) for a in range(0, completion_len, length))


def tree_roots(prompts: Sequence[Sequence[int]], groups: Sequence[int] | None, leaves: int) -> list[list[int]]:
    """The root prompt of each tree: consecutive runs of `leaves` items (one group each)."""
    if len(prompts) % leaves:
        raise ValueError(f"a tree rollout decodes {leaves} leaves per prompt: got {len(prompts)} items, not a multiple "
                         f"(rollout.samples_per_prompt must equal num_tree_samples x tree_branch_factor^(s-1))")
    roots = []
    for a in range(0, len(prompts), leaves):
        same = all(list(p) == list(prompts[a]) for p in prompts[a : a + leaves])
        if not same or (groups is not None and len(set(groups[a : a + leaves])) != 1):
            raise ValueError(f"a tree rollout needs each prompt's {leaves} samples as consecutive items of one group (items {a}..{a + leaves - 1} are not)")
        roots.append(list(prompts[a]))
    return roots
