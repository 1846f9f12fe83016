"""ESPO (ML-GSAI/ESPO): the stratified counts, the ELBO terms and the loss by hand, its preset from a
one-line config, a learner update on a full-attention model (old and reference passes on the same
masks, group ranks over the whole batch), and the refusal of a block-causal one."""

import math

import pytest
import torch

from algorithms.espo import espo_elbo_terms, espo_loss, espo_masks, stratified_counts
from algorithms.estimators import get_estimator, group_positions
from algorithms.losses import LossTotals
from rl.batch import learner_batch
from rl.config import ConfigError, config_yaml, estimators_help, load_config
from rl.learner import Learner
from rollout import SamplingParams, build_char_tokenizer
from rollout.models import build_tiny_lm
from rollout.worker import RolloutWorker

from .conftest import BASE_CKPT


def test_stratified_counts_by_hand():
    # L = 9, b = 3 rows: spacing (L + 1) / b = 10/3; k = 4: round([4, 7.33, 10.67]) = [4, 7, 11] mod 10 = [4, 7, 1]
    assert stratified_counts(4, 9, 3) == [4, 7, 1]
    # b = 2, L = 4: spacing 5/2; k = 0: round([0, 2.5]) = [0, 2] (half to even, as torch.round)
    assert stratified_counts(0, 4, 2) == [0, 2]
    assert stratified_counts(3, 4, 1) == [3]  # one row: the count is k itself


def test_masks_count_exactly_and_stratify_each_cell_whatever_the_piece():
    # one group of 6 (strata 3: cells {0, 1, 2} and {3, 4, 5}), canvases of 8
    ranks, sizes = group_positions([0] * 6)
    gens = lambda: [torch.Generator().manual_seed(100 + i) for i in range(6)]  # noqa: E731
    draws = espo_masks([8] * 6, [0] * 6, ranks, sizes, 3, 2, 7, gens())
    for draw in draws:
        counts = [sum(m) for m in draw]
        for cell in (counts[:3], counts[3:]):
            # the cell's counts are ESPO's stratified set for some k: spacing 9/3 = 3 apart mod 9
            assert any(sorted(cell) == sorted(stratified_counts(k, 8, 3)) for k in range(9)), cell
    # a piece holding samples 1 and 4 alone (their ranks passed in) draws the same masks
    g = gens()
    piece = espo_masks([8, 8], [0, 0], [1, 4], [6, 6], 3, 2, 7, [g[1], g[4]])
    assert [d[0] for d in piece] == [d[1] for d in draws] and [d[1] for d in piece] == [d[4] for d in draws]
    # a last, smaller cell (group of 4, strata 3): rank 3 is alone, k is its count
    one = espo_masks([8], [0], [3], [4], 3, 1, 7, [torch.Generator().manual_seed(0)])[0][0]
    assert len(one) == 8


def test_elbo_terms_by_hand():
    # canvas L = 3, M = {c0}: x = 1, p = 1/4.  pass 1: c0 -> lp1 / p / 2 = -0.4 * 4 / 2 = -0.8
    # pass 2 (c1, c2 masked): lp2 / (L/(L+1) - p) / 2 = lp2 / (3/4 - 1/4) / 2 = lp2: -0.6, -1.2
    # row 1: canvas L = 2 of a 3-wide batch, M = {} (x = 0, p = 0): lp2 / (2/3) / 2 = 0.75 lp2; c2 is padding
    lp1 = torch.tensor([[-0.4, -9.0, -9.0], [-9.0, -9.0, -9.0]])
    lp2 = torch.tensor([[-9.0, -0.6, -1.2], [-1.0, -2.0, -9.0]])
    masked = torch.tensor([[True, False, False], [False, False, False]])
    terms = espo_elbo_terms(lp1, lp2, masked, masked.sum(1), torch.tensor([3, 2]))
    assert terms.flatten().tolist() == pytest.approx([-0.8, -0.6, -1.2, -0.75, -1.5, 0.0], abs=1e-6)


