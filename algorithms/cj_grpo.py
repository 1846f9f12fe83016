"""CJ-GRPO: GRPO on the recorded decoding trajectory, reduced per decoding step (Yang et al., 2025,
"Taming masked diffusion language models via consistency trajectory reinforcement learning with
fewer decoding step"; yjyddq/EOSER-ASS-RL).

The likelihood is the replayed trajectory (TraceRL's replay with shrink 1): step i's input is the
canvas as it was before decoding step i, and it scores the tokens unmasked at step i. The loss is
GRPO's clipped ratio plus a k3 KL per token, reduced per decoding step over the batch, then over
steps.

What the authors' code does (yjyddq/EOSER-ASS-RL @ 5affb4e, cj-grpo/cj_grpo_trainer_semiar.py):
`reversed_process` (:262-360) records x before every step and `unmask_positions` = the completion
tokens that step unmasked (every canvas position, the EOS filler after the first EOS included:
the completion mask of :506 never enters the loss). `compute_loss` (:85-151), for the S steps of
the fixed schedule and the micro-batch (per_device_train_batch_size 6 = num_generations 6, one
group: TRL's sampler puts a prompt's generations in a row):

    l_t   = -min(r_t A, clip(r_t, 1 - eps, 1 + eps) A) + beta k3_t,   r_t = exp(logp_t - old_t)
    loss  = (1/S) sum_i [ sum_{t unmasked at i} l_t / #{t unmasked at i} ]

Gradient accumulation and DDP average the micro-batches: a mean over groups.

In unmask. The token weights w_t = 1 / (n_{g,s} S_g N) (n_{g,s}: the loss tokens of group g
decoded at step s, S_g: the steps of group g that decoded any, N: the groups of the minibatch) are
computed once per minibatch, before it is split over ranks and micro-batches
(`EstimatorUnit.loss_weights`), so loss = sum_t w_t l_t is the same number however it is split; with
`algorithm.minibatches: 1` (CJ-GRPO's one optimizer step per inner iteration over every
generation) a group is exactly their micro-batch. Steps are the step map's global steps, CJ-GRPO's
i. unmask clamps log-ratios to [-10, 10] before exp (algorithms.losses' rule; theirs does not).
Attention: LLaDA's semi-autoregressive decoding on a full-attention canvas; block-causal families
are refused (their passes replay every block's k-th step at once, not one decoding step).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from algorithms.estimators import EstimatorUnit, _out, _preset, loss_mask, register_estimator
from algorithms.losses import LossTotals, clamped_log_ratio, clipped_surrogate, k3_kl
from algorithms.trace import trace_logprobs
from rollout.models import DiffusionLM
from rollout.trajectory import Trajectory


@dataclass(frozen=True)
class CjOptions:
    canvas: bool = True
    """Score every canvas token, the EOS filler after the first EOS too (CJ-GRPO); false: up to the first EOS."""


def cj_estimate(
    lm: DiffusionLM, trajs: Sequence[Trajectory], generator: torch.Generator | None = None, *,
    canvas: bool = True, seed: int | None = None, occurrences: Sequence[int] | None = None, with_entropy: bool = False,
) -> tuple[torch.Tensor, ...]:
    """The replayed trajectory's log-probs (shrink 1): logp, mask [N, C] (plus entropy). Deterministic."""
    if not lm.traits.full_attention:
        raise ValueError(f"cj_grpo replays one decoding step per pass on a full-attention canvas; family {lm.traits.name!r} is block-causal")
    logp, mask, entropy = trace_logprobs(lm, trajs, shrink=1, with_entropy=with_entropy, canvas=canvas)
    return _out(logp, mask, entropy, with_entropy)


