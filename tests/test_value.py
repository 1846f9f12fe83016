"""Diffusion value model, step-level GAE over the trace, clipped value loss."""

import pytest
import torch

from algorithms.value import GAE_FORMS, ValueModel, terminal_token_rewards, trace_gae, tracerl_gae, value_loss
from rollout import SamplingParams, generate
from rollout.models import build_tiny_lm

from .conftest import tiny_lm


# -- trace_gae ------------------------------------------------------------------------------------
def test_hand_worked_three_step_trace():
    # tokens:      c0    c1    c2    c3    pad
    step_map = torch.tensor([[0, 2, 1, 2, -1]])
    values = torch.tensor([[0.2, 0.6, 0.4, 0.8, 9.0]], dtype=torch.float64)
    rewards = torch.tensor([[-0.1, 0.0, 0.0, 1.0, 5.0]], dtype=torch.float64)
    # step 0 = {c0}: V0 = 0.2, R0 = -0.1;  step 1 = {c2}: V1 = 0.4, R1 = 0
    # step 2 = {c1, c3}: V2 = (0.6 + 0.8) / 2 = 0.7, R2 = 0 + 1 = 1
    # gamma = 0.9, lam = 0.5, gamma * lam = 0.45
    # delta2 = 1 + 0.9 * 0 - 0.7 = 0.3                 A2 = 0.3                       G2 = 0.3 + 0.7 = 1.0
    # delta1 = 0 + 0.9 * 0.7 - 0.4 = 0.23              A1 = 0.23 + 0.45 * 0.3 = 0.365  G1 = 0.365 + 0.4 = 0.765
    # delta0 = -0.1 + 0.9 * 0.4 - 0.2 = 0.06           A0 = 0.06 + 0.45 * 0.365 = 0.22425
    #                                                                                   G0 = 0.22425 + 0.2 = 0.42425
    adv, ret = trace_gae(rewards, values, step_map, gamma=0.9, lam=0.5)
    assert adv[0].tolist() == pytest.approx([0.22425, 0.3, 0.365, 0.3, 0.0])
    assert ret[0].tolist() == pytest.approx([0.42425, 1.0, 0.765, 1.0, 0.0])
    # gamma = lam = 1: G_k = R_k + ... + R_2, so G0 = -0.1 + 0 + 1 = 0.9, G1 = G2 = 1; A_k = G_k - V_k
    adv1, ret1 = trace_gae(rewards, values, step_map, gamma=1.0, lam=1.0)
    assert ret1[0].tolist() == pytest.approx([0.9, 1.0, 1.0, 1.0, 0.0])
    assert adv1[0].tolist() == pytest.approx([0.9 - 0.2, 1.0 - 0.7, 1.0 - 0.4, 1.0 - 0.7, 0.0])


def test_gamma_lambda_one_advantage_is_monte_carlo_return_minus_step_value():
    g = torch.Generator().manual_seed(0)
    n, c = 4, 9
    step_map = torch.full((n, c), -1, dtype=torch.long)
    for i, length in enumerate([9, 7, 5, 1]):
        steps = torch.randint(0, 4, (length,), generator=g) + 3 * i  # repeated steps, arbitrary offsets
        step_map[i, :length] = steps
    values = torch.randn(n, c, generator=g, dtype=torch.float64)
    rewards = torch.randn(n, c, generator=g, dtype=torch.float64)
    adv, ret = trace_gae(rewards, values, step_map, 1.0, 1.0)
    for i in range(n):
        for j in range(c):
            s = step_map[i, j]
            if s < 0:
                assert adv[i, j] == 0 and ret[i, j] == 0
                continue
            later = (step_map[i] >= s) & (step_map[i] >= 0)
            same = step_map[i] == s
            g_mc = rewards[i, later].sum()  # every reward from this step on
            assert ret[i, j].item() == pytest.approx(g_mc.item())
            assert adv[i, j].item() == pytest.approx((g_mc - values[i, same].mean()).item())


# -- tracerl_gae (TraceRL's per-token form, the default) ----------------------------------------------
def test_tracerl_form_docstring_example_by_hand():
    # two steps, values [.2, .6 | .5, .9], reward 1 on the last step, gamma = lam = 1
    step_map = torch.tensor([[0, 0, 1, 1]])
    values = torch.tensor([[0.2, 0.6, 0.5, 0.9]], dtype=torch.float64)
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    # step 1: V* = (0.5 + 0.9) / 2 = 0.7, R = 1:  A*_1 = 1 - 0.7 = 0.3;  A_j = A*_1 + V*_1 - V_j = 1 - V_j = 0.5, 0.1
    # step 0: V* = (0.2 + 0.6) / 2 = 0.4, R = 0:  A*_0 = 0 - 0.4 + 0.7 + 0.3 = 0.6;  A_j = 0.6 + 0.4 - V_j = 0.8, 0.4
    # returns: the Monte Carlo return R*_t = 1 on both steps
    adv, ret = tracerl_gae(rewards, values, step_map, gamma=1.0, lam=1.0)
    assert adv[0].tolist() == pytest.approx([0.8, 0.4, 0.5, 0.1])
    assert ret[0].tolist() == pytest.approx([1.0, 1.0, 1.0, 1.0])
    # the "step" form shares the step's advantage instead: [0.6, 0.6, 0.3, 0.3]
    step_adv, _ = trace_gae(rewards, values, step_map, gamma=1.0, lam=1.0)
    assert step_adv[0].tolist() == pytest.approx([0.6, 0.6, 0.3, 0.3])
    assert GAE_FORMS["tracerl"] is tracerl_gae and GAE_FORMS["step"] is trace_gae


