"""d-TreeRPO: tree rollouts, node advantages, a clipped loss on every tree edge (Pan et al., 2025,
"d-TreeRPO: Towards More Reliable Policy Optimization for Diffusion Language Models",
arXiv:2512.09675; code THU-BPM/d-TreeRPO @ 3eb6f21, dtreerpo/dtreerpo_trainer.py).

The rollout is a tree (`rollout.tree`, `rollout.sampling.tree`): each prompt's decode branches at the
branch points, and its leaves are the prompt's samples, scored through the one scoring path. From the
leaf rewards (their :351-370, :395-410):

    V(leaf) = r,   V(node) = mean over its children of V(child),
    A(node) = V(node) - mean over its siblings of V(sibling)       (0-mean when it has none: A = V)

Every tree edge (parent -> child) is one learner row (`edge_rows`), not one per leaf: its input is the
parent's canvas, its scored tokens those the child unmasked (parent masked, child not) up to the
child canvas's first EOS (:182-184, `_build_completion_mask` :197-214), its advantage A(child). The
transition log-prob is one forward on the parent canvas (:165-195). The loss (:767-812):

    rho_t = exp(logp_t - old_logp_t),  L_i = -sum_t m_t min(rho_t A_i, clip(rho_t, 1 - eps, 1 + eps) A_i) / max(1, sum_t m_t)
    loss  = mean_i L_i + beta mean_i [ sum_t m_t k3_t / max(1, sum_t m_t) ],   k3 = exp(ref - logp) - (ref - logp) - 1

the mean over every row, those with no scored token included (an edge that only unmasks filler after
an EOS weighs as a zero): `d_tree_rpo_weights` gives each token 1 / (max(1, |m_i|) N).

Temperature. Their learner scores raw logits (`get_logits`, no division by the sampling temperature
0.9, diffu_grpo_config.py:179), so their ratio is of a distribution they did not sample from. unmask's
rule is the sampling distribution (logits / T). Option `raw_logits` (default True, theirs) scores the
edge rows at temperature 1; False uses the rollout's temperature. Either way the old, reference and
current passes agree, so the ratio is a ratio. Like every unmask pass, the softmax excludes the mask
id and the padded vocabulary (theirs is the full vocabulary's cross-entropy).

Checked against their code (their method bodies run on a stub trainer, a tiny LLaDA, a 2 x 2 tree of
two prompts, their _generate_partial decoding it): advantages equal, edge log-probs to 5e-7 (fp32) and
2e-15 (fp64), loss to 3e-7 and gradient to 6e-7 (fp32) per parent segment, rows after an EOS included,
when their cross-entropy also leaves the mask id out; with their full-vocabulary softmax the log-probs
move by 2e-2 on the random model (a trained LLaDA gives the mask id ~0 mass). Greedy trees (branching
at a block boundary and mid-block) decode the same canvases as their _generate_partial.

Self-distillation (:814-902, on in their config; option `self_distillation`). Siblings are the children of
one parent node of one prompt (`edge_rows`' sibling ids; the root's children too). For each parent with more
than one child row, the children with A > 0 get w = softmax(A / tau(t)); at each position j where one of them
scored a token, q_j is the w-weighted distribution of their tokens there (renormalised over those active at
j), and the term is the mean over such (parent, j) pairs of the minibatch of KL(q_j || p_parent,j):

    loss += lambda(t) mean_{(parent, j)} sum_u q_u (log(q_u + 1e-8) - log p_parent,j(u)),
    lambda(t) = lambda_max (e^{gamma t/T} - 1) / (e^gamma - 1),   tau(t) = max(tau_max (1 - t/T)^beta, 1e-6)

with t the optimizer step and T `sd_horizon` (their max_steps; default the run's optimizer steps). A child's
input is its parent's canvas, so log p_parent,j at child k's token is row k's own edge log-prob: the term is
linear in the rows' log-probs (`self_distillation_targets`), no extra forward, the same gradient (p_parent
with gradient, theirs). With the term on, each minibatch holds whole sibling groups (the groups are shuffled,
not the rows), and the weights are recomputed at every optimizer step (the schedule moves within an update).
Like the edge log-probs, p_parent excludes the mask id and follows `raw_logits`. Logged as
`loss/self_distillation` (unscaled, their log_dict). Against their compute_loss (enable_self_distillation_loss,
t/T = 0.5, a (3, 3, 2) tree of two prompts, per parent segment, ties included, fp64): the term to 4e-8 (their q
is float32; 4e-16 with it in float64), d loss / d log p_parent to 1e-12, the term's parameter gradient alone to
5e-20; the whole loss to 3e-8 and its gradient to 5e-8 (the tiny model's float32 RMSNorm rounds the policy and
distillation gradients summed in one pass, theirs in two), given the same A > 0 set: their float32 node
advantages can put a child whose exact A is 0 at +1e-7 and keep it.

Guidance. Their config's `cfg_scale` is 0, and 0 is the only value their trainer runs: its edge and
self-distillation passes call the inherited `get_logits(model, parent_ids, None, cfg_scale, mask_id)`
(:175, :849) with no prompt index, and diffu_grpo_trainer.py:272 asserts `len(prompt_index) == ...` as
soon as cfg_scale > 0. unmask decodes and scores without classifier-free guidance, which is that setting.

Schedule (:645-697, :474-488; option `per_parent_schedule`, on by default). Their tree batch decodes every node
for all B prompts at once, and `_pack_segments_by_parent` packs the edge rows by parent node: one segment = the
children of one parent position (the root, then each level-1 node, ...) of every prompt, 1 + n + n bf + ... +
n bf^(s-2) segments (5 of 4 B rows for their (4, 4, 2)). The segments are shuffled (random.shuffle), each
optimizer step takes parents_per_step (1) of them and reuses it for num_iterations (12) consecutive steps, on the
old and reference log-probs taken once at tree time (:456-465); an empty buffer re-runs the tree. unmask's
update over one step's tree rollout: the segments in a seeded random order (`parent_segments`), each trained for
`algorithm.epochs` consecutive optimizer steps (segment-major), old and reference log-probs taken once before
the first, so one update is epochs x segments optimizer steps (the learning-rate and self-distillation
schedules count them) and the next RL step re-runs the tree. `algorithm.minibatches` does not apply (a config
setting it gets a warning and is ignored). A sibling group lies inside a segment, so the row mean and the self-distillation
pairs are normalised over the segment, as theirs over their batch. Option parents_per_step (1, theirs) trains k
segments together (`parent_chunks`). False:
`algorithm.epochs` passes over all the step's edge rows, `algorithm.minibatches` optimizer steps each.

Not implemented (a run under this name does not do these): cfg_scale (0 in their config).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from algorithms.estimators import (
    EstimatorUnit,
    _out,
    _pad,
    _preset,
    _score,
    _temperature,
    register_estimator,
)
from algorithms.losses import LossTotals, clamped_log_ratio, clipped_surrogate, k3_kl
from rollout.models import DiffusionLM
from rollout.trajectory import Trajectory
from rollout.tree import branch_steps, tree_leaves

CONTEXT, SCORED, LATER = 0, 1, 2  # an edge row's step-map codes: in the parent canvas, unmasked by the edge, masked in the child


def tree_advantages(rewards: torch.Tensor, tree: tuple[int, int, int]) -> list[torch.Tensor]:
    """Per tree level k = 1..s, A [G, n, bf, ..., bf] (k axes after G) of every node at that level.

    rewards: [G * leaves] leaf rewards, each group's leaves in tree order (`rollout.tree`). A node's
    value is the mean of its children's (their `_mean_aggregate_value_vecs`, a nanmean: unmask's
    rewards have no NaN), its advantage its value minus the mean of its siblings' values.

    >>> [a.tolist() for a in tree_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), (2, 2, 2))]
    [[[0.5, -0.5]], [[[1.0, -1.0], [0.0, 0.0]]]]
    """
    n, bf, s = tree
    leaves = tree_leaves(tree)
    if rewards.dim() != 1 or len(rewards) % leaves:
        raise ValueError(f"tree rewards must be [groups x {leaves}] leaves in tree order, got {tuple(rewards.shape)}")
    values = [rewards.double().view(-1, n, *([bf] * (s - 1)))]  # level s: the leaves
    for _ in range(s - 1):
        values.insert(0, values[0].mean(-1))  # level k: the mean of its children
    out = []
    for v in values:
        k = v.shape[-1]
        sibling_mean = (v.sum(-1, keepdim=True) - v) / (k - 1) if k > 1 else torch.zeros_like(v)
        out.append(v - sibling_mean)
    return out


def edge_rows(
    trajs: Sequence[Trajectory], rewards: torch.Tensor, tree: tuple[int, int, int], options: DTreeRpoOptions
) -> tuple[list[Trajectory], torch.Tensor, list[int], torch.Tensor]:
    """The learner rows of a tree rollout: one per edge, (rows, advantages [n], the leaf of each row,
    siblings [n] long: the parent node of each row, numbered over the batch).

    trajs: the leaves, `tree_leaves(tree)` per group in tree order; rewards: [B] their rewards. The edge
    into a node at level k + 1 is read off its first leaf: tokens of steps before the level's branch
    step are the parent canvas (step map CONTEXT), those of steps up to the next branch step were
    unmasked by the edge (SCORED), the rest are masked in both (LATER). Rows come group by group, level
    by level, nodes in tree order. Rows with the same sibling id are the children of one parent of one
    prompt (their group key (parent node, batch index), :431-440); the root's children are one such group.
    """
    if tree is None:
        raise ValueError("d_tree_rpo needs a tree rollout (rollout.sampling.tree)")
    leaves = tree_leaves(tree)
    if len(trajs) != len(rewards) or len(trajs) % leaves:
        raise ValueError(f"d_tree_rpo: {len(trajs)} leaves and {len(rewards)} rewards; need equal counts, a multiple of {leaves}")
    total = max(max(t.step_map) for t in trajs) + 1
    done = branch_steps(total, tree[2])
    advs = tree_advantages(rewards, tree)
    rows, adv, owner, siblings, parents = [], [], [], [], 0
    for g in range(len(trajs) // leaves):
        for k, a in enumerate(advs):
            flat = a[g].flatten()
            span = leaves // len(flat)  # leaves under each node of this level
            kids = a[g].shape[-1]  # the last axis holds a parent's children
            for j, node_adv in enumerate(flat.tolist()):
                siblings.append(parents + j // kids)
                i = g * leaves + j * span
                t = trajs[i]
                code = [CONTEXT if m < done[k] else (SCORED if m < done[k + 1] else LATER) for m in t.step_map]
                rows.append(Trajectory(
                    prompt_ids=list(t.prompt_ids), completion_ids=list(t.completion_ids), step_map=code, logprobs=[0.0] * len(code),
                    block_size=t.block_size, temperature=1.0 if options.raw_logits else t.temperature, nfe=0,
                    finish_reason=t.finish_reason, group=t.group, columns=t.columns, version=t.version,
                ))  # fmt: skip
                adv.append(node_adv)
                owner.append(i)
            parents += len(flat) // kids
    return rows, torch.tensor(adv, dtype=torch.float64), owner, torch.tensor(siblings, dtype=torch.long)


def parent_positions(tree: tuple[int, int, int]) -> int:
    """The parent nodes of one prompt's tree (root and every node above the leaves): 1 + n + n bf + ... + n bf^(s-2),
    the sibling groups `edge_rows` numbers per prompt.

    >>> parent_positions((4, 4, 2)), parent_positions((2, 2, 3))
    (5, 7)
    """
    n, bf, s = tree
    return 1 + sum(n * bf**k for k in range(s - 1))


def parent_segments(siblings: torch.Tensor, tree: tuple[int, int, int], generator: torch.Generator) -> list[list[int]]:
    """The rows of each training segment, in a random order (their `_pack_segments_by_parent` then random.shuffle,
    :474-488, :660-661): one segment per parent position, the children of that parent node of every prompt.

    siblings: [n] `edge_rows`' parent ids, numbered prompt by prompt with `parent_positions(tree)` per prompt, so a
    row's parent position is its id modulo that count (0 the root, then the level-1 nodes, ... in tree order).
    """
    per_prompt = parent_positions(tree)
    ids = torch.unique(siblings)  # sorted
    if len(ids) % per_prompt or (len(ids) and int(ids[-1]) + 1 != len(ids)):
        raise ValueError(f"d_tree_rpo's per-parent schedule needs edge_rows' parent ids, 0, 1, ... with {per_prompt} per prompt "
                         f"for tree {tuple(tree)}; got {len(ids)} distinct ids {ids.tolist()[:8]}...")  # fmt: skip
    position = siblings % per_prompt  # [n]
    segments = [(position == p).nonzero().flatten().tolist() for p in torch.randperm(per_prompt, generator=generator).tolist()]
    return [rows for rows in segments if rows]


def planned_edge_rows(tree: tuple[int, int, int] | None, options: DTreeRpoOptions) -> tuple[int, int | None]:
    """For `unmask plan`: (edge rows per prompt, rows per prompt of the largest training chunk, or None without the
    per-parent schedule). A (n, bf, s) tree has n + n bf + ... + n bf^(s-1) edges per prompt; the root's segment holds
    n of them, every other parent's bf, and a chunk at most parents_per_step segments.

    >>> planned_edge_rows((4, 4, 2), DTreeRpoOptions()), planned_edge_rows((2, 3, 3), DTreeRpoOptions(parents_per_step=2))
    ((20, 4), (26, 6))
    """
    if tree is None:
        raise ValueError("d_tree_rpo needs a tree rollout (rollout.sampling.tree)")
    n, bf, s = tree
    rows = sum(n * bf**k for k in range(s))
    if not options.per_parent_schedule:
        return rows, None
    widest = max([n] + ([bf] if s > 1 else []))
    return rows, min(rows, widest * min(options.parents_per_step, parent_positions(tree)))


def parent_chunks(segments: list[list[int]], parents_per_step: int) -> list[list[int]]:
    """`parent_segments`' segments, k = parents_per_step consecutive ones concatenated per training chunk (their
    _prepare_inputs pops k shuffled segments and _concat_segments them, :673-685); the last chunk may hold fewer.

    >>> parent_chunks([[4, 5], [0, 1], [2, 3]], 2)
    [[4, 5, 0, 1], [2, 3]]
    """
    return [[i for seg in segments[a : a + parents_per_step] for i in seg] for a in range(0, len(segments), parents_per_step)]


def edge_mask(t: Trajectory, eos_id: int | None) -> list[bool]:
    """Per completion position of an edge row: unmasked by the edge and at or before the child canvas's
    first EOS (their changed_mask & _build_completion_mask(child), :182-184).

    >>> edge_mask(Trajectory([5], [7, 2, 9, 2], [1, 0, 1, 2], [0.0] * 4, None, 1.0, 0, "eos"), eos_id=2)
    [True, False, False, False]
    """
    child = [c for c, m in zip(t.completion_ids, t.step_map) if m != LATER]
    pos = [i for i, m in enumerate(t.step_map) if m != LATER]
    stop = pos[child.index(eos_id)] if eos_id is not None and eos_id in child else len(t.step_map)
    return [m == SCORED and i <= stop for i, m in enumerate(t.step_map)]


@dataclass(frozen=True)
class DTreeRpoOptions:
    raw_logits: bool = True
    """Score the edges with raw logits (temperature 1), as their learner does (dtreerpo_trainer.py:175,
    no division by the sampling temperature); False: logits / the rollout's temperature (unmask's rule)."""
    self_distillation: bool = True
    """Add lambda(t) KL(q || p_parent) (module docstring; dtreerpo.yaml enable_self_distillation_loss true). Keeps
    each parent's children in one minibatch."""
    sd_lambda_max: float = 3e-3
    """lambda_max of lambda(t) = lambda_max (e^{gamma t/T} - 1) / (e^gamma - 1) (dtreerpo.yaml self_distillation_lambda_max)."""
    sd_gamma: float = 2.0
    """gamma of lambda(t): how late the weight grows (dtreerpo.yaml self_distillation_gamma)."""
    sd_tau_max: float = 2.0
    """tau_max of the sibling softmax temperature tau(t) = max(tau_max (1 - t/T)^beta, 1e-6) (dtreerpo.yaml self_distillation_tau_max)."""
    sd_tau_beta: float = 0.7
    """beta of tau(t) (dtreerpo.yaml self_distillation_beta)."""
    per_parent_schedule: bool = True
    """Train the tree's parent segments one after another, each for `algorithm.epochs` consecutive optimizer steps,
    in a random order (module docstring; their _prepare_inputs :645-697 with dtreerpo.yaml parents_per_step 1 and
    num_iterations 12); `algorithm.minibatches` is then ignored. False: epochs passes over all edge rows, each
    split into `algorithm.minibatches` random minibatches."""
    parents_per_step: int = 1
    """Parent segments trained together with per_parent_schedule (dtreerpo.yaml parents_per_step 1): each chunk
    is k consecutive segments of the shuffled order, concatenated (their _prepare_inputs :673-685), so an update is
    epochs x ceil(P / k) optimizer steps for P parent positions. Where k does not divide P the last chunk holds the
    P mod k left over; theirs tops it up with segments of the next tree search (a buffer spanning RL steps)."""
    sd_horizon: int | None = None
    """T of the schedules, in optimizer steps. None: the run's total optimizer steps (train.steps x epochs x
    minibatches, or x ceil(parent segments / parents_per_step) with per_parent_schedule), so both schedules span the run. Theirs is max_steps (dtreerpo.yaml 30000), which only fits
    their run length; t/T is clipped to [0, 1]."""

    def __post_init__(self) -> None:
        if self.sd_lambda_max < 0 or self.sd_tau_max <= 0 or self.sd_tau_beta < 0:
            raise ValueError(f"d_tree_rpo: sd_lambda_max must be >= 0, sd_tau_max > 0 and sd_tau_beta >= 0, got "
                             f"{self.sd_lambda_max}, {self.sd_tau_max}, {self.sd_tau_beta}")  # fmt: skip
        if self.parents_per_step < 1:
            raise ValueError(f"d_tree_rpo: parents_per_step must be >= 1, got {self.parents_per_step}")
        if self.sd_horizon is not None and self.sd_horizon < 1:
            raise ValueError(f"d_tree_rpo: sd_horizon must be a positive number of optimizer steps or None (the run's), got {self.sd_horizon}")


