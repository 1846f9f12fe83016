"""d-TreeRPO (THU-BPM/d-TreeRPO): a resumed decode equals the straight one, the tree's leaves extend
their parents, node advantages and edge rows by hand, the loss by hand, the preset from a one-line
config, the trainer's stages and an update on the edge rows, and `unmask train` end to end."""

import dataclasses
import math

import pytest
import torch

from algorithms.d_tree_rpo import (
    LATER,
    SCORED,
    DTreeRpoOptions,
    d_tree_rpo_estimate,
    d_tree_rpo_loss,
    d_tree_rpo_weights,
    edge_mask,
    edge_rows,
    self_distillation_schedule,
    tree_advantages,
)
from algorithms.estimators import get_estimator
from rl.batch import LearnerBatch, StepBatch
from rl.config import load_config
from rollout import SamplingParams, build_char_tokenizer
from rollout.engine import _FullDecoder, generate
from rollout.models import build_tiny_lm
from rollout.trajectory import Trajectory
from rollout.tree import branch_steps, total_steps

from .conftest import BASE_CKPT


def _llada():
    torch.manual_seed(0)
    return build_tiny_lm(build_char_tokenizer(), family="llada", hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)


def _records(dec):
    gen = int(dec.gen_col[0])
    return dec.x[:, gen:].clone(), dec.step_map[:, gen:].clone(), dec.logp[:, gen:].clone(), dec.nfe.clone()


@pytest.mark.parametrize("stop", [1, 4, 5])  # mid-block, a block boundary, mid-block of the second block
def test_a_decode_resumed_at_step_s_with_the_same_randomness_is_the_straight_decode(stop):
    lm = _llada()
    tok = lm.tokenizer
    prompts = [tok.encode("12+3="), tok.encode("7*8=")]
    # blocks of 6 in 4 steps: 2, 2, 1, 1 tokens; resumed after 1 step, the 4 left go 2, 1, 1 (not 1, 1, 1, 1)
    p = SamplingParams(temperature=1.0, max_new_tokens=12, block_length=6, steps_per_block=4, kv_cache=False)
    straight = _FullDecoder(lm, prompts, p, torch.Generator().manual_seed(5)).run()
    g = torch.Generator().manual_seed(5)
    first = _FullDecoder(lm, prompts, p, g)
    masked = torch.full((2, 12), lm.mask_id)
    first.resume(masked, torch.full((2, 12), -1), torch.zeros(2, 12, dtype=torch.float64), torch.zeros(2, dtype=torch.long), 0, stop)
    first.run()
    _, sm, _, nfe = _records(first)
    assert (sm >= 0).sum(1).tolist() == [{1: 2, 4: 6, 5: 8}[stop]] * 2
    assert (sm < stop).all() and nfe.tolist() == [stop, stop]
    second = _FullDecoder(lm, prompts, p, g)
    second.resume(*_records(first), stop, 10**9)
    for a, b in zip(straight, second.run()):
        assert (a.completion_ids, a.step_map, a.logprobs, a.nfe) == (b.completion_ids, b.step_map, b.logprobs, b.nfe)


def test_raw_prob_confidence_is_the_untempered_probability_of_the_sampled_token():
    lm = _llada()
    tok = lm.tokenizer
    torch.manual_seed(3)
    logits = torch.randn(2, 5, lm.model.config.vocab_size, dtype=torch.float64) * 3
    untempered = torch.softmax(logits + lm._excluded(logits), dim=-1)  # their p = softmax(logits) (mask id excluded, as unmask's)
    for t in (0.0, 0.5, 0.9):
        dec = _FullDecoder(lm, [tok.encode("1+1=")], SamplingParams(temperature=t, confidence="raw_prob", max_new_tokens=4), None)
        lp = lm.sampling_logprobs(logits, t)
        x = torch.randint(lm.mask_id + 1, lm.num_tokens, (2, 5))  # any sampled tokens
        got = dec._confidence(lp, lp.gather(-1, x[..., None]).squeeze(-1))
        assert torch.allclose(got, untempered.gather(-1, x[..., None]).squeeze(-1), rtol=1e-10, atol=1e-14)
    # the ranking that picks the commits differs from `prob`'s: position 0 a 0.6 peak over a flat rest, position 1 a
    # 0.7 / 0.3 pair; untempered 1 ranks first, at T = 0.5 (sharper) 0 does
    k, k2 = lm.mask_id + 1, lm.mask_id + 2
    logits = torch.zeros(1, 2, lm.model.config.vocab_size, dtype=torch.float64)
    rest = lm.num_tokens - 2  # decodable ids besides the peak
    logits[0, 0, k] = math.log(0.6 / 0.4 * rest)
    logits[0, 1] = -50.0
    logits[0, 1, k], logits[0, 1, k2] = math.log(0.7 / 0.3), 0.0
    lp = lm.sampling_logprobs(logits, 0.5)
    tok_lp = lp[..., k]
    raw = _FullDecoder(lm, [tok.encode("1+1=")], SamplingParams(temperature=0.5, confidence="raw_prob", max_new_tokens=4), None)._confidence(lp, tok_lp)
    prob = _FullDecoder(lm, [tok.encode("1+1=")], SamplingParams(temperature=0.5, max_new_tokens=4), None)._confidence(lp, tok_lp)
    assert raw[0].tolist() == pytest.approx([0.6, 0.7], abs=1e-9)
    assert prob[0, 0] > prob[0, 1]  # tempered: 0.99 against 0.84


