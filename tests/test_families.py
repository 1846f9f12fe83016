"""Every model family on a tiny random model of its architecture: decode, replay, cache, learn."""

import pytest
import torch
from transformers import LlamaForCausalLM, Qwen2ForCausalLM

from algorithms import trace_logprobs
from rollout import SamplingParams, build_char_tokenizer, generate, load_model
from rollout.models import build_tiny_lm

FULL = ["llada", "dream"]
TEXTS = ["047+385=", "12+34=", "5+6="]


def tiny(tokenizer, family):
    lm = build_tiny_lm(tokenizer, family=family, hidden_size=64, num_layers=2, intermediate_size=128)
    lm.model.double()
    return lm


def prompts(tokenizer):
    return [tokenizer(t)["input_ids"] for t in TEXTS]


def test_families_use_their_architectures(tokenizer, tmp_path):
    assert isinstance(tiny(tokenizer, "llada").model, LlamaForCausalLM)
    dream = tiny(tokenizer, "dream")
    assert isinstance(dream.model, Qwen2ForCausalLM) and dream.family.shift_logits
    dream.model.float()
    dream.save_pretrained(tmp_path)
    again = load_model(tmp_path)
    assert again.family.name == "dream" and again.block_size is None and again.mask_id == tokenizer.mask_token_id


def test_dream_predicts_each_token_from_the_previous_position(tokenizer):
    dream = tiny(tokenizer, "dream")
    x = torch.tensor([tokenizer("12+34=")["input_ids"]])
    hidden = dream.encode(x, torch.arange(6)[None], torch.ones(1, 6, 6, dtype=torch.bool))
    logits = dream.forward_logits(x, torch.arange(6)[None], torch.ones(1, 6, 6, dtype=torch.bool), torch.tensor([[3]]))
    assert torch.allclose(logits[0, 0], dream.model.lm_head(hidden[0, 2]))


@pytest.mark.parametrize("family", FULL)
@pytest.mark.parametrize("strategy", ["static", "threshold"])
def test_full_attention_replay_matches_rollout_logprobs(tokenizer, family, strategy):
    lm = tiny(tokenizer, family)
    params = SamplingParams(max_new_tokens=8, block_length=4, strategy=strategy, threshold=0.3, temperature=0.8, kv_cache=False)
    trajs = generate(lm, prompts(tokenizer), params, torch.Generator().manual_seed(0))
    for t in trajs:
        assert t.block_size is None and len(t.completion_ids) == 8
        assert sorted(set(t.step_map)) == list(range(t.nfe))
        assert max(t.step_map[:4]) < min(t.step_map[4:])  # semi-AR: block 2 after block 1
    logp, mask, _ = trace_logprobs(lm, trajs, shrink=1)
    for i, t in enumerate(trajs):
        assert torch.allclose(logp[i, : len(t.logprobs)], torch.tensor(t.logprobs, dtype=logp.dtype), atol=1e-9)


@pytest.mark.parametrize("family", FULL)
def test_full_attention_batch_equals_alone(tokenizer, family):
    lm = tiny(tokenizer, family)
    params = SamplingParams(max_new_tokens=6, block_length=3, temperature=0.0)
    batch = generate(lm, prompts(tokenizer), params)
    for p, t in zip(prompts(tokenizer), batch):
        (alone,) = generate(lm, [p], params)
        assert alone.completion_ids == t.completion_ids and alone.step_map == t.step_map


@pytest.mark.parametrize("family", FULL)
@pytest.mark.parametrize("dual", [False, True])
def test_prefix_and_dual_cache_stay_close_to_full_recompute(tokenizer, family, dual):
    """The caches are approximate for full attention: bound the drift of their log-probs and
    check that the first step of every block (a fresh full forward) is exact."""
    lm = tiny(tokenizer, family)
    kw = dict(max_new_tokens=12, block_length=4, temperature=0.0)
    exact = generate(lm, prompts(tokenizer), SamplingParams(**kw, kv_cache=False))
    cached = generate(lm, prompts(tokenizer), SamplingParams(**kw, dual_cache=dual))
    agree = 0
    for a, b in zip(exact, cached):
        plen = len(b.prompt_ids)
        for blk in range(3):  # 12 tokens in blocks of 4
            first = min(b.step_map[4 * blk : 4 * blk + 4])
            # The canvas the cached decode saw at this block's first step: what it had committed
            # before, the rest masked. A full forward of it alone (no cache, no batch) must give
            # the same log-probs and greedy choices for the tokens committed at that step.
            state = b.prompt_ids + [t if s < first else lm.mask_id for t, s in zip(b.completion_ids, b.step_map)]
            now = [c for c, s in enumerate(b.step_map) if s == first]
            assert now and all(4 * blk <= c < 4 * blk + 4 for c in now)
            with torch.no_grad():
                lp = lm.sampling_logprobs(lm.sequence_logits(torch.tensor([state]), torch.tensor([[plen + c for c in now]])), 1.0)[0]
            assert [int(lp[k].argmax()) for k in range(len(now))] == [b.completion_ids[c] for c in now]
            assert [b.logprobs[c] for c in now] == pytest.approx([float(lp[k, b.completion_ids[c]]) for k, c in enumerate(now)], abs=1e-9), (blk, now)
        agree += sum(u == v for u, v in zip(a.completion_ids, b.completion_ids))
        assert b.nfe == a.nfe
    assert agree / sum(len(a.completion_ids) for a in exact) >= 0.5


class _PositionBias(torch.nn.Module):
    """LM head + a per-row bias [S, V]: rows are the block's positions in order."""

    def __init__(self, head, bias):
        super().__init__()
        self.head, self.bias = head, bias

    def forward(self, h):
        return self.head(h) + self.bias[: h.shape[1]].to(h.dtype)


@pytest.mark.parametrize("family", FULL)
def test_eos_guard_keeps_eos_from_being_committed_first(tokenizer, family, monkeypatch):
    from rollout.engine import _Decoder

    # The biased head reads its slots as the block's positions in order: every position must be
    # predicted at every step (a step otherwise predicts only the masked ones, gathered in front).
    monkeypatch.setattr(_Decoder, "masked_logits", False)
    lm = tiny(tokenizer, family)
    five = tokenizer.convert_tokens_to_ids("5")
    bias = torch.zeros(8, lm.model.config.vocab_size, dtype=torch.float64)
    bias[:4, five] = 12.0  # the first half is confidently "5"
    bias[4:, lm.eos_id] = 16.0  # the second half is even more confidently EOS
    lm.model.lm_head = _PositionBias(lm.model.lm_head, bias)
    kw = dict(max_new_tokens=8, block_length=8, temperature=0.0, strategy="static", kv_cache=False)
    p = prompts(tokenizer)
    first = lambda t: t.completion_ids[t.step_map.index(0)]  # noqa: E731  the token committed at step 0
    assert all(first(t) == lm.eos_id for t in generate(lm, p, SamplingParams(**kw)))
    guarded = generate(lm, p, SamplingParams(**kw, eos_guard=0.01))
    assert all(first(g) == five for g in guarded)
    assert all(g.completion_ids == [five] * 4 + [lm.eos_id] * 4 for g in guarded)  # same answer, EOS last