def test_tracerl_form_with_discount_and_lambda_by_hand():
    # the three-step trace of test_hand_worked_three_step_trace, TraceRL's form
    # tokens:      c0    c1    c2    c3    pad
    step_map = torch.tensor([[0, 2, 1, 2, -1]])
    values = torch.tensor([[0.2, 0.6, 0.4, 0.8, 9.0]], dtype=torch.float64)
    rewards = torch.tensor([[-0.1, 0.0, 0.0, 1.0, 5.0]], dtype=torch.float64)
    # steps: 0 = {c0}: V* = 0.2, R = -0.1;  1 = {c2}: V* = 0.4, R = 0;  2 = {c1, c3}: V* = 0.7, R = 1
    # gamma = 0.9, lam = 0.5 (gamma lam = 0.45)
    # A*_2 = 1 - 0.7 = 0.3                                         R*_2 = 1
    # A*_1 = 0 - 0.4 + 0.9 * 0.7 + 0.45 * 0.3 = 0.365               R*_1 = 0 + 0.9 * 1 = 0.9
    # A*_0 = -0.1 - 0.2 + 0.9 * 0.4 + 0.45 * 0.365 = 0.22425        R*_0 = -0.1 + 0.9 * 0.9 = 0.71
    # per token A_j = A*_t + V*_t - V_j:  c0 0.22425;  c1 0.3 + 0.7 - 0.6 = 0.4;  c2 0.365;  c3 0.3 + 0.7 - 0.8 = 0.2
    # per token R_j = R*_t:               c0 0.71;     c1 1.0;                    c2 0.9;    c3 1.0
    adv, ret = tracerl_gae(rewards, values, step_map, gamma=0.9, lam=0.5)
    assert adv[0].tolist() == pytest.approx([0.22425, 0.4, 0.365, 0.2, 0.0])
    assert ret[0].tolist() == pytest.approx([0.71, 1.0, 0.9, 1.0, 0.0])
    # (the "step" form's value targets are A* + V*: 0.42425, 1.0, 0.765, 1.0 -- not the Monte Carlo return)


def test_terminal_reward_sits_on_one_token_of_the_last_step():
    step_map = torch.tensor([[0, 2, 1, 2, -1], [1, 0, -1, -1, -1]])
    out = terminal_token_rewards(torch.tensor([1.0, -2.0]), step_map)
    assert out.tolist() == [[0.0, 0.0, 0.0, 1.0, 0.0], [-2.0, 0.0, 0.0, 0.0, 0.0]]
    adv, ret = trace_gae(out, torch.zeros(2, 5), step_map)
    assert ret[0, :4].tolist() == [1.0] * 4  # the step reward is the sequence reward, not 2x it


