import math

import pytest
import torch

from algorithms import group_advantages, k3_kl, policy_loss, trace_logprobs, trace_pass_index
from algorithms.sft import pad_completion, random_block_mask, sft_loss
from algorithms.trace import loss_length
from rollout import SamplingParams, generate

from .conftest import tiny_lm


# -- advantages ---------------------------------------------------------------------------
def test_group_zscore_matches_hand_computation():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    g = torch.tensor([0, 0, 0, 0, 1, 1])
    adv = group_advantages(r, g, "zscore")
    std = math.sqrt(((0.5**2) * 4) / 3)  # Bessel-corrected std of [1, 0, 0, 1]
    assert adv[:4].tolist() == pytest.approx([0.5 / std, -0.5 / std, -0.5 / std, 0.5 / std], rel=1e-5)
    assert adv[4:].tolist() == [0.0, 0.0]  # zero-variance group contributes nothing


def test_leave_one_out_and_mean_modes_with_interleaved_groups():
    r = torch.tensor([3.0, 10.0, 1.0, 20.0, 2.0])
    g = torch.tensor([7, 9, 7, 9, 7])  # groups interleaved, arbitrary ids
    loo = group_advantages(r, g, "loo")
    assert loo.tolist() == pytest.approx([3 - 1.5, 10 - 20, 1 - 2.5, 20 - 10, 2 - 2.0])
    assert group_advantages(r, g, "mean").tolist() == pytest.approx([1.0, -5.0, -1.0, 5.0, 0.0])
    with pytest.raises(ValueError, match="advantage mode"):
        group_advantages(r, g, "median")


# -- losses -------------------------------------------------------------------------------
def test_policy_loss_clips_like_ppo_by_hand():
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.0]]))  # ratios 1.5, 0.5, 1.0 against old = 0
    old = torch.zeros(1, 3)
    mask = torch.tensor([[True, True, True]])
    loss, m = policy_loss(logp, old, torch.tensor([2.0]), mask, eps_low=0.2, eps_high=0.2)
    # A > 0: per token max(-A r, -A clip(r)) = -2*min(r, clip r) = -2*1.2, -2*0.5, -2*1.0
    assert loss.item() == pytest.approx((-2.4 - 1.0 - 2.0) / 3, rel=1e-6)
    assert m["clipfrac"] == pytest.approx(1 / 3)
    loss_neg, _ = policy_loss(logp, old, torch.tensor([-1.0]), mask, eps_low=0.2, eps_high=0.2)
    # A < 0: per token max(r, clip r) = 1.5, 0.8, 1.0
    assert loss_neg.item() == pytest.approx((1.5 + 0.8 + 1.0) / 3, rel=1e-6)


def test_policy_loss_kl_and_sequence_norm():
    logp = torch.log(torch.tensor([[0.5, 0.25, 1.0], [0.5, 1.0, 1.0]]))
    ref = torch.log(torch.tensor([[0.25, 0.25, 1.0], [1.0, 1.0, 1.0]]))
    mask = torch.tensor([[True, True, False], [True, False, False]])
    k3 = k3_kl(logp, ref)
    # exp(d) - d - 1 with d = ref - logp:  [0, 0] d = log(1/2): 0.5 + ln 2 - 1 = 0.19314718;  [0, 1] d = 0: 0
    #                                      [1, 0] d = log 2:   2 - ln 2 - 1 = 0.30685282
    assert k3[0, 0].item() == pytest.approx(0.19314718, rel=1e-6)
    assert k3[0, 1].item() == 0.0
    assert k3[1, 0].item() == pytest.approx(0.30685282, rel=1e-6)
    adv = torch.zeros(2)
    tok, m = policy_loss(logp, logp.detach(), adv, mask, ref_logp=ref, beta=0.1, norm="token")
    seq, _ = policy_loss(logp, logp.detach(), adv, mask, ref_logp=ref, beta=0.1, norm="sequence")
    # token mean: 0.1 * (0.19314718 + 0 + 0.30685282) / 3 = 0.1 * 0.5 / 3 = 0.016666667
    assert tok.item() == pytest.approx(0.1 * 0.5 / 3, rel=1e-6)
    assert m["kl"] == pytest.approx(0.5 / 3, rel=1e-6)
    # sequence mean: 0.1 * ((0.19314718 + 0) / 2 + 0.30685282) / 2 = 0.1 * 0.40342641 / 2 = 0.020171320
    assert seq.item() == pytest.approx(0.02017132, rel=1e-6)


