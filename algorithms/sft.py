"""Block-diffusion supervised fine-tuning loss."""

from __future__ import annotations

from typing import Sequence

import torch

from algorithms.packing import pack_noisy
from rollout.families import is_full_attention
from rollout.models import DiffusionLM


def random_block_mask(
    prompt_len: int, completion_len: int, block_size: int | None, generator: torch.Generator, *, full_attention: bool | None = None
) -> list[bool]:
    """Mask each block's completion tokens with a per-block ratio t ~ U(0, 1], at least one per block.

    Every block is noised independently, as the block sampler denoises them one at a time.
    full_attention (the family's `traits.full_attention`; None: a None block_size means it):
    the completion is one block (LLaDA's SFT masking).
    """
    full = is_full_attention(block_size, full_attention)
    mask = []
    c = 0
    while c < completion_len:
        if full:
            blk_end = completion_len
        else:
            blk_end = ((prompt_len + c) // block_size + 1) * block_size - prompt_len
        n = min(blk_end, completion_len) - c
        t = 1.0 - torch.rand((), generator=generator).item()  # (0, 1]
        m = (torch.rand(n, generator=generator) < t).tolist()
        if not any(m):
            m[int(torch.randint(n, (), generator=generator))] = True
        mask += m
        c += n
    return mask


def sft_loss(
    lm: DiffusionLM,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    generator: torch.Generator,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy on masked completion tokens, one packed forward for all blocks.

    Completions should already be padded with EOS (`pad_completion`) to exactly what the
    sampler decodes (whole blocks, or the full-attention canvas).
    Returns (loss, metrics) where the loss is the mean over masked tokens.
    """
    traits = lm.traits
    noisy = [random_block_mask(len(p), len(c), traits.block_size, generator, full_attention=traits.full_attention) for p, c in zip(prompts, completions)]
    packed = pack_noisy(
        prompts, completions, noisy, traits.block_size, lm.mask_id, lm.pad_id, lm.device, full_attention=traits.full_attention, logit_shift=traits.logit_shift
    )
    logits = lm.forward_logits(packed.input_ids, packed.position_ids, packed.attention(lm.flex), packed.select)
    lp = lm.sampling_logprobs(logits, 1.0)  # [N, C, V]
    width = packed.select.shape[1]
    targets = torch.zeros((len(prompts), width), dtype=torch.long, device=lm.device)
    loss_mask = torch.zeros((len(prompts), width), dtype=torch.bool, device=lm.device)
    for i, (c, m) in enumerate(zip(completions, noisy)):
        targets[i, : len(c)] = torch.tensor(c)
        loss_mask[i, : len(c)] = torch.tensor(m)
    nll = -lp.gather(-1, targets[..., None]).squeeze(-1)
    loss = (nll * loss_mask).sum() / loss_mask.sum()
    with torch.no_grad():
        acc = ((lp.argmax(-1) == targets) & loss_mask).sum() / loss_mask.sum()
    return loss, {"loss/sft": loss.item(), "masked_token_acc": acc.item()}


def pad_completion(
    prompt_len: int, completion: list[int], block_size: int | None, canvas: int, fill_id: int, *, full_attention: bool | None = None
) -> list[int]:
    """Pad a completion with `fill_id` (EOS) to the length the sampler will decode.

    Block models decode whole blocks: pad until prompt + completion ends on a block boundary.
    Full-attention models decode a fixed canvas of `canvas` tokens: pad to that length.
    full_attention: the family's `traits.full_attention` (None: a None block_size means it).
    """
    if is_full_attention(block_size, full_attention):
        return completion + [fill_id] * max(0, canvas - len(completion))
    rem = (prompt_len + len(completion)) % block_size
    return completion + [fill_id] * ((block_size - rem) % block_size)


def ar_sft_loss(model, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, dict[str, float]]:
    """Next-token cross-entropy on completion tokens for an autoregressive baseline.

    Sequences are right-padded; the causal mask of the stock model class applies.
    """
    seqs = [list(p) + list(c) for p, c in zip(prompts, completions)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    target_mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        ids[i, : len(s)] = torch.tensor(s)
        target_mask[i, len(p) : len(s)] = True
    attn = (torch.arange(width)[None] < torch.tensor([len(s) for s in seqs])[:, None]).long()
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]  # position t predicts t+1
    lp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    m = target_mask[:, 1:]
    loss = -(lp * m).sum() / m.sum()
    return loss, {"loss/sft": loss.item(), "masked_token_acc": ((logits.argmax(-1) == ids[:, 1:]) & m).sum().item() / m.sum().item()}