def test_tree_leaves_extend_their_parents_and_come_in_tree_order():
    lm = _llada()
    tok = lm.tokenizer
    p = SamplingParams(temperature=1.0, max_new_tokens=8, block_length=4, steps_per_block=3, kv_cache=False, tree=(2, 3, 2))
    assert total_steps(p, 8) == 6 and branch_steps(6, 2) == [0, 3, 6]
    prompts = [tok.encode("12+3=")] * 6 + [tok.encode("7*8=")] * 6
    leaves = generate(lm, prompts, p, torch.Generator().manual_seed(1), groups=[0] * 6 + [1] * 6)
    assert [t.group for t in leaves] == [0] * 6 + [1] * 6 and all(t.nfe == 6 for t in leaves)
    for g in range(2):
        for node in range(2):  # the 3 leaves of each level-1 node share its first 3 steps' tokens, steps and log-probs
            kids = leaves[g * 6 + node * 3 : g * 6 + node * 3 + 3]
            below = [[(c, s, lp) for c, s, lp in zip(t.completion_ids, t.step_map, t.logprobs) if s < 3] for t in kids]
            assert below[0] == below[1] == below[2] and len(below[0]) == 4  # block 1: 2 + 1 + 1 tokens
            assert len({tuple(t.completion_ids) for t in kids}) > 1  # then they branch
        assert leaves[g * 6].completion_ids[:4] != leaves[g * 6 + 3].completion_ids[:4]  # the root's two children differ
    with pytest.raises(ValueError, match="6 leaves per prompt"):
        generate(lm, prompts[:5], p)
    block = build_tiny_lm(build_char_tokenizer(), hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    with pytest.raises(ValueError, match="block-causal"):
        generate(block, prompts[:6], p)


def test_node_values_and_advantages_by_hand():
    # one group, tree (2, 2, 2): leaves r = [1, 0 | 1, 1]; level-1 values 0.5 and 1.0
    r = torch.tensor([1.0, 0.0, 1.0, 1.0])
    level1, level2 = tree_advantages(r, (2, 2, 2))
    assert level1.tolist() == [[0.5 - 1.0, 1.0 - 0.5]]  # V - the other sibling's V
    assert level2.tolist() == [[[1.0, -1.0], [0.0, 0.0]]]
    # three siblings: A = V - mean of the other two; s = 3 levels: values average up the tree
    r = torch.tensor([3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 6.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # tree (3, 2, 2), two groups of 6 leaves
    l1, l2 = tree_advantages(r, (3, 2, 2))
    assert l1.tolist() == [[1.5 - 0.0, 0.0 - 0.75, 0.0 - 0.75], [3.0 - 0.0, 0.0 - 1.5, 0.0 - 1.5]]  # values [1.5, 0, 0], [3, 0, 0]
    assert l2[0].tolist() == [[3.0, -3.0], [0.0, 0.0], [0.0, 0.0]]  # leaves 3 and 0: each minus the other
    a = tree_advantages(torch.arange(8.0), (2, 2, 3))
    assert a[0].tolist() == [[1.5 - 5.5, 5.5 - 1.5]] and a[1].tolist() == [[[-2.0, 2.0], [-2.0, 2.0]]]
    one = tree_advantages(torch.tensor([2.0, 5.0]), (1, 2, 2))[0]
    assert one.tolist() == [[2.0 + 1.5]]  # no sibling: their 0-mean, A = V
    with pytest.raises(ValueError, match="leaves in tree order"):
        tree_advantages(torch.zeros(3), (2, 2, 2))


def test_edge_rows_one_per_edge_with_parent_canvas_and_the_childs_new_tokens():
    eos = 2
    # tree (2, 2, 2) over 4 steps, branch after step 2; leaves of one group in tree order
    maps = [[0, 1, 2, 3], [0, 1, 3, 2], [1, 0, 2, 3], [1, 0, 3, 2]]
    comps = [[7, 8, 9, eos], [7, 8, eos, 9], [5, 6, 7, 8], [5, 6, 8, 7]]
    trajs = [Trajectory([4], c, m, [0.0] * 4, None, 0.9, 4, "eos", group=3) for c, m in zip(comps, maps)]
    rows, adv, owner, siblings = edge_rows(trajs, torch.tensor([1.0, 0.0, 0.0, 0.0]), (2, 2, 2), DTreeRpoOptions())
    assert owner == [0, 2, 0, 1, 2, 3]  # root -> 2 children (read off their first leaves), then 4 leaf edges
    assert siblings.tolist() == [0, 0, 1, 1, 2, 2]  # the root's children, then each level-1 node's
    assert adv.tolist() == [0.5, -0.5, 1.0, -1.0, 0.0, 0.0]
    assert [r.step_map for r in rows[:2]] == [[SCORED, SCORED, LATER, LATER]] * 2
    assert rows[2].step_map == [0, 0, SCORED, SCORED] and rows[3].step_map == [0, 0, SCORED, SCORED]
    assert all(r.temperature == 1.0 and r.group == 3 for r in rows)  # raw logits, theirs
    assert edge_rows(trajs, torch.zeros(4), (2, 2, 2), DTreeRpoOptions(raw_logits=False))[0][0].temperature == 0.9
    # the child canvas's first EOS ends the scored tokens: leaf 1 has EOS at 2, its 9 after it is filler
    assert edge_mask(rows[3], eos) == [False, False, True, False]
    assert edge_mask(rows[2], eos) == [False, False, True, True]
    # an EOS still masked in the child does not count: the root edge scores both tokens
    assert edge_mask(rows[0], eos) == [True, True, False, False]


def test_the_loss_by_hand_row_token_mean_then_mean_over_every_row():
    trajs = [Trajectory([4], [7, 8, 9], [1, 1, 2], [0.0] * 3, None, 1.0, 0, "length"),
             Trajectory([4], [7, 2, 9], [0, 1, 1], [0.0] * 3, None, 1.0, 0, "eos"),
             Trajectory([4], [2, 8, 9], [0, 1, 1], [0.0] * 3, None, 1.0, 0, "eos")]  # fmt: skip  # row 2: only filler after EOS
    w = d_tree_rpo_weights(trajs, torch.tensor([True, True, True]), DTreeRpoOptions(self_distillation=False), eos_id=2)
    assert w.tolist() == [[1 / 6, 1 / 6, 0.0], [0.0, 1 / 3, 0.0], [0.0, 0.0, 0.0]]  # N = 3 rows, the empty one too
    mask = w > 0
    old = torch.zeros(3, 3, dtype=torch.float64)
    logp = torch.tensor([[math.log(1.6), math.log(0.5), 0.0], [0.0, math.log(1.1), 0.0], [0.0] * 3], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0] * 3], dtype=torch.float64)
    adv = torch.tensor([1.0, -2.0, 5.0], dtype=torch.float64)
    loss, _ = d_tree_rpo_loss(logp, old, adv, mask, 0.4, 0.4, ref_logp=ref, beta=0.01, weights=w)
    # row 0: -(min(1.6, 1.4) + min(0.5, 0.6)) / 2 = -0.95; row 1: -min(-2.2, -2.2) = 2.2; row 2: 0; mean over 3 rows
    pg = (-0.95 + 2.2) / 3
    k3 = lambda r: 1 / r - math.log(1 / r) - 1
    kl = ((k3(1.6) + k3(0.5)) / 2 + k3(1.1)) / 3
    assert loss.item() == pytest.approx(pg + 0.01 * kl, rel=1e-12)
    loss.backward()  # clipped 1.6 has no policy gradient, only the KL's
    assert float(logp.grad[0, 0]) == pytest.approx(0.01 * (1 - 1 / 1.6) / 6, rel=1e-9)
    with pytest.raises(ValueError, match="weights"):
        d_tree_rpo_loss(logp, old, adv, mask)


def _sd_rows():
    """Parent 0: three children (A = 1, 0.5, -1.5), all on the masked canvas; parent 1: an only child (A = 2);
    parent 2: two children with A = 0. Width 4, EOS id 2 nowhere."""
    S, L = SCORED, LATER
    rows = [([S, S, L, S], [7, 8, 9, 4]), ([S, L, S, S], [7, 9, 5, 3]), ([S, S, L, L], [6, 8, 9, 9]),  # parent 0
            ([S, S, S, S], [1, 1, 1, 1]),  # parent 1
            ([S, S, L, L], [4, 5, 6, 7]), ([S, S, L, L], [5, 4, 6, 7])]  # fmt: skip  # parent 2
    trajs = [Trajectory([3], toks, codes, [0.0] * 4, None, 1.0, 0, "length") for codes, toks in rows]
    return trajs, torch.tensor([1.0, 0.5, -1.5, 2.0, 0.0, 0.0], dtype=torch.float64), torch.tensor([0, 0, 0, 1, 2, 2])


def test_self_distillation_by_hand_q_kl_and_the_schedules():
    trajs, adv, siblings = _sd_rows()
    keep = torch.ones(6, dtype=torch.bool)
    # lambda(t), tau(t) at t / T = 5 / 10 (their :830-837); the horizon option replaces the run's T; t / T clipped at 1
    lam = 3e-3 * (math.exp(2.0 * 0.5) - 1) / (math.exp(2.0) - 1)
    tau = 2.0 * 0.5**0.7
    assert self_distillation_schedule(5, 10, DTreeRpoOptions()) == pytest.approx((lam, tau), rel=1e-12)
    assert self_distillation_schedule(5, 999, DTreeRpoOptions(sd_horizon=10)) == pytest.approx((lam, tau), rel=1e-12)
    assert self_distillation_schedule(0, 10, DTreeRpoOptions()) == (0.0, 2.0)
    assert self_distillation_schedule(20, 10, DTreeRpoOptions()) == pytest.approx((3e-3, 1e-6))
    w = d_tree_rpo_weights(trajs, keep, DTreeRpoOptions(), 2, advantages=adv, siblings=siblings, progress=(5, 10))
    assert w.shape == (6, 4, 4)
    off = d_tree_rpo_weights(trajs, keep, DTreeRpoOptions(self_distillation=False), 2)
    assert torch.equal(w[..., 0], off)  # the policy weights as without the term
    # parent 0 keeps children 0 and 1 (A > 0): w = softmax([1, 0.5] / tau); parents 1 (only child) and 2 (no A > 0) add nothing.
    # Positions: j0 both put 7 (a tie: q_7 = w0 + w1), j1 only child 0 is active, j2 only child 1, j3 both, tokens 4 and 3.
    w0 = 1 / (1 + math.exp(-0.5 / tau))
    w1 = 1 - w0
    e = 1e-8
    a = [[w0 / (1 + e), w0 / (w0 + e), 0, w0 / (1 + e)], [w1 / (1 + e), 0, w1 / (w1 + e), w1 / (1 + e)]]  # w_k / (W_j + 1e-8)
    q = [[1 / (1 + e), w0 / (w0 + e), 0, w0 / (1 + e)], [1 / (1 + e), 0, w1 / (w1 + e), w1 / (1 + e)]]  # q of child k's token
    close = lambda x, want: torch.allclose(x, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-15)
    assert close(w[:2, :, 1], [[x / 4 for x in r] for r in a])  # over the 4 (parent, j) pairs
    assert w[2:, :, 1].abs().sum() == 0 and w[2:, :, 2].abs().sum() == 0
    assert close(w[:2, :, 2], [[math.log(x + e) if x else 0.0 for x in r] for r in q])
    assert w[..., 3].unique().tolist() == pytest.approx([lam], rel=1e-12)
    # the loss: their KL(q_j || p_parent,j) from a parent log-prob table, each row's log-prob read off it at its token
    torch.manual_seed(0)
    log_p = torch.log_softmax(torch.randn(4, 10, dtype=torch.float64), -1).requires_grad_()  # [j, u] p_parent
    targets = torch.tensor([t.completion_ids for t in trajs])
    mask = off > 0
    logp = log_p.T[targets, torch.arange(4)]  # [6, 4] row k at j: log p_parent,j(x_kj)
    logp = torch.where(mask, logp, torch.zeros_like(logp))
    old = logp.detach() + 0.1
    loss, m = d_tree_rpo_loss(logp, old, adv, mask, 0.4, 0.4, weights=w)
    loss_off, _ = d_tree_rpo_loss(logp, old, adv, mask, 0.4, 0.4, weights=off)

    def kl(j, qs):  # {token: q}, their sum over the support
        return sum(qu * (torch.log(torch.tensor(qu + e, dtype=torch.float64)) - log_p[j, u]) for u, qu in qs.items())

    sd = (kl(0, {7: 1 / (1 + e)}) + kl(1, {8: w0 / (w0 + e)}) + kl(2, {5: w1 / (w1 + e)}) + kl(3, {4: w0 / (1 + e), 3: w1 / (1 + e)})) / 4
    assert m["loss/self_distillation"] == pytest.approx(sd.item(), rel=1e-12)
    assert (loss - loss_off).item() == pytest.approx(lam * sd.item(), rel=1e-9)
    (g,) = torch.autograd.grad(loss - loss_off, log_p)
    (g_want,) = torch.autograd.grad(lam * sd, log_p)
    assert torch.allclose(g, g_want, rtol=1e-12, atol=1e-18) and g.abs().sum() > 0
    # a dropped row is never active: child 1 dropped, child 0 alone is q at j0 and j3
    w_drop = d_tree_rpo_weights(trajs, torch.tensor([True, False, True, True, True, True]), DTreeRpoOptions(), 2,
                                advantages=adv, siblings=siblings, progress=(5, 10))  # fmt: skip
    assert w_drop[0, :, 1].tolist() == pytest.approx([w0 / (w0 + e) / 3, w0 / (w0 + e) / 3, 0.0, w0 / (w0 + e) / 3], rel=1e-12)
    with pytest.raises(ValueError, match="siblings="):
        d_tree_rpo_weights(trajs, keep, DTreeRpoOptions(), 2)


def test_minibatches_keep_sibling_groups_whole_with_the_term_on():
    from types import SimpleNamespace

    from rl.learner import Learner

    trajs, adv, _ = _sd_rows()
    siblings = torch.tensor([0, 0, 0, 1, 2, 2, 3, 3, 4, 4, 4, 5])
    batch = LearnerBatch.pack(trajs * 2, torch.cat([adv, adv]), siblings=siblings)
    unit = get_estimator("d_tree_rpo")
    for sd in (True, False):
        me = SimpleNamespace(cfg=SimpleNamespace(algorithm=SimpleNamespace(minibatches=3)), estimator=unit,
                             _estimator_options=DTreeRpoOptions(self_distillation=sd))  # fmt: skip
        split = [Learner._minibatches(me, batch, torch.Generator().manual_seed(s)) for s in range(8)]
        assert all(sorted(i for c in chunks for i in c) == list(range(12)) for chunks in split)
        whole = [all(set(siblings[c].tolist()).isdisjoint(siblings[d].tolist()) for c in chunks for d in chunks if c is not d) for chunks in split]
        assert all(whole) if sd else not all(whole)  # rows shuffled alone split some parent's children
        if sd:  # 6 groups in 3 minibatches of 2 groups
            assert all(len(chunks) == 3 and all(len(set(siblings[c].tolist())) == 2 for c in chunks) for chunks in split)
    assert LearnerBatch.pack(trajs, adv).siblings.tolist() == list(range(6))  # no tree: every row its own parent's only child


def test_the_estimate_is_one_forward_on_the_parent_canvas():
    lm = _llada()
    tok = lm.tokenizer
    prompt, comp = tok.encode("12+3="), tok.encode("15") + [lm.eos_id, tok.encode("7")[0]]
    row = Trajectory(prompt, comp, [0, SCORED, SCORED, LATER], [0.0] * 4, None, 1.0, 0, "eos")
    logp, mask = d_tree_rpo_estimate(lm, [row])
    assert mask.tolist() == [[False, True, True, False]]
    x = torch.tensor([prompt + [comp[0]] + [lm.mask_id] * 3])  # the parent canvas: the edge's and later tokens masked
    with torch.no_grad():
        lp = lm.sampling_logprobs(lm.sequence_logits(x, torch.arange(len(prompt), len(prompt) + 4)[None]), 1.0)[0]
    assert logp[0, 1:3].tolist() == pytest.approx([float(lp[1, comp[1]]), float(lp[2, comp[2]])], abs=1e-5)
    assert logp[0, 0] == 0 and logp[0, 3] == 0


def _nth(ids):
    """(id, how many times it came before) for each entry: where a row of a sibling group sits in its group."""
    return [(x, ids[:i].count(x)) for i, x in enumerate(ids)]


def _config(tmp_path, algorithm, model=str(BASE_CKPT), extra=""):
    p = tmp_path / "run.yaml"
    p.write_text(f"data: {{sources: [{{path: arithmetic}}]}}\nmodel: {{path: {model}}}\nwandb: {{mode: disabled}}\nalgorithm: {{{algorithm}}}\n{extra}")
    return load_config(p)


def test_a_one_line_config_gets_the_preset_and_the_tree_and_a_block_causal_model_is_refused(tmp_path):
    from rl.learner import Learner

    cfg = _config(tmp_path, "estimator: d_tree_rpo")
    algo = cfg.algorithm
    assert (algo.eps_low, algo.eps_high, algo.beta, algo.epochs, algo.redraw_masks) == (0.4, 0.4, 0.01, 12, False)
    s = cfg.rollout.sampling
    assert (s.tree, s.block_length, s.steps_per_block, s.temperature, s.confidence, s.kv_cache) == ((4, 4, 2), 32, 16, 0.9, "raw_prob", False)
    assert cfg.rollout.samples_per_prompt == 16  # the leaves
    unit = algo.estimator_unit()
    assert unit is get_estimator("d_tree_rpo") and unit.objective is d_tree_rpo_loss and unit.tree_batch is edge_rows
    opts = unit.check_options(algo.estimator_options())
    assert (opts.self_distillation, opts.sd_lambda_max, opts.sd_gamma, opts.sd_tau_max, opts.sd_tau_beta, opts.sd_horizon) == (True, 3e-3, 2.0, 2.0, 0.7, None)
    assert opts.per_parent_schedule and unit.segment_count(opts, s.tree) == 5  # their schedule: the root and 4 level-1 parents
    off = _config(tmp_path, "estimator: d_tree_rpo, options: {self_distillation: false, sd_horizon: 30000}").algorithm
    assert unit.check_options(off.estimator_options()) == DTreeRpoOptions(self_distillation=False, sd_horizon=30000)
    with pytest.raises(ValueError, match="sd_horizon must be a positive"):
        _config(tmp_path, "estimator: d_tree_rpo, options: {sd_horizon: 0}")
    with pytest.raises(ValueError, match="samples_per_prompt is 8, but rollout.sampling.tree"):
        _config(tmp_path, "estimator: d_tree_rpo", extra="rollout: {samples_per_prompt: 8}\n")
    with pytest.raises(ValueError, match="eval.sampling.tree"):
        _config(tmp_path, "estimator: d_tree_rpo", extra="eval: {sampling: {tree: [2, 2, 2]}}\n")
    with pytest.raises(ValueError, match="multiple of rollout.num_workers"):
        _config(tmp_path, "estimator: d_tree_rpo", extra="rollout: {num_workers: 3, prompts_per_step: 4}\n")
    with pytest.raises(ValueError, match=r"'d_tree_rpo' is defined for full attention only"):
        Learner(cfg)


def test_one_training_step_through_the_trainers_stages(tmp_path):
    """The trainer's score and advantages stages (without Ray) on a tiny LLaDA's tree rollout, then a
    learner update on the edge rows: 2 prompts x (2 + 4) edges, and the policy moves."""
    from rl.data import PromptStream, load_source
    from rl.learner import Learner
    from rl.trainer import Trainer
    from rollout.worker import RolloutWorker

    lm = _llada()
    lm.save_pretrained(tmp_path / "llada")
    tok = lm.tokenizer
    extra = "rollout: {prompts_per_step: 2, sampling: {tree: [2, 2, 2], max_new_tokens: 6, block_length: 3, steps_per_block: 2}}\n"
    flat = "estimator: d_tree_rpo, lr: 1.0e-3, epochs: 2, minibatches: 2, options: {per_parent_schedule: false}"  # epochs x minibatches
    cfg = _config(tmp_path, flat, model=str(tmp_path / "llada"), extra=extra)
    assert cfg.rollout.samples_per_prompt == 4
    tr = Trainer.__new__(Trainer)
    tr.cfg, tr.tokenizer = cfg, tok
    tr.sources = [load_source(s, cfg.rewards) for s in cfg.data.sources]

    def ords(prompts, completions, **kw):  # a reward the random model's leaves differ on
        return [float(sum(map(ord, c)) % 3) for c in completions]

    tr.reward_fns = {s.name: [ords for _ in s.rewards] for s in tr.sources}
    tr.reward_weights = {s.name: [r.weight for r in s.rewards] for s in tr.sources}
    tr.train_params = cfg.rollout.sampling.params(6)
    examples = PromptStream(tr.sources, tok, 0).batch(0, 2)
    worker = RolloutWorker(str(tmp_path / "llada"))
    trajs = worker.generate([ex.prompt_ids for ex in examples for _ in range(4)], tr.train_params, seed=0, groups=[0] * 4 + [1] * 4)
    batch = StepBatch(trajs, examples)
    tr.score(batch)
    assert batch.rewards.std() > 0
    kept, metrics = tr.advantages(batch)
    assert metrics["tree_edges"] == 12 and len(kept) == 12
    want = edge_rows(trajs, batch.rewards, (2, 2, 2), DTreeRpoOptions())
    assert kept.advantages.tolist() == pytest.approx(want[1].tolist())
    assert kept.siblings.tolist() == want[3].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    learner = Learner(cfg)
    calls = []

    def spy(rows, keep, options, eos, **kw):  # the self-distillation weights: once per optimizer step, on whole sibling groups
        calls.append((kw["progress"], kw["siblings"].tolist(), kw["advantages"].tolist()))
        return d_tree_rpo_weights(rows, keep, options, eos, **kw)

    learner.estimator = dataclasses.replace(learner.estimator, loss_weights=spy)
    start = {k: v.clone() for k, v in learner.lm.model.named_parameters()}
    m = learner.update(kept.for_learner())
    assert math.isfinite(m["loss/policy"]) and m["loss/self_distillation"] > 0
    total = cfg.train.steps * 2 * 2
    assert [c[0] for c in calls] == [(0, total), (1, total), (2, total), (3, total)]  # epochs x minibatches
    for _, sib, a in calls:
        assert len(sib) == 6 and all(sib.count(x) == 2 for x in set(sib))  # 3 whole parents of 2 children each
        assert a == pytest.approx([float(kept.advantages[(kept.siblings == x).nonzero()[i]]) for x, i in _nth(sib)])
    assert any(not torch.equal(p, start[n]) for n, p in learner.lm.model.named_parameters())
    # micro-batches split a parent's children (4 pieces of 2, 2, 1, 1 rows): the weights were taken over the whole
    # minibatch, so the update and the term are the same
    split = Learner(_config(tmp_path, flat, model=str(tmp_path / "llada"), extra=extra + "learner: {micro_batches: 4}\n"))
    m_split = split.update(kept.for_learner())
    assert m_split["loss/self_distillation"] == pytest.approx(m["loss/self_distillation"], rel=1e-5)
    for (n, p), q in zip(learner.lm.model.named_parameters(), split.lm.model.parameters()):  # fp32 sums in another order, through Adam
        assert (p - q).abs().max() < 0.01 * (p - start[n]).abs().max(), n


@pytest.mark.slow
def test_unmask_train_runs_d_tree_rpo_from_a_one_line_config(tmp_path):
    """`unmask train` with `algorithm: {estimator: d_tree_rpo}` on a tiny LLaDA (the preset's tree, 4 x 4
    leaves, one prompt of 4 tokens): tree rollout, leaf rewards, the 4 + 16 edge rows in 5 parent segments of
    12 optimizer steps each (their schedule), config.yaml naming the preset's sources."""
    import json
    import subprocess
    import sys

    from .conftest import ROOT

    _llada().save_pretrained(tmp_path / "llada")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"model: {{path: {tmp_path / 'llada'}}}\n"
        "data: {sources: [{path: arithmetic, options: {digits: 1}, heldout: {size: 2}}]}\n"
        "rollout: {prompts_per_step: 1, sampling: {max_new_tokens: 4}}\n"
        "algorithm: {estimator: d_tree_rpo}\n"
        "train: {steps: 1, save_every: 1}\neval: {every: 0}\nwandb: {mode: disabled}\n"
    )
    run = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "rl.cli", "train", str(cfg), "--output-dir", str(run)], check=False, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in records if "loss/policy" in r)
    assert step["tree_edges"] == 4 + 16 and step["rollout/nfe_mean"] == 4  # 4 tokens, one per step, branching after 2
    assert step["loss/self_distillation"] >= 0  # the term, on by default, logged unscaled
    assert "THU-BPM/d-TreeRPO" in (run / "config.yaml").read_text()


