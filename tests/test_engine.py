import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

from rollout import SamplingParams, generate
from rollout.engine import transfer_schedule

from .conftest import tiny_lm


def prompts_of(tokenizer, texts):
    return [tokenizer(t)["input_ids"] for t in texts]


def replay_check(lm, traj, params):
    """Replay the step map: at every step the state it implies must make the sampler's
    choices (greedy argmax at T=0) and nothing else."""
    bs, plen = lm.block_size, len(traj.prompt_ids)
    seq = traj.prompt_ids + traj.completion_ids
    for step in sorted(set(traj.step_map)):
        cur = [c for c, s in enumerate(traj.step_map) if s == step]
        blk = (plen + cur[0]) // bs
        assert all((plen + c) // bs == blk for c in cur), "one step commits inside one block"
        blk_end = (blk + 1) * bs
        state = [t if i < plen or traj.step_map[i - plen] < step else lm.mask_id for i, t in enumerate(seq[:blk_end])]
        lo = max(blk * bs, plen)
        logits = lm.sequence_logits(torch.tensor([state]), torch.arange(lo, blk_end)[None])
        lp = lm.sampling_logprobs(logits, 1.0)[0]
        for c in cur:
            assert lp[plen + c - lo].argmax().item() == traj.completion_ids[c]
            assert math.isclose(lp[plen + c - lo].max().item(), traj.logprobs[c], rel_tol=1e-9, abs_tol=1e-9)
        masked = [i - lo for i in range(lo, blk_end) if state[i] == lm.mask_id]
        if params.strategy == "static":
            conf = lp.max(-1).values
            best = sorted(masked, key=lambda i: -conf[i].item())[: len(cur)]
            assert sorted(best) == sorted(plen + c - lo for c in cur), "static commits the most confident"


@pytest.mark.parametrize("strategy", ["static", "threshold"])
@pytest.mark.parametrize("texts", [["047+385=", "999+001="], ["12+34=", "5+6="]])  # 8 = 2 blocks; 6/4 = partial block
def test_step_map_replays_greedy_decoding(tokenizer, strategy, texts):
    lm = tiny_lm(tokenizer, block_size=4)
    params = SamplingParams(max_new_tokens=7, strategy=strategy, threshold=0.05, temperature=0.0, stop_at_eos=False)
    trajs = generate(lm, prompts_of(tokenizer, texts), params)
    for t in trajs:
        plen = len(t.prompt_ids)
        assert (plen + len(t.completion_ids)) % 4 == 0 and len(t.completion_ids) >= 7
        # steps are 0-based, contiguous, and block j's come after block j-1's
        assert sorted(set(t.step_map)) == list(range(t.num_steps)) == list(range(t.nfe))
        blocks = [(plen + c) // 4 for c in range(len(t.step_map))]
        for c in range(1, len(blocks)):
            if blocks[c] > blocks[c - 1]:
                assert min(s for s, b in zip(t.step_map, blocks) if b == blocks[c]) > max(
                    s for s, b in zip(t.step_map, blocks) if b == blocks[c - 1])
        replay_check(lm, t, params)


def test_static_schedule_commits_k_tokens_per_step(tokenizer):
    lm = tiny_lm(tokenizer, block_size=4)
    params = SamplingParams(max_new_tokens=8, steps_per_block=2, temperature=1.0, stop_at_eos=False)
    (t,) = generate(lm, prompts_of(tokenizer, ["047+385="]), params, torch.Generator().manual_seed(0))
    counts = [t.step_map.count(s) for s in range(t.num_steps)]
    assert counts == [2, 2, 2, 2] and t.nfe == 4
    assert transfer_schedule(5, 2) == [3, 2] and transfer_schedule(2, 4) == [1, 1]


def test_threshold_one_commits_one_token_per_step_and_low_threshold_one_step_per_block(tokenizer):
    lm = tiny_lm(tokenizer, block_size=4)
    p = prompts_of(tokenizer, ["047+385="])
    (slow,) = generate(lm, p, SamplingParams(max_new_tokens=8, strategy="threshold", threshold=1.0, temperature=0.0, stop_at_eos=False))
    (fast,) = generate(lm, p, SamplingParams(max_new_tokens=8, strategy="threshold", threshold=1e-6, temperature=0.0, stop_at_eos=False))
    assert slow.nfe == 8 and fast.nfe == 2
    assert fast.step_map == [0, 0, 0, 0, 1, 1, 1, 1]


def test_batch_equals_alone_at_temperature_zero(tokenizer):
    lm = tiny_lm(tokenizer)
    params = SamplingParams(max_new_tokens=8, temperature=0.0)
    texts = ["047+385=", "12+34=", "999+999=", "1+1="]
    batch = generate(lm, prompts_of(tokenizer, texts), params)
    for text, t in zip(texts, batch):
        (alone,) = generate(lm, prompts_of(tokenizer, [text]), params)
        assert alone.completion_ids == t.completion_ids and alone.step_map == t.step_map


class _BiasHead(torch.nn.Module):
    """Wraps an LM head and adds a bias to one token's logit."""

    def __init__(self, head, token, bias):
        super().__init__()
        self.head, self.token, self.bias = head, token, bias

    def forward(self, h):
        out = self.head(h)
        out[..., self.token] += self.bias
        return out


def test_stops_after_the_block_with_eos(tokenizer):
    lm = tiny_lm(tokenizer)
    lm.model.lm_head = _BiasHead(lm.model.lm_head, lm.eos_id, 100.0)  # EOS wins every position
    (t,) = generate(lm, prompts_of(tokenizer, ["12+34="]), SamplingParams(max_new_tokens=12, temperature=0.0))
    # prompt of 6 with block size 4: the first block is partial (2 tokens), then decoding stops
    assert t.finish_reason == "eos" and t.completion_ids == [lm.eos_id] * 2 and t.text == "" and t.nfe == 2
    (u,) = generate(lm, prompts_of(tokenizer, ["12+34="]), SamplingParams(max_new_tokens=12, temperature=0.0, stop_at_eos=False))
    assert len(u.completion_ids) == 14 and u.finish_reason == "eos"
    lm.model.lm_head.bias = -100.0  # EOS never wins: the budget ends decoding
    (v,) = generate(lm, prompts_of(tokenizer, ["12+34="]), SamplingParams(max_new_tokens=12, temperature=0.0))
    assert v.finish_reason == "length" and len(v.completion_ids) == 14


def test_sampler_never_emits_the_mask_token(tokenizer):
    lm = tiny_lm(tokenizer)
    lm.model.lm_head = _BiasHead(lm.model.lm_head, lm.mask_id, 100.0)  # the mask id would win every argmax
    params = SamplingParams(max_new_tokens=8, temperature=1.0, stop_at_eos=False)
    trajs = generate(lm, prompts_of(tokenizer, ["047+385="] * 4), params, torch.Generator().manual_seed(1))
    assert all(lm.mask_id not in t.completion_ids for t in trajs)


def test_bad_sampling_params_are_rejected():
    with pytest.raises(ValueError, match="strategy"):
        SamplingParams(strategy="fastest")
    with pytest.raises(ValueError, match="threshold"):
        SamplingParams(threshold=0.0)


MIXED = ["047+385=", "12+34=", "5+6=", "1234567+7654321=", "9="]


@pytest.mark.parametrize("strategy", ["static", "threshold"])
def test_kv_cache_gives_the_same_trajectories_as_full_recompute(tokenizer, strategy):
    lm = tiny_lm(tokenizer, block_size=4)
    kw = dict(max_new_tokens=10, strategy=strategy, threshold=0.05, temperature=0.0, stop_at_eos=False)
    cached = generate(lm, prompts_of(tokenizer, MIXED), SamplingParams(**kw))
    full = generate(lm, prompts_of(tokenizer, MIXED), SamplingParams(**kw, kv_cache=False))
    for a, b in zip(cached, full):
        assert a.completion_ids == b.completion_ids and a.step_map == b.step_map and a.nfe == b.nfe
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-10)


def _agreeing_steps(a, b) -> int:
    """How many steps two decodes of one prompt share: the first step at which they commit
    different positions or tokens (after it their states differ, so their log-probs may too)."""
    step = 0
    while True:
        here = [{(c, t.completion_ids[c]) for c, s in enumerate(t.step_map) if s == step} for t in (a, b)]
        if not here[0] or here[0] != here[1]:
            return step
        step += 1


def test_kv_cache_drift_in_float32_is_bounded(tokenizer):
    lm = tiny_lm(tokenizer, block_size=4, double=False)
    kw = dict(max_new_tokens=12, temperature=0.0, stop_at_eos=False)
    prompts = prompts_of(tokenizer, MIXED)
    cached = generate(lm, prompts, SamplingParams(**kw))
    full = generate(lm, prompts, SamplingParams(**kw, kv_cache=False))
    shared = total = 0
    for a, b in zip(cached, full):
        # A 1e-6 near-tie may flip a token in fp32: up to the first step where the two decodes
        # differ they saw the same states, so their log-probs agree to fp32 rounding.
        steps = _agreeing_steps(a, b)
        assert steps >= 1, "the first step (prompt from the cache vs recomputed) already differs"
        same = [c for c, s in enumerate(a.step_map) if s < steps]
        assert max(abs(a.logprobs[c] - b.logprobs[c]) for c in same) < 1e-4
        shared, total = shared + len(same), total + len(a.completion_ids)
    assert shared >= 0.75 * total, f"only {shared} of {total} tokens decoded alike"
    # The same weights in float64: no near-tie at this precision, the cache changes nothing.
    lm.model.double()
    for a, b in zip(generate(lm, prompts, SamplingParams(**kw)), generate(lm, prompts, SamplingParams(**kw, kv_cache=False))):
        assert (a.completion_ids, a.step_map, a.nfe) == (b.completion_ids, b.step_map, b.nfe)
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-10)