def cj_step_weights(keep: torch.Tensor, steps: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """w [B, C] = 1 / (n_{g,s} S_g N) on the loss tokens, 0 elsewhere (module docstring).

    keep: [B, C] bool tokens carrying loss; steps: [B, C] long decoding step of each token;
    groups: [B] group ids. sum_t w_t l_t = mean over groups of the mean over their steps of
    each step's token mean.

    >>> keep = torch.tensor([[True, True, True], [True, False, False]])  # one group, steps 0 (3 tokens) and 1 (1)
    >>> (cj_step_weights(keep, torch.tensor([[0, 0, 1], [0, 5, 5]]), torch.tensor([3, 3])) * 6).tolist()
    [[1.0, 1.0, 3.0], [1.0, 0.0, 0.0]]
    """
    _, g = torch.unique(groups.to(keep.device), return_inverse=True)  # [B] dense group
    cells = {}
    for r, c in keep.nonzero().tolist():
        cells.setdefault((int(g[r]), int(steps[r, c])), []).append((r, c))
    n_steps: dict[int, int] = {}
    for gi, _s in cells:
        n_steps[gi] = n_steps.get(gi, 0) + 1
    w = torch.zeros(keep.shape, dtype=torch.float64, device=keep.device)
    for (gi, _s), toks in cells.items():
        for r, c in toks:
            w[r, c] = 1.0 / (len(toks) * n_steps[gi] * len(n_steps))
    return w


def cj_loss_weights(trajs: Sequence[Trajectory], keep_rows: torch.Tensor, options: CjOptions, eos_id: int | None) -> torch.Tensor:
    """The minibatch's token weights [n, C] (`cj_step_weights` of its loss tokens, step map and groups)."""
    width = max(len(t.completion_ids) for t in trajs)
    keep = torch.zeros((len(trajs), width), dtype=torch.bool)
    steps = torch.full((len(trajs), width), -1, dtype=torch.long)
    for i, t in enumerate(trajs):
        keep[i, : len(t.completion_ids)] = True
        steps[i, : len(t.completion_ids)] = torch.tensor(t.step_map, dtype=torch.long)
    if not options.canvas:
        keep &= loss_mask(trajs, eos_id)
    keep &= keep_rows.to(torch.bool).cpu()[:, None]
    return cj_step_weights(keep, steps, torch.tensor([t.group for t in trajs]))


def cj_grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.5,
    eps_high: float = 0.5,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    norm: str = "token",
    norm_constant: float | None = None,
    totals: LossTotals | None = None,
    pass_index: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """CJ-GRPO's loss, sum_t w_t [ -min(r_t A, clip(r_t) A) + beta k3_t ] (module docstring).

    Args:
        logp, old_logp, ref_logp: [B, C] replayed per-token log-probs; advantages: [B] (or [B, C]).
        mask: [B, C] tokens carrying loss; weights: [B, C] `cj_step_weights` of the whole minibatch
            (the learner's `loss_weights`), the piece's rows. norm, norm_constant, totals,
            pass_index: not used (the weights are the reduction).
    """
    if weights is None:
        raise ValueError("cj_grpo's loss needs weights= (cj_step_weights: 1 / (tokens of the step x steps x groups))")
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp")
    w = weights[:, : logp.shape[1]].to(logp.dtype) * mask.to(logp.dtype)
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    ratio = torch.exp(clamped_log_ratio(logp, old_logp))
    pg, clipped = clipped_surrogate(ratio, adv, eps_low, eps_high)
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    per_token = pg + beta * kl if beta > 0 else pg
    loss = (per_token * w).sum()
    with torch.no_grad():
        metrics = {
            "loss/policy": float((pg * w).sum()),
            "kl": float((kl * w).sum()),
            "clipfrac": float((clipped.to(w.dtype) * w).sum()),
            "ratio/mean": float((ratio * w).sum()),
        }
    return loss, metrics


_CJ = "yjyddq/EOSER-ASS-RL cj-grpo/"
_CJ_EPS = (0.5, f"{_CJ}slurm_scripts/train.yaml:71 epsilon 0.5, clamp(coef_1, 1 - eps, 1 + eps) at cj_grpo_trainer_semiar.py:126")
CJ_GRPO = register_estimator(
    EstimatorUnit(
        "cj_grpo", cj_estimate, CjOptions, lambda trajs, o: max(len(set(t.step_map)) for t in trajs),
        paper="CJ-GRPO (Yang et al., 2025; yjyddq/EOSER-ASS-RL): the replayed trajectory, loss per decoding step over the group, then over steps",
        **_preset(
            advantage=("mean", f"{_CJ}cj_grpo_trainer_semiar.py:587: advantages = rewards - mean (the std, :582, is only logged)"),
            zscore_std=("sample", f"{_CJ}cj_grpo_trainer_semiar.py:582: torch .std(dim=1) (G - 1), only logged"),
            eps_low=_CJ_EPS, eps_high=_CJ_EPS,
            beta=(0.04, f"{_CJ}slurm_scripts/train.yaml:70 beta 0.04, k3 (cj_grpo_trainer_semiar.py:114) to the base with the adapter disabled (:523): the initial policy"),
            redraw_masks=(False, "the replay is deterministic: no masks to redraw"),
            epochs=(12, f"{_CJ}slurm_scripts/gsm_run.sh:29 NUM_ITER=12 (math_run.sh 12; countdown_run.sh and run.sh 8)"),
        ),
        replays_trace=True, multi_pass=lambda o: True,
        objective=cj_grpo_loss, objective_kl=True, attention=frozenset({"full"}),
        loss_weights=cj_loss_weights,
    )
)
