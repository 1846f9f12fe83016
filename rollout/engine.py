"""Block-wise diffusion decoding that records the trajectory it took.

Decoding runs block by block over the absolute block grid (rollout.attention). Inside a
block, every step predicts all still-masked positions, scores each prediction with a
confidence criterion, then commits some of them:

- "static": a fixed schedule of `steps_per_block` steps, committing the most confident
  tokens (LLaDA's low-confidence remasking);
- "threshold": every masked token whose confidence exceeds `threshold`, at least one
  (Fast-dLLM's dynamic threshold).

The step at which each token is committed goes into the step map, together with its
log-prob under the sampling distribution, so the learner can replay the exact trajectory.

Batching. Prompts of any lengths decode together. Each sample is left-padded by a
multiple of block_size so that its first generated block starts in the same column as
everyone else's: blocks stay column-aligned, positions stay absolute, and padding is
masked out of attention, so a sample decodes the same tokens alone or in a batch.

KV cache (block-causal models, exact). The prompt's complete blocks are encoded once; a
step encodes only the current block against the cache and drops its keys afterwards;
a finished block is committed to the cache by prepending it to the next block's first
step (block-causal attention keeps it from seeing the new block), which costs no extra
forward pass. `kv_cache=False` recomputes the whole sequence every step, the reference
style of LLaDA's `generate`, and gives the same tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from transformers import DynamicCache

from rollout.attention import block_attention_allowed
from rollout.models import DiffusionLM
from rollout.trajectory import Trajectory

STRATEGIES = ("static", "threshold")
CONFIDENCES = ("prob", "margin", "entropy")


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
    confidence: str = "prob"
    """Confidence of a prediction: "prob" (of the sampled token), "margin" (top-1 minus
    top-2 probability) or "entropy" (exp(-entropy), 1 for a one-hot distribution)."""
    temperature: float = 1.0
    """Sampling temperature; 0 decodes greedily."""
    top_k: int | None = None
    """Sample only among the k most likely tokens (log-probs stay those of the full
    temperature-scaled distribution, as the learner scores them)."""
    top_p: float | None = None
    """Nucleus sampling: the smallest set of tokens with cumulative probability >= top_p."""
    stop_at_eos: bool = True
    """Stop a sample after the block in which it decoded EOS."""
    kv_cache: bool = True
    """Cache committed blocks (exact for block-causal models); False recomputes everything."""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.confidence not in CONFIDENCES:
            raise ValueError(f"confidence must be one of {CONFIDENCES}, got {self.confidence!r}")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError("threshold must be in (0, 1]")
        if self.steps_per_block is not None and self.steps_per_block < 1:
            raise ValueError("steps_per_block must be >= 1")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError("top_k must be >= 1")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")


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
    """Decode a completion for every prompt and return one Trajectory per prompt, in order."""
    if lm.family.attention != "block":
        raise NotImplementedError(f"decoding for {lm.family.name!r} models is not implemented yet")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty")
    if not prompts:
        return []
    trajs = _BlockDecoder(lm, prompts, params, generator).run()
    for i, traj in enumerate(trajs):
        traj.group = groups[i] if groups is not None else i
        traj.columns = dict(columns[i]) if columns is not None else {}
    return trajs


class _BlockDecoder:
    """State of one batched block-diffusion decode (see the module docstring)."""

    def __init__(self, lm: DiffusionLM, prompts: Sequence[Sequence[int]], params: SamplingParams, generator):
        self.lm, self.params, self.generator = lm, params, generator
        bs, dev, n = lm.block_size, lm.device, len(prompts)
        self.bs = bs
        self.plen = torch.tensor([len(p) for p in prompts])
        first = (self.plen // bs) * bs  # absolute start of each sample's first generated block
        self.start = int(first.max())  # ... which lands in this column for every sample
        self.off = self.start - first  # left padding, a multiple of bs
        budget_end = (self.plen + params.max_new_tokens + bs - 1) // bs * bs
        self.col_end = budget_end + self.off  # column where each sample's budget ends
        self.width = int(self.col_end.max())
        cols = torch.arange(self.width)
        self.valid = cols[None] >= self.off[:, None]  # [n, W] False on left padding
        self.pos = (cols[None] - self.off[:, None]).clamp(min=0)  # [n, W] absolute positions
        self.gen_col = self.plen + self.off  # first generated column of each sample
        x = torch.full((n, self.width), lm.mask_id, dtype=torch.long)
        for i, p in enumerate(prompts):
            x[i, : self.off[i]] = lm.pad_id
            x[i, self.off[i] : self.gen_col[i]] = torch.tensor(list(p))
        self.x = x.to(dev)
        self.valid, self.pos = self.valid.to(dev), self.pos.to(dev)
        self.block_ids = (cols // bs).expand(n, -1).to(dev)
        self.noisy = torch.zeros_like(self.valid)
        self.step_map = torch.full((n, self.width), -1, dtype=torch.long)
        self.logp = torch.zeros((n, self.width), dtype=torch.float64)
        self.steps = torch.zeros(n, dtype=torch.long)  # next global step of each sample
        self.nfe = torch.zeros(n, dtype=torch.long)
        self.stop = self.col_end.clone()  # end column of each sample's decoded region
        self.finished = torch.zeros(n, dtype=torch.bool)

    def run(self) -> list[Trajectory]:
        lm, bs = self.lm, self.bs
        alive = torch.arange(len(self.x))
        cache = DynamicCache() if self.params.kv_cache else None
        committed = 0  # columns whose keys/values are in the cache
        if cache is not None and self.start > 0:
            self._forward(alive, 0, self.start, cache, select=None)  # prefill the prompt's full blocks
            committed = self.start
        for blk_start in range(self.start, self.width, bs):
            blk_end = blk_start + bs
            keep = ~self.finished[alive] & (self.col_end[alive] >= blk_end)
            if not keep.all():
                if cache is not None:
                    cache.batch_select_indices(keep.nonzero().flatten().to(lm.device))
                alive = alive[keep]
            if alive.numel() == 0:
                break
            self._decode_block(alive, blk_start, cache, committed)
            if cache is not None:
                committed = blk_start  # this block joins the cache with the next block's first step
            if self.params.stop_at_eos:
                gen = torch.arange(blk_start, blk_end)[None] >= self.gen_col[alive][:, None]
                hit = ((self.x[alive, blk_start:blk_end].cpu() == lm.eos_id) & gen).any(1)
                self.finished[alive[hit]] = True
                self.stop[alive[hit]] = blk_end
        return self._trajectories()

    def _forward(self, rows: torch.Tensor, q_start: int, q_end: int, cache, select: torch.Tensor | None):
        """Encode columns [q_start, q_end) of `rows` (keys: cache + these columns)."""
        r = rows.to(self.lm.device)
        allowed = block_attention_allowed(self.block_ids[r, :q_end], self.noisy[r, :q_end], self.valid[r, :q_end], q_start)
        ids, pos = self.x[r, q_start:q_end], self.pos[r, q_start:q_end]
        if select is None:
            self.lm.encode(ids, pos, allowed, cache)
            return None
        return self.lm.forward_logits(ids, pos, allowed, select.expand(len(rows), -1), cache)

    def _decode_block(self, alive: torch.Tensor, blk_start: int, cache, committed: int) -> None:
        lm, p, bs = self.lm, self.params, self.bs
        blk_end = blk_start + bs
        lo = self.gen_col[alive].clamp(min=blk_start)  # first generated column in this block
        sched = [transfer_schedule(blk_end - int(l), p.steps_per_block or bs) for l in lo]
        k = 0
        while True:
            masked = self.x[alive, blk_start:blk_end] == lm.mask_id  # [r, bs]
            live = masked.any(1).cpu()
            if not live.any():
                break
            q_start, q_end = (committed, blk_end) if cache is not None else (0, self.width)
            select = torch.arange(blk_start - q_start, blk_end - q_start, device=lm.device)
            logits = self._forward(alive, q_start, q_end, cache, select)
            if cache is not None:
                cache.crop(-bs)  # keep the committed prefix, drop the current block's keys
                committed = blk_start
            lp = lm.sampling_logprobs(logits, p.temperature)  # [r, bs, V]
            tok = self._sample(lp)
            tok_lp = lp.gather(-1, tok[..., None]).squeeze(-1)  # [r, bs]
            conf = torch.where(masked, self._confidence(lp, tok_lp), torch.tensor(-1.0, dtype=lp.dtype))
            if p.strategy == "static":
                quota = torch.tensor([s[min(k, len(s) - 1)] for s in sched], device=conf.device)
                rank = conf.argsort(dim=1, descending=True).argsort(dim=1)
                commit = rank < quota[:, None]
            else:
                commit = conf > p.threshold
                commit.scatter_(1, conf.argmax(dim=1, keepdim=True), True)  # always make progress
            commit &= masked
            r_idx, c_idx = commit.nonzero(as_tuple=True)
            rows, cols = alive[r_idx.cpu()], c_idx.cpu() + blk_start
            self.x[rows.to(lm.device), cols.to(lm.device)] = tok[r_idx, c_idx]
            self.step_map[rows, cols] = self.steps[rows]
            self.logp[rows, cols] = tok_lp[r_idx, c_idx].double().cpu()
            self.steps[alive[live]] += 1
            self.nfe[alive[live]] += 1
            k += 1

    def _sample(self, lp: torch.Tensor) -> torch.Tensor:
        p = self.params
        if p.temperature == 0:
            return lp.argmax(dim=-1)
        filtered = lp
        if p.top_k is not None and p.top_k < lp.shape[-1]:
            kth = lp.topk(p.top_k, dim=-1).values[..., -1:]
            filtered = filtered.masked_fill(lp < kth, float("-inf"))
        if p.top_p is not None and p.top_p < 1.0:
            sorted_lp, order = filtered.sort(dim=-1, descending=True)
            cum = sorted_lp.exp().cumsum(-1)
            drop_sorted = (cum - sorted_lp.exp()) >= p.top_p  # keep the smallest prefix reaching top_p
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            filtered = filtered.masked_fill(drop, float("-inf"))
        probs = torch.softmax(filtered, dim=-1).reshape(-1, lp.shape[-1])
        return torch.multinomial(probs, 1, generator=self.generator).view(lp.shape[:2])

    def _confidence(self, lp: torch.Tensor, tok_lp: torch.Tensor) -> torch.Tensor:
        c = self.params.confidence
        if c == "prob":
            return tok_lp.exp()
        probs = lp.exp()
        if c == "margin":
            top2 = probs.topk(2, dim=-1).values
            return top2[..., 0] - top2[..., 1]
        return torch.exp(-torch.special.entr(probs).sum(-1))  # "entropy": 1 for a one-hot prediction

    def _trajectories(self) -> list[Trajectory]:
        lm, out = self.lm, []
        x = self.x.cpu()
        for i in range(len(x)):
            a, b = int(self.gen_col[i]), int(self.stop[i])
            comp = x[i, a:b].tolist()
            text_ids = comp[: comp.index(lm.eos_id)] if lm.eos_id in comp else comp
            out.append(
                Trajectory(
                    prompt_ids=x[i, self.off[i] : a].tolist(),
                    completion_ids=comp,
                    step_map=self.step_map[i, a:b].tolist(),
                    logprobs=self.logp[i, a:b].tolist(),
                    block_size=self.bs,
                    temperature=self.params.temperature,
                    nfe=int(self.nfe[i]),
                    finish_reason="eos" if lm.eos_id in comp else "length",
                    text=lm.tokenizer.decode(text_ids, skip_special_tokens=True),
                )
            )
        return out
