"""Block-wise diffusion decoding that records the trajectory it took.

Decoding runs block by block over the absolute block grid (rollout.attention). Inside a
block, every step predicts all still-masked positions, then commits some of them:

- "static": a fixed schedule of `steps_per_block` steps, committing the most confident
  tokens (LLaDA's low-confidence remasking);
- "threshold": every masked token whose confidence exceeds `threshold`, at least one
  (Fast-dLLM's dynamic threshold).

The step at which each token is committed goes into the step map, together with its
log-prob under the sampling distribution, so the learner can replay the exact trajectory.

This first engine recomputes the sequence up to the current block at every step; the KV
cache of committed blocks is the next layer of work (see the rollout issue).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from rollout.models import DiffusionLM
from rollout.trajectory import Trajectory

STRATEGIES = ("static", "threshold")


@dataclass
class SamplingParams:
    """How to decode. Shared by rollouts, evaluation and `unmask generate`."""

    max_new_tokens: int = 8
    """Generation budget; decoding stops at the first block boundary at or past it."""
    strategy: str = "static"
    """"static" (fixed steps per block) or "threshold" (dynamic confidence threshold)."""
    steps_per_block: int | None = None
    """Static strategy: denoising steps per block (default: block_size, one token per step)."""
    threshold: float = 0.9
    """Threshold strategy: commit every masked token whose confidence exceeds this."""
    temperature: float = 1.0
    """Sampling temperature; 0 decodes greedily."""
    stop_at_eos: bool = True
    """Stop a sample after the block in which it decoded EOS."""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError("threshold must be in (0, 1]")
        if self.steps_per_block is not None and self.steps_per_block < 1:
            raise ValueError("steps_per_block must be >= 1")


def transfer_schedule(num_masked: int, steps: int) -> list[int]:
    """Tokens to commit at each step so `num_masked` tokens finish in `steps` steps.

    Even split, earlier steps take the remainder: transfer_schedule(5, 2) == [3, 2].
    """
    steps = max(1, min(steps, num_masked))
    base, rem = divmod(num_masked, steps)
    return [base + (1 if i < rem else 0) for i in range(steps)]


@torch.no_grad()
def generate(
    lm: DiffusionLM,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    generator: torch.Generator | None = None,
    groups: Sequence[int] | None = None,
    columns: Sequence[dict[str, Any]] | None = None,
) -> list[Trajectory]:
    """Decode a completion for every prompt and return one Trajectory per prompt, in order.

    Prompts of equal length are decoded together in one batch (no padding, so batching
    never changes a sample's context).
    """
    if lm.family.attention != "block":
        raise NotImplementedError(f"decoding for {lm.family.name!r} models is not implemented yet")
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty")
        by_length[len(p)].append(i)
    out: list[Trajectory | None] = [None] * len(prompts)
    for _, idx in sorted(by_length.items()):
        batch = torch.tensor([list(prompts[i]) for i in idx], dtype=torch.long, device=lm.device)
        for i, traj in zip(idx, _generate_block(lm, batch, params, generator)):
            traj.group = groups[i] if groups is not None else i
            traj.columns = dict(columns[i]) if columns is not None else {}
            out[i] = traj
    return out  # type: ignore[return-value]


def _generate_block(lm: DiffusionLM, prompts: torch.Tensor, params: SamplingParams, generator) -> list[Trajectory]:
    n, plen = prompts.shape
    bs, mask_id = lm.block_size, lm.mask_id
    end = math.ceil((plen + params.max_new_tokens) / bs) * bs
    x = torch.full((n, end), mask_id, dtype=torch.long, device=prompts.device)
    x[:, :plen] = prompts
    step_map = torch.full((n, end), -1, dtype=torch.long)
    logp = torch.zeros((n, end), dtype=torch.float64)  # exact copy of the sampler's values
    steps = torch.zeros(n, dtype=torch.long)  # next global step of each sample
    nfe = torch.zeros(n, dtype=torch.long)
    stop = torch.full((n,), end, dtype=torch.long)  # end of the decoded region
    finished = torch.zeros(n, dtype=torch.bool)

    for blk_start in range((plen // bs) * bs, end, bs):
        blk_end, lo = blk_start + bs, max(blk_start, plen)
        rows = (~finished).nonzero().flatten()
        if rows.numel() == 0:
            break
        schedule = transfer_schedule(blk_end - lo, params.steps_per_block or bs)
        select = torch.arange(lo, blk_end, device=x.device)
        k = 0
        while True:
            live = rows[(x[rows, lo:blk_end] == mask_id).any(dim=1)]
            if live.numel() == 0:
                break
            logits = lm.block_causal_logits(x[live, :blk_end], select.expand(live.numel(), -1))
            lp = lm.sampling_logprobs(logits, params.temperature)  # [r, m, V]
            if params.temperature > 0:
                flat = lp.exp().view(-1, lp.shape[-1])
                tok = torch.multinomial(flat, 1, generator=generator).view(lp.shape[:2])
            else:
                tok = lp.argmax(dim=-1)
            tok_lp = lp.gather(-1, tok[..., None]).squeeze(-1)  # [r, m]
            masked = x[live, lo:blk_end] == mask_id
            conf = torch.where(masked, tok_lp.exp(), torch.tensor(-1.0))
            commit = _choose(conf, masked, params, schedule[min(k, len(schedule) - 1)])
            r_idx, c_idx = commit.nonzero(as_tuple=True)
            rows_hit, pos = live[r_idx], c_idx + lo
            x[rows_hit, pos] = tok[r_idx, c_idx]
            step_map[rows_hit.cpu(), pos.cpu()] = steps[live.cpu()][r_idx.cpu()]
            logp[rows_hit.cpu(), pos.cpu()] = tok_lp[r_idx, c_idx].double().cpu()
            steps[live.cpu()] += 1
            nfe[live.cpu()] += 1
            k += 1
        if params.stop_at_eos:
            hit = (x[rows, lo:blk_end] == lm.eos_id).any(dim=1)
            finished[rows[hit]] = True
            stop[rows[hit]] = blk_end

    trajs = []
    for i in range(n):
        comp = x[i, plen : stop[i]].tolist()
        text_ids = comp[: comp.index(lm.eos_id)] if lm.eos_id in comp else comp
        trajs.append(
            Trajectory(
                prompt_ids=prompts[i].tolist(),
                completion_ids=comp,
                step_map=step_map[i, plen : stop[i]].tolist(),
                logprobs=logp[i, plen : stop[i]].tolist(),
                block_size=bs,
                temperature=params.temperature,
                nfe=int(nfe[i]),
                finish_reason="eos" if lm.eos_id in comp else "length",
                text=lm.tokenizer.decode(text_ids, skip_special_tokens=True),
            )
        )
    return trajs


def _choose(conf: torch.Tensor, masked: torch.Tensor, params: SamplingParams, k: int) -> torch.Tensor:
    """Which masked positions to commit this step: [r, m] bool."""
    if params.strategy == "static":
        k = min(k, conf.shape[1])
        top = conf.topk(k, dim=1).indices
        commit = torch.zeros_like(masked).scatter_(1, top, True)
    else:
        commit = conf > params.threshold
        best = conf.argmax(dim=1, keepdim=True)  # always make progress
        commit.scatter_(1, best, True)
    return commit & masked
