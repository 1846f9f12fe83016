"""Training inputs that show the model a partially masked response, as the sampler did.

Block models use the packed forward of block diffusion, [prompt | clean response | noisy
response]: one pass scores a partially masked copy of *every* response block at once, and
noisy block j attends to the clean prefix before block j and to itself (rollout.attention),
which is exactly the context the sampler had while it decoded block j. Full-attention models
(LLaDA, Dream) see [prompt | noisy response] with bidirectional attention, as in decoding.
SFT (random masks) and TraceRL (masks replayed from the step map) both build their inputs here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import torch

from rollout.attention import block_attention_allowed, flex_attention_mask, full_attention_allowed
from rollout.families import is_full_attention


@dataclass
class PackedBatch:
    """Right-padded inputs for `DiffusionLM.forward_logits`."""

    input_ids: torch.Tensor  # [N, L]
    position_ids: torch.Tensor  # [N, L]
    select: torch.Tensor  # [N, C] index in L of the (noisy) completion token c
    completion_mask: torch.Tensor  # [N, C] True for real (non-padding) completion tokens
    block_ids: torch.Tensor | None  # [N, L] absolute block id of each token (None: full attention)
    is_noisy: torch.Tensor  # [N, L] True for the noisy copy's tokens
    valid: torch.Tensor  # [N, L] False for padding

    @cached_property
    def allowed(self) -> torch.Tensor:
        """[N, L, L] bool attention pattern (rollout.attention)."""
        if self.block_ids is None:
            return full_attention_allowed(self.valid)
        return block_attention_allowed(self.block_ids, self.is_noisy, self.valid)

    def attention(self, flex: bool = False):
        """What `DiffusionLM.encode` takes: the dense pattern, or with flex (a model running flex
        attention, `DiffusionLM.flex`) the same pattern as a BlockMask built without it."""
        return flex_attention_mask(self.block_ids, self.is_noisy, self.valid) if flex else self.allowed


def pack_noisy(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    noisy: Sequence[Sequence[bool]],
    block_size: int | None,
    mask_id: int,
    pad_id: int,
    device: torch.device | str = "cpu",
    *,
    full_attention: bool | None = None,
    logit_shift: int = 0,
) -> PackedBatch:
    """Build inputs in which the completion tokens flagged in `noisy` are masked.

    Args:
        prompts, completions: token ids per sample.
        noisy: per completion token, True if it is masked.
        block_size: block models: tokens per block (blocks sit on absolute positions); the
            noisy copy starts at the block holding the first completion token, and prompt
            tokens in that block stay clean in it.
        full_attention: the family's `traits.full_attention`: [prompt | noisy response], no
            clean copy, whatever block_size says. None: a None block_size means full attention
            (`rollout.families.is_full_attention`).
        logit_shift: the family's `traits.logit_shift`. With 1 (shifted heads: the hidden state at
            p-1 predicts p, `DiffusionLM.predicting_rows` reads select - 1) under block-causal
            attention, a token at a block boundary is predicted by the clean column before its
            block, as in decoding (the sampler re-encodes that committed column), never by the end
            of the previous noisy block: its `select` is its clean copy's index, so select - 1 is
            the clean p-1.
    """
    full = is_full_attention(block_size, full_attention)
    rows = []
    for p, c, m in zip(prompts, completions, noisy, strict=True):
        if len(m) != len(c):
            raise ValueError(f"noisy mask length {len(m)} != completion length {len(c)}")
        plen, total = len(p), len(p) + len(c)
        noisy_c = [mask_id if mk else t for t, mk in zip(c, m)]
        if full:
            rows.append((list(p) + noisy_c, list(range(total)), [False] * total, list(range(plen, total))))
            continue
        start = (plen // block_size) * block_size  # first block with response tokens
        x0 = list(p) + list(c)
        ids = x0 + x0[start:plen] + noisy_c
        pos = list(range(total)) + list(range(start, total))
        is_noisy = [False] * total + [True] * (total - start)
        # Noisy copy index of completion token j; a shifted head's block-boundary token reads the clean p-1.
        sel = [plen + j if logit_shift and (plen + j) % block_size == 0 else total + (plen - start) + j for j in range(len(c))]
        rows.append((ids, pos, is_noisy, sel))

    n, length, width = len(rows), max(len(r[0]) for r in rows), max(len(r[3]) for r in rows)
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n, length), dtype=torch.long)
    is_noisy = torch.zeros((n, length), dtype=torch.bool)
    valid = torch.zeros((n, length), dtype=torch.bool)
    select = torch.zeros((n, width), dtype=torch.long)
    cmask = torch.zeros((n, width), dtype=torch.bool)
    for i, (ids, pos, nz, sel) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        position_ids[i, : len(ids)] = torch.tensor(pos)
        is_noisy[i, : len(ids)] = torch.tensor(nz)
        valid[i, : len(ids)] = True
        select[i, : len(sel)] = torch.tensor(sel)
        cmask[i, : len(sel)] = True
    block_ids = None if full else (position_ids // block_size).to(device)
    return PackedBatch(
        input_ids.to(device), position_ids.to(device), select.to(device), cmask.to(device), block_ids, is_noisy.to(device), valid.to(device)
    )