def _two_prompt_edges(eos=2):
    """edge_rows of two prompts' (2, 2, 2) trees (test_edge_rows_...'s leaves, rewards differing per prompt)."""
    maps = [[0, 1, 2, 3], [0, 1, 3, 2], [1, 0, 2, 3], [1, 0, 3, 2]]
    comps = [[7, 8, 9, eos], [7, 8, eos, 9], [5, 6, 7, 8], [5, 6, 8, 7]]
    trajs = [Trajectory([4], c, m, [0.0] * 4, None, 0.9, 4, "eos", group=g) for g in (0, 1) for c, m in zip(comps, maps)]
    return edge_rows(trajs, torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0]), (2, 2, 2), DTreeRpoOptions())


def test_parent_segments_are_the_parent_positions_of_every_prompt_in_a_seeded_order():
    from algorithms.d_tree_rpo import parent_positions, parent_segments

    assert (parent_positions((4, 4, 2)), parent_positions((2, 2, 2)), parent_positions((2, 3, 3)), parent_positions((3, 2, 1))) == (5, 3, 9, 1)
    _, _, _, siblings = _two_prompt_edges()
    assert siblings.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    by_position = [[0, 1, 6, 7], [2, 3, 8, 9], [4, 5, 10, 11]]  # the root's children, then level-1 node 0's, node 1's: both prompts
    orders = set()
    for seed in range(6):
        order = torch.randperm(3, generator=torch.Generator().manual_seed(seed)).tolist()
        assert parent_segments(siblings, (2, 2, 2), torch.Generator().manual_seed(seed)) == [by_position[p] for p in order]
        orders.add(tuple(order))
    assert len(orders) > 1  # shuffled (their random.shuffle), not in tree order
    # their (4, 4, 2) tree, 3 prompts: 5 segments of 4 x 3 rows (each prompt's 4 root children, then 4 children per level-1 node)
    big = torch.tensor([p * 5 + i for p in range(3) for i in [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4])
    segs = parent_segments(big, (4, 4, 2), torch.Generator().manual_seed(0))
    assert sorted(len(s) for s in segs) == [12] * 5 and sorted(i for s in segs for i in s) == list(range(60))
    assert all(len({int(big[i]) % 5 for i in s}) == 1 for s in segs)
    with pytest.raises(ValueError, match="parent ids"):  # ids that are not edge_rows' (5 per prompt)
        parent_segments(torch.arange(7), (4, 4, 2), torch.Generator())


def test_per_parent_schedule_trains_each_segment_for_epochs_consecutive_steps(tmp_path):
    """One update of two prompts' (2, 2, 2) edge rows, epochs 2: 3 segments x 2 optimizer steps, segment-major, the
    optimizer step (lr, self-distillation progress) counting 3 RL steps x 2 epochs x 3 segments; off: epochs x minibatches."""
    from rl.learner import Learner

    _llada().save_pretrained(tmp_path / "llada")
    extra = "rollout: {prompts_per_step: 2, sampling: {tree: [2, 2, 2], max_new_tokens: 4}}\ntrain: {steps: 3}\n"
    algo = "estimator: d_tree_rpo, lr: 1.0e-3, epochs: 2, lr_schedule: cosine"
    rows, adv, _, siblings = _two_prompt_edges()
    batch = LearnerBatch.pack(rows, adv, siblings=siblings)

    def spied(learner):
        seen, progress = [], []

        def step(trajs, pieces, totals, seed):  # which rows each optimizer step trains, at which lr
            seen.append((sorted(i for s in pieces for i in s.piece.idx), learner.optimizer.param_groups[0]["lr"]))
            return {}

        def weights(rows, keep, options, eos, **kw):
            progress.append(kw["progress"])
            return d_tree_rpo_weights(rows, keep, options, eos, **kw)

        learner._optimizer_step = step
        learner.estimator = dataclasses.replace(learner.estimator, loss_weights=weights)
        return seen, progress

    cfg = _config(tmp_path, algo, model=str(tmp_path / "llada"), extra=extra)
    learner = Learner(cfg)
    learner.step = 1  # the second RL step: its optimizer steps follow the first's 6
    seen, progress = spied(learner)
    learner.update(batch)
    by_position = [[0, 1, 6, 7], [2, 3, 8, 9], [4, 5, 10, 11]]
    order = torch.randperm(3, generator=torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + 1)).tolist()
    assert [r for r, _ in seen] == [by_position[p] for p in order for _ in range(2)]  # each segment twice in a row
    assert learner.steps_per_update() == 6 and progress == [(6 + i, 18) for i in range(6)]
    assert [lr for _, lr in seen] == [learner.lr_at(6 + i) for i in range(6)]
    assert learner.lr_at(9) == pytest.approx(0.5e-3, rel=1e-9)  # cosine half-way through 3 x 2 x 3 = 18 steps
    with pytest.warns(UserWarning, match=r"minibatches \(2\) is ignored"):  # a base config's minibatches: the segments rule
        assert _config(tmp_path, algo + ", minibatches: 2", extra=extra).algorithm.minibatches == 2
    # off: today's loop, epoch-major over the learner's minibatches (whole sibling groups), 3 x 2 x 3 steps too
    off = Learner(_config(tmp_path, algo + ", minibatches: 3, options: {per_parent_schedule: false}", model=str(tmp_path / "llada"), extra=extra))
    off.step = 1
    seen, progress = spied(off)
    off.update(batch)
    chunks = Learner._minibatches(off, batch, torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + 1))
    assert [r for r, _ in seen] == [sorted(chunks[j]) for _ in range(2) for j in range(3)]
    assert off.steps_per_update() == 6 and progress == [(6 + i, 18) for i in range(6)]


