"""JustGRPO: plain GRPO on a masked diffusion LM decoded left to right (Ni et al., 2026, "The
Flexibility Trap", arXiv:2601.15165; LeapLabTHU/JustGRPO).

The rollout decodes one token per step, left to right (LLaDA's semi-autoregressive sampler with
block length 1), so the sequence likelihood is exact: token t's log-prob is read with the prompt
and tokens < t clean and every position >= t of the canvas masked. The loss is GRPO's clipped
ratio per token, with no KL, on the whole canvas.

What the authors' code does (LeapLabTHU/JustGRPO @ eebe50e):
  - rollout (grpo.py:13-15): generate(block_length=1, steps=gen_length): one token per step, left
    to right, over a canvas of gen_length (256) that is decoded to its end (the EOS filler after
    the first EOS is sampled too);
  - advantages (grpo.py:58-61, train.py:182): z = (r - mean) / (std + 1e-4) over a group of
    num_generations x repeat_times = 16, torch's .std (G - 1);
  - likelihood (grpo.py:34-44): for t < gen_length, input [prompt | completion[:t] | MASK x
    (gen_length - t)], log_softmax(logits / temperature) at column prompt_len + t;
  - loss (grpo.py:46-50): r = exp(logp - logp.detach()) (1 in value: ratio-free, one optimizer step
    per rollout), l_t = -min(r z, clip(r, 1 - 0.2, 1 + 0.2) z) on every canvas token (the
    completion mask never enters), each token's loss times gain / gen_length / (v + 1e-5), summed;
    v = the number of nonzero advantages of the rank's group (train.py:184), averaged over the
    ranks of that accumulation step (grpo.py:31). DDP averages the ranks' gradients and the
    gradient accumulation (train.py:157, a plain Accelerator()) sums the 8 micro-steps.

So, with L_i the canvas length, the groups of one accumulation step forming a cell c of n_c
groups (the 8 ranks of README.md's `--num_processes 8`) and v_c the mean of their v,

    omega_i = z_i / (n_c (v_c + 1e-5))                                    (`just_grpo_weights`)
    w_it    = 1 / L_i on every canvas token (up to the first EOS with canvas: false)
    L       = sum_i sum_t w_it * -min(r_it omega_i, clip(r_it) omega_i),  r = exp(logp - sg(logp))

In unmask: the z-score is applied by `just_grpo_weights` (the unit's advantage_weights), so the
preset's `advantage: mean` hands it r - mean and it divides by the sample std + 1e-4 of the group;
cells are 8 consecutive groups in rollout order (`RANKS`). The replay is TraceRL's with shrink 1,
which on a left-to-right step map is exactly grpo.py's input; a trajectory decoded in another order
is refused, and a run config that leaves `rollout.sampling.block_length` unset gets 1 (the unit's
`rollout_sampling`). The full-attention sampler decodes the whole canvas, as generate() does.
One difference stays: unmask's sampling distribution excludes the mask id (a sampler must never
emit it), LLaDA's generate() and grpo.py:43 keep it in the softmax; a trained LLaDA gives it ~0
mass. Optimizer settings of theirs that are not algorithm presets: AdamW lr 5e-6, betas (0.9,
0.999), weight decay 0, grad-norm clip 1.0 (train.py:24-26, 112-117, 215). Attention: LLaDA's
full-attention canvas; block-causal families are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from algorithms.estimators import (
    EstimatorUnit,
    _out,
    _preset,
    loss_mask,
    register_estimator,
)
from algorithms.losses import LossTotals
from algorithms.trace import trace_logprobs
from rollout.models import DiffusionLM
from rollout.trajectory import Trajectory

RANKS = 8
"""Groups whose nonzero-advantage counts are averaged together: JustGRPO's processes per
accumulation step (README.md: `accelerate launch --num_processes 8`, batch_size_per_device 1)."""
STD_EPS = 1e-4  # grpo.py:61
VALID_EPS = 1e-5  # grpo.py:32


@dataclass(frozen=True)
class JustGrpoOptions:
    canvas: bool = True
    """Score every canvas token, the EOS filler after the first EOS too (JustGRPO); false: up to the first EOS."""


def _check_left_to_right(trajs: Sequence[Trajectory]) -> None:
    for i, t in enumerate(trajs):
        if any(a >= b for a, b in zip(t.step_map, t.step_map[1:])):
            raise ValueError(
                f"just_grpo trains on left-to-right decoding (one token per step, JustGRPO grpo.py:13-15), but sample {i}'s "
                f"step map {t.step_map[:8]}... is not strictly increasing: set rollout.sampling.block_length: 1"
            )


def just_grpo_estimate(
    lm: DiffusionLM, trajs: Sequence[Trajectory], generator: torch.Generator | None = None, *,
    canvas: bool = True, seed: int | None = None, occurrences: Sequence[int] | None = None, with_entropy: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Exact left-to-right log-probs (TraceRL's replay, shrink 1): logp, mask [N, C] (plus entropy).

    Token t is scored with the prompt and tokens < t clean and the rest of the canvas masked.
    Deterministic: `generator`, `seed` and `occurrences` are unused.
    """
    if not lm.traits.full_attention:
        raise ValueError(f"just_grpo reads LLaDA's canvas left to right with full attention; family {lm.traits.name!r} is block-causal")
    _check_left_to_right(trajs)
    logp, mask, entropy = trace_logprobs(lm, trajs, shrink=1, with_entropy=with_entropy, canvas=canvas)
    return _out(logp, mask, entropy, with_entropy)


