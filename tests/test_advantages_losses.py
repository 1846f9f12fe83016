"""Group filters, truncation handling, loss normalisations and the sequence-level (GSPO) loss."""

import math

import pytest
import torch

from algorithms.advantages import filter_groups, group_advantages, truncated_rewards
from algorithms.losses import LOSSES, k3_kl, policy_loss, sequence_policy_loss

R = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
G = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 3, 3])  # accuracies 1, 0.5, 0, 0.25


def test_filter_groups_zero_variance_and_accuracy_window():
    assert filter_groups(R, G, drop_zero_std=True).tolist() == [False] * 2 + [True] * 2 + [False] * 2 + [True] * 4
    assert filter_groups(R, G, drop_zero_std=False).all()
    assert filter_groups(R, G, drop_zero_std=False, min_acc=0.3).tolist() == [True] * 4 + [False] * 6
    # bounds are inclusive: 0.25 and 0.5 stay
    window = filter_groups(R, G, drop_zero_std=False, min_acc=0.25, max_acc=0.5)
    assert window.tolist() == [False] * 2 + [True] * 2 + [False] * 2 + [True] * 4
    assert filter_groups(R, G, drop_zero_std=True, max_acc=0.3).tolist() == [False] * 6 + [True] * 4
    shuffled = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(filter_groups(R[shuffled], G[shuffled], True), filter_groups(R, G, True)[shuffled])


def test_truncated_responses_masked_or_scored_as_wrong():
    rewards = torch.tensor([1.0, 0.5, 1.0, 0.0])
    reasons = ["eos", "length", "length", "eos"]
    r, keep = truncated_rewards(rewards, reasons, "mask")
    assert r.tolist() == [1.0, 0.5, 1.0, 0.0] and keep.tolist() == [True, False, False, True]
    r, keep = truncated_rewards(rewards, reasons, "wrong")
    assert r.tolist() == [1.0, 0.0, 0.0, 0.0] and keep.all()
    r, keep = truncated_rewards(rewards, reasons, "keep")
    assert r.tolist() == rewards.tolist() and keep.all()
    with pytest.raises(ValueError, match="truncation mode"):
        truncated_rewards(rewards, reasons, "drop")
    # scored as wrong, then grouped: group [1, 0(truncated)] has mean 0.5
    r, _ = truncated_rewards(rewards, reasons, "wrong")
    assert group_advantages(r, torch.tensor([0, 0, 1, 1]), "mean").tolist() == [0.5, -0.5, 0.0, 0.0]


def test_constant_norm_divides_the_token_sum_by_a_fixed_constant():
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.0], [1.0, 1.0, 1.0]]))
    old = torch.zeros(2, 3)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    adv = torch.tensor([2.0, 1.0])
    # A = 2 row: -2 * min(r, clip r) = -2.4, -1.0, -2.0; A = 1 row, r = 1: -1 (padding ignored)
    loss, _ = policy_loss(logp, old, adv, mask, norm="constant", norm_constant=3 * 2)  # max length x batch
    assert loss.item() == pytest.approx((-2.4 - 1.0 - 2.0 - 1.0) / 6)
    tok, _ = policy_loss(logp, old, adv, mask, norm="token")
    assert tok.item() == pytest.approx((-2.4 - 1.0 - 2.0 - 1.0) / 4)
    seq, _ = policy_loss(logp, old, adv, mask, norm="sequence")
    assert seq.item() == pytest.approx(((-2.4 - 1.0 - 2.0) / 3 + -1.0) / 2)
    with pytest.raises(ValueError, match="norm_constant"):
        policy_loss(logp, old, adv, mask, norm="constant")


def test_sequence_level_ratio_clips_per_sequence_by_hand():
    # seq 0: log-ratios [log 1.2, log 1.2] -> s0 = 1.2;  seq 1: [log 0.25, log 1] (+ padding) -> s1 = sqrt(0.25) = 0.5
    logp = torch.log(torch.tensor([[1.2, 1.2, 1.0], [0.25, 1.0, 7.0]]))
    old = torch.zeros(2, 3)
    mask = torch.tensor([[True, True, False], [True, True, False]])
    adv = torch.tensor([1.0, -1.0])
    loss, m = sequence_policy_loss(logp, old, adv, mask, eps_low=0.1, eps_high=0.1)
    # A0 = 1:  -min(1.2, clip 1.1) = -1.1;  A1 = -1: max(0.5, clip 0.9) = 0.9;  mean = -0.1
    assert loss.item() == pytest.approx(-0.1)
    assert m["clipfrac"] == pytest.approx(1.0) and m["ratio/mean"] == pytest.approx((1.2 + 0.5) / 2)


def test_sequence_ratio_gradient_is_that_of_the_geometric_mean_ratio():
    logp = torch.tensor([[-1.0, -2.0, -0.5, 0.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-1.1, -1.9, -0.5, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False]])
    loss, _ = sequence_policy_loss(logp, old, torch.tensor([2.0], dtype=torch.float64), mask, eps_low=0.5, eps_high=0.5)
    loss.backward()
    s = math.exp(((-1.0 + 1.1) + (-2.0 + 1.9) + 0.0) / 3)
    assert loss.item() == pytest.approx(-2.0 * s)  # unclipped: -A s
    # d(-A s)/d logp_t = -A s / |o| for the 3 real tokens, 0 for padding
    assert logp.grad[0].tolist() == pytest.approx([-2.0 * s / 3] * 3 + [0.0])


def test_sequence_loss_kl_and_registry():
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.5, 1.0]]))
    ref = torch.log(torch.tensor([[0.25, 0.25], [1.0, 1.0]]))
    mask = torch.tensor([[True, True], [True, False]])
    k3 = k3_kl(logp, ref)
    loss, m = sequence_policy_loss(logp, logp.detach(), torch.zeros(2), mask, ref_logp=ref, beta=0.1)
    assert loss.item() == pytest.approx(0.1 * (((k3[0, 0] + k3[0, 1]) / 2 + k3[1, 0]) / 2).item())
    assert m["kl"] == pytest.approx(((k3[0, 0] + k3[0, 1] + k3[1, 0]) / 3).item())
    assert set(LOSSES) == {"grpo", "gspo"}
    for fn in LOSSES.values():  # one signature: the learner can switch with a config line
        out, metrics = fn(logp, logp.detach(), torch.ones(2), mask, 0.2, 0.2, ref_logp=ref, beta=0.0, norm="token")
        assert out.item() == pytest.approx(-1.0) and {"kl", "clipfrac", "approx_kl", "ratio/mean"} <= set(metrics)
