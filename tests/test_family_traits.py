"""A model family's traits are asked of the family (rollout/families.py), never read off `block_size`.

The built-in families carry the facts of DESIGN.md; a toy family whose traits say full attention
while it still carries a block size is decoded, replayed, estimated and fine-tuned exactly as
full attention, and a toy block-causal family whose checkpoint config has no block size as
block diffusion on its traits' grid.
"""

import dataclasses

import pytest
import torch

from algorithms import trace_logprobs
from algorithms.estimators import ESTIMATORS, _block_spans
from algorithms.packing import pack_noisy
from algorithms.sft import pad_completion, random_block_mask, sft_loss
from algorithms.trace import trace_pass_index, trace_step_index
from rollout import SamplingParams, generate
from rollout.families import FAMILIES, Attention, FamilyTraits, is_full_attention
from rollout.models import DiffusionLM, build_tiny_lm, load_model

from .test_hub_checkpoints import BUILDERS

FULL_CACHES = frozenset({"prefix", "dual"})
TEXTS = ["047+385=", "12+34=", "5+6="]


def tiny(tokenizer, family, **kw):
    lm = build_tiny_lm(tokenizer, family=family, hidden_size=32, num_layers=1, intermediate_size=64, **kw)
    lm.model.double()
    return lm


def test_registered_families_carry_their_facts():
    assert FAMILIES["block"] == FamilyTraits("block", Attention.BLOCK_CAUSAL, shift_logits=False)  # block size: per checkpoint
    assert FAMILIES["llada"] == FamilyTraits("llada", Attention.FULL, shift_logits=False, approximate_caches=FULL_CACHES)
    assert FAMILIES["dream"] == FamilyTraits("dream", Attention.FULL, shift_logits=True, approximate_caches=FULL_CACHES)
    assert FAMILIES["block"].block_causal and not FAMILIES["block"].full_attention and FAMILIES["dream"].logit_shift == 1
    assert FAMILIES["llada"].attention == "full" and FAMILIES["llada"].logit_shift == 0


# hub layout -> the traits the loaded model must carry (SDAR and TraDo share model_type sdar and blocks of 4)
HUB_TRAITS = {
    "sdar": FamilyTraits("block", Attention.BLOCK_CAUSAL, shift_logits=False, block_size=4),
    "llada": FamilyTraits("llada", Attention.FULL, shift_logits=False, approximate_caches=FULL_CACHES),
    "dream": FamilyTraits("dream", Attention.FULL, shift_logits=True, approximate_caches=FULL_CACHES),
    # Stable-DiffCoder: blocks of 4, aligned heads, and its generate_block's exact budget (the last block cut)
    "stable_diffcoder": FamilyTraits("stable_diffcoder", Attention.BLOCK_CAUSAL, shift_logits=False, block_size=4, budget_on_block_grid=False),
}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_hub_checkpoints_load_with_their_familys_traits(tmp_path, name):
    BUILDERS[name](tmp_path / name)
    lm = load_model(tmp_path / name)
    assert lm.traits == HUB_TRAITS[name]
    assert lm.family is lm.traits and lm.block_size == lm.traits.block_size


def test_tiny_models_resolve_their_block_size_and_keep_it_through_a_checkpoint(tokenizer, tmp_path):
    block = tiny(tokenizer, "block", block_size=2)
    assert block.traits == FamilyTraits("block", Attention.BLOCK_CAUSAL, shift_logits=False, block_size=2)
    block.save_pretrained(tmp_path / "block")
    assert load_model(tmp_path / "block").traits == block.traits
    for family in ("llada", "dream"):  # a block size handed to a full-attention family is no trait of it
        lm = tiny(tokenizer, family, block_size=2)
        assert lm.traits == FAMILIES[family] and lm.block_size is None


