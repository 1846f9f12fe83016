"""Model-family traits: what a family is, asked of the family, never inferred from another field.

The sampler, the estimators, SFT and the learner branch on these (`traits.full_attention`,
`traits.shift_logits`, `traits.approximate_caches`), not on `block_size is None` or a family name:
a new family is one `FamilyTraits` entry in FAMILIES plus its architecture in rollout/models.py.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Attention(str, enum.Enum):
    """The attention pattern a family was trained with (rollout.attention builds both)."""

    BLOCK_CAUSAL = "block_causal"  # causal across blocks, bidirectional inside one (SDAR, TraDo)
    FULL = "full"  # bidirectional over the whole sequence (LLaDA, Dream, DiffuCoder)


@dataclass(frozen=True)
class FamilyTraits:
    """One model family as the sampler and the learner need it (`DiffusionLM.traits`)."""

    name: str
    """Key in FAMILIES; written to config.json as `unmask_family`."""
    attention: Attention
    """Block-causal: blocks of `block_size` on absolute positions, decoded one after another.
    Full: the whole completion is one block for training (a sampler's semi-AR `block_length`
    is a decoding setting, not the model's)."""
    shift_logits: bool
    """True: the hidden state at p-1 predicts the token at p (Dream, DiffuCoder: AR-style heads).
    False: p predicts p (LLaDA, SDAR)."""
    block_size: int | None = None
    """Tokens per block of block-causal attention. A registry entry leaves it None where each
    checkpoint says (config.block_size or `model.block_size`); a loaded model's traits carry it.
    Under full attention nothing reads it as a block grid."""
    budget_on_block_grid: bool = True
    """Block-causal decoding only. True: a decode runs to the end of the block holding its
    max_new_tokens-th token, as SDAR's generate rounds its canvas up to whole blocks (a prompt
    ending mid-block gets up to block_size - 1 more tokens). False: exactly max_new_tokens, the
    last block cut there and its columns past the budget out of attention (Stable-DiffCoder's
    generate_block)."""
    approximate_caches: frozenset[str] = frozenset()
    """KV caches the sampler offers this family whose logits are not the model's own:
    "prefix" (`kv_cache` under full attention) and "dual" (`dual_cache`), Fast-dLLM style.
    Empty: every cache is exact (block-causal: committed blocks never change)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "attention", Attention(self.attention))
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"family {self.name!r}: block_size must be >= 1, got {self.block_size}")

    @property
    def full_attention(self) -> bool:
        return self.attention is Attention.FULL

    @property
    def block_causal(self) -> bool:
        return self.attention is Attention.BLOCK_CAUSAL

    @property
    def logit_shift(self) -> int:
        """Positions between a hidden state and the token it predicts: 1 for shifted heads, else 0."""
        return 1 if self.shift_logits else 0


_FULL_ATTENTION_CACHES = frozenset({"prefix", "dual"})

FAMILIES: dict[str, FamilyTraits] = {
    # Block diffusion on a Qwen3 backbone with aligned logits (SDAR, TraDo, tiny CPU models).
    "block": FamilyTraits("block", Attention.BLOCK_CAUSAL, shift_logits=False),
    # Full-attention masked diffusion with aligned logits (LLaDA; Llama architecture).
    "llada": FamilyTraits("llada", Attention.FULL, shift_logits=False, approximate_caches=_FULL_ATTENTION_CACHES),
    # Full-attention masked diffusion with AR-style shifted logits (Dream, DiffuCoder; Qwen2).
    "dream": FamilyTraits("dream", Attention.FULL, shift_logits=True, approximate_caches=_FULL_ATTENTION_CACHES),
    # Block diffusion on a Glm4Moe backbone with aligned logits (LLaDA2.0/2.1-mini: their own generate()
    # uses blocks of 32 from position 0; 2.1's token editing is not used, see README).
    "llada2": FamilyTraits("llada2", Attention.BLOCK_CAUSAL, shift_logits=False, block_size=32),
    # Block diffusion on a Qwen3-MoE backbone with aligned logits (SDAR-30B-A3B-Chat/-Sci): SDAR's traits,
    # blocks of config.block_size (the hub config has none: 4, as SDAR's decoders use).
    "sdar_moe": FamilyTraits("sdar_moe", Attention.BLOCK_CAUSAL, shift_logits=False),
    # Block diffusion on a Qwen2.5 backbone with shifted logits (Fast-dLLM v2: bd_size 32; a block's
    # first token is predicted by the clean last token of the block before, as its generate() does).
    "fast_dllm_v2": FamilyTraits("fast_dllm_v2", Attention.BLOCK_CAUSAL, shift_logits=True, block_size=32),
    # Block diffusion on a Llama backbone with aligned logits (Stable-DiffCoder-8B-Base/-Instruct: its own
    # generate_block() uses blocks of 4 from position 0, shift=False, and decodes exactly gen_length tokens).
    "stable_diffcoder": FamilyTraits("stable_diffcoder", Attention.BLOCK_CAUSAL, shift_logits=False, block_size=4, budget_on_block_grid=False),
}


def family_traits(name: str) -> FamilyTraits:
    """The registered traits of family `name` (a key of FAMILIES)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name]


def is_full_attention(block_size: int | None, full_attention: bool | None = None) -> bool:
    """Whether a pure function over a block grid (trace, packing, SFT masks) treats the completion
    as one block.

    `full_attention` comes from the family (`FamilyTraits.full_attention`) and decides; then
    block-causal attention needs `block_size`. None is for callers holding only a recorded grid
    (a `Trajectory.block_size`, which the sampler records as None under full attention).
    """
    if full_attention is None:
        return block_size is None
    if not full_attention and (block_size is None or block_size < 1):
        raise ValueError(f"block-causal attention needs block_size >= 1, got {block_size!r}")
    return bool(full_attention)
