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
    """Block-causal models: cache committed blocks (exact). Full-attention models: cache the
    prefix before the current block, refreshed once per block (approximate, Fast-dLLM).
    False recomputes the whole sequence at every step."""
    dual_cache: bool = False
    """Full-attention models with kv_cache: also cache the suffix after the current block
    (Fast-dLLM's dual cache; faster, a little more approximate)."""
    block_length: int | None = None
    """Full-attention models: semi-autoregressive decoding block (LLaDA's block_length);
    None decodes the whole generation as one block. Block models use their own block size."""
    eos_guard: float | None = None
    """Full-attention models: multiply the confidence of a position predicting EOS by
    eos_guard ** (1 - progress), progress being the fraction of the completion already
    decoded, so EOS is not committed early everywhere (after EOSER). None disables it."""

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
        if self.block_length is not None and self.block_length < 1:
            raise ValueError("block_length must be >= 1")
        if self.eos_guard is not None and not 0.0 < self.eos_guard <= 1.0:
            raise ValueError("eos_guard must be in (0, 1]")


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
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty")
    if not prompts:
        return []
    decoder = _BlockDecoder if lm.family.attention == "block" else _FullDecoder
    trajs = decoder(lm, prompts, params, generator).run()
    for i, traj in enumerate(trajs):
        traj.group = groups[i] if groups is not None else i
        traj.columns = dict(columns[i]) if columns is not None else {}
    return trajs


class _Decoder:
    """One batched decode: the token canvas, the trajectory records, and the commit step.

    Subclasses lay out the canvas (`_layout`) and walk its blocks (`run`); both families share
    the step that samples, scores confidence, commits tokens and records the step map.
    """

    def __init__(self, lm: DiffusionLM, prompts: Sequence[Sequence[int]], params: SamplingParams, generator):
        self.lm, self.params, self.generator = lm, params, generator
        n = len(prompts)
        self.plen = torch.tensor([len(p) for p in prompts])
        self.off, self.col_end = self._layout()  # left padding and end column per sample
        self.width = int(self.col_end.max())
        cols = torch.arange(self.width)
        self.valid = cols[None] >= self.off[:, None]  # [n, W] False on left padding
        self.pos = (cols[None] - self.off[:, None]).clamp(min=0)  # [n, W] absolute positions
        self.gen_col = self.plen + self.off  # first generated column of each sample
        x = torch.full((n, self.width), lm.mask_id, dtype=torch.long)
        for i, p in enumerate(prompts):
            x[i, : self.off[i]] = lm.pad_id
            x[i, self.off[i] : self.gen_col[i]] = torch.tensor(list(p))
        dev = lm.device
        self.x, self.valid, self.pos = x.to(dev), self.valid.to(dev), self.pos.to(dev)
        self.step_map = torch.full((n, self.width), -1, dtype=torch.long)
        self.logp = torch.zeros((n, self.width), dtype=torch.float64)
        self.steps = torch.zeros(n, dtype=torch.long)  # next global step of each sample
        self.nfe = torch.zeros(n, dtype=torch.long)
        self.stop = self.col_end.clone()  # end column of each sample's decoded region

    def _layout(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _decode_block(self, alive: torch.Tensor, blk_start: int, blk_end: int, forward) -> None:
        """Denoise columns [blk_start, blk_end) of `alive` rows until no mask is left.

        `forward(alive, step_in_block)` returns logits [r, blk_end - blk_start, V] for the block.
        """
        lm, p = self.lm, self.params
        lo = self.gen_col[alive].clamp(min=blk_start)  # first generated column in this block
        sched = [transfer_schedule(blk_end - int(l), p.steps_per_block or blk_end - blk_start) for l in lo]
        k = 0
        while True:
            masked = self.x[alive, blk_start:blk_end] == lm.mask_id  # [r, b]
            live = masked.any(1).cpu()
            if not live.any():
                break
            lp = lm.sampling_logprobs(forward(alive, k), p.temperature)  # [r, b, V]
            tok = self._sample(lp)
            tok_lp = lp.gather(-1, tok[..., None]).squeeze(-1)  # [r, b]
            conf = self._confidence(lp, tok_lp)
            if p.eos_guard is not None:
                total = (self.col_end[alive] - self.gen_col[alive]).to(conf.device)
                done = (self.x[alive] != lm.mask_id).sum(1) - (self.gen_col[alive].to(conf.device))
                progress = (done.clamp(min=0) / total).to(conf.dtype)[:, None]
                conf = torch.where(tok == lm.eos_id, conf * p.eos_guard ** (1 - progress), conf)
            conf = torch.where(masked, conf, torch.tensor(-1.0, dtype=conf.dtype))
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

    def _trajectories(self, block_size: int | None) -> list[Trajectory]:
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
                    block_size=block_size,
                    temperature=self.params.temperature,
                    nfe=int(self.nfe[i]),
                    finish_reason="eos" if lm.eos_id in comp else "length",
                    text=lm.tokenizer.decode(text_ids, skip_special_tokens=True),
                )
            )
        return out