@pytest.mark.parametrize("schedule", [True, False])
def test_the_ablations_forward_count_is_the_learners(tmp_path, schedule):
    """benchmarks/ablation.py's fwd/update column: the batched forwards one learner update really calls, with the
    per-parent schedule (segments x (old + epochs)) and without it (minibatches x (old + epochs))."""
    from benchmarks.ablation import forward_passes
    from rl.learner import Learner

    _llada().save_pretrained(tmp_path / "llada")
    extra = "rollout: {prompts_per_step: 2, sampling: {tree: [2, 2, 2], max_new_tokens: 4}}\ntrain: {steps: 3}\n"
    algo = "estimator: d_tree_rpo, lr: 1.0e-3, epochs: 2" + ("" if schedule else ", minibatches: 2, options: {per_parent_schedule: false}")
    rows, adv, _, siblings = _two_prompt_edges()
    learner = Learner(_config(tmp_path, algo, model=str(tmp_path / "llada"), extra=extra))
    assert learner.cfg.algorithm.beta > 0 and learner.ref is not None  # the preset's KL: a reference pass too
    calls = []
    for lm in (learner.lm, learner.ref):
        lm.forward_logprobs = lambda *a, _f=lm.forward_logprobs, **k: calls.append(1) or _f(*a, **k)
    learner.update(LearnerBatch.pack(rows, adv, siblings=siblings))
    assert len(calls) == forward_passes(learner.cfg, rows)[1] == (3 if schedule else 2) * (1 + 1 + 2)