@settings(max_examples=25, deadline=None)
@given(
    texts=st.lists(st.text(alphabet="0123456789+=", min_size=1, max_size=11), min_size=1, max_size=4),
    block_size=st.integers(1, 5),
    strategy=st.sampled_from(["static", "threshold"]),
    confidence=st.sampled_from(["prob", "margin", "entropy"]),
)
def test_property_replaying_the_step_map_reproduces_the_decode(tokenizer, texts, block_size, strategy, confidence):
    lm = _PROPERTY_LMS.setdefault(block_size, tiny_lm(tokenizer, block_size=block_size))
    params = SamplingParams(max_new_tokens=6, strategy=strategy, threshold=0.1, temperature=0.0, confidence=confidence, stop_at_eos=False)
    for t in generate(lm, prompts_of(tokenizer, texts), params):
        replay_check(lm, t, params if confidence == "prob" else SamplingParams(strategy="threshold"))


_PROPERTY_LMS: dict = {}


def test_top_k_one_and_tiny_top_p_are_greedy(tokenizer):
    lm = tiny_lm(tokenizer)
    p = prompts_of(tokenizer, MIXED)
    greedy = [t.completion_ids for t in generate(lm, p, SamplingParams(max_new_tokens=8, temperature=0.0, stop_at_eos=False))]
    g = torch.Generator().manual_seed(0)
    for extra in ({"top_k": 1}, {"top_p": 1e-9}):
        out = generate(lm, p, SamplingParams(max_new_tokens=8, temperature=1.0, stop_at_eos=False, **extra), g)
        assert [t.completion_ids for t in out] == greedy
        # log-probs are of the full temperature-1 distribution, not the truncated one
        assert all(lp < 0 for t in out for lp in t.logprobs)