class _BlockDecoder(_Decoder):
    """Block-causal decoding on the absolute block grid, with an exact KV cache."""

    def _layout(self):
        bs = self.lm.block_size
        first = (self.plen // bs) * bs  # absolute start of each sample's first generated block
        self.start = int(first.max())  # ... which lands in this column for every sample
        budget_end = (self.plen + self.params.max_new_tokens + bs - 1) // bs * bs
        off = self.start - first  # left padding, a multiple of bs: blocks stay column-aligned
        return off, budget_end + off

    def run(self) -> list[Trajectory]:
        lm, bs = self.lm, self.lm.block_size
        self.block_ids = (torch.arange(self.width) // bs).expand(len(self.x), -1).to(lm.device)
        self.noisy = torch.zeros_like(self.valid)
        finished = torch.zeros(len(self.x), dtype=torch.bool)
        alive = torch.arange(len(self.x))
        cache = DynamicCache() if self.params.kv_cache else None
        self.committed = 0  # columns whose keys/values are in the cache
        if cache is not None and self.start > 0:
            self._encode(alive, 0, self.start, cache, None)  # prefill the prompt's full blocks
            self.committed = self.start
        for blk_start in range(self.start, self.width, bs):
            blk_end = blk_start + bs
            keep = ~finished[alive] & (self.col_end[alive] >= blk_end)
            if not keep.all():
                if cache is not None:
                    cache.batch_select_indices(keep.nonzero().flatten().to(lm.device))
                alive = alive[keep]
            if alive.numel() == 0:
                break

            def forward(rows, _k, blk_start=blk_start, blk_end=blk_end):
                q_start, q_end = (self.committed, blk_end) if cache is not None else (0, self.width)
                logits = self._encode(rows, q_start, q_end, cache, torch.arange(blk_start - q_start, blk_end - q_start))
                if cache is not None:
                    cache.crop(-bs)  # keep the committed prefix, drop the current block's keys
                    self.committed = blk_start  # a finished block joins the cache with the next block's first step
                return logits

            self._decode_block(alive, blk_start, blk_end, forward)
            if self.params.stop_at_eos:
                gen = torch.arange(blk_start, blk_end)[None] >= self.gen_col[alive][:, None]
                hit = ((self.x[alive, blk_start:blk_end].cpu() == lm.eos_id) & gen).any(1)
                finished[alive[hit]] = True
                self.stop[alive[hit]] = blk_end
        return self._trajectories(bs)

    def _encode(self, rows: torch.Tensor, q_start: int, q_end: int, cache, select: torch.Tensor | None):
        """Encode columns [q_start, q_end) of `rows` against the cache; logits at `select` if given."""
        r = rows.to(self.lm.device)
        allowed = block_attention_allowed(self.block_ids[r, :q_end], self.noisy[r, :q_end], self.valid[r, :q_end], q_start)
        ids, pos = self.x[r, q_start:q_end], self.pos[r, q_start:q_end]
        if select is None:
            return self.lm.encode(ids, pos, allowed, cache)
        return self.lm.forward_logits(ids, pos, allowed, select.to(r.device).expand(len(r), -1), cache)


class _FullDecoder(_Decoder):
    """Full-attention masked diffusion (LLaDA, Dream): a fixed canvas decoded in semi-AR blocks.

    Every position, masked or not, attends to every other, so the whole canvas is part of
    each step's context and decoding never stops early (a trajectory must keep every
    position the learner will replay). With kv_cache the prefix before the current block is
    encoded once per block and reused (approximate: its keys were computed while the current
    block was still masked); dual_cache also reuses the suffix.
    """

    def _layout(self):
        gen = int(self.plen.max())  # generation starts in this column for every sample
        off = gen - self.plen
        return off, torch.full_like(self.plen, gen + self.params.max_new_tokens)

    def run(self) -> list[Trajectory]:
        lm, p = self.lm, self.params
        gen, n = int(self.gen_col[0]), len(self.x)
        length = p.block_length or p.max_new_tokens
        shift = 1 if lm.family.shift_logits else 0
        alive = torch.arange(n)
        everything = torch.arange(self.width)
        for blk_start in range(gen, self.width, length):
            blk_end = min(blk_start + length, self.width)
            cache = DynamicCache() if p.kv_cache else None

            def forward(rows, k, blk_start=blk_start, blk_end=blk_end, cache=cache):
                block = torch.arange(blk_start, blk_end)
                if cache is None:  # recompute the whole canvas
                    return self._encode(rows, everything, None, block)
                # Shifted heads read the hidden state one column left of the block: re-encode it.
                lo = blk_start - shift
                if k == 0:  # refresh: encode the whole canvas, keep the reusable part of the cache
                    logits = self._encode(rows, everything, cache, block)
                    if p.dual_cache:
                        _drop_columns(cache, lo, blk_end)  # keys: [prefix | suffix]
                    else:
                        cache.crop(-(self.width - lo))  # keys: [prefix]
                    return logits
                select = torch.arange(shift, shift + blk_end - blk_start)
                if p.dual_cache:
                    keys = torch.cat([torch.arange(lo), torch.arange(blk_end, self.width), torch.arange(lo, blk_end)])
                    logits = self._encode(rows, torch.arange(lo, blk_end), cache, select, keys)
                    cache.crop(-(blk_end - lo))
                    return logits
                logits = self._encode(rows, torch.arange(lo, self.width), cache, select)
                cache.crop(-(self.width - lo))
                return logits

            self._decode_block(alive, blk_start, blk_end, forward)
        return self._trajectories(None)

    def _encode(self, rows, q_cols: torch.Tensor, cache, select: torch.Tensor, key_cols: torch.Tensor | None = None):
        """Logits at `select` (indices into q_cols) for the columns `q_cols` of `rows`.

        Keys are the cached columns followed by q_cols, in the order `key_cols` gives
        (default: all columns up to the last query, i.e. cache = prefix).
        """
        dev = self.lm.device
        r = rows.to(dev)
        if key_cols is None:
            key_cols = torch.arange(int(q_cols[-1]) + 1) if cache is not None else q_cols
        kv = self.valid[r][:, key_cols.to(dev)]  # [r, K] attend to every real token
        qv = self.valid[r][:, q_cols.to(dev)]
        self_key = key_cols.to(dev)[None, :] == q_cols.to(dev)[:, None]  # [Q, K]
        allowed = (qv[:, :, None] & kv[:, None, :]) | (~qv[:, :, None] & self_key[None])  # padding rows see themselves
        ids, pos = self.x[r][:, q_cols.to(dev)], self.pos[r][:, q_cols.to(dev)]
        return self.lm.forward_logits(ids, pos, allowed, select.to(dev).expand(len(r), -1), cache)


def _drop_columns(cache: DynamicCache, start: int, end: int) -> None:
    """Remove cached positions [start, end) from every layer (the block being decoded)."""
    for layer in cache.layers:
        layer.keys = torch.cat([layer.keys[..., :start, :], layer.keys[..., end:, :]], dim=-2)
        layer.values = torch.cat([layer.values[..., :start, :], layer.values[..., end:, :]], dim=-2)