def test_parents_per_step_trains_k_shuffled_segments_together(tmp_path):
    """options.parents_per_step 2 on a (2, 2, 2) tree (3 parent positions): chunks of 2 + 1 segments in the shuffled
    order, each for epochs consecutive optimizer steps, so an update is 2 x 2 steps (their parents_per_step)."""
    from algorithms.d_tree_rpo import parent_chunks
    from rl.learner import Learner

    assert parent_chunks([[4, 5], [0, 1], [2, 3]], 2) == [[4, 5, 0, 1], [2, 3]] and parent_chunks([[1], [0]], 3) == [[1, 0]]
    with pytest.raises(ValueError, match="parents_per_step must be >= 1"):
        DTreeRpoOptions(parents_per_step=0)
    _llada().save_pretrained(tmp_path / "llada")
    extra = "rollout: {prompts_per_step: 2, sampling: {tree: [2, 2, 2], max_new_tokens: 4}}\ntrain: {steps: 3}\n"
    cfg = _config(tmp_path, "estimator: d_tree_rpo, lr: 1.0e-3, epochs: 2, options: {parents_per_step: 2}", model=str(tmp_path / "llada"), extra=extra)
    learner = Learner(cfg)
    seen = []
    learner._optimizer_step = lambda trajs, pieces, totals, seed: seen.append(sorted(i for s in pieces for i in s.piece.idx)) or {}
    rows, adv, _, siblings = _two_prompt_edges()
    learner.update(LearnerBatch.pack(rows, adv, siblings=siblings))
    by_position = [[0, 1, 6, 7], [2, 3, 8, 9], [4, 5, 10, 11]]
    order = torch.randperm(3, generator=torch.Generator().manual_seed(cfg.train.seed * 1_000_003)).tolist()
    first, second = sorted(by_position[order[0]] + by_position[order[1]]), by_position[order[2]]
    assert seen == [first, first, second, second] and learner.steps_per_update() == 4