def test_loss_by_hand_sequence_ratio_per_canvas_length_and_k2_kl():
    # two canvases of L = 2; ELBO = [-3, -5], old = [-4, -5], ref = [-3, -7]
    logp = torch.tensor([[-1.0, -2.0], [-2.5, -2.5]], requires_grad=True)
    old = torch.tensor([[-2.0, -2.0], [-2.5, -2.5]])
    ref = torch.tensor([[-1.5, -1.5], [-3.5, -3.5]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0])
    # r0 = exp((-3 + 4) / 2) = e^0.5 = 1.6487 -> clipped to 1.2 for A > 0: min(1.6487, 1.2) = 1.2; r1 = exp(0) = 1
    # policy = -(1.2 * 1 + 1 * -1) / 2 = -0.1; k2 = ((0)^2 / 2 / 2 + (2)^2 / 2 / 2) / 2 = (0 + 1) / 2 = 0.5
    loss, m = espo_loss(logp, old, adv, mask, 0.2, 0.2, ref_logp=ref, beta=0.1)
    assert loss.item() == pytest.approx(-0.1 + 0.1 * 0.5, abs=1e-6)
    assert (m["loss/policy"], m["kl"], m["clipfrac"]) == pytest.approx((-0.1, 0.5, 0.5), abs=1e-6)
    loss.backward()
    # row 0 is clipped (no gradient from the ratio); its KL term is 0 at ELBO = ref. Row 1: d/dlogp of
    # -A r / 2 = r / (2 L) = 1/4 per token, plus beta * d(k2)/dELBO / 2 = 0.1 * (ELBO - ref) / L / 2 = 0.1 * 2 / 2 / 2 = 0.05
    assert logp.grad.flatten().tolist() == pytest.approx([0.0, 0.0, 0.3, 0.3], abs=1e-6)
    # pieces with the whole's totals sum to the whole
    whole = LossTotals.of(mask)
    parts = sum(espo_loss(logp[i : i + 1], old[i : i + 1], adv[i : i + 1], mask[i : i + 1], 0.2, 0.2, ref_logp=ref[i : i + 1], beta=0.1, totals=whole)[0].item() for i in range(2))
    assert parts == pytest.approx(loss.item(), abs=1e-6)
    # a large move is bounded: the per-token log-ratio is clamped to 10 before exp
    big, _ = espo_loss(torch.tensor([[40.0, 0.0]]), torch.zeros(1, 2), torch.tensor([-1.0]), torch.ones(1, 2, dtype=torch.bool), 0.2, 0.2)
    assert big.item() == pytest.approx(math.exp(10.0), rel=1e-5)


