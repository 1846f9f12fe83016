"""Attention patterns of diffusion LMs, as boolean "may attend" matrices.

Block grid: block boundaries are a property of *absolute* positions
(block id = position // block_size). When the prompt length is not a multiple
of block_size, the first generated block is partial: it shares its block with
the prompt's tail, which is then part of that block's bidirectional context.
The sampler, the learner's packed forward and SFT all build their masks here,
so the three always agree on what each token could see.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

SDPA_GQA = "unmask_sdpa"
"""The attention implementation DiffusionLM gives a stock transformers model running "sdpa":
`sdpa_native_gqa`, registered with transformers under this name."""


def block_attention_allowed(
    block_ids: torch.Tensor, is_noisy: torch.Tensor, valid: torch.Tensor, query_start: int = 0
) -> torch.Tensor:
    """Block-causal attention over a sequence that may hold a clean and a noisy copy.

    Rules (q = query token, k = key token, blk = absolute block id):
      - clean q sees clean k with blk(k) <= blk(q)   (block-causal, bidirectional in a block)
      - noisy q sees clean k with blk(k) <  blk(q)   (committed context before its block)
      - noisy q sees noisy k with blk(k) == blk(q)   (its own partially masked block)
      - clean q never sees noisy k.
    A sequence with no noisy tokens is plain block-causal attention (what the sampler runs).

    Args:
        block_ids: [B, L] absolute block id of each token.
        is_noisy:  [B, L] True for tokens of the noisy copy.
        valid:     [B, L] False for padding.
        query_start: only queries at index >= query_start are returned (a KV-cached step
            whose earlier tokens are already in the cache).
    Returns:
        [B, L - query_start, L] bool, True where query (dim 1) may attend key (dim 2).
        Padding rows attend to themselves only, so softmax never sees an empty row (a NaN
        there would reach real tokens through 0 * NaN in the attention product).
    """
    qs = slice(query_start, None)
    length = block_ids.shape[1]
    same = (torch.arange(query_start, length, device=block_ids.device)[:, None] == torch.arange(length, device=block_ids.device))[None]
    return _block_rule(
        block_ids[:, qs, None], is_noisy[:, qs, None], valid[:, qs, None], block_ids[:, None, :], is_noisy[:, None, :], valid[:, None, :], same
    )


def _block_rule(qb, qn, qv, kb, kn, kv, same):
    """`block_attention_allowed`'s rules on broadcastable tensors (block id, noisy, valid of the
    query and of the key; `same`: the key is the query itself). The dense pattern and flex
    attention's mask_mod (`flex_attention_mask`) both evaluate this one function."""
    clean_clean = ~qn & ~kn & (kb <= qb)
    noisy_clean = qn & ~kn & (kb < qb)
    noisy_noisy = qn & kn & (kb == qb)
    return ((clean_clean | noisy_clean | noisy_noisy) & qv & kv) | (same & ~qv)


def flex_attention_mask(block_ids: torch.Tensor | None, is_noisy: torch.Tensor, valid: torch.Tensor):
    """The pattern of `block_attention_allowed` (or `full_attention_allowed` when block_ids is
    None) as flex attention's BlockMask [B, 1, L, L], built from the [B, L] vectors alone.

    No [B, L, L] tensor is materialised, and flex attention skips the tiles the mask empties
    (a clean query never reads the noisy copy, a noisy block reads one noisy block), which a
    dense additive mask can not tell the kernel.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    if block_ids is None:  # full attention is the block rule with one clean block
        block_ids = torch.zeros_like(valid, dtype=torch.long)

    def mask_mod(b, h, q, k):
        return _block_rule(block_ids[b, q], is_noisy[b, q], valid[b, q], block_ids[b, k], is_noisy[b, k], valid[b, k], q == k)

    n, length = valid.shape
    return create_block_mask(mask_mod, n, None, length, length, device=valid.device)


def full_attention_allowed(valid: torch.Tensor) -> torch.Tensor:
    """Bidirectional attention among valid tokens: [B, L] -> [B, L, L] bool."""
    allowed = valid[:, :, None] & valid[:, None, :]
    eye = torch.eye(valid.shape[1], dtype=torch.bool, device=valid.device)[None]
    return allowed | (eye & ~valid[:, :, None])


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, L, L] bool -> [B, 1, L, L] additive mask (0 where allowed, dtype min elsewhere).

    transformers passes a ready 4D mask through unchanged; an additive float mask works
    for both the eager and the SDPA attention kernels.
    """
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def sdpa_native_gqa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' SDPA attention, but with a mask on CPU the kernel does grouped-query attention.

    A diffusion LM always passes a mask (block-causal, padding). With one, transformers' "sdpa"
    repeats every key and value head (`repeat_kv`) to the query heads before the kernel, so
    each sampler step copies the whole KV cache of every layer, and the learner keeps the
    copies for backward; it does so because CUDA's masked kernels do not take GQA. The CPU
    kernel does (`enable_gqa=True`): same numbers, no copies (on the demo model the cached
    sampler's backbone ran ~15% faster). Everything else (no mask, CUDA, position bias,
    softcap) goes to transformers' function unchanged.
    """
    if (
        attention_mask is not None
        and query.device.type == "cpu"
        and query.shape[1] != key.shape[1]
        and kwargs.get("position_bias") is None
        and kwargs.get("softcap") is None
        and not kwargs.get("output_attentions", False)
    ):
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True
        )
        return out.transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs)


AttentionInterface.register(SDPA_GQA, sdpa_native_gqa)
ALL_MASK_ATTENTION_FUNCTIONS.register(SDPA_GQA, sdpa_mask)  # masks transformers builds itself (generate) stay sdpa's
