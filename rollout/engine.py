"""Block-wise diffusion decoding that records the trajectory it took.

Decoding runs block by block over the absolute block grid (rollout.attention). Inside a
block, every step predicts all still-masked positions, scores each prediction with a
confidence criterion, then commits some of them:

- "static": a fixed schedule of `steps_per_block` steps, committing the most confident
  tokens (LLaDA's low-confidence remasking);
- "threshold": every masked token whose confidence exceeds `threshold`, at least one
  (Fast-dLLM's dynamic threshold, Wu et al. 2025, arXiv:2505.22618);
- "adaptive": confidence-adaptive step sizes with a bound: sort the masked tokens by
  confidence c_1 >= c_2 >= ... and commit the largest n with (n + 1)(1 - c_n) < `factor`,
  at least one and at most `max_tokens_per_step` (Fast-dLLM's factor-based parallel decoding);
- "prophet": the static schedule with early commit (Prophet, Li et al. 2025, "Diffusion
  Language Models Know the Answer Before Decoding", arXiv:2508.19982): when the mean top-2
  log-prob gap of a block's masked positions reaches the gap for the decode's progress
  (`prophet_gaps`, for progress below 1/3, below 2/3, and after), every remaining masked
  token of the block is committed at once;
- "bacd": TDAR's Bounded Adaptive Confidence Decoding (Lu et al. 2026, arXiv:2602.09555; its LMDeploy
  `bounded_adaptive_confidence_decoding`): every masked token whose confidence reaches tau, at least
  one; tau is the block's best masked confidence at its first step, then the mean confidence of the
  tokens the block committed so far, clamped to `bacd_bounds` (lower, upper);
- "rcr": MDPO's Running Confidence Remasking (`rcr_generate` below, full attention, evaluation and
  generation only): each step fills every masked position and re-masks the least confident
  committed ones, so it is the one decoder that remasks (its trajectories say `remasked`).

`schedule="ascending"` makes static steps commit 1, 2, 4, ... tokens (the ascending step-size
scheduler of Yang et al. 2025, arXiv:2509.23924, who pair it with EOS early rejection:
`eos_guard`). Every decoder but rcr only unmasks, never remasks, so its step map replays exactly.

The step at which each token is committed goes into the step map, together with its
log-prob under the sampling distribution, so the learner can replay the exact trajectory.

Host work. Every tensor of the step loop lives on the model's device; what does not change
inside a block (its attention mask, positions, schedule) is built once per block. Static
decoding makes no device-to-host synchronisation inside a block's steps (the rows that
finished are read once per block); the data-dependent decoders read one count per step (the
most masked positions a row has left: their loop's exit test, and the step's width). A step
predicts only the positions still masked: the LM head and the softmax over the vocabulary run
on m <= b columns per row, gathered in front (each row's masked columns first). The canvas
holds live rows only (finished samples leave it, and the cache, between blocks), so a step
works on whole tensors: its records are views of the canvas, written in place, with no row
index to gather or scatter. The block cache writes in place
(rollout.cache.SlotCache).

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
from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch
from transformers import DynamicCache

from rollout.attention import additive_mask, block_attention_allowed
from rollout.cache import SlotCache
from rollout.models import DiffusionLM
from rollout.sampling import SamplingParams
from rollout.trajectory import Trajectory
from rollout.tree import branch_steps, total_steps, tree_leaves, tree_roots


@dataclass
class _BlockState:
    """A block being denoised, on the device: its tokens, records and which positions are masked."""

    x: torch.Tensor  # [n, b] tokens (a view of the canvas)
    step_map: torch.Tensor  # [n, b] global step of each committed token (-1: not yet; a view)
    logp: torch.Tensor  # [n, b] log-prob of each committed token (a view)
    first_step: torch.Tensor  # [n] global step at which each row entered the block
    taken: torch.Tensor  # [n] steps each row has been live in this block
    masked: torch.Tensor | None = None  # [n, b]
    blk_start: int = 0  # canvas column of the block's first position
    committed_conf: tuple[torch.Tensor, torch.Tensor] | None = None  # bacd: ([n] sum, [n] count) of this block's commit confidences


@dataclass
class _StepRecord:
    """One denoising step of every live row, kept only with `record_steps` (device tensors, read once
    at the end of the decode)."""

    samples: list[int]  # sample decoded by each canvas row at this step
    step: torch.Tensor  # [n] global step of each row
    width: int  # b, the block's width
    blk_start: int  # canvas column of the block's first position
    tokens: torch.Tensor  # [n, b] prediction at each position masked at the step's input (committed token elsewhere)
    prob: torch.Tensor  # [n, b] float32 probability of each prediction under the sampling distribution (0: not predicted)
    masked: torch.Tensor  # [n, b] positions masked at the step's input
    host: tuple | None = None  # (step, tokens, prob, masked) on the host, filled on first read


def transfer_schedule(num_masked: int, steps: int) -> list[int]:
    """Tokens to commit at each step so `num_masked` tokens finish in `steps` steps.

    Even split, earlier steps take the remainder: transfer_schedule(5, 2) == [3, 2].
    """
    steps = max(1, min(steps, num_masked))
    base, rem = divmod(num_masked, steps)
    return [base + (1 if i < rem else 0) for i in range(steps)]


def ascending_schedule(num_masked: int) -> list[int]:
    """Step sizes 1, 2, 4, ... until `num_masked` tokens are committed: ascending_schedule(10) == [1, 2, 4, 3]."""
    sizes, size = [], 1
    while num_masked > 0:
        sizes.append(min(size, num_masked))
        num_masked -= sizes[-1]
        size *= 2
    return sizes


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
    if generator is not None and generator.device.type != lm.device.type:
        # A CPU generator (the CLI's, eval's) with a model on a GPU: multinomial needs one on the
        # model's device. Seed it from the caller's, so a seed gives the same samples and each
        # call (each eval batch) draws a fresh stream.
        generator = torch.Generator(device=lm.device).manual_seed(int(torch.randint(2**62, (), generator=generator)))
    if params.strategy == "rcr":  # MDPO's remasking sampler (below)
        trajs = rcr_generate(lm, prompts, params, generator)  # refuses block-causal families
    elif params.tree is not None:  # d-TreeRPO: each group's samples are the leaves of one tree
        trajs = tree_generate(lm, prompts, params, generator, groups)
    elif lm.traits.block_causal:
        trajs = _BlockDecoder(lm, prompts, params, generator).run()
    else:
        step = params.max_batch or len(prompts)
        trajs = [t for a in range(0, len(prompts), step) for t in _FullDecoder(lm, prompts[a : a + step], params, generator).run()]
    for i, traj in enumerate(trajs):
        traj.group = groups[i] if groups is not None else i
        traj.columns = dict(columns[i]) if columns is not None else {}
    return trajs


class _Decoder:
    """One batched decode: the token canvas, the trajectory records, and the commit step.

    Subclasses lay out the canvas (`_layout`) and walk its blocks (`run`); both families share
    the step that samples, scores confidence, commits tokens and records the step map.
    """

    refills = False  # True: rows of finished samples take waiting prompts (max_batch); else the caller chunks

    def __init__(self, lm: DiffusionLM, prompts: Sequence[Sequence[int]], params: SamplingParams, generator):
        self.lm, self.params, self.generator = lm, params, generator
        self.prompts = [list(p) for p in prompts]
        if self.refills and params.max_batch is not None:
            prompts = prompts[: params.max_batch]  # the others wait for a row (continuous batching)
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
        # The records stay on the device until the decode ends: writing them is no synchronisation.
        self.step_map = torch.full((n, self.width), -1, dtype=torch.long, device=dev)
        self.logp = torch.zeros((n, self.width), dtype=torch.float64, device=dev)
        self.steps = torch.zeros(n, dtype=torch.long, device=dev)  # next global step of each sample
        self.nfe = torch.zeros(n, dtype=torch.long, device=dev)
        self.stop = self.col_end.clone()  # end column of each sample's decoded region
        self.decoded = torch.zeros(n, dtype=torch.long, device=dev)  # generated tokens committed so far
        self.budget = (self.col_end - self.gen_col).clamp(min=1).to(dev)  # for progress (eos_guard, prophet)
        # params.record_steps: one _StepRecord per denoising step (MDPO's intermediate answers); None
        # when off, so decoding keeps no extra tensor and takes no extra branch beyond this test.
        self.records: list[_StepRecord] | None = [] if params.record_steps else None

    def _layout(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _decode_block(self, blk_start: int, blk_end: int, forward, window: tuple[list[int], list[list[int]]] | None = None) -> None:
        """Denoise columns [blk_start, blk_end) of every row until no mask is left.

        `forward(step_in_block, cols)` returns logits [n, m, V] for the block as the canvas
        `self.x` now holds it, at the block-relative columns `cols` [n, m] of each row (None:
        all b columns in order). Only still-masked positions are predicted: the LM head, the
        log-softmax and the sampling over the vocabulary are most of a block step's work at a
        real vocabulary (151936 ids for Qwen3), and a step needs none of them at a committed
        position. Everything below runs on the model's device; the masked count of each row is
        known on the host (the canvas masks exactly its generated columns, and a static schedule
        says how many each step commits), so static decoding needs no look at the device. The
        block's records are views of the canvas's: a step writes its commits in place, no row
        index, no copy back. `window` (a resumed static decode, `_FullDecoder.resume`): each row's
        masked count and its static plan for the steps to run, in place of a whole block's.
        """
        lm, p = self.lm, self.params
        dev = lm.device
        # host-known; a budget cut inside the block (`budget_on_block_grid` False) leaves its last columns out
        masked_per_row = (self.col_end.clamp(max=blk_end) - self.gen_col.clamp(min=blk_start)).tolist() if window is None else window[0]
        blk = slice(blk_start, blk_end)
        state = _BlockState(
            x=self.x[:, blk], step_map=self.step_map[:, blk], logp=self.logp[:, blk],
            first_step=self.steps, taken=torch.zeros(len(self.x), dtype=torch.long, device=dev), blk_start=blk_start,
        )
        state.masked = state.x == lm.mask_id
        quota = None
        if p.strategy in ("static", "prophet"):
            steps = p.steps_per_block or blk_end - blk_start
            plans = [ascending_schedule(m) if p.schedule == "ascending" else transfer_schedule(m, steps) for m in masked_per_row] if window is None else window[1]
            max_steps = max(len(q) for q in plans)
            plans = [q + [0] * (max_steps - len(q)) for q in plans]
            quota = torch.tensor(plans, device=dev).T.contiguous()  # [steps, n]
        else:
            max_steps = max(masked_per_row)  # every step commits at least one token of each live row
        rows_left = masked_per_row
        left = max(rows_left)  # most masked positions any row has at this step
        for k in range(max_steps):
            if k > 0:
                if p.strategy == "static":  # the plan says how many are left, no look at the device
                    rows_left = [m - q[k - 1] for m, q in zip(rows_left, plans)]
                    left = max(rows_left)
                else:  # the others stop when no row has a mask left (prophet may commit early)
                    left = self._masked_left(state.masked)
                    if left == 0:
                        break
            cols = None
            if self.masked_logits and left < blk_end - blk_start:
                # Each row's masked columns first, in order; a row with fewer fills its last slots
                # with committed columns, whose predictions the commit ignores.
                cols = (~state.masked).to(torch.int8).argsort(dim=1, stable=True)[:, :left]
            self._denoise_step(state, forward(k, cols), None if quota is None else quota[k], cols)
        self.steps += state.taken
        self.nfe += state.taken

    masked_logits = True
    """Predict only the still-masked positions of a block (False: every position of the block,
    the baseline benchmarks/rollout.py measures the saving against; same tokens at T=0)."""

    @staticmethod
    def _masked_left(masked: torch.Tensor) -> int:
        """The one device read per step of the data-dependent decoders: the most masked
        positions any row has left (0: the block is done)."""
        return int(masked.sum(1).max())

    def _denoise_step(self, state: "_BlockState", logits: torch.Tensor, quota: torch.Tensor | None, cols: torch.Tensor | None = None) -> None:
        """One denoising step of a block on the device: sample, score, commit, record (in place, into
        the canvas). `logits` [n, m, V] predict the block columns `cols` [n, m] (None: all, in
        order). No host reads."""
        lm, p = self.lm, self.params
        lp = lm.sampling_logprobs(logits, p.temperature)  # [n, m, V]
        tok = self._sample(lp)
        tok_lp = lp.gather(-1, tok[..., None]).squeeze(-1)  # [n, m]
        conf = self._confidence(lp, tok_lp)
        gap = None  # prophet: top-1 minus top-2 log-prob of each prediction
        if p.strategy == "prophet":
            top2 = lp.topk(2, dim=-1).values
            gap = top2[..., 0] - top2[..., 1]
        if cols is not None:  # back to block columns; the unpredicted ones are committed already
            tok = state.x.scatter(1, cols, tok)
            tok_lp, conf, gap = (None if v is None else v.new_zeros(state.x.shape).scatter(1, cols, v) for v in (tok_lp, conf, gap))
        progress = None  # fraction of each row's completion decoded: only eos_guard and prophet read it
        if p.eos_guard is not None or p.strategy == "prophet":
            progress = (self.decoded.to(conf.dtype) / self.budget)[:, None]  # [n, 1]
        if p.eos_guard is not None:
            conf = torch.where(tok == lm.eos_id, conf * p.eos_guard ** (1 - progress), conf)
        masked = state.masked
        conf = conf.masked_fill(~masked, -1.0)
        commit = self._commit(conf, masked, quota, gap, progress, state.committed_conf) & masked
        if p.strategy == "bacd":  # the block's history of commit confidences sets its next threshold
            total, count = state.committed_conf or (conf.new_zeros(len(conf)), conf.new_zeros(len(conf)))
            state.committed_conf = (total + (conf * commit).sum(1), count + commit.sum(1))
        if self.records is not None:  # before the commit: `masked` is the step's input
            prob = torch.where(masked, tok_lp.exp(), torch.zeros_like(tok_lp)).float()
            rows = list(getattr(self, "sample", range(len(masked))))  # canvas row -> sample (block decoders refill rows)
            self.records.append(_StepRecord(rows, state.first_step + state.taken, state.x.shape[1], state.blk_start, tok, prob, masked))
        state.x.copy_(torch.where(commit, tok, state.x))  # the next forward reads the canvas
        state.step_map.copy_(torch.where(commit, (state.first_step + state.taken)[:, None], state.step_map))
        state.logp.copy_(torch.where(commit, tok_lp.to(state.logp.dtype), state.logp))
        state.taken += masked.any(1)
        state.masked = masked & ~commit
        if progress is not None:
            self.decoded += commit.sum(1)

    def _commit(self, conf: torch.Tensor, masked: torch.Tensor, quota: torch.Tensor | None, gap: torch.Tensor | None, progress,
                history: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Which masked positions [n, b] this step commits, by the strategy's rule (`gap`: prophet's
        top-2 log-prob gap per position; `history`: bacd's (sum, count) of the confidences committed
        earlier in the block)."""
        p = self.params
        if quota is not None or p.strategy == "adaptive" or p.max_tokens_per_step is not None:
            rank = conf.argsort(dim=1, descending=True).argsort(dim=1)  # 0 = most confident
        if quota is not None:  # static, prophet
            commit = rank < quota[:, None]
            if p.strategy == "prophet":
                gap = (gap * masked).sum(1) / masked.sum(1).clamp(min=1)  # mean over the masked positions
                g = torch.tensor(p.prophet_gaps, dtype=gap.dtype, device=gap.device)
                need = torch.where(progress[:, 0] < 1 / 3, g[0], torch.where(progress[:, 0] < 2 / 3, g[1], g[2]))
                commit |= (gap >= need)[:, None]  # the answer has converged: commit the rest at once
            return commit
        if p.strategy == "threshold":
            commit = conf > p.threshold
        elif p.strategy == "bacd":
            # TDAR's Bounded Adaptive Confidence Decoding: commit what reaches tau, tau = the block's best masked
            # confidence at its first step, then the mean confidence of the tokens it committed so far, clamped
            # to [lower, upper] (at least one token a step, below).
            lower, upper = p.bacd_bounds
            tau = conf.max(dim=1).values  # masked positions only: the others are -1
            if history is not None:
                total, count = history
                tau = torch.where(count > 0, total / count.clamp(min=1), tau)
            commit = conf >= tau.clamp(lower, upper)[:, None]
        else:  # adaptive: the largest n with (n + 1)(1 - c_n) < factor, c sorted descending
            c = conf.sort(dim=1, descending=True).values
            n = torch.arange(1, c.shape[1] + 1, device=c.device)
            commit = rank < ((n + 1) * (1 - c) < p.factor).cumprod(1).sum(1, keepdim=True)
        if p.max_tokens_per_step is not None:
            commit &= rank < p.max_tokens_per_step
        return commit.scatter_(1, conf.argmax(dim=1, keepdim=True), True)  # always make progress

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
        if c == "raw_prob":  # temperature 1: log_softmax(t lp) = log_softmax(logits) (the excluded ids stay -inf)
            t = self.params.temperature
            return tok_lp.exp() if t in (0, 1) else torch.exp(t * tok_lp - torch.logsumexp(t * lp, dim=-1))
        probs = lp.exp()
        if c == "margin":
            top2 = probs.topk(2, dim=-1).values
            return top2[..., 0] - top2[..., 1]
        return torch.exp(-torch.special.entr(probs).sum(-1))  # "entropy": 1 for a one-hot prediction

    def _trajectories(self, block_size: int | None, rows: list[int] | None = None) -> list[Trajectory]:
        """The trajectories of the samples now in `rows` (default: every row), one copy to the host."""
        lm, out = self.lm, []
        rows = list(range(len(self.x))) if rows is None else rows
        idx = torch.tensor(rows, dtype=torch.long, device=self.x.device)
        x, step_map, logp, nfe = self.x[idx].cpu(), self.step_map[idx].cpu(), self.logp[idx].cpu(), self.nfe[idx].cpu()
        for k, i in enumerate(rows):
            a, b = int(self.gen_col[i]), int(self.stop[i])
            comp = x[k, a:b].tolist()
            ended = lm.eos_id in comp
            text_ids = comp[: comp.index(lm.eos_id)] if ended else comp  # the text leaves the EOS out
            steps = {}
            if self.records is not None:
                sample = self.sample[i] if hasattr(self, "sample") else i
                preds, probs = self._step_canvases(sample, a, b, x[k, a:b], step_map[k, a:b])
                steps = {"step_predictions": preds, "step_confidences": probs}
            out.append(
                Trajectory(
                    prompt_ids=x[k, self.off[i] : a].tolist(),
                    completion_ids=comp,
                    step_map=step_map[k, a:b].tolist(),
                    logprobs=logp[k, a:b].tolist(),
                    block_size=block_size,
                    temperature=self.params.temperature,
                    nfe=int(nfe[k]),
                    finish_reason="eos" if ended else "length",
                    text=lm.tokenizer.decode(text_ids, skip_special_tokens=True),
                    **steps,
                )
            )
        return out

    def _step_canvases(self, sample: int, a: int, b: int, comp: torch.Tensor, step_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The predicted canvas [S, C] and prediction probabilities [S, C] of `sample` (completion
        columns [a, b)) at each of its S steps, from the step records.

        Step t's canvas: the tokens committed before t, the step's prediction at every position
        masked at its input in the block being decoded, the mask id at later blocks' positions (the
        sampler does not predict them). So a token committed at step t equals canvas t at its position,
        and the last canvas is the completion.
        """
        canvases, probs = [], []
        for rec in self.records:
            if sample not in rec.samples:
                continue
            if rec.host is None:
                rec.host = (rec.step.cpu(), rec.tokens.cpu(), rec.prob.cpu(), rec.masked.cpu())
            step, tokens, prob, masked = rec.host
            k = rec.samples.index(sample)
            if not masked[k].any():
                continue  # the row had finished this block: no step for it
            t = int(step[k])
            canvas = torch.where(step_map < t, comp, torch.full_like(comp, self.lm.mask_id))
            p = torch.zeros(len(comp), dtype=torch.float32)
            lo, hi = max(rec.blk_start, a), min(rec.blk_start + rec.width, b)  # the block's completion columns
            if lo < hi:
                sl = slice(lo - rec.blk_start, hi - rec.blk_start)
                pred = torch.where(masked[k, sl], tokens[k, sl], canvas[lo - a : hi - a])
                canvas[lo - a : hi - a] = pred
                p[lo - a : hi - a] = prob[k, sl]
            if t != len(canvases):
                raise RuntimeError(f"step records of sample {sample} out of order: step {t} after {len(canvases)} steps")
            canvases.append(canvas)
            probs.append(p)
        c = len(comp)
        if not canvases:
            return torch.zeros((0, c), dtype=torch.long), torch.zeros((0, c), dtype=torch.float32)
        return torch.stack(canvases), torch.stack(probs)


class _BlockDecoder(_Decoder):
    """Block-causal decoding on the absolute block grid, with an exact KV cache."""

    refills = True

    def __init__(self, *args):
        super().__init__(*args)
        self._cut_budgets(range(len(self.x)))

    def _layout(self):
        bs = self.lm.block_size
        first = (self.plen // bs) * bs  # absolute start of each sample's first generated block
        self.start = int(first.max())  # ... which lands in this column for every sample
        budget_end = (self.plen + self.params.max_new_tokens + bs - 1) // bs * bs
        off = self.start - first  # left padding, a multiple of bs: blocks stay column-aligned
        return off, budget_end + off

    def _cut_budgets(self, rows) -> None:
        """Families without `budget_on_block_grid` (Stable-DiffCoder): end each of `rows` exactly
        max_new_tokens after its prompt. The canvas keeps whole blocks; the columns past the budget
        become padding, outside attention like left padding, so the last block's tokens see what its
        own generate_block gives them (a block cut short), and the replay sees the same."""
        if self.lm.traits.budget_on_block_grid:
            return
        for i in rows:
            end = int(self.gen_col[i]) + self.params.max_new_tokens
            if end < int(self.col_end[i]):
                self.x[i, end : int(self.col_end[i])] = self.lm.pad_id
                self.valid[i, end : int(self.col_end[i])] = False
                self.col_end[i] = self.stop[i] = end
                self.budget[i] = self.params.max_new_tokens

    def run(self) -> list[Trajectory]:
        lm, bs = self.lm, self.lm.block_size
        n = len(self.x)
        self.sample = list(range(n))  # the prompt each canvas row decodes
        waiting = list(range(n, len(self.prompts)))  # prompts without a row yet (max_batch)
        done: dict[int, Trajectory] = {}
        self.block_ids = (torch.arange(self.width) // bs).expand(n, -1).to(lm.device)
        self.noisy = torch.zeros_like(self.valid)
        cache = SlotCache(self.width) if self.params.kv_cache else None
        self.committed = 0  # columns whose keys/values are in the cache
        # Shifted heads (Fast-dLLM v2) predict a block's first token from the column before the
        # block: that column stays out of the cache and every step of the block re-encodes it
        # (a clean column of an earlier block: block-causal attention gives it the same state).
        shift = lm.traits.logit_shift
        if cache is not None and self.start > 0:
            self._encode(0, self.start, cache, None)  # prefill the prompt's full blocks
            if shift:
                cache.crop(-shift)
            self.committed = self.start - shift
        blk_start = self.start
        while blk_start < self.width and len(self.x) > 0:
            blk_end = blk_start + bs
            inputs = {}  # (q_start, q_end) -> attention mask, positions, logit rows: built once per block

            def forward(_k, cols, blk_start=blk_start, blk_end=blk_end, inputs=inputs):
                q_start, q_end = (self.committed, blk_end) if cache is not None else (0, self.width)
                if (q_start, q_end) not in inputs:
                    inputs[q_start, q_end] = self._inputs(q_start, q_end, torch.arange(blk_start - q_start, blk_end - q_start))
                mask, pos, select = inputs[q_start, q_end]
                if cols is not None:  # the block's still-masked columns only
                    select = cols + (blk_start - q_start)
                logits = lm.forward_logits(self.x[:, q_start:q_end], pos, mask, select, cache)
                if cache is not None:
                    keep = max(blk_start - shift, 0)  # the committed prefix, less the column a shifted head reads
                    cache.crop(-(q_end - keep))  # drop the current block's keys
                    self.committed = keep  # a finished block joins the cache with the next block's first step
                return logits

            self._decode_block(blk_start, blk_end, forward)
            ended = self.col_end <= blk_end  # budget reached
            if self.params.stop_at_eos:  # the one look at the device per block
                gen = torch.arange(blk_start, blk_end)[None] >= self.gen_col[:, None]
                hit = ((self.x[:, blk_start:blk_end].cpu() == lm.eos_id) & gen).any(1)
                self.stop[hit] = self.col_end[hit].clamp(max=blk_end)
                ended |= hit
            if ended.any():
                rows = ended.nonzero().flatten().tolist()
                done.update({self.sample[i]: t for i, t in zip(rows, self._trajectories(bs, rows))})
                keep = ~ended
                keep[sorted(self._refill(rows, waiting, blk_end, cache))] = True
                if not keep.all():
                    self._keep_rows(keep.nonzero().flatten(), cache)
            blk_start = blk_end
        if waiting:  # prompts no row could take (longer than the canvas so far): decode them together
            rest = _BlockDecoder(self.lm, [self.prompts[j] for j in waiting], self.params, self.generator).run()
            done.update(zip(waiting, rest))
        return [done[j] for j in range(len(self.prompts))]

    def _keep_rows(self, keep: torch.Tensor, cache) -> None:
        """Drop the rows of finished samples from the canvas, its records and the cache: the
        canvas holds live rows only, so every step works on whole tensors (views, no row index)."""
        dev = keep.to(self.x.device)
        for name in ("x", "valid", "pos", "step_map", "logp", "steps", "nfe", "decoded", "budget", "block_ids", "noisy"):
            setattr(self, name, getattr(self, name)[dev])
        for name in ("off", "gen_col", "col_end", "stop"):  # host-side
            setattr(self, name, getattr(self, name)[keep])
        self.sample = [self.sample[i] for i in keep.tolist()]
        if cache is not None:
            cache.batch_select_indices(dev)

    def _refill(self, rows: list[int], waiting: list[int], col: int, cache) -> set[int]:
        """Admit waiting prompts into the finished `rows`, their first generated block at column `col`.

        A prompt's full blocks end at `col`, so its blocks stay on the column grid every row
        shares; the row's earlier columns become padding (masked out of attention, like left
        padding), so the sample sees exactly what it would alone. Its keys before the block that
        the next step re-encodes anyway are written into the row's slots of the cache.
        """
        bs, lm, p = self.lm.block_size, self.lm, self.params
        admitted = []
        for i in rows:
            fits = [j for j in waiting if len(self.prompts[j]) // bs * bs <= col]
            if not fits:
                break
            j = fits[0]
            waiting.remove(j)
            prompt = self.prompts[j]
            full, tail = len(prompt) // bs * bs, len(prompt) % bs
            lo, end = col - full, col + (tail + p.max_new_tokens + bs - 1) // bs * bs
            if end > self.width:
                self._grow(end)
            dev = self.x.device
            self.x[i] = lm.pad_id
            self.x[i, lo : col + tail] = torch.tensor(prompt, device=dev)
            self.x[i, col + tail : end] = lm.mask_id
            self.valid[i] = False
            self.valid[i, lo:end] = True
            self.pos[i] = 0
            self.pos[i, lo:end] = torch.arange(end - lo, device=dev)
            self.step_map[i], self.logp[i], self.steps[i], self.nfe[i], self.decoded[i] = -1, 0.0, 0, 0, 0
            self.off[i], self.gen_col[i], self.col_end[i], self.stop[i] = lo, col + tail, end, end
            self.budget[i] = end - (col + tail)
            self.sample[i] = j
            admitted.append(i)
        self._cut_budgets(admitted)
        if cache is not None and admitted:
            self._prefill_rows(admitted, self.committed, cache)
        return set(admitted)

    def _prefill_rows(self, rows: list[int], upto: int, cache) -> None:
        """Write the keys of columns [first valid, upto) of `rows` into their slots of the cache."""
        lo = min(int(self.off[i]) for i in rows)
        if lo >= upto:
            return  # the prompt fits in the block the next step re-encodes
        r = torch.tensor(rows, device=self.x.device)
        tmp = SlotCache(upto - lo)
        allowed = block_attention_allowed(self.block_ids[r, lo:upto], self.noisy[r, lo:upto], self.valid[r, lo:upto])
        self.lm.encode(self.x[r, lo:upto], self.pos[r, lo:upto], additive_mask(allowed, self.lm.model.dtype), tmp)
        for main, new in zip(cache.layers, tmp.layers):  # a row's slot in the cache is its canvas row
            main._k[r, :, lo:upto] = new._k[:, :, : upto - lo]
            main._v[r, :, lo:upto] = new._v[:, :, : upto - lo]

    def _grow(self, width: int) -> None:
        """Widen the canvas to `width` columns (a refilled sample decodes past the first ones' end)."""
        extra, lm = width - self.width, self.lm

        def pad(t, value):
            return torch.cat([t, torch.full((len(t), extra), value, dtype=t.dtype, device=t.device)], dim=1)

        self.x, self.valid, self.pos = pad(self.x, lm.pad_id), pad(self.valid, False), pad(self.pos, 0)
        self.step_map, self.logp, self.noisy = pad(self.step_map, -1), pad(self.logp, 0.0), pad(self.noisy, False)
        self.width = width
        self.block_ids = (torch.arange(width) // lm.block_size).expand(len(self.x), -1).to(lm.device)

    def _inputs(self, q_start: int, q_end: int, select: torch.Tensor | None):
        """Additive attention mask, positions and logit rows for columns [q_start, q_end) of every row."""
        allowed = block_attention_allowed(self.block_ids[:, :q_end], self.noisy[:, :q_end], self.valid[:, :q_end], q_start)
        select = None if select is None else select.to(self.x.device).expand(len(self.x), -1)
        return additive_mask(allowed, self.lm.model.dtype), self.pos[:, q_start:q_end], select

    def _encode(self, q_start: int, q_end: int, cache, select: torch.Tensor | None):
        """Encode columns [q_start, q_end) of every row against the cache; logits at `select` if given."""
        mask, pos, select = self._inputs(q_start, q_end, select)
        ids = self.x[:, q_start:q_end]
        if select is None:
            return self.lm.encode(ids, pos, mask, cache)
        return self.lm.forward_logits(ids, pos, mask, select, cache)


class _FullDecoder(_Decoder):
    """Full-attention masked diffusion (LLaDA, Dream): a fixed canvas decoded in semi-AR blocks.

    Every position, masked or not, attends to every other, so the whole canvas is part of
    each step's context and decoding never stops early (a trajectory must keep every
    position the learner will replay). With kv_cache the prefix before the current block is
    encoded once per block and reused (approximate: its keys were computed while the current
    block was still masked); dual_cache also reuses the suffix.
    """

    def __init__(self, *args):
        super().__init__(*args)
        self._layouts: dict[tuple, tuple] = {}  # one block's (mask, positions, columns, rows) per query layout
        self.stop_step: int | None = None  # `resume`: decode up to this global step only (None: to the end)

    def resume(self, completion: torch.Tensor, step_map: torch.Tensor, logp: torch.Tensor, nfe: torch.Tensor, step: int, stop_step: int) -> None:
        """Continue each row from a partial canvas instead of an all-masked one (d-TreeRPO's branching).

        completion, step_map, logp: [n, C] the completion columns as a decode left them after `step`
        global steps (mask id, step -1 and log-prob 0 where still masked); nfe: [n] forwards so far.
        `run` then decodes steps [step, stop_step) and stops, its records extending these. Static
        schedule (`transfer_schedule`) only: the rest of a block split evenly over its remaining steps
        is the whole block's plan from that step on, so a resumed decode with the same random stream
        commits exactly what the straight decode does.
        """
        p = self.params
        if p.strategy != "static" or p.schedule != "even":
            raise ValueError(f"resuming a decode needs the static strategy with the even schedule, got {p.strategy}/{p.schedule}")
        if not 0 <= step <= stop_step:
            raise ValueError(f"resume: need 0 <= step <= stop_step, got {step} and {stop_step}")
        cols = slice(int(self.gen_col[0]), self.width)
        if completion.shape != (len(self.x), self.width - cols.start) or step_map.shape != completion.shape or logp.shape != completion.shape:
            raise ValueError(f"resume: completion, step_map and logp must be [{len(self.x)}, {self.width - cols.start}], got "
                             f"{tuple(completion.shape)}, {tuple(step_map.shape)}, {tuple(logp.shape)}")
        dev = self.x.device
        self.x[:, cols] = completion.to(dev)
        self.step_map[:, cols] = step_map.to(dev)
        self.logp[:, cols] = logp.to(self.logp)
        self.nfe.copy_(nfe.to(dev))
        self.steps.fill_(step)
        self.decoded.copy_((completion != self.lm.mask_id).sum(1).to(dev))
        self.stop_step = stop_step

    def _window(self, blk_start: int, blk_end: int) -> tuple[list[int], list[list[int]]] | None:
        """A resumed decode's masked counts and plans in this block, for the steps left before
        `stop_step` (None: the block is done or the window is spent). One host read per block."""
        now = int(self.steps[0])
        masked = (self.x[:, blk_start:blk_end] == self.lm.mask_id).sum(1).tolist()
        if now >= self.stop_step or max(masked) == 0:
            return None
        sm = self.step_map[:, blk_start:blk_end].cpu()
        total = min(self.params.steps_per_block or blk_end - blk_start, blk_end - blk_start)  # the block's steps (transfer_schedule)
        plans = []
        for i, m in enumerate(masked):
            done = len(set(sm[i][sm[i] >= 0].tolist()))  # the block's steps already taken (each commits >= 1 token)
            plans.append(transfer_schedule(m, total - done)[: self.stop_step - now] if m else [0])
        width = max(len(q) for q in plans)
        return masked, [q + [0] * (width - len(q)) for q in plans]

    def _layout(self):
        gen = int(self.plen.max())  # generation starts in this column for every sample
        off = gen - self.plen
        return off, torch.full_like(self.plen, gen + self.params.max_new_tokens)

    def run(self) -> list[Trajectory]:
        lm, p = self.lm, self.params
        gen = int(self.gen_col[0])
        length = p.block_length or p.max_new_tokens
        shift = lm.traits.logit_shift
        everything = torch.arange(self.width)
        for blk_start in range(gen, self.width, length):
            blk_end = min(blk_start + length, self.width)
            window = None if self.stop_step is None else self._window(blk_start, blk_end)
            if self.stop_step is not None and window is None:
                continue  # a resumed decode: this block is done, or the steps to run are spent
            cache = DynamicCache() if p.kv_cache else None

            def forward(k, cols, blk_start=blk_start, blk_end=blk_end, cache=cache):
                def select(base):  # indices into the query columns of the block columns to predict
                    return torch.arange(base, base + blk_end - blk_start) if cols is None else cols + base

                if cache is None:  # recompute the whole canvas
                    return self._encode(everything, None, select(blk_start))
                # Shifted heads read the hidden state one column left of the block: re-encode it.
                lo = blk_start - shift
                if k == 0:  # refresh: encode the whole canvas, keep the reusable part of the cache
                    logits = self._encode(everything, cache, select(blk_start))
                    if p.dual_cache:
                        _drop_columns(cache, lo, blk_end)  # keys: [prefix | suffix]
                    else:
                        cache.crop(-(self.width - lo))  # keys: [prefix]
                    return logits
                if p.dual_cache:
                    keys = torch.cat([torch.arange(lo), torch.arange(blk_end, self.width), torch.arange(lo, blk_end)])
                    logits = self._encode(torch.arange(lo, blk_end), cache, select(shift), keys)
                    cache.crop(-(blk_end - lo))
                    return logits
                logits = self._encode(torch.arange(lo, self.width), cache, select(shift))
                cache.crop(-(self.width - lo))
                return logits

            self._decode_block(blk_start, blk_end, forward, window)
        return self._trajectories(None)

    def _encode(self, q_cols: torch.Tensor, cache, select: torch.Tensor, key_cols: torch.Tensor | None = None):
        """Logits at `select` (indices into q_cols: [S] for every row, or [n, S] per row) for the
        columns `q_cols` of every row.

        Keys are the cached columns followed by q_cols, in the order `key_cols` gives
        (default: all columns up to the last query, i.e. cache = prefix). The mask, positions
        and logit rows of a layout are built once and reused by every step that has it.
        """
        dev = self.lm.device
        if key_cols is None:
            key_cols = torch.arange(int(q_cols[-1]) + 1) if cache is not None else q_cols
        layout = (int(q_cols[0]), len(q_cols), int(key_cols[0]), len(key_cols))
        memo = self._layouts
        if layout not in memo:
            memo.clear()  # a new block: the previous block's layouts are not needed again
            kv = self.valid[:, key_cols.to(dev)]  # [n, K] attend to every real token
            qv = self.valid[:, q_cols.to(dev)]
            self_key = key_cols.to(dev)[None, :] == q_cols.to(dev)[:, None]  # [Q, K]
            allowed = (qv[:, :, None] & kv[:, None, :]) | (~qv[:, :, None] & self_key[None])  # padding rows see themselves
            memo[layout] = (additive_mask(allowed, self.lm.model.dtype), self.pos[:, q_cols.to(dev)], q_cols.to(dev), {})
        mask, pos, cols, selects = memo[layout]
        if select.dim() == 1:  # the same columns for every row: built once per layout
            key = (int(select[0]), len(select))
            if key not in selects:
                selects[key] = select.to(dev).expand(len(self.x), -1)
            select = selects[key]
        return self.lm.forward_logits(self.x[:, cols], pos, mask, select, cache)


def _drop_columns(cache: DynamicCache, start: int, end: int) -> None:
    """Remove cached positions [start, end) from every layer (the block being decoded)."""
    for layer in cache.layers:
        layer.keys = torch.cat([layer.keys[..., :start, :], layer.keys[..., end:, :]], dim=-2)
        layer.values = torch.cat([layer.values[..., :start, :], layer.values[..., end:, :]], dim=-2)


@torch.no_grad()
def tree_generate(
    lm: DiffusionLM, prompts: Sequence[Sequence[int]], params: SamplingParams, generator: torch.Generator | None = None,
    groups: Sequence[int] | None = None,
) -> list[Trajectory]:
    """Decode one tree (rollout.tree) per run of `tree_leaves(params.tree)` identical prompts; the leaves, in
    tree order, one per item. Each level's expansions of every tree decode as one batch (max_batch is not
    applied): the root's children from an all-masked canvas, then every node's children resumed from its
    canvas (`_FullDecoder.resume`) up to the next branch step."""
    if params.tree is None:
        raise ValueError("tree_generate needs SamplingParams.tree")
    if not lm.traits.full_attention:
        raise ValueError(f"tree rollouts continue full-attention canvases (d-TreeRPO decodes LLaDA); family {lm.traits.name!r} is block-causal")
    n_root, bf, s = params.tree
    roots = tree_roots(prompts, groups, tree_leaves(params.tree))
    width = params.max_new_tokens
    done = branch_steps(total_steps(params, width), s)
    if len(done) != s + 1:
        raise ValueError(f"tree_contraction_factor {s} needs at least {s} denoising steps, the decode has {done[-1]} "
                         "(raise rollout.sampling.steps_per_block or lower the factor)")
    flat = replace(params, tree=None)
    comp = torch.full((len(roots), width), lm.mask_id, dtype=torch.long)
    step_map = torch.full((len(roots), width), -1, dtype=torch.long)
    logp = torch.zeros((len(roots), width), dtype=torch.float64)
    nfe = torch.zeros(len(roots), dtype=torch.long)
    rows, out = roots, []
    for level in range(s):
        idx = torch.arange(len(rows)).repeat_interleave(n_root if level == 0 else bf)  # each node's children, in order
        rows = [rows[i] for i in idx.tolist()]
        dec = _FullDecoder(lm, rows, flat, generator)
        dec.resume(comp[idx], step_map[idx], logp[idx], nfe[idx], done[level], done[level + 1])
        out = dec.run()
        gen = int(dec.gen_col[0])
        comp, step_map, logp, nfe = dec.x[:, gen:].cpu(), dec.step_map[:, gen:].cpu(), dec.logp[:, gen:].cpu(), dec.nfe.cpu()
    return out

# --- Running Confidence Remasking (MDPO) ------------------------------------------------------------
# Running Confidence Remasking (RCR), MDPO's decoding for full-attention masked diffusion LMs.
#
# MDPO (He et al. 2025, "MDPO: Overcoming the Training-Inference Divide of Masked Diffusion
# Language Models", arXiv:2508.13148) observes that a low-confidence remasking sampler commits a token for
# good once it is unmasked, even when later context makes it look wrong. RCR keeps a running
# confidence for every committed token and lets the least confident be re-masked and predicted
# again. Inside a block of N positions decoded in S steps, with the MaskGIT linear schedule
# n_0..n_{S-1} (`linear_schedule`), step i:
#
# 1. predicts every still-masked position up to the block's end (earlier blocks' re-masked
#    tokens included) and fills all of them: that is sum(n_i..n_{S-1}) positions;
# 2. records each filled position's confidence as its running confidence;
# 3. except at the block's last step, re-masks the sum(n_{i+1}..n_{S-1}) committed positions with
#    the lowest running confidence (a position never filled counts as 1.0).
#
# The running confidence persists across blocks, so tokens of earlier blocks compete with the
# current block's and may be re-masked too: this reproduces the authors' `diffusion_generate(...,
# rcr=True)` (src/mdlm_generation_utils.py of their repository) exactly, token for token at
# temperature 0 with `confidence="prob"` (tests/test_rcr.py; /tmp/rcr_ref/compare.py compared it
# with their code). Differences, all outside that setting or at exact ties: candidates for
# re-masking are only the completion's filled positions (their topk runs over the whole row, so a
# running confidence of exactly 1.0 ties with the prompt's never-filled 1.0 and could pick a prompt
# position, and a recorded confidence of exactly 0, a margin tie, reads as 1.0 there); confidence and log-probs are unmask's (`SamplingParams.confidence`, under the full
# temperature-scaled distribution, the mask id excluded), where their code renormalises over
# top-k/top-p before scoring (the same ranking without top_k/top_p); rows decode independently
# (their batched loop skips later rows at a step where nothing is left to re-mask).
#
# A re-masked token can change, so a trajectory is no unmask-once trace: its step_map and logprobs
# hold each token's last commit and it is marked `Trajectory.remasked`. RL rollouts refuse rcr
# (rl.config); evaluation and `unmask generate` accept it. Decoding recomputes the whole canvas at
# every step (no KV cache: `kv_cache` and `dual_cache` are ignored), like the authors' sampler.


def linear_schedule(num_masked: int, steps: int) -> list[int]:
    """Tokens to commit at each of `steps` steps under MaskGIT's linear schedule, as MDPO's
    `get_num_transfer_tokens_maskgit(mode="linear")` computes it: after step t, the masked count is
    floor(N * max(1 - (t + 1) / steps, 1e-6)) (float64, so the roundings match).

    Unlike `transfer_schedule`, steps are not capped at N and the remainder is spread, so a step may
    commit nothing: linear_schedule(6, 4) == [2, 1, 2, 1], linear_schedule(2, 4) == [1, 0, 1, 0].
    """
    if num_masked < 0 or steps < 1:
        raise ValueError(f"linear_schedule: need num_masked >= 0 and steps >= 1, got {num_masked} and {steps}")
    done = [num_masked - math.floor(num_masked * max(1.0 - (t + 1) / steps, 1e-6)) for t in range(steps)]
    return [b - a for a, b in zip([0] + done[:-1], done)]


def check_rcr(lm: DiffusionLM, params: SamplingParams) -> None:
    """Raise ValueError naming what RCR does not support for this model and these settings."""
    if not lm.traits.full_attention:
        raise ValueError(
            f"strategy 'rcr': family {lm.traits.name!r} is block-causal; RCR (MDPO's running confidence remasking) is "
            "defined for full-attention LLaDA-style decoding (families llada, dream)"
        )
    refused = {
        "schedule='ascending'": params.schedule == "ascending",  # RCR has its own (MaskGIT linear) schedule
        "confidence='raw_prob'": params.confidence == "raw_prob",
        "eos_guard": params.eos_guard is not None,
        "record_steps": params.record_steps,
        "tree": params.tree is not None,
    }
    bad = [name for name, on in refused.items() if on]
    if bad:
        raise ValueError(f"strategy 'rcr' does not support {', '.join(bad)}; confidences: prob, margin, entropy")


@torch.no_grad()
def rcr_generate(lm: DiffusionLM, prompts: Sequence[Sequence[int]], params: SamplingParams, generator: torch.Generator | None = None) -> list[Trajectory]:
    """Decode every prompt with RCR (`params.strategy == "rcr"`); one Trajectory per prompt, in order,
    each with `remasked=True`. Prompts of any lengths batch together (left-padded, as the engine's
    full-attention decoder lays them out); `max_batch` decodes in chunks."""
    check_rcr(lm, params)
    step = params.max_batch or len(prompts)
    return [t for a in range(0, len(prompts), step) for t in _RCRDecoder(lm, prompts[a : a + step], params, generator).run()]


class _RCRDecoder(_FullDecoder):
    """The full-attention canvas (`_FullDecoder`'s layout, sampling and confidence), decoded with RCR."""

    def run(self) -> list[Trajectory]:
        lm, p = self.lm, self.params
        gen = int(self.gen_col[0])  # every row's first generated column
        length = p.block_length or p.max_new_tokens
        everything = torch.arange(self.width)
        # Running confidence of each completion column, kept across blocks (its last fill's confidence).
        running = torch.zeros((len(self.x), self.width - gen), dtype=torch.float32, device=lm.device)
        step = 0
        for blk_start in range(gen, self.width, length):
            blk_end = min(blk_start + length, self.width)
            plan = linear_schedule(blk_end - blk_start, p.steps_per_block or blk_end - blk_start)
            seen = slice(gen, blk_end)  # the completion up to the block's end
            for i in range(len(plan)):
                if sum(plan[i:]) == 0:
                    break  # nothing masked is left: the authors' further forwards change nothing
                x = self.x[:, seen]  # [n, c] a view of the canvas
                masked = x == lm.mask_id  # [n, c] exactly sum(plan[i:]) per row
                logits = self._encode(everything, None, torch.arange(gen, blk_end))  # [n, c, V]
                lp = lm.sampling_logprobs(logits, p.temperature)
                tok = self._sample(lp)  # [n, c]
                tok_lp = lp.gather(-1, tok[..., None]).squeeze(-1)
                conf = self._confidence(lp, tok_lp).float()
                # 1-2: fill every masked position, record its running confidence
                x.copy_(torch.where(masked, tok, x))
                self.step_map[:, seen] = torch.where(masked, step, self.step_map[:, seen])
                self.logp[:, seen] = torch.where(masked, tok_lp.to(self.logp.dtype), self.logp[:, seen])
                run = running[:, : blk_end - gen]
                run.copy_(torch.where(masked, conf, run))
                step += 1
                self.nfe += 1
                # 3: re-mask the least confident, as many as the block's later steps will commit (none after
                # its last step). Every column up to the block's end is filled now, so each has a running
                # confidence: MDPO's "never filled counts as 1.0" only keeps the prompt and later blocks out.
                k = sum(plan[i + 1 :])
                if k > 0:
                    low = run.topk(k, dim=1, largest=False).indices  # [n, k]
                    x.scatter_(1, low, lm.mask_id)
        self.steps.fill_(step)
        trajs = self._trajectories(None)
        for t in trajs:
            t.remasked = True
        return trajs
