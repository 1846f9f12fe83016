"""The packed forward of block diffusion: [prompt | clean response | noisy response].

One forward pass scores a partially masked copy of *every* response block at once:
noisy block j attends to the clean prefix before block j and to itself (see
rollout.attention), which is exactly the context the sampler had while it decoded
block j. SFT (random masks) and TraceRL (masks replayed from the step map) both build
their inputs here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from rollout.attention import block_attention_allowed


@dataclass
class PackedBatch:
    """Right-padded packed inputs for `DiffusionLM.forward_logits`."""

    input_ids: torch.Tensor  # [N, L]
    position_ids: torch.Tensor  # [N, L]
    allowed: torch.Tensor  # [N, L, L] bool
    select: torch.Tensor  # [N, C] index in L of the noisy copy of completion token c
    completion_mask: torch.Tensor  # [N, C] True for real (non-padding) completion tokens


def pack_noisy(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    noisy: Sequence[Sequence[bool]],
    block_size: int,
    mask_id: int,
    pad_id: int,
    device: torch.device | str = "cpu",
) -> PackedBatch:
    """Pack each sample as [prompt + completion | noisy copy of the response blocks].

    Args:
        prompts, completions: token ids per sample.
        noisy: per completion token, True if it is masked in the noisy copy.
        block_size: tokens per block; blocks sit on absolute positions (pos // block_size).
    The noisy copy starts at the block holding the first completion token; prompt tokens
    in that block stay clean in it.
    """
    rows = []
    for p, c, m in zip(prompts, completions, noisy, strict=True):
        if len(m) != len(c):
            raise ValueError(f"noisy mask length {len(m)} != completion length {len(c)}")
        plen, total = len(p), len(p) + len(c)
        start = (plen // block_size) * block_size  # first block with response tokens
        x0 = list(p) + list(c)
        noisy_ids = x0[start:plen] + [mask_id if mk else t for t, mk in zip(c, m)]
        ids = x0 + noisy_ids
        pos = list(range(total)) + list(range(start, total))
        is_noisy = [False] * total + [True] * (total - start)
        select = [total + (plen - start) + j for j in range(len(c))]
        rows.append((ids, pos, is_noisy, select))

    n = len(rows)
    length = max(len(r[0]) for r in rows)
    width = max(len(r[3]) for r in rows)
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
    allowed = block_attention_allowed(position_ids // block_size, is_noisy, valid)
    return PackedBatch(
        input_ids.to(device), position_ids.to(device), allowed.to(device), select.to(device), cmask.to(device)
    )
