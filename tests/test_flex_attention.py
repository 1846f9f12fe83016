"""Flex attention: the BlockMask built from the packed layout's vectors is exactly the dense
pattern, and a model running flex attention gives the logits of the dense-mask path."""

import pytest
import torch
from torch.nn.attention.flex_attention import create_mask

from algorithms.packing import pack_noisy
from algorithms.trace import trace_logprobs
from rl.config import RunConfig
from rl.learner import Learner
from rollout.models import build_tiny_lm
from rollout.trajectory import Trajectory

from .conftest import BASE_CKPT

PROMPTS = [[5, 6, 7, 8, 9], [5, 6], [4, 5, 6, 7, 8, 9, 10, 11, 12]]  # first block cut by the prompt, and not
COMPLETIONS = [[10, 11, 12, 13, 14, 15, 16], [20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30], [13, 14, 15]]


@pytest.fixture(autouse=True)
def eager_flex(monkeypatch):
    """transformers compiles flex attention on first use: a C++ build on CPU that takes tens of
    seconds (and that torch's CPU codegen fails for some of these shapes). Eager flex attention
    computes the same function, which is what these tests check; the kernel is torch's."""
    from torch.nn.attention.flex_attention import flex_attention
    from transformers.integrations import flex_attention as hf_flex

    monkeypatch.setattr(hf_flex.WrappedFlexAttention, "__call__", lambda self: flex_attention)


def packed(block_size):
    g = torch.Generator().manual_seed(0)
    noisy = [(torch.rand(len(c), generator=g) < 0.5).tolist() for c in COMPLETIONS]
    return pack_noisy(PROMPTS, COMPLETIONS, noisy, block_size, mask_id=2, pad_id=0)


@pytest.mark.parametrize("block_size", [4, 3, None])
def test_block_mask_is_the_dense_pattern(block_size):
    p = packed(block_size)
    n, length = p.input_ids.shape
    block_mask = p.attention(flex=True)
    dense = create_mask(block_mask.mask_mod, n, 1, length, length, device="cpu")[:, 0]
    # a real pattern: padding (and, on block models, most pairs) may not attend
    assert p.allowed.sum() < p.allowed.numel() * (0.5 if block_size else 0.95)
    assert torch.equal(dense, p.allowed)  # padding rows included (they see themselves only)


@pytest.mark.parametrize("family,block_size", [("block", 4), ("llada", None)])
def test_flex_attention_logits_equal_the_dense_mask_path(tokenizer, family, block_size):
    lm = build_tiny_lm(tokenizer, family=family, block_size=block_size, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)
    p = packed(block_size)
    with torch.no_grad():  # torch has no flex attention backward on CPU
        want = lm.forward_logits(p.input_ids, p.position_ids, p.attention(lm.flex), p.select)
        assert not lm.flex
        lm.model.set_attn_implementation("flex_attention")
        assert lm.flex
        got = lm.forward_logits(p.input_ids, p.position_ids, p.attention(lm.flex), p.select)
    real = p.completion_mask
    assert torch.allclose(got[real], want[real], atol=1e-5)


def test_trace_replay_under_flex_attention_scores_the_same(tokenizer):
    lm = build_tiny_lm(tokenizer, block_size=4, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)
    trajs = [
        Trajectory(p, c, list(range(len(c)))[::-1], [0.0] * len(c), 4, 1.0, len(c), "length", group=0)
        for p, c in zip(PROMPTS, COMPLETIONS)
    ]
    with torch.no_grad():
        want, mask, _ = trace_logprobs(lm, trajs)
        lm.model.set_attn_implementation("flex_attention")
        got, _, _ = trace_logprobs(lm, trajs)
    assert mask.sum() == sum(len(c) for c in COMPLETIONS)
    assert torch.allclose(got[mask], want[mask], atol=1e-5)


def test_flex_learner_on_cpu_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="flex needs a GPU learner"):  # by the config, before any actor starts
        RunConfig.model_validate(
            {"data": {"sources": [{"path": "arithmetic"}]}, "model": {"path": str(BASE_CKPT)}, "learner": {"attention": "flex"}, "wandb": {"mode": "disabled"}}
        )
    cfg = RunConfig.model_validate(
        {"data": {"sources": [{"path": "arithmetic"}]}, "model": {"path": str(BASE_CKPT)}, "cluster": {"gpus_per_bundle": 1},
         "learner": {"attention": "flex"}, "wandb": {"mode": "disabled"}}
    )
    with pytest.raises(ValueError, match="flex needs a GPU learner"):  # asked for a GPU, found none
        Learner(cfg)
