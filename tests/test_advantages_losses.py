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
    # k3 = exp(d) - d - 1 with d = ref - logp, by hand:
    #   [0, 0]: d = log(0.25 / 0.5) = -ln 2 -> 0.5 + ln 2 - 1 = ln 2 - 0.5 = 0.19314718
    #   [0, 1]: d = 0 -> 0;   [1, 0]: d = log(1 / 0.5) = ln 2 -> 2 - ln 2 - 1 = 1 - ln 2 = 0.30685282
    ln2 = math.log(2)
    k00, k01, k10 = ln2 - 0.5, 0.0, 1 - ln2
    assert k3_kl(logp, ref)[mask].tolist() == pytest.approx([k00, k01, k10])
    loss, m = sequence_policy_loss(logp, logp.detach(), torch.zeros(2), mask, ref_logp=ref, beta=0.1)
    # sequence norm: 0.1 * ((k00 + k01) / 2 + k10) / 2 = 0.1 * (0.09657359 + 0.30685282) / 2 = 0.02017132
    assert loss.item() == pytest.approx(0.02017132, rel=1e-6)
    # the kl metric is the token mean: (ln 2 - 0.5 + 0 + 1 - ln 2) / 3 = 0.5 / 3
    assert m["kl"] == pytest.approx(0.5 / 3, rel=1e-6)
    assert set(LOSSES) == {"grpo", "gspo"}
    for fn in LOSSES.values():  # one signature: the learner can switch with a config line
        out, metrics = fn(logp, logp.detach(), torch.ones(2), mask, 0.2, 0.2, ref_logp=ref, beta=0.0, norm="token")
        assert out.item() == pytest.approx(-1.0) and {"kl", "clipfrac", "approx_kl", "ratio/mean"} <= set(metrics)


# -- asymmetric clip ranges (eps_low != eps_high): each side of the clip is its own ---------------
# ratios r = 1.5, 0.5, 1.25, 0.85 against old = 0; eps_low = 0.1, eps_high = 0.3: clip to [0.9, 1.3]
# (with the two sides exchanged the range would be [0.7, 1.2], and every number below changes).
_R = [1.5, 0.5, 1.25, 0.85]


def test_policy_loss_asymmetric_clip_positive_advantage_by_hand():
    logp = torch.log(torch.tensor([_R], dtype=torch.float64))
    mask = torch.ones(1, 4, dtype=torch.bool)
    loss, m = policy_loss(logp, torch.zeros_like(logp), torch.tensor([2.0], dtype=torch.float64), mask, eps_low=0.1, eps_high=0.3)
    # A = 2: per token -2 * min(r, clip(r, 0.9, 1.3)):
    #   1.5 -> min(1.5, 1.3) = 1.3 -> -2.6 (clipped);  0.5 -> min(0.5, 0.9) = 0.5 -> -1.0
    #   1.25 -> 1.25 -> -2.5;                          0.85 -> min(0.85, 0.9) = 0.85 -> -1.7
    # loss = (-2.6 - 1.0 - 2.5 - 1.7) / 4 = -7.8 / 4 = -1.95  (swapped clips: -7.5 / 4)
    assert loss.item() == pytest.approx(-1.95, rel=1e-9)
    assert m["loss/policy"] == pytest.approx(-1.95, rel=1e-9)
    # clipped = the clipped term is the larger loss: only r = 1.5 (swapped: 1.5 and 1.25 -> 2/4)
    assert m["clipfrac"] == pytest.approx(1 / 4)


def test_policy_loss_asymmetric_clip_negative_advantage_by_hand():
    logp = torch.log(torch.tensor([_R], dtype=torch.float64))
    mask = torch.ones(1, 4, dtype=torch.bool)
    loss, m = policy_loss(logp, torch.zeros_like(logp), torch.tensor([-1.0], dtype=torch.float64), mask, eps_low=0.1, eps_high=0.3)
    # A = -1: per token max(r, clip(r, 0.9, 1.3)):
    #   1.5 -> 1.5;  0.5 -> 0.9 (clipped);  1.25 -> 1.25;  0.85 -> 0.9 (clipped)
    # loss = (1.5 + 0.9 + 1.25 + 0.9) / 4 = 4.55 / 4 = 1.1375  (swapped [0.7, 1.2]: (1.5 + 0.7 + 1.25 + 0.85) / 4 = 1.075)
    assert loss.item() == pytest.approx(1.1375, rel=1e-9)
    assert m["clipfrac"] == pytest.approx(2 / 4)  # swapped: only 0.5 -> 1/4


def test_sequence_loss_asymmetric_clip_by_hand():
    # geometric-mean ratios per sequence (two tokens each, old = 0):
    #   s0 = sqrt(1.25 * 1.25) = 1.25, A = +1    s1 = sqrt(0.85 * 0.85) = 0.85, A = -1
    #   s2 = sqrt(1.5 * 1.5) = 1.5,    A = +1    s3 = sqrt(0.25 * 1.0) = 0.5,   A = -1
    logp = torch.log(torch.tensor([[1.25, 1.25], [0.85, 0.85], [1.5, 1.5], [0.25, 1.0]], dtype=torch.float64))
    mask = torch.ones(4, 2, dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    loss, m = sequence_policy_loss(logp, torch.zeros_like(logp), adv, mask, eps_low=0.1, eps_high=0.3)
    # clip to [0.9, 1.3]:  L0 = -min(1.25, 1.25) = -1.25        L1 = max(0.85, 0.9) = 0.9 (clipped)
    #                      L2 = -min(1.5, 1.3) = -1.3 (clipped)  L3 = max(0.5, 0.9) = 0.9 (clipped)
    # mean over sequences = (-1.25 + 0.9 - 1.3 + 0.9) / 4 = -0.75 / 4 = -0.1875
    # (swapped [0.7, 1.2]: (-1.2 + 0.85 - 1.2 + 0.7) / 4 = -0.2125)
    assert loss.item() == pytest.approx(-0.1875, rel=1e-9)
    assert m["clipfrac"] == pytest.approx(3 / 4)
    assert m["ratio/mean"] == pytest.approx((1.25 + 0.85 + 1.5 + 0.5) / 4, rel=1e-9)
    # one sequence alone makes the side visible in clipfrac too: s0 = 1.25 is inside [0.9, 1.3]
    # but outside the swapped [0.7, 1.2]
    _, m0 = sequence_policy_loss(logp[:1], torch.zeros_like(logp[:1]), adv[:1], mask[:1], eps_low=0.1, eps_high=0.3)
    assert m0["clipfrac"] == 0.0
