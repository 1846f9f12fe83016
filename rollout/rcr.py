"""Running Confidence Remasking (RCR), MDPO's decoding for full-attention masked diffusion LMs.

MDPO (He et al. 2025, "MDPO: Overcoming the Training-Inference Divide of Masked Diffusion
Language Models", arXiv:2508.13148) observes that a low-confidence remasking sampler commits a token for
good once it is unmasked, even when later context makes it look wrong. RCR keeps a running
confidence for every committed token and lets the least confident be re-masked and predicted
again. Inside a block of N positions decoded in S steps, with the MaskGIT linear schedule
n_0..n_{S-1} (`linear_schedule`), step i:

1. predicts every still-masked position up to the block's end (earlier blocks' re-masked
   tokens included) and fills all of them: that is sum(n_i..n_{S-1}) positions;
2. records each filled position's confidence as its running confidence;
3. except at the block's last step, re-masks the sum(n_{i+1}..n_{S-1}) committed positions with
   the lowest running confidence (a position never filled counts as 1.0).

The running confidence persists across blocks, so tokens of earlier blocks compete with the
current block's and may be re-masked too: this reproduces the authors' `diffusion_generate(...,
rcr=True)` (src/mdlm_generation_utils.py of their repository) exactly, token for token at
temperature 0 with `confidence="prob"` (tests/test_rcr.py; /tmp/rcr_ref/compare.py compared it
with their code). Differences, all outside that setting or at exact ties: candidates for
re-masking are only the completion's filled positions (their topk runs over the whole row, so a
running confidence of exactly 1.0 ties with the prompt's never-filled 1.0 and could pick a prompt
position, and a recorded confidence of exactly 0, a margin tie, reads as 1.0 there); confidence and log-probs are unmask's (`SamplingParams.confidence`, under the full
temperature-scaled distribution, the mask id excluded), where their code renormalises over
top-k/top-p before scoring (the same ranking without top_k/top_p); rows decode independently
(their batched loop skips later rows at a step where nothing is left to re-mask).

A re-masked token can change, so a trajectory is no unmask-once trace: its step_map and logprobs
hold each token's last commit and it is marked `Trajectory.remasked`. RL rollouts refuse rcr
(rl.config); evaluation and `unmask generate` accept it. Decoding recomputes the whole canvas at
every step (no KV cache: `kv_cache` and `dual_cache` are ignored), like the authors' sampler.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from rollout.engine import _FullDecoder
from rollout.models import DiffusionLM
from rollout.sampling import SamplingParams
from rollout.trajectory import Trajectory


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
