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

Not implemented (a run under this name does not do these):
- the self-distillation term lambda(t) KL(q || p_parent) (:814-902, on in their config);
- their schedule (:645-697): each optimizer step takes one parent's children (parents_per_step 1) and
  reuses them for num_iterations (12) consecutive steps, the tree re-run when the buffer empties.
  unmask takes `algorithm.epochs` passes over all the step's edge rows (`algorithm.minibatches`
  optimizer steps each), old log-probs scored once before the first update, as theirs are (:456-459).
- cfg_scale (0 in their config).
"""

from __future__ import annotations

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
from algorithms.losses import LossTotals, clamped_log_ratio, k3_kl
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
) -> tuple[list[Trajectory], torch.Tensor, list[int]]:
    """The learner rows of a tree rollout: one per edge, (rows, advantages [n], the leaf of each row).

    trajs: the leaves, `tree_leaves(tree)` per group in tree order; rewards: [B] their rewards. The edge
    into a node at level k + 1 is read off its first leaf: tokens of steps before the level's branch
    step are the parent canvas (step map CONTEXT), those of steps up to the next branch step were
    unmasked by the edge (SCORED), the rest are masked in both (LATER). Rows come group by group, level
    by level, nodes in tree order.
    """
    if tree is None:
        raise ValueError("d_tree_rpo needs a tree rollout (rollout.sampling.tree)")
    leaves = tree_leaves(tree)
    if len(trajs) != len(rewards) or len(trajs) % leaves:
        raise ValueError(f"d_tree_rpo: {len(trajs)} leaves and {len(rewards)} rewards; need equal counts, a multiple of {leaves}")
    total = max(max(t.step_map) for t in trajs) + 1
    done = branch_steps(total, tree[2])
    advs = tree_advantages(rewards, tree)
    rows, adv, owner = [], [], []
    for g in range(len(trajs) // leaves):
        for k, a in enumerate(advs):
            flat = a[g].flatten()
            span = leaves // len(flat)  # leaves under each node of this level
            for j, node_adv in enumerate(flat.tolist()):
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
    return rows, torch.tensor(adv, dtype=torch.float64), owner


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


def d_tree_rpo_estimate(
    lm: DiffusionLM, trajs: Sequence[Trajectory], generator: torch.Generator | None = None, *, raw_logits: bool = True,
    seed: int | None = None, occurrences: Sequence[int] | None = None, with_entropy: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Transition log-prob of every edge row (`edge_rows`): logp, mask [n, C]. One pass on the parent
    canvas (SCORED and LATER positions masked); mask = `edge_mask`. Deterministic; the rows carry the
    temperature `raw_logits` chose."""
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


def d_tree_rpo_weights(trajs: Sequence[Trajectory], keep_rows: torch.Tensor, options: DTreeRpoOptions, eos_id: int | None) -> torch.Tensor:
    """[n, C] token weights 1 / (max(1, |m_i|) N): each row's token mean, then the mean over the N rows
    of the minibatch (every row counts, one with no scored token as a zero: their mean over B,
    :799-800); a dropped row (keep_rows False) weighs 0 but still counts in N."""
    width = max(len(t.completion_ids) for t in trajs)
    m = _pad([edge_mask(t, eos_id) for t in trajs], width, torch.float64, "cpu")
    m = m * keep_rows.to(torch.float64).cpu()[:, None]
    return m / m.sum(1, keepdim=True).clamp(min=1) / len(trajs)


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
    """sum_{i,t} w_it [ -min(rho A_i, clip(rho, 1 - eps_low, 1 + eps_high) A_i) + beta k3 ] (module docstring).

    logp, old_logp, ref_logp: [n, C] edge log-probs; advantages: [n] A of each edge's child; mask: [n, C];
    weights: [n, C] `d_tree_rpo_weights` of the whole minibatch (the reduction; norm, norm_constant,
    totals and pass_index are not used). Log-ratios are clamped to [-10, 10] (algorithms.losses).
    """
    if weights is None:
        raise ValueError("d_tree_rpo's loss needs weights= (d_tree_rpo_weights: 1 / (scored tokens x rows))")
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp")
    w = weights[:, : logp.shape[1]].to(logp.dtype) * mask.to(logp.dtype)
    adv = advantages.to(logp.dtype)[:, None]
    ratio = torch.exp(clamped_log_ratio(logp, old_logp))
    pg_loss1, pg_loss2 = -adv * ratio, -adv * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    pg = torch.maximum(pg_loss1, pg_loss2)
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    loss = (pg * w).sum() + (beta * (kl * w).sum() if beta > 0 else 0.0)
    with torch.no_grad():
        tokens = mask.to(w.dtype)
        n = tokens.sum().clamp(min=1)
        metrics = {
            "loss/policy": float((pg * w).sum()),
            "kl": float((kl * tokens).sum() / n),
            "clipfrac": float(((pg_loss2 > pg_loss1).to(w.dtype) * tokens).sum() / n),
            "ratio/mean": float((ratio * tokens).sum() / n),
        }
    return loss, metrics


_REPO = "THU-BPM/d-TreeRPO dtreerpo/"
_EPS = (0.4, f"{_REPO}slurm_scripts/dtreerpo.yaml epsilon 0.4, clamp(ratio, 1 - eps, 1 + eps) at dtreerpo_trainer.py:792")
D_TREE_RPO = register_estimator(
    EstimatorUnit(
        "d_tree_rpo", d_tree_rpo_estimate, DTreeRpoOptions, lambda trajs, o: 1,
        paper=("d-TreeRPO (Pan et al., 2025, arXiv:2512.09675; THU-BPM/d-TreeRPO): tree rollouts, node advantages V - mean(siblings), "
               "clipped loss per tree edge (self-distillation term and per-parent schedule not implemented)"),
        **_preset(
            eps_low=_EPS, eps_high=_EPS,
            beta=(0.01, (f"{_REPO}slurm_scripts/dtreerpo.yaml beta 0.01, k3 (dtreerpo_trainer.py:808-811) on reference log-probs taken with "
                         "the LoRA adapter disabled (:461-465, use_peft true): the initial policy; the yaml's sync_ref_model syncs TRL's "
                         "ref_model, which this trainer never reads")),
            epochs=(12, (f"{_REPO}slurm_scripts/dtreerpo.yaml num_iterations 12: each edge row trained 12 times on the tree-time old "
                         "log-probs (theirs: one parent's rows for 12 consecutive steps, dtreerpo_trainer.py:650-697; unmask: 12 passes "
                         "over the step's rows)")),
            redraw_masks=(False, "the edge rows are deterministic: no masks to redraw"),
        ),
        objective=d_tree_rpo_loss, objective_kl=True, attention=frozenset({"full"}),
        loss_weights=d_tree_rpo_weights,
        tree_batch=edge_rows,
        # dtreerpo.yaml: tree_branch_factor 4, tree_contraction_factor 2, num_tree_samples 4; block_length 32 with
        # diffusion_steps 128 over max_completion_length 256 (16 steps a block); temperature 0.9
        # (diffu_grpo_config.py:179); _generate_partial recomputes the whole canvas at every step (no cache).
        # Their low-confidence remasking ranks by the untempered softmax of the sampled token (:600-601): raw_prob.
        rollout_sampling={"tree": (4, 4, 2), "block_length": 32, "steps_per_block": 16, "temperature": 0.9, "confidence": "raw_prob", "kv_cache": False},
    )
)