def test_policy_gradient_sign():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, _ = policy_loss(logp, logp.detach(), torch.tensor([1.0]), torch.ones(1, 2, dtype=torch.bool))
    loss.backward()
    assert (logp.grad < 0).all()  # minimising the loss raises the log-prob of a good sample


# -- TraceRL --------------------------------------------------------------------------------
def test_trace_pass_index_groups_steps_within_blocks():
    # prompt 2, block 4: completion tokens 0-1 in block 0 (partial), 2-5 in block 1
    steps = [1, 0, 5, 2, 3, 2]
    assert trace_pass_index(steps, 2, 4, shrink=1) == [1, 0, 2, 0, 1, 0]
    assert trace_pass_index(steps, 2, 4, shrink=2) == [0, 0, 1, 0, 0, 0]


@pytest.mark.parametrize("text,shrink", [("047+385=", 1), ("12+34=", 1), ("047+385=", 2)])
def test_trace_logprobs_match_the_rollout_and_cost_ceil_steps_over_s_passes(tokenizer, text, shrink, monkeypatch):
    lm = tiny_lm(tokenizer)
    params = SamplingParams(max_new_tokens=8, temperature=0.7, stop_at_eos=False)
    trajs = generate(lm, [tokenizer(text)["input_ids"]] * 3, params, torch.Generator().manual_seed(3))
    calls = []
    real = lm.forward_logprobs
    monkeypatch.setattr(lm, "forward_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k))
    logp, mask, _ = trace_logprobs(lm, trajs, shrink=shrink)
    assert len(calls) == math.ceil(4 / shrink)  # one packed pass per step group, all blocks at once
    for i, t in enumerate(trajs):  # scored: up to and including the first EOS; the filler after it is context only
        assert mask[i].sum() == loss_length(t.completion_ids, lm.eos_id) and (logp[i][~mask[i]] == 0).all()
    if shrink == 1:  # the replay sees exactly the sampler's context
        for i, t in enumerate(trajs):
            m = mask[i, : len(t.logprobs)]
            assert torch.allclose(logp[i, : len(t.logprobs)][m], torch.tensor(t.logprobs, dtype=logp.dtype)[m], atol=1e-9)


def test_block_size_one_trace_equals_sequential_likelihood(tokenizer):
    """Autoregression is block diffusion with block size 1: the TraceRL log-prob must be the
    exact left-to-right log-likelihood."""
    lm = tiny_lm(tokenizer, block_size=1)
    prompt = tokenizer("12+34=")["input_ids"]
    (t,) = generate(lm, [prompt], SamplingParams(max_new_tokens=5, temperature=1.0, stop_at_eos=False), torch.Generator().manual_seed(0))
    logp, _, _ = trace_logprobs(lm, [t], shrink=1)
    seq, total = prompt + t.completion_ids, 0.0
    for c, tok in enumerate(t.completion_ids):
        x = torch.tensor([seq[: len(prompt) + c] + [lm.mask_id]])
        lp = lm.sampling_logprobs(lm.sequence_logits(x, torch.tensor([[x.shape[1] - 1]])), 1.0)
        total += lp[0, 0, tok].item()
    assert logp.sum().item() == pytest.approx(total, abs=1e-9)


def _replayed_state_logprobs(lm, t, shrink):
    """TraceRL's log-probs re-derived without the packed forward: for each loss token c, build the
    state its pass replays by hand (earlier blocks clean; in c's block every token decoded at or
    after the first step of c's group of `shrink` steps masked; later blocks absent), run the
    plain model over it with a block-causal additive mask, and read c's sampling log-prob
    (logits / temperature, mask id and ids past the tokenizer excluded). Returns a list [loss tokens]."""
    plen, bs, comp = len(t.prompt_ids), lm.block_size, t.completion_ids
    n_loss = comp.index(lm.eos_id) + 1 if lm.eos_id in comp else len(comp)  # up to and including the first EOS
    out = []
    for c in range(n_loss):
        first = max(0, (plen + c) // bs * bs - plen)  # c's block, as completion indices [first, end)
        end = min(((plen + c) // bs + 1) * bs - plen, len(comp))
        steps = sorted(set(t.step_map[first:end]))
        group_start = steps[steps.index(t.step_map[c]) // shrink * shrink]
        noisy = [lm.mask_id if (j >= first and t.step_map[j] >= group_start) else tok for j, tok in enumerate(comp[:end])]
        x = torch.tensor([list(t.prompt_ids) + noisy])
        pos = torch.arange(x.shape[1])
        allowed = (pos[None, :] // bs) <= (pos[:, None] // bs)  # block-causal: key block <= query block
        dtype = lm.model.dtype
        add = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[None, None]
        logits = lm.model(input_ids=x, position_ids=pos[None], attention_mask=add).logits[0, plen + c] / t.temperature
        excluded = torch.zeros_like(logits)
        excluded[lm.mask_id] = float("-inf")
        excluded[lm.num_tokens :] = float("-inf")
        out.append(torch.log_softmax(logits + excluded, -1)[comp[c]])
    return out


@pytest.mark.parametrize("text", ["047+385=", "12+34="])  # prompt on a block boundary, and mid-block
@pytest.mark.parametrize("shrink", [2, 3])
def test_trace_logprobs_with_shrinkage_equal_a_plain_forward_of_each_replayed_state(tokenizer, text, shrink):
    """With s > 1 the replay no longer reproduces the rollout's log-probs, so check each scored
    token against the state TraceRL defines, built by hand: its own group's tokens masked too."""
    lm = tiny_lm(tokenizer)
    params = SamplingParams(max_new_tokens=8, temperature=0.7, stop_at_eos=False)
    trajs = generate(lm, [tokenizer(text)["input_ids"]] * 3, params, torch.Generator().manual_seed(3))
    assert all(len(set(t.step_map)) == len(t.step_map) for t in trajs)  # one token per step: a group of s steps scores s tokens
    with torch.no_grad():
        logp, mask, _ = trace_logprobs(lm, trajs, shrink=shrink)
        for i, t in enumerate(trajs):
            want = torch.stack(_replayed_state_logprobs(lm, t, shrink))
            assert int(mask[i].sum()) == len(want)
            assert torch.allclose(logp[i, : len(want)], want.to(logp.dtype), atol=1e-5), (i, logp[i, : len(want)], want)


def test_trace_logprobs_are_differentiable(tokenizer):
    lm = tiny_lm(tokenizer, double=False)
    trajs = generate(lm, [tokenizer("1+2=")["input_ids"]], SamplingParams(max_new_tokens=4), torch.Generator().manual_seed(0))
    logp, mask, ent = trace_logprobs(lm, trajs, with_entropy=True)
    params = [p for p in lm.model.parameters() if p.requires_grad]
    got = torch.autograd.grad(logp[mask].sum(), params, allow_unused=True)
    # the gradient is that of the hand-built replayed states' log-probs (the same tokens, the same states)
    want = torch.autograd.grad(torch.stack(_replayed_state_logprobs(lm, trajs[0], 1)).sum(), params, allow_unused=True)
    scale = max(w.abs().max().item() for w in want if w is not None)
    assert scale > 0
    for g, w in zip(got, want):
        g = torch.zeros_like(w) if g is None else g
        assert (g - w).abs().max().item() <= 1e-4 * scale
    assert (ent[mask] >= 0).all()


# -- SFT ----------------------------------------------------------------------------------
def test_random_block_mask_masks_every_block():
    g = torch.Generator().manual_seed(0)
    for plen in range(1, 9):
        for _ in range(20):
            m = random_block_mask(plen, 9, 4, g)
            assert len(m) == 9
            blocks = {}
            for c, v in enumerate(m):
                blocks.setdefault((plen + c) // 4, []).append(v)
            assert all(any(v) for v in blocks.values())
    assert pad_completion(6, [5, 6, 7], 4, 0, 1) == [5, 6, 7, 1, 1, 1] and pad_completion(8, [5] * 4, 4, 0, 1) == [5] * 4
    assert pad_completion(6, [5, 6], None, 5, 1) == [5, 6, 1, 1, 1]


@pytest.mark.parametrize("family", ["block", "llada", "dream"])
def test_sft_learns_a_fixed_mapping(tokenizer, family):
    from rollout.models import build_tiny_lm

    torch.manual_seed(0)
    lm = build_tiny_lm(tokenizer, family=family, hidden_size=64, num_layers=2, intermediate_size=128)
    opt = torch.optim.AdamW(lm.model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    prompts = [tokenizer("1+1=")["input_ids"], tokenizer("2+2=")["input_ids"]]
    comps = [tokenizer("02")["input_ids"] + [lm.eos_id] * 2, tokenizer("04")["input_ids"] + [lm.eos_id] * 2]
    first = None
    for _ in range(60):
        loss, _ = sft_loss(lm, prompts, comps, g)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first
    out = generate(lm, prompts, SamplingParams(max_new_tokens=4, temperature=0.0))
    assert [t.text for t in out] == ["02", "04"]