def test_the_estimate_scores_the_whole_canvas_with_a_complement_pass(monkeypatch):
    import algorithms.espo as espo
    from algorithms.estimators import _score
    from rollout.trajectory import Trajectory

    lm = build_tiny_lm(build_char_tokenizer(), family="llada", hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    a, b = [i for i in range(lm.num_tokens) if i not in (lm.mask_id, lm.eos_id, lm.pad_id)][:2]
    comp = [a, b, lm.eos_id, lm.eos_id]  # the answer ends at c2; c3 is LLaDA's EOS filler
    t = Trajectory([b, a, a], comp, [0, 1, 2, 3], [0.0] * 4, None, 1.0, 4, "eos")
    M = [True, False, False, True]  # x = 2 of L = 4: p = 2/5, complement weight 1 / (4/5 - 2/5) = 5/2
    monkeypatch.setattr(espo, "espo_masks", lambda *args, **kw: [[M]] * kw.get("num_mc", args[5]))
    logp, mask = espo.espo_estimate(lm, [t], num_mc=1, seed=0)
    assert mask.tolist() == [[True] * 4]  # canvas: the filler after the first EOS counts, as in ESPO
    tgt = torch.tensor([comp])
    lp1, _ = _score(lm, [t], [M], 1.0, tgt, torch.tensor([M]))
    lp2, _ = _score(lm, [t], [[not m for m in M]], 1.0, tgt, ~torch.tensor([M]))
    # e_c = lp1 / p / 2 = 1.25 lp1 on M, lp2 * 5/2 / 2 = 1.25 lp2 on ~M
    want = torch.where(torch.tensor([M]), 1.25 * lp1, 1.25 * lp2)
    assert logp.flatten().tolist() == pytest.approx(want.flatten().tolist(), abs=1e-5)
    # num_mc draws are averaged: two copies of one draw give that draw's ELBO
    two, _ = espo.espo_estimate(lm, [t], num_mc=2, seed=0)
    assert two.flatten().tolist() == pytest.approx(want.flatten().tolist(), abs=1e-5)
    # canvas: false stops at the first EOS, as unmask's other units do
    assert espo.espo_estimate(lm, [t], num_mc=1, seed=0, canvas=False)[1].tolist() == [[True, True, True, False]]


def _config(tmp_path, algorithm: str, model: str = str(BASE_CKPT)):
    p = tmp_path / "run.yaml"
    p.write_text(f"data: {{sources: [{{path: arithmetic}}]}}\nmodel: {{path: {model}}}\nwandb: {{mode: disabled}}\nalgorithm: {{{algorithm}}}\n")
    return load_config(p)


def test_a_one_line_config_gets_espos_preset_and_a_block_causal_model_is_refused(tmp_path):
    cfg = _config(tmp_path, "estimator: espo")
    algo = cfg.algorithm
    # ML-GSAI/ESPO: leave-one-out unscaled, epsilon 0.2, beta 1e-3 (k2 on the ELBO), a mask seed per inner iteration
    assert (algo.advantage, algo.eps_low, algo.eps_high, algo.beta, algo.redraw_masks) == ("loo", 0.2, 0.2, 1e-3, True)
    unit = algo.estimator_unit()
    assert unit is get_estimator("espo") and unit.objective is espo_loss and unit.needs_old_logp and unit.objective_kl
    o = unit.check_options({})
    assert (o.num_mc, o.strata, o.canvas) == (2, 3, True) and unit.passes([], **{}) == 4
    text = config_yaml(cfg.model_dump(mode="json"), algo)
    assert "  beta: 0.001  # espo preset: ML-GSAI/ESPO recipes/run_gsm8k_llada.sh:28" in text
    assert "objective: algorithms.espo.espo_loss (its own KL form: algorithm.beta)" in estimators_help()
    assert _config(tmp_path, "estimator: espo, beta: 0.01").algorithm.beta == 0.01  # its own KL takes beta
    with pytest.raises(ConfigError, match="algorithm.loss: estimator 'espo' brings its own objective"):
        _config(tmp_path, "estimator: espo, loss: gspo")
    with pytest.raises(ValueError, match=r"'espo' is defined for full attention only; model family 'block' has block_causal attention"):
        Learner(cfg)  # arith3-base is a block (SDAR-style) model


def test_a_learner_update_scores_old_and_reference_on_the_same_stratified_masks(tmp_path):
    lm = build_tiny_lm(build_char_tokenizer(), family="llada", hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    lm.save_pretrained(tmp_path / "llada")
    cfg = _config(tmp_path, "estimator: espo, lr: 1.0e-3, beta: 0.01, epochs: 1, options: {num_mc: 1, strata: 2}", model=str(tmp_path / "llada"))
    learner = Learner(cfg)
    worker = RolloutWorker(str(tmp_path / "llada"))
    tok = worker.lm.tokenizer
    trajs = worker.generate([tok("12+3=")["input_ids"], tok("45+6=")["input_ids"]] * 2,
                            SamplingParams(max_new_tokens=6, temperature=1.0), seed=0, groups=[0, 1] * 2)  # fmt: skip
    calls, seen = [], []
    for module, who in ((learner._policy, "policy"), (learner._ref, "ref")):
        def spy(lm_, batch, gen, _est=module.estimate, _who=who, **kw):
            calls.append((_who, [t.group for t in batch], kw["group_rank"], kw["group_size"]))
            return _est(lm_, batch, gen, **kw)
        module.estimate = spy

    def loss_spy(logp, old_logp, advantages, mask, *args, **kwargs):
        seen.append((logp.detach(), old_logp, kwargs["ref_logp"], kwargs["beta"], mask))
        return espo_loss(logp, old_logp, advantages, mask, *args, **kwargs)

    learner.loss_fn = loss_spy
    start = {k: v.clone() for k, v in learner.lm.model.named_parameters()}
    m = learner.update(learner_batch(cfg.algorithm, trajs, torch.tensor([0.5, -0.3, -0.5, 0.3])))
    # old, reference and current: each gets every sample's rank in its group over the whole batch (rows 0, 2 of group 0; 1, 3 of group 1)
    # (the current estimate runs twice with learner.backward_per_pass: once for dL/dlogp, once per pass for backward)
    assert [w for w, *_ in calls][:2] == ["policy", "ref"] and {w for w, *_ in calls[2:]} == {"policy"}
    for _, groups, rank, size in calls:
        assert sorted(zip(groups, rank)) == [(0, 0), (0, 1), (1, 0), (1, 1)] and list(size) == [2, 2, 2, 2]
    logp, old, ref, beta, mask = seen[0]
    assert beta == 0.01 and ref is not None and bool(mask.all())  # the whole 6-token canvas carries loss
    # the first epoch's current ELBO equals the old one: same weights, same masks
    assert logp.sum(1).tolist() == pytest.approx(old.sum(1).tolist(), abs=1e-4)
    assert math.isfinite(m["loss/policy"]) and m["ratio/mean"] == pytest.approx(1.0, abs=1e-4)
    assert any(not torch.equal(p, start[n]) for n, p in learner.lm.model.named_parameters())