# -- value loss -------------------------------------------------------------------------------------
def test_clipped_value_loss_by_hand():
    values = torch.tensor([[0.7, 0.5, 9.0]], requires_grad=True)
    old = torch.tensor([[0.2, 0.5, 0.0]])
    returns = torch.tensor([[0.6, 1.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    loss, m = value_loss(values, old, returns, mask, clip_eps=0.1)
    # c0: V_clip = 0.2 + 0.1 = 0.3; (0.7 - 0.6)^2 = 0.01 < (0.3 - 0.6)^2 = 0.09 -> 0.09 (clipped)
    # c1: V = old, (0.5 - 1.0)^2 = 0.25;  loss = 0.5 * (0.09 + 0.25) / 2 = 0.085
    assert loss.item() == pytest.approx(0.085)
    assert m["value/clipfrac"] == pytest.approx(0.5)
    # G = [0.6, 1.0] (var 0.04), G - V = [-0.1, 0.5] (var 0.09): EV = 1 - 0.09 / 0.04 = -1.25
    assert m["explained_variance"] == pytest.approx(-1.25)
    loss.backward()
    assert values.grad[0, 0] == 0 and values.grad[0, 2] == 0  # clipped and padding tokens get no gradient


# -- value model ------------------------------------------------------------------------------------
def _setup(tokenizer, family):
    if family == "block":
        lm = tiny_lm(tokenizer)
        params = SamplingParams(max_new_tokens=8, temperature=0.8, stop_at_eos=False)
    else:
        lm = build_tiny_lm(tokenizer, family=family, hidden_size=64, num_layers=2, intermediate_size=128)
        lm.model.double()
        params = SamplingParams(max_new_tokens=6, block_length=3, temperature=0.8, kv_cache=False)
    trajs = generate(lm, [tokenizer(t)["input_ids"] for t in ["12+34=", "5+6="]], params, torch.Generator().manual_seed(0))
    return lm, trajs


def _loss_tokens(t, eos_id):
    """Completion tokens that get a value: up to and including the first EOS (all without one)."""
    return t.completion_ids.index(eos_id) + 1 if eos_id in t.completion_ids else len(t.completion_ids)


def _state_values(lm, critic, t):
    """The value of each of `t`'s loss tokens read from a plain forward of the state where it was
    decoded: its block (the whole canvas for full attention) with every token decoded at or after
    its step masked, earlier blocks clean, read where the token's logit is read (one position
    earlier for shifted-logit families). [loss tokens], differentiable."""
    plen, out = len(t.prompt_ids), []
    for c in range(_loss_tokens(t, lm.eos_id)):
        step = t.step_map[c]
        if lm.block_size is None:
            end, first = len(t.completion_ids), 0
        else:
            end = min(((plen + c) // lm.block_size + 1) * lm.block_size - plen, len(t.completion_ids))
            first = max(0, (plen + c) // lm.block_size * lm.block_size - plen)
        comp = [lm.mask_id if (j >= first and t.step_map[j] >= step) else tok for j, tok in enumerate(t.completion_ids[:end])]
        x = torch.tensor([t.prompt_ids + comp])
        pos = torch.arange(x.shape[1])[None]
        hidden = lm.encode(x, pos, lm.attention_allowed(pos, torch.ones_like(x, dtype=torch.bool)))
        row = plen + c - (1 if lm.family.shift_logits else 0)
        out.append(critic.head(hidden[0, row]).squeeze(-1))
    return torch.stack(out)


def test_zero_initialised_head_gives_zero_values_and_values_are_differentiable(tokenizer):
    lm, trajs = _setup(tokenizer, "block")
    critic = ValueModel(lm)
    v = critic.values(trajs, shrink=2)
    assert v.shape == (2, max(len(t.completion_ids) for t in trajs)) and (v == 0).all()
    assert {n for n, _ in critic.named_parameters()} >= {"head.weight", "head.bias"}
    assert any(n.startswith("backbone.") for n, _ in critic.named_parameters())
    v.sum().backward()
    # d sum(V) / d bias = the number of valued tokens (loss tokens: up to and including the first EOS)
    assert critic.head.bias.grad.item() == pytest.approx(sum(_loss_tokens(t, lm.eos_id) for t in trajs))
    assert critic.head.weight.grad.abs().sum() > 0  # the head learns from a zero start
    torch.nn.init.normal_(critic.head.weight, generator=torch.Generator().manual_seed(0))
    params = [p for p in critic.parameters() if p.requires_grad]
    got = torch.autograd.grad(critic(trajs).sum(), params, allow_unused=True)
    # the gradient is that of the values read from each token's decoding state, built by hand
    want = torch.autograd.grad(torch.cat([_state_values(lm, critic, t) for t in trajs]).sum(), params, allow_unused=True)
    scale = max(w.abs().max().item() for w in want if w is not None)
    assert scale > 0
    for (name, _), g, w in zip([(n, p) for n, p in critic.named_parameters() if p.requires_grad], got, want):
        g = torch.zeros_like(w) if g is None else g
        w = torch.zeros_like(g) if w is None else w
        assert (g - w).abs().max().item() <= 1e-6 * scale, name  # float64; the packed and plain sums differ in order only


@pytest.mark.parametrize("family", ["block", "dream"])
def test_each_value_is_read_at_the_state_where_its_token_was_decoded(tokenizer, family):
    """Packed values equal a plain forward of each token's decoding state: its block (the whole
    canvas for full attention) with every token decoded at or after its step masked, earlier
    blocks clean, read where the token's logit is read (one position earlier for Dream)."""
    lm, trajs = _setup(tokenizer, family)
    critic = ValueModel(lm)
    torch.nn.init.normal_(critic.head.weight, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        packed = critic.values(trajs)
        for i, t in enumerate(trajs):
            plen = len(t.prompt_ids)
            for c, step in enumerate(t.step_map):
                if lm.block_size is None:
                    end, first = len(t.completion_ids), 0
                else:
                    end = min(((plen + c) // lm.block_size + 1) * lm.block_size - plen, len(t.completion_ids))
                    first = max(0, (plen + c) // lm.block_size * lm.block_size - plen)
                comp = [
                    lm.mask_id if (j >= first and t.step_map[j] >= step) else tok for j, tok in enumerate(t.completion_ids[:end])
                ]
                x = torch.tensor([t.prompt_ids + comp])
                pos = torch.arange(x.shape[1])[None]
                hidden = lm.encode(x, pos, lm.attention_allowed(pos, torch.ones_like(x, dtype=torch.bool)))
                row = plen + c - (1 if lm.family.shift_logits else 0)
                want = critic.head(hidden[0, row]).item()
                assert packed[i, c].item() == pytest.approx(want, abs=1e-9)