def test_pure_functions_follow_full_attention_not_the_block_size():
    steps, plen = [3, 0, 2, 1, 5, 4], 2
    one_block = trace_pass_index(steps, plen, None, 1)
    assert trace_pass_index(steps, plen, 4, 1, full_attention=True) == one_block != trace_pass_index(steps, plen, 4, 1)
    assert trace_step_index(steps, plen, 4, 2, full_attention=True) == trace_step_index(steps, plen, None, 2)
    assert trace_pass_index(steps, plen, 4, 1, full_attention=False) == trace_pass_index(steps, plen, 4, 1) == [1, 0, 1, 0, 3, 2]
    assert _block_spans(plen, 6, 4, full_attention=True) == [(0, 6)] and _block_spans(plen, 6, 4) == [(0, 2), (2, 6)]
    assert pad_completion(6, [5, 6], 4, 5, 1, full_attention=True) == [5, 6, 1, 1, 1]  # the canvas, not the block
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert random_block_mask(plen, 9, 4, g1, full_attention=True) == random_block_mask(plen, 9, None, g2)
    packed = pack_noisy([[7, 8]], [[9, 10, 11]], [[True, False, True]], 4, mask_id=2, pad_id=0, full_attention=True)
    plain = pack_noisy([[7, 8]], [[9, 10, 11]], [[True, False, True]], None, mask_id=2, pad_id=0)
    assert packed.block_ids is None and packed.input_ids.tolist() == plain.input_ids.tolist() == [[7, 8, 2, 10, 2]]
    with pytest.raises(ValueError, match="block-causal attention needs block_size"):
        trace_pass_index(steps, plen, None, 1, full_attention=False)
    assert is_full_attention(4, True) and not is_full_attention(4, None) and is_full_attention(None, None)


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_full_attention_family_with_a_block_size_is_treated_as_full_attention(tokenizer, monkeypatch):
    """Everything that branches on attention asks the traits: a block size on a full-attention
    family (here 4, a grid the model was never trained on) changes nothing."""
    monkeypatch.setitem(FAMILIES, "toy_full", FamilyTraits("toy_full", Attention.FULL, shift_logits=False, block_size=4))
    ref = tiny(tokenizer, "llada")
    toy = DiffusionLM(ref.model, tokenizer, family="toy_full")
    assert toy.traits.full_attention and toy.block_size == 4
    prompts = [tokenizer(t)["input_ids"] for t in TEXTS]
    params = SamplingParams(max_new_tokens=8, block_length=4, temperature=0.8, kv_cache=False)
    trajs = generate(ref, prompts, params, torch.Generator().manual_seed(0))
    again = generate(toy, prompts, params, torch.Generator().manual_seed(0))
    assert [t.completion_ids for t in again] == [t.completion_ids for t in trajs] and all(t.block_size is None for t in again)
    assert _same(trace_logprobs(toy, trajs, shrink=1)[:2], trace_logprobs(ref, trajs, shrink=1)[:2])
    assert _same(trace_logprobs(toy, trajs, shrink=2)[:2], trace_logprobs(ref, trajs, shrink=2)[:2])
    for name in ("one_step", "coupled", "mc_elbo", "block_random"):
        assert _same(ESTIMATORS[name](toy, trajs, seed=3), ESTIMATORS[name](ref, trajs, seed=3)), name
    completions = [t.completion_ids for t in trajs]
    loss_toy, _ = sft_loss(toy, prompts, completions, torch.Generator().manual_seed(1))
    loss_ref, _ = sft_loss(ref, prompts, completions, torch.Generator().manual_seed(1))
    assert torch.equal(loss_toy, loss_ref)


def test_a_block_causal_family_decodes_and_replays_on_its_traits_grid(tokenizer, monkeypatch):
    """The other way round: a block-causal family whose checkpoint config names no block size takes
    its traits' (2) and is block diffusion on that grid, like the block family at block size 2."""
    ref = tiny(tokenizer, "block", block_size=2)
    monkeypatch.setitem(FAMILIES, "toy_block", dataclasses.replace(FAMILIES["block"], name="toy_block", block_size=2))
    monkeypatch.delattr(ref.model.config, "block_size")
    toy = DiffusionLM(ref.model, tokenizer, family="toy_block")
    assert toy.traits.block_causal and toy.block_size == 2
    prompts = [tokenizer(t)["input_ids"] for t in TEXTS]
    params = SamplingParams(max_new_tokens=6, temperature=0.8)
    trajs = generate(ref, prompts, params, torch.Generator().manual_seed(0))
    again = generate(toy, prompts, params, torch.Generator().manual_seed(0))
    assert [t.step_map for t in again] == [t.step_map for t in trajs] and all(t.block_size == 2 for t in again)
    assert _same(trace_logprobs(toy, trajs)[:2], trace_logprobs(ref, trajs)[:2])