def self_distillation_schedule(step: int, total: int, options: DTreeRpoOptions) -> tuple[float, float]:
    """(lambda(t), tau(t)) at optimizer step t = `step` (0-based, their global_step) of T = options.sd_horizon, or
    `total` (the run's optimizer steps) when that is None; t / T clipped to [0, 1] (their :823-837).

    >>> [round(x, 6) for x in self_distillation_schedule(5, 10, DTreeRpoOptions())]
    [0.000807, 1.231144]
    """
    horizon = max(1, options.sd_horizon or total)
    progress = min(1.0, max(0.0, step / horizon))
    lam = options.sd_lambda_max * (math.exp(options.sd_gamma * progress) - 1.0) / (math.exp(options.sd_gamma) - 1.0)
    tau = max(options.sd_tau_max * (1.0 - progress) ** options.sd_tau_beta, 1e-6)
    return lam, tau


def self_distillation_targets(
    targets: torch.Tensor, active: torch.Tensor, advantages: torch.Tensor, siblings: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token of the rows, (a [n, C], log q [n, C]) with KL = sum_{k,j} a_kj (log q_kj - logp_kj) over the rows.

    targets: [n, C] the edges' tokens; active: [n, C] bool, the scored tokens (`edge_mask`, and the row kept);
    advantages: [n]; siblings: [n] parent ids (`edge_rows`). For each parent with more than one child row, the
    children with A > 0 get w = softmax(A / tau); at each position j where one of them is active, q_j is their
    w-weighted token distribution over the active ones, q_u = sum_{k: x_kj = u} w_k / (W_j + 1e-8), W_j = sum of
    the active w (their :858-893), and KL(q_j || p_j) = sum_u q_u (log(q_u + 1e-8) - log p_j(u)). Every child
    row's input is the parent canvas, so log p_j(x_kj) is row k's own log-prob at j: the sum over u is one over
    the active children, a_kj = w_k / (W_j + 1e-8) / count, log q_kj = log(q_{x_kj} + 1e-8), count = the
    (parent, j) pairs with W_j > 0 in the rows (their mean over pairs, :895).
    """
    a = torch.zeros(active.shape, dtype=torch.float64)
    log_q = torch.zeros(active.shape, dtype=torch.float64)
    count = 0
    adv = torch.nan_to_num(advantages.detach().cpu().to(torch.float64), nan=0.0, posinf=0.0, neginf=0.0)
    for parent in torch.unique(siblings).tolist():
        rows = (siblings == parent).nonzero().flatten()
        if len(rows) <= 1:  # an only child has nothing to distil from (their :866)
            continue
        kept = rows[adv[rows] > 0]  # the children better than their siblings' mean
        if not len(kept):
            continue
        w = torch.softmax(adv[kept] / tau, dim=0)  # [K]
        act = active[kept].cpu()  # [K, C]
        x = targets[kept].cpu()
        w_act = w[:, None] * act  # [K, C]
        total = w_act.sum(0)  # [C] W_j
        same = x[:, None, :] == x[None, :, :]  # [K, K, C] children k and k' put the same token at j
        q = (same * w_act[None, :, :]).sum(1) / (total + 1e-8)  # [K, C] q of child k's token at j
        on = act & (total > 0)
        a[kept] = torch.where(on, w[:, None] / (total + 1e-8), 0.0)
        log_q[kept] = torch.where(on, torch.log(q + 1e-8), 0.0)
        count += int((total > 0).sum())
    return a / max(count, 1), log_q


def d_tree_rpo_estimate(
    lm: DiffusionLM, trajs: Sequence[Trajectory], generator: torch.Generator | None = None, *, raw_logits: bool = True,
    seed: int | None = None, occurrences: Sequence[int] | None = None, with_entropy: bool = False, **self_distillation: object,
) -> tuple[torch.Tensor, ...]:
    """Transition log-prob of every edge row (`edge_rows`): logp, mask [n, C]. One pass on the parent
    canvas (SCORED and LATER positions masked); mask = `edge_mask`. Deterministic; the rows carry the
    temperature `raw_logits` chose. The self-distillation options act in the weights, not here."""
    if not lm.traits.full_attention:
        raise ValueError(f"d_tree_rpo scores full-attention canvases (their tree decodes LLaDA); family {lm.traits.name!r} is block-causal")
    temperature = _temperature(trajs)
    width = max(len(t.completion_ids) for t in trajs)
    targets = _pad([t.completion_ids for t in trajs], width, torch.long, lm.device)
    mask = _pad([edge_mask(t, lm.eos_id) for t in trajs], width, torch.bool, lm.device)
    noisy = [[m != CONTEXT for m in t.step_map] for t in trajs]
    logp, entropy = _score(lm, trajs, noisy, temperature, targets, mask, with_entropy=with_entropy)
    if entropy is not None:
        entropy = entropy * mask
    return _out(logp, mask, entropy, with_entropy)


def d_tree_rpo_weights(
    trajs: Sequence[Trajectory], keep_rows: torch.Tensor, options: DTreeRpoOptions, eos_id: int | None, *,
    advantages: torch.Tensor | None = None, siblings: torch.Tensor | None = None, progress: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Token weights of the minibatch's rows: [n, C] without self-distillation, else [n, C, 4].

    Channel 0 (the [n, C] alone): 1 / (max(1, |m_i|) N), each row's token mean, then the mean over the N
    rows of the minibatch (every row counts, one with no scored token as a zero: their mean over B,
    :799-800); a dropped row (keep_rows False) weighs 0 but still counts in N. With options.self_distillation
    (the learner then calls this once per optimizer step with advantages [n], siblings [n] and progress = (t,
    the run's optimizer steps)): channels 1, 2 = `self_distillation_targets`' a and log q over the whole
    minibatch (a dropped row is never active), channel 3 = lambda(t) on every token."""
    width = max(len(t.completion_ids) for t in trajs)
    m = _pad([edge_mask(t, eos_id) for t in trajs], width, torch.float64, "cpu")
    m = m * keep_rows.to(torch.float64).cpu()[:, None]
    row_mean = m / m.sum(1, keepdim=True).clamp(min=1) / len(trajs)
    if not options.self_distillation:
        return row_mean
    if advantages is None or siblings is None or progress is None:
        raise ValueError("d_tree_rpo's self-distillation weights need advantages=, siblings= (edge_rows) and progress=(step, total)")
    lam, tau = self_distillation_schedule(*progress, options)
    targets = _pad([t.completion_ids for t in trajs], width, torch.long, "cpu")
    a, log_q = self_distillation_targets(targets, m > 0, advantages, siblings.cpu(), tau)
    return torch.stack([row_mean, a, log_q, torch.full_like(a, lam)], dim=-1)


def d_tree_rpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.4,
    eps_high: float = 0.4,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    norm: str = "token",
    norm_constant: float | None = None,
    totals: LossTotals | None = None,
    pass_index: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """sum_{i,t} w_it [ -min(rho A_i, clip(rho, 1 - eps_low, 1 + eps_high) A_i) + beta k3 ]
    + lambda(t) sum_{i,t} a_it (log q_it - logp_it) (module docstring).

    logp, old_logp, ref_logp: [n, C] edge log-probs; advantages: [n] A of each edge's child; mask: [n, C];
    weights: [n, C] `d_tree_rpo_weights` of the whole minibatch (the reduction; norm, norm_constant,
    totals and pass_index are not used), or [n, C, 4] with the self-distillation channels (w, a, log q,
    lambda): its KL term is linear in logp, so a piece's share is its own tokens' and the gradient of
    each row's log-prob is that of log p_parent at its token. Log-ratios are clamped to [-10, 10]
    (algorithms.losses).
    """
    if weights is None:
        raise ValueError("d_tree_rpo's loss needs weights= (d_tree_rpo_weights: 1 / (scored tokens x rows))")
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp")
    weights = weights[:, : logp.shape[1]].to(logp.dtype)
    sd = None
    if weights.dim() == 3:  # self-distillation: KL(q || p_parent) = sum a (log q - logp) over the active tokens
        on = mask.to(logp.dtype)
        sd_terms = weights[..., 1] * (weights[..., 2] - logp) * on
        sd, sd_scaled = sd_terms.sum(), (weights[..., 3] * sd_terms).sum()
        weights = weights[..., 0]
    w = weights * mask.to(logp.dtype)
    adv = advantages.to(logp.dtype)[:, None]
    ratio = torch.exp(clamped_log_ratio(logp, old_logp))
    pg, clipped = clipped_surrogate(ratio, adv, eps_low, eps_high)
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    loss = (pg * w).sum() + (beta * (kl * w).sum() if beta > 0 else 0.0)
    if sd is not None:
        loss = loss + sd_scaled
    with torch.no_grad():
        tokens = mask.to(w.dtype)
        n = tokens.sum().clamp(min=1)
        metrics = {
            "loss/policy": float((pg * w).sum()),
            "kl": float((kl * tokens).sum() / n),
            "clipfrac": float((clipped.to(w.dtype) * tokens).sum() / n),
            "ratio/mean": float((ratio * tokens).sum() / n),
        }
        if sd is not None:
            metrics["loss/self_distillation"] = sd.item()  # unscaled, as their log_dict
    return loss, metrics


_REPO = "THU-BPM/d-TreeRPO dtreerpo/"
_EPS = (0.4, f"{_REPO}slurm_scripts/dtreerpo.yaml epsilon 0.4, clamp(ratio, 1 - eps, 1 + eps) at dtreerpo_trainer.py:792")
D_TREE_RPO = register_estimator(
    EstimatorUnit(
        "d_tree_rpo", d_tree_rpo_estimate, DTreeRpoOptions, lambda trajs, o: 1,
        paper=("d-TreeRPO (Pan et al., 2025, arXiv:2512.09675; THU-BPM/d-TreeRPO): tree rollouts, node advantages V - mean(siblings), "
               "clipped loss per tree edge, self-distillation toward the better siblings, one parent segment per epochs optimizer steps"),
        **_preset(
            eps_low=_EPS, eps_high=_EPS,
            beta=(0.01, (f"{_REPO}slurm_scripts/dtreerpo.yaml beta 0.01, k3 (dtreerpo_trainer.py:808-811) on reference log-probs taken with "
                         "the LoRA adapter disabled (:461-465, use_peft true): the initial policy; the yaml's sync_ref_model syncs TRL's "
                         "ref_model, which this trainer never reads")),
            epochs=(12, (f"{_REPO}slurm_scripts/dtreerpo.yaml num_iterations 12: each edge row trained 12 times on the tree-time old "
                         "log-probs: one parent segment for 12 consecutive optimizer steps (dtreerpo_trainer.py:650-697; option "
                         "per_parent_schedule)")),
            redraw_masks=(False, "the edge rows are deterministic: no masks to redraw"),
        ),
        objective=d_tree_rpo_loss, objective_kl=True, attention=frozenset({"full"}),
        loss_weights=d_tree_rpo_weights,
        # the self-distillation term couples a parent's children and follows the optimizer step
        scheduled_weights=lambda o: o.self_distillation, sibling_minibatches=lambda o: o.self_distillation,
        # their schedule: one parent segment at a time, epochs (num_iterations) optimizer steps each
        segment_count=lambda o, tree: -(-parent_positions(tree) // o.parents_per_step) if o.per_parent_schedule and tree is not None else None,
        segments=lambda o, siblings, tree, generator: parent_chunks(parent_segments(siblings, tree, generator), o.parents_per_step),
        planned_rows=lambda o, samples, tree: planned_edge_rows(tree, o),
        tree_batch=edge_rows,
        # dtreerpo.yaml: tree_branch_factor 4, tree_contraction_factor 2, num_tree_samples 4; block_length 32 with
        # diffusion_steps 128 over max_completion_length 256 (16 steps a block); temperature 0.9
        # (diffu_grpo_config.py:179); _generate_partial recomputes the whole canvas at every step (no cache).
        # Their low-confidence remasking ranks by the untempered softmax of the sampled token (:600-601): raw_prob.
        rollout_sampling={"tree": (4, 4, 2), "block_length": 32, "steps_per_block": 16, "temperature": 0.9, "confidence": "raw_prob", "kv_cache": False},
    )
)