@pytest.mark.parametrize("options, chunk_rows", [("", [4, 4, 4]), (", options: {parents_per_step: 2}", [8, 4]),
                                                 (", minibatches: 3, options: {per_parent_schedule: false}", [4, 4, 4])])  # fmt: skip
def test_the_plan_sizes_the_learner_by_the_tree_edges_and_the_largest_chunk(tmp_path, options, chunk_rows):
    """`unmask plan`'s learner rows for d-TreeRPO: the tree's edges (6 per prompt of a (2, 2, 2) tree, not its 4
    leaves) and the largest optimizer step's rows, as the learner really chunks them."""
    from rl.learner import Learner
    from rl.plan import learner_rows

    _llada().save_pretrained(tmp_path / "llada")
    extra = "rollout: {prompts_per_step: 2, sampling: {tree: [2, 2, 2], max_new_tokens: 4}}\ntrain: {steps: 3}\n"
    cfg = _config(tmp_path, "estimator: d_tree_rpo, lr: 1.0e-3, epochs: 2" + options, model=str(tmp_path / "llada"), extra=extra)
    learner = Learner(cfg)
    rows, adv, _, siblings = _two_prompt_edges()
    batch = LearnerBatch.pack(rows, adv, siblings=siblings)
    gen = torch.Generator().manual_seed(0)
    chunks = learner._segments(batch, gen) if learner._segment_count() is not None else learner._minibatches(batch, gen)
    assert sorted(map(len, chunks), reverse=True) == chunk_rows
    assert learner_rows(learner.estimator, cfg) == (len(rows), max(chunk_rows)) == (12, max(chunk_rows))