def just_grpo_weights(advantages: torch.Tensor, groups: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """omega [B] = z_i / (n_c (v_c + 1e-5)), z_i = a_i / (std_g(a) + 1e-4) (module docstring).

    advantages: [B] r - mean of the group (the preset's `advantage: mean`); groups: [B] group ids,
    cells of RANKS groups in order of first appearance; lengths: unused.

    >>> just_grpo_weights(torch.tensor([1.0, -1.0, 0.0, 0.0]), torch.tensor([0, 0, 1, 1])).tolist()  # doctest: +ELLIPSIS
    [0.3535..., -0.3535..., 0.0, 0.0]
    """
    if advantages.shape != groups.shape or advantages.dim() != 1:
        raise ValueError(f"just_grpo weights need one advantage per sample and its group, got {tuple(advantages.shape)} and {tuple(groups.shape)}")
    a = advantages.double()
    order = list(dict.fromkeys(groups.tolist()))  # groups in rollout order
    rank = {g: r for r, g in enumerate(order)}
    inv = torch.tensor([rank[g] for g in groups.tolist()], dtype=torch.long)  # [B] dense group, rollout order
    k = len(order)
    size = torch.bincount(inv, minlength=k).to(a.dtype)  # [k]
    mean = torch.zeros(k, dtype=a.dtype).index_add(0, inv, a) / size
    var = torch.zeros(k, dtype=a.dtype).index_add(0, inv, (a - mean[inv]) ** 2) / (size - 1).clamp(min=1)
    z = a / (var.sqrt()[inv] + STD_EPS)  # [B] grpo.py:61
    valid = torch.zeros(k, dtype=a.dtype).index_add(0, inv, (z != 0).to(a.dtype))  # [k] train.py:184
    cell = torch.arange(k) // RANKS  # [k]
    cells = int(cell.max()) + 1 if k else 0
    n_c = torch.bincount(cell, minlength=cells).to(a.dtype)  # groups (ranks) of each cell
    v_c = torch.zeros(cells, dtype=a.dtype).index_add(0, cell, valid) / n_c  # grpo.py:31: gather, mean
    return (z / (n_c[cell[inv]] * (v_c[cell[inv]] + VALID_EPS))).to(advantages.dtype)


def just_grpo_loss_weights(trajs: Sequence[Trajectory], keep_rows: torch.Tensor, options: JustGrpoOptions, eos_id: int | None) -> torch.Tensor:
    """w [n, C] = 1 / L_i on the tokens carrying loss (every canvas token; up to the first EOS with
    canvas false), 0 on dropped rows; L_i the canvas length (JustGRPO's gen_length, grpo.py:32)."""
    width = max(len(t.completion_ids) for t in trajs)
    w = torch.zeros((len(trajs), width), dtype=torch.float64)
    for i, t in enumerate(trajs):
        w[i, : len(t.completion_ids)] = 1.0 / len(t.completion_ids)
    if not options.canvas:
        w = w * loss_mask(trajs, eos_id)
    return w * keep_rows.to(torch.bool).cpu()[:, None]


def just_grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    norm: str = "token",
    norm_constant: float | None = None,
    totals: LossTotals | None = None,
    pass_index: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """JustGRPO's loss, sum_it w_it * -min(r omega_i, clip(r, 1 - eps_low, 1 + eps_high) omega_i), r = exp(logp - sg(logp)).

    Args:
        logp: [B, C] left-to-right log-probs; advantages: [B] the omega of `just_grpo_weights`.
        weights: [B, C] `just_grpo_loss_weights` (the learner's loss_weights), which carry the
            reduction and the tokens (the canvas): `mask` (up to the first EOS) is not used.
        old_logp: unused: the ratio is against the detached current log-probs (grpo.py:46).
        ref_logp, beta: JustGRPO has no KL term, so beta must be 0. norm, norm_constant, totals,
            pass_index: not used.
    """
    if beta > 0:
        raise ValueError("JustGRPO has no KL term (grpo.py's loss is the clipped ratio only): beta must be 0")
    if weights is None:
        raise ValueError("just_grpo's loss needs weights= (just_grpo_loss_weights: 1 / canvas length on each scored token)")
    if advantages.dim() != 1:
        raise ValueError(f"just_grpo weighs whole sequences: advantages must be [B], got {tuple(advantages.shape)}")
    w = weights[:, : logp.shape[1]].to(logp.dtype)
    adv = advantages.to(logp.dtype)[:, None]
    ratio = torch.exp(logp - logp.detach())  # 1 in value, d ratio = d logp
    pg = -torch.minimum(ratio * adv, torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv)
    loss = (pg * w).sum()
    with torch.no_grad():
        metrics = {"loss/policy": float(loss), "logp/sequence": float((logp * (w > 0)).sum()) / max(int((w > 0).any(1).sum()), 1)}
    return loss, metrics


_JUST = "LeapLabTHU/JustGRPO "
_JUST_EPS = (0.2, f"{_JUST}grpo.py:25 eps=0.2 (train.py:195 keeps it), clamp(1 - eps, 1 + eps) at :47")
JUST_GRPO = register_estimator(
    EstimatorUnit(
        "just_grpo", just_grpo_estimate, JustGrpoOptions, lambda trajs, o: max(len(t.step_map) for t in trajs),
        paper="JustGRPO (Ni et al., 2026, 'The Flexibility Trap', arXiv:2601.15165; LeapLabTHU/JustGRPO): GRPO on left-to-right decoding, exact likelihood",
        **_preset(
            advantage=("mean", f"{_JUST}grpo.py:58-61: (r - mean) / (std + 1e-4); the unit's advantage_weights divides r - mean by the std + 1e-4"),
            zscore_std=("sample", f"{_JUST}grpo.py:60: torch .std (G - 1), applied in just_grpo_weights"),
            eps_low=_JUST_EPS, eps_high=_JUST_EPS,
            beta=(0.0, f"{_JUST}grpo.py:46-50: the clipped ratio only, no KL and no reference model"),
            redraw_masks=(False, "the left-to-right replay is deterministic: no masks to redraw"),
            epochs=(1, f"{_JUST}train.py:152-219: one optimizer step per rollout batch (the ratio is exp(logp - sg(logp)), grpo.py:46)"),
        ),
        multi_pass=lambda o: True,
        objective=just_grpo_loss, needs_old_logp=False, advantage_weights=just_grpo_weights,
        attention=frozenset({"full"}), loss_weights=just_grpo_loss_weights,
        rollout_sampling={"block_length": 1},  # grpo.py:13-15: generate(block_length=1), one token per step
    )
)
