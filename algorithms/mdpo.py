"""MDPO: masked diffusion policy optimisation with rewards on intermediate answers (He et al., 2025,
"MDPO: Overcoming the Training-Inference Divide of Masked Diffusion Language Models";
autonomousvision/mdpo).

Denoising is a multi-step decision process. At every decoding step t the sampler predicts a token
for each still-masked position; that predicted canvas, decoded, is an intermediate answer, and the
reward function scores it: r_t per sample and step (the rollout records the canvases with
`SamplingParams.record_steps`, the trainer scores them through the one scoring path). Step-wise
advantages reward a step for improving the answer and for what follows it:

    a_t = (r_t - r_{t-1}) + 1 + mean(r_{t+1}, ..., r_{T-1})    (r_{-1} = 0; the last step: + r_{T-1})
    A_t = (a_t - mean_g(a_t)) / (std_g(a_t) + 1e-4)             (per step, over the prompt's group g)

The K steps with the largest |A_t| are trained. At step t, the input is the canvas as the sampler
saw it (the positions M_t still masked), the targets are the step's predictions, and each
predicted token is weighted by its recorded probability c (detached) and by lambda = L / |M_t|:

    L_t = - sum_{j in M_t} c_j lambda min(rho_j A_t, clip(rho_j, 1 - eps, 1 + eps) A_t) / |M_t|
          (+ beta (log rho_ref)^2 / 2 per token, their k2 KL)

and the sample's loss is the sum of its trained steps' L_t; samples are averaged.

What the authors' code does (autonomousvision/mdpo @ e6ae439):
- rollout, src/mdlm_generation_utils.py:28-130 `diffusion_generate`: before every step the input
  canvas (`intermediate_inputs`, :58), then x0 = where(masked, prediction, x) over the whole canvas
  (`intermediate_results`, :102) and the prediction's probability (`intermediate_confidence`, :85;
  RCR's running confidence when rcr is on, :129, which unmask does not implement);
- rewards, src/open_r1/mdpo/mdpo_trainer.py:805-841: every step's canvas decoded and scored by the
  weighted reward functions; advantages "adv-v3 + adv-v4" at :849-851, the group z-score per step
  with torch's .std (G - 1) + 1e-4 at :855-858;
- steps trained, :917-950 `split_into_micro_batches` (:922): topk(|A|.sum(0), sample_train_steps) over the
  device's batch (the recipe's per_device_train_batch_size 1: a sample's own top K);
- loss, :1487-1545 `compute_loss`: log-softmax(logits / (temperature + eps)) at the predicted
  tokens (:733-741), completion_mask = input == mask id, lambda_t = L / (|M_t| + 1e-4) with L the
  completion length (:1512), loss = sum(l * mask * conf) / (mask.sum() + 1e-4) (:1532); one
  micro-batch per trained step, summed by gradient accumulation; num_iterations 1, so old = current
  detached (rho = 1, :1516). Recipe (recipes/LLaDA-Instruct/mdpo/config_demo.yaml): 128 steps, one
  block of 512, temperature 0.1, sample_train_steps 16, beta 0.

In unmask. The trainer asks the unit (`needs_step_predictions`, `scored_steps`, `step_batch`): the
rollout records, the scoring stage scores the steps `score_every` names, and the advantages stage
turns each (sample, trained step) into one learner row (`step_rows`): its completion is the step's
predicted canvas, its step map 0 where the token was committed before the step, 1 where the step
predicted a masked position; `mdpo_estimate` scores it in one pass, `mdpo_weights` (the unit's
loss_weights) gives c lambda / (|M_t| N), N = the minibatch's rows / train_steps, and `mdpo_loss` is
the clipped sum. On identical tensors this equals their compute_loss summed over a sample's steps
and averaged over samples (loss to 8e-10, their float32 |M| + 1e-4; gradient to 5e-9).
Differences: the sampler predicts the positions of the block being decoded only (a later semi-AR
block's masked positions, step map 2, stay the mask id and take no loss; the recipe decodes one
block of the whole completion, where the two agree); the log-probs and the recorded probability are
those of unmask's sampling distribution, which excludes the mask id (theirs keeps it in the softmax:
a 1e-3 gradient difference on the tiny model; after top-k/top-p filtering theirs, off in the recipe);
the static schedule splits a block's tokens evenly (theirs: MaskGIT's linear schedule, the same
counts when the block divides by the steps, as the recipe's 512 / 128); log-ratios are clamped to
[-10, 10] (algorithms.losses' rule). Full attention only: the paper trains LLaDA; block-causal
families are refused.
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
from algorithms.losses import LossTotals, clamped_log_ratio, clipped_surrogate
from rollout.models import DiffusionLM
from rollout.trajectory import Trajectory

STD_EPS = 1e-4  # their z-score's and lambda's guard (mdpo_trainer.py:858, :1512)


def mdpo_step_values(step_rewards: torch.Tensor) -> torch.Tensor:
    """a [B, T] = (r_t - r_{t-1}) + 1 + mean(r_{t+1:}) (the last step: + r_{T-1}), from step rewards [B, T].

    Their "adv-v3 + adv-v4" (mdpo_trainer.py:849-851): the reward change a step made, plus the mean
    reward of the steps after it.

    >>> mdpo_step_values(torch.tensor([[0.0, 1.0, 1.0]])).tolist()
    [[2.0, 3.0, 2.0]]
    """
    if step_rewards.dim() != 2 or step_rewards.shape[1] < 1:
        raise ValueError(f"step rewards must be [samples, steps], got {tuple(step_rewards.shape)}")
    r = step_rewards
    t = r.shape[1]
    diff = torch.cat([r[:, :1], r[:, 1:] - r[:, :-1]], dim=1) + 1
    after = r[:, 1:].flip(-1).cumsum(-1) / torch.arange(1, t, dtype=r.dtype, device=r.device)  # mean of the last k
    return diff + torch.cat([after.flip(-1), r[:, -1:]], dim=1)


def mdpo_advantages(
    step_rewards: torch.Tensor, groups: torch.Tensor, lengths: torch.Tensor | None = None, eps: float = STD_EPS
) -> torch.Tensor:
    """A [B, T]: `mdpo_step_values` z-scored per step over each group, (a - mean) / (std + eps), std with G - 1.

    step_rewards: [B, T] the reward of each sample's intermediate answer at each scored step;
    groups: [B] prompt ids; lengths: [B] scored steps of each sample (None: all T), the columns past
    a sample's length are padding (its values take its own steps only; A is 0 there). A step that
    fewer than two samples of a group have gets 0 (torch's std of one value is nan).

    >>> mdpo_advantages(torch.tensor([[0.0, 1.0], [1.0, 1.0]]), torch.tensor([0, 0])).tolist()  # doctest: +ELLIPSIS
    [[-0.70..., 0.70...], [0.70..., -0.70...]]
    """
    if groups.dim() != 1 or len(groups) != len(step_rewards):
        raise ValueError(f"one group id per sample: {len(step_rewards)} samples, groups of shape {tuple(groups.shape)}")
    r = step_rewards.double()
    n_steps = r.shape[1]
    lengths = torch.full((len(r),), n_steps) if lengths is None else lengths.to(torch.long).cpu()
    a = torch.zeros_like(r)
    for i, n in enumerate(lengths.tolist()):
        if n:
            a[i, :n] = mdpo_step_values(r[i : i + 1, :n])[0]
    valid = torch.arange(n_steps)[None] < lengths[:, None]  # [B, T]
    _, inv = torch.unique(groups.cpu(), return_inverse=True)
    out = torch.zeros_like(a)
    for g in range(int(inv.max()) + 1 if len(inv) else 0):
        rows = inv == g
        x, v = a[rows], valid[rows].to(a.dtype)
        n = v.sum(0)  # [T] samples of the group with this step
        mean = (x * v).sum(0) / n.clamp(min=1)
        std = (((x - mean) ** 2 * v).sum(0) / (n - 1).clamp(min=1)).sqrt()
        out[rows] = torch.where((n >= 2) & (v > 0), (x - mean) / (std + eps), torch.zeros_like(x))
    return out


def mdpo_step_batch(
    trajs: Sequence[Trajectory], step_rewards: torch.Tensor, scored: Sequence[Sequence[int]], options: MdpoOptions
) -> tuple[list[Trajectory], torch.Tensor, list[int]]:
    """The unit's `step_batch`: step advantages (`mdpo_advantages` over each sample's scored steps),
    then the learner rows (`step_rows`): (rows, advantages [n], the sample of each row)."""
    groups = torch.tensor([t.group for t in trajs])
    lengths = torch.tensor([len(s) for s in scored])
    adv = mdpo_advantages(step_rewards, groups, lengths)
    return step_rows(trajs, adv, options.train_steps, scored)


def select_steps(advantages: torch.Tensor, k: int) -> torch.Tensor:
    """[min(k, T)] the steps with the largest sum over rows of |A| [n, T], largest first (their
    `torch.topk(|A|.sum(0), k)` over a device batch, mdpo_trainer.py:922; one sample per device in the recipe)."""
    if k < 1:
        raise ValueError(f"mdpo trains at least one step per sample (train_steps >= 1), got {k}")
    return torch.topk(advantages.abs().sum(0), k=min(k, advantages.shape[-1])).indices


def scored_steps(num_steps: int, every: int) -> list[int]:
    """The steps whose intermediate answers are scored: every `every`-th from 0, and always the last
    (the final answer). every 1 scores them all (theirs).

    >>> scored_steps(7, 3), scored_steps(7, 1)[-2:], scored_steps(0, 2)
    ([0, 3, 6], [5, 6], [])
    """
    if every < 1:
        raise ValueError(f"mdpo's score_every must be >= 1, got {every}")
    steps = list(range(0, num_steps, every))
    if num_steps and steps[-1] != num_steps - 1:
        steps.append(num_steps - 1)
    return steps


def step_rows(
    trajs: Sequence[Trajectory], advantages: torch.Tensor, k: int, scored: Sequence[Sequence[int]]
) -> tuple[list[Trajectory], torch.Tensor, list[int]]:
    """The learner rows of MDPO: one per (sample, trained step), with its advantage and sample index.

    trajs: samples with step_predictions; advantages: [B, T'] over each sample's scored steps
    `scored[i]` (recorded step indices, T' = the longest; padding columns must be 0); k: steps
    trained per sample (`select_steps` of the sample's own row). Row (i, t): prompt, completion =
    the canvas predicted at step t; step map 0 where a token was committed before t, 1 where the
    input was masked and the step predicted, 2 where the input was masked but the step predicted
    nothing (a later semi-AR block); step_predictions/step_confidences = that canvas and its
    probabilities [1, C]. Rows come sample by sample, steps largest |A| first.
    """
    rows, adv, owner = [], [], []
    for i, t in enumerate(trajs):
        if t.step_predictions is None:
            raise ValueError("mdpo needs the rollout's step predictions (SamplingParams.record_steps)")
        steps = list(scored[i])
        a = advantages[i, : len(steps)]
        for j in select_steps(a[None], k).tolist():
            s = steps[j]
            canvas, conf = t.step_predictions[s], t.step_confidences[s]
            rows.append(Trajectory(
                prompt_ids=list(t.prompt_ids), completion_ids=canvas.tolist(),
                step_map=[0 if m < s else (1 if p > 0 else 2) for m, p in zip(t.step_map, conf.tolist())], logprobs=[0.0] * len(canvas), block_size=t.block_size,
                temperature=t.temperature, nfe=0, finish_reason=t.finish_reason, group=t.group, columns=t.columns,
                version=t.version, step_predictions=canvas[None], step_confidences=conf[None],
            ))  # fmt: skip
            adv.append(float(a[j]))
            owner.append(i)
    return rows, torch.tensor(adv, dtype=torch.float64), owner


@dataclass(frozen=True)
class MdpoOptions:
    train_steps: int = 16
    """Steps trained per sample, those with the largest |A_t| (their sample_train_steps: 16)."""
    score_every: int = 1
    """Score the intermediate answer of every k-th step (and the last); 1 scores every step (theirs).
    Bounds the reward calls per sample to ceil(steps / k) + 1."""


def predicted(t: Trajectory) -> list[bool]:
    """Per completion position of a step row (`step_rows`): masked at the step's input and predicted by it."""
    return [m == 1 for m in t.step_map]


def mdpo_estimate(
    lm: DiffusionLM, trajs: Sequence[Trajectory], generator: torch.Generator | None = None, *,
    train_steps: int = 16, score_every: int = 1,
    seed: int | None = None, occurrences: Sequence[int] | None = None, with_entropy: bool = False,
) -> tuple[torch.Tensor, ...]:
    """log p(prediction_j | the step's input canvas) of every step row (`step_rows`): logp, mask [n, C].

    One pass: the positions with step map 1 or 2 are masked, the rest is the canvas committed before
    the step; mask = the positions the step predicted (step map 1: their completion_mask, every canvas
    position the EOS filler too, as theirs). Deterministic; train_steps and score_every are the
    driver's (`step_rows`, `scored_steps`).
    """
    if not lm.traits.full_attention:
        raise ValueError(f"mdpo trains on the predicted canvas of a full-attention sampler; family {lm.traits.name!r} is block-causal")
    temperature = _temperature(trajs)
    width = max(len(t.completion_ids) for t in trajs)
    targets = _pad([t.completion_ids for t in trajs], width, torch.long, lm.device)
    mask = _pad([predicted(t) for t in trajs], width, torch.bool, lm.device)
    noisy = [[m >= 1 for m in t.step_map] for t in trajs]
    logp, entropy = _score(lm, trajs, noisy, temperature, targets, mask, with_entropy=with_entropy)
    if entropy is not None:
        entropy = entropy * mask
    return _out(logp, mask, entropy, with_entropy)


def mdpo_token_weights(conf: torch.Tensor, masked: torch.Tensor, length: torch.Tensor, num_samples: float) -> torch.Tensor:
    """w [n, C, 2]: [..., 0] = c lambda / ((|M| + 1e-4) N), the policy term's weight, lambda = L / (|M| + 1e-4);
    [..., 1] = c / ((|M| + 1e-4) N), the KL term's (theirs adds beta k2 after the lambda scaling). Their
    conf-weighted token mean of a step, averaged over the N samples.

    conf: [n, C] recorded prediction probabilities; masked: [n, C] bool positions M of each row;
    length: [n] completion length L of each row.

    >>> w = mdpo_token_weights(torch.tensor([[0.5, 1.0, 0.0]]), torch.tensor([[True, True, False]]), torch.tensor([3]), 1)
    >>> [round(x, 3) for x in w[0, :, 0].tolist()], [round(x, 3) for x in w[0, :, 1].tolist()]
    ([0.375, 0.75, 0.0], [0.25, 0.5, 0.0])
    """
    m = masked.to(torch.float64)
    count = m.sum(1, keepdim=True) + STD_EPS
    lam = length.to(torch.float64)[:, None] / count
    kl = conf.to(torch.float64) * m / count / float(num_samples)
    return torch.stack([kl * lam, kl], dim=-1)


def mdpo_weights(trajs: Sequence[Trajectory], keep_rows: torch.Tensor, options: MdpoOptions, eos_id: int | None) -> torch.Tensor:
    """The minibatch's token weights [n, C] (`mdpo_token_weights`), N = rows / train_steps: their mean over
    samples of the sum over a sample's trained steps, where every sample has train_steps steps (a
    sample with fewer scored steps trains them all and its rows weigh the same)."""
    width = max(len(t.completion_ids) for t in trajs)
    masked = _pad([predicted(t) for t in trajs], width, torch.bool, "cpu") & keep_rows.to(torch.bool).cpu()[:, None]
    conf = _pad([t.step_confidences[0].tolist() for t in trajs], width, torch.float64, "cpu")
    length = torch.tensor([len(t.completion_ids) for t in trajs])
    return mdpo_token_weights(conf, masked, length, len(trajs) / options.train_steps)


def mdpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
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
    """MDPO's loss, sum_j w_j [ -min(rho_j A, clip(rho_j) A) + beta (log rho_ref)^2 / 2 ] (module docstring).

    Args:
        logp, old_logp, ref_logp: [n, C] per-token log-probs of the step rows' predictions.
        advantages: [n] each row's step advantage A_t; mask: [n, C] predicted positions carrying loss.
        weights: [n, C, 2] `mdpo_token_weights` of the minibatch (the learner's loss_weights): the policy
            and the KL term's token weights.
        norm, norm_constant, totals, pass_index: not used (the weights are the reduction).
    """
    if weights is None:
        raise ValueError("mdpo's loss needs weights= (mdpo_token_weights: confidence x lambda / (|M| x samples))")
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp")
    if weights.dim() != 3 or weights.shape[-1] != 2:
        raise ValueError(f"mdpo's weights are [rows, tokens, 2] (policy, KL), got {tuple(weights.shape)}")
    w = weights[:, : logp.shape[1], 0].to(logp.dtype) * mask.to(logp.dtype)
    w_kl = weights[:, : logp.shape[1], 1].to(logp.dtype) * mask.to(logp.dtype)
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    ratio = torch.exp(clamped_log_ratio(logp, old_logp))
    pg, clipped = clipped_surrogate(ratio, adv, eps_low, eps_high)
    kl = clamped_log_ratio(ref_logp, logp) ** 2 / 2 if ref_logp is not None else torch.zeros_like(logp)  # their k2
    loss = (pg * w).sum() + (beta * (kl * w_kl).sum() if beta > 0 else 0.0)
    with torch.no_grad():
        tokens = mask.to(w.dtype)
        n = tokens.sum().clamp(min=1)
        metrics = {
            "loss/policy": float((pg * w).sum()),
            "kl": float((kl * tokens).sum() / n),
            "clipfrac": float((clipped.to(w.dtype) * tokens).sum() / n),
            "ratio/mean": float((ratio * tokens).sum() / n),
        }
    return loss, metrics


_MDPO = "autonomousvision/mdpo"
_MDPO_EPS = (0.2, f"{_MDPO} src/open_r1/mdpo/mdpo_config.py:237 epsilon 0.2 (the recipe keeps it), clamp at mdpo_trainer.py:1518; num_iterations 1 makes rho = 1")
MDPO = register_estimator(
    EstimatorUnit(
        "mdpo", mdpo_estimate, MdpoOptions, lambda trajs, o: 1,
        paper="MDPO (He et al., 2025; autonomousvision/mdpo): rewards on every step's intermediate answer, step advantages, conf-weighted loss on the top-|A| steps",
        **_preset(
            zscore_std=("sample", f"{_MDPO} src/open_r1/mdpo/mdpo_trainer.py:857: torch .std(dim=1) (G - 1) + 1e-4, per decoding step"),
            eps_low=_MDPO_EPS, eps_high=_MDPO_EPS,
            beta=(0.0, f"{_MDPO} recipes/LLaDA-Instruct/mdpo/config_demo.yaml:34 beta 0.0 (its KL: k2 to a frozen copy, mdpo_trainer.py:1507)"),
            epochs=(1, f"{_MDPO} src/open_r1/mdpo/mdpo_config.py:233 num_iterations 1 (old = current detached, mdpo_trainer.py:1516)"),
            redraw_masks=(False, "the step rows are deterministic: no masks to redraw"),
        ),
        objective=mdpo_loss, objective_kl=True, attention=frozenset({"full"}),
        loss_weights=mdpo_weights,
        needs_step_predictions=True,
        scored_steps=lambda n, o: scored_steps(n, o.score_every),
        step_batch=mdpo_step_batch,
        planned_rows=lambda o, samples, tree: (samples * o.train_steps, None),  # at most train_steps step rows per sample
    )
)
