"""GDPO (KevinRojas1499/GDPO): the quadrature rule, the exact-count masks, the ELBO terms and the loss
by hand, its preset from a one-line config (with the number of passes), a learner update on a
full-attention model, and the refusal of a block-causal one."""

import math

import pytest
import torch

from algorithms.estimators import _score, get_estimator
from algorithms.gdpo import gdpo_elbo_terms, gdpo_loss, gdpo_masks, gdpo_nodes
from algorithms.losses import LossTotals
from rl.batch import learner_batch
from rl.config import ConfigError, config_yaml, estimators_help, load_config
from rl.learner import Learner
from rollout import SamplingParams, build_char_tokenizer
from rollout.models import build_tiny_lm
from rollout.trajectory import Trajectory
from rollout.worker import RolloutWorker

from .conftest import BASE_CKPT


def _llada():
    return build_tiny_lm(build_char_tokenizer(), family="llada", hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)


def test_the_rule_is_gauss_legendre_on_zero_one():
    # 3 points on [-1, 1]: 0, -+sqrt(3/5) with weights 8/9, 5/9; on [0, 1]: t = (x + 1)/2, w/2
    s = math.sqrt(0.6)
    want = [((1 - s) / 2, 5 / 18), (0.5, 8 / 18), ((1 + s) / 2, 5 / 18)]
    assert [x for node in gdpo_nodes(3) for x in node] == pytest.approx([x for node in want for x in node], abs=1e-15)
    assert gdpo_nodes(1) == [(0.5, 1.0)]
    with pytest.raises(ValueError, match="nodes must be >= 1"):
        gdpo_nodes(0)


def test_masks_hold_exactly_floor_t_l_tokens_and_follow_the_samples_generator():
    rule = gdpo_nodes(3)  # t = 0.1127, 0.5, 0.8873
    gen = lambda: [torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)]
    masks = gdpo_masks([10, 7], rule, 2, gen())
    assert len(masks) == 6  # node k, draw j at k * 2 + j
    # L = 10: floor(1.127) = 1, floor(5) = 5, floor(8.873) = 8; L = 7: floor(0.789) = 0, floor(3.5) = 3, floor(6.21) = 6
    assert [[sum(m) for m in p] for p in masks] == [[1, 0], [1, 0], [5, 3], [5, 3], [8, 6], [8, 6]]
    assert [len(m) for m in masks[0]] == [10, 7]
    assert masks == gdpo_masks([10, 7], rule, 2, gen())  # a sample's masks are its generator's
    assert masks[4][0] != masks[5][0]  # two draws at one node are two masks


def test_elbo_terms_by_hand():
    # t = 0.25, w = 0.5, two draws per node: each masked token counts lp * 0.5 / (0.25 * 2) = lp
    lp = torch.tensor([[-0.4, -0.6, -9.0]])
    masked = torch.tensor([[True, False, True]])
    assert gdpo_elbo_terms(lp, masked, 0.25, 0.5, 2)[0].tolist() == pytest.approx([-0.4, 0.0, -9.0])
    assert gdpo_elbo_terms(lp, masked, 0.5, 0.25, 1)[0].tolist() == pytest.approx([-0.2, 0.0, -4.5])


def test_the_estimate_sums_each_nodes_masked_log_probs_over_the_whole_canvas(monkeypatch):
    from algorithms import gdpo

    lm = _llada()
    a, b = [i for i in range(lm.num_tokens) if i not in (lm.mask_id, lm.eos_id, lm.pad_id)][:2]
    comp = [a, b, lm.eos_id, lm.eos_id]  # the answer ends at c2; c3 is LLaDA's EOS filler
    t = Trajectory([b, a, a], comp, [0, 1, 2, 3], [0.0] * 4, None, 1.0, 4, "eos")
    # 2 nodes: t = 0.2113 (floor(0.85) = 0 tokens of 4), 0.7887 (floor(3.15) = 3 tokens), w = 1/2 each
    assert [sum(m) for m in (p[0] for p in gdpo.gdpo_masks([4], gdpo_nodes(2), 1, [torch.Generator().manual_seed(0)]))] == [0, 3]
    M1, M2 = [False] * 4, [True, False, True, True]
    monkeypatch.setattr(gdpo, "gdpo_masks", lambda *args, **kw: [[M1], [M2]])
    logp, mask = gdpo.gdpo_estimate(lm, [t], nodes=2, seed=0)
    assert mask.tolist() == [[True] * 4]  # canvas: the filler after the first EOS counts, as in GDPO
    lp2, _ = _score(lm, [t], [M2], 1.0, torch.tensor([comp]), torch.tensor([M2]))
    tk, wk = gdpo_nodes(2)[1]
    want = torch.where(torch.tensor([M2]), lp2 * (wk / tk), torch.zeros_like(lp2))  # 0.634 lp on M2
    assert wk / tk == pytest.approx(0.5 / 0.7886751345948129)
    assert logp.flatten().tolist() == pytest.approx(want.flatten().tolist(), abs=1e-6)
    # canvas: false stops at the first EOS, as unmask's other units do
    assert gdpo.gdpo_estimate(lm, [t], nodes=2, seed=0, canvas=False)[1].tolist() == [[True, True, True, False]]


def test_loss_by_hand_sequence_ratio_per_canvas_length_and_k3_kl():
    # sample 0: L = 2, ELBO -3.0, old -3.2: r = exp(0.2 / 2) = 1.10517, A = +1, eps 0.05: clipped at 1.05 -> -1.05
    # sample 1: L = 4, ELBO -4.0, old -4.8: r = exp(0.8 / 4) = 1.22140, A = -0.5: min(-0.61070, -0.525) = -0.61070 -> +0.61070
    # k3 on the ELBOs: d = ref - ELBO = 0.5 -> e^0.5 - 0.5 - 1 = 0.148721; sample 1: d = 0 -> 0
    mask = torch.tensor([[True, True, False, False], [True] * 4])
    logp = torch.tensor([[-1.0, -2.0, 0.0, 0.0], [-1.0] * 4], requires_grad=True)
    old = torch.tensor([[-1.5, -1.7, 0.0, 0.0], [-1.2] * 4])
    ref = torch.tensor([[-1.25, -1.25, 0.0, 0.0], [-1.0] * 4])
    adv = torch.tensor([1.0, -0.5])
    loss, m = gdpo_loss(logp, old, adv, mask, 0.05, 0.05, ref_logp=ref, beta=0.1, totals=LossTotals.of(mask))
    pg = (-1.05 + 0.5 * math.exp(0.2)) / 2
    kl = (math.exp(0.5) - 1.5) / 2
    assert float(loss.detach()) == pytest.approx(pg + 0.1 * kl, abs=1e-6)
    assert (m["loss/policy"], m["kl"], m["clipfrac"]) == pytest.approx((pg, kl, 0.5), abs=1e-6)
    assert m["ratio/mean"] == pytest.approx((math.exp(0.1) + math.exp(0.2)) / 2, abs=1e-6)
    loss.backward()
    # d loss / d logp_1c = -A r / L / B + 0 (the KL's d is 0 there) = 0.5 * 1.2214 / 4 / 2 per token; sample 0 is clipped:
    # only the KL's (1 - e^d) * 0.1 / 2 = -0.0324361 per token
    assert logp.grad[1].tolist() == pytest.approx([0.5 * math.exp(0.2) / 8] * 4, abs=1e-6)
    assert logp.grad[0].tolist() == pytest.approx([0.1 * (1 - math.exp(0.5)) / 2] * 2 + [0.0, 0.0], abs=1e-6)
    # B is the whole minibatch's sample count when a piece is scored alone
    half, _ = gdpo_loss(logp[:1], old[:1], adv[:1], mask[:1], 0.05, 0.05, totals=LossTotals(sequences=2.0, tokens=6.0))
    assert float(half.detach()) == pytest.approx(-1.05 / 2, abs=1e-6)
    with pytest.raises(ValueError, match="advantages must be \\[B\\]"):
        gdpo_loss(logp, old, torch.ones(2, 4), mask)


def _config(tmp_path, algorithm: str, model: str = str(BASE_CKPT)):
    p = tmp_path / "run.yaml"
    p.write_text(f"data: {{sources: [{{path: arithmetic}}]}}\nmodel: {{path: {model}}}\nwandb: {{mode: disabled}}\nalgorithm: {{{algorithm}}}\n")
    return load_config(p)


def test_a_one_line_config_gets_gdpos_preset_and_a_block_causal_model_is_refused(tmp_path):
    cfg = _config(tmp_path, "estimator: gdpo")
    algo = cfg.algorithm
    # KevinRojas1499/GDPO: A = r - mean, epsilon 0.5, beta 0, a mask seed per inner iteration, num_iterations 12
    assert (algo.advantage, algo.eps_low, algo.eps_high, algo.beta, algo.redraw_masks, algo.epochs) == ("mean", 0.5, 0.5, 0.0, True, 12)
    unit = algo.estimator_unit()
    assert unit is get_estimator("gdpo") and unit.objective is gdpo_loss and unit.needs_old_logp and unit.objective_kl
    o = unit.check_options({})
    assert (o.nodes, o.draws, o.canvas) == (3, 1, True) and unit.passes([]) == 3 and unit.passes([], nodes=2, draws=2) == 4
    text = config_yaml(cfg.model_dump(mode="json"), algo)
    assert "  epochs: 12  # gdpo preset: KevinRojas1499/GDPO gdpo/slurm_scripts/train.yaml:73 num_iterations 12" in text
    assert "objective: algorithms.gdpo.gdpo_loss (its own KL form: algorithm.beta)" in estimators_help()
    assert _config(tmp_path, "estimator: gdpo, epochs: 2").algorithm.epochs == 2
    with pytest.raises(ConfigError, match="algorithm.loss: estimator 'gdpo' brings its own objective"):
        _config(tmp_path, "estimator: gdpo, loss: gspo")
    with pytest.raises(ConfigError, match="gdpo.*no option 'n'"):
        _config(tmp_path, "estimator: gdpo, options: {n: 3}")
    with pytest.raises(ValueError, match=r"'gdpo' is defined for full attention only; model family 'block' has block_causal attention"):
        Learner(cfg)  # arith3-base is a block (SDAR-style) model


def test_a_learner_update_scores_old_and_current_on_the_same_masks(tmp_path):
    lm = _llada()
    lm.save_pretrained(tmp_path / "llada")
    cfg = _config(tmp_path, "estimator: gdpo, lr: 1.0e-3, epochs: 1, options: {nodes: 2}", model=str(tmp_path / "llada"))
    learner = Learner(cfg)
    worker = RolloutWorker(str(tmp_path / "llada"))
    tok = worker.lm.tokenizer
    trajs = worker.generate([tok("12+3=")["input_ids"], tok("45+6=")["input_ids"]] * 2,
                            SamplingParams(max_new_tokens=6, temperature=1.0), seed=0, groups=[0, 1] * 2)  # fmt: skip
    seen = []

    def loss_spy(logp, old_logp, advantages, mask, *args, **kwargs):
        seen.append((logp.detach(), old_logp, advantages, mask))
        return gdpo_loss(logp, old_logp, advantages, mask, *args, **kwargs)

    learner.loss_fn = loss_spy
    start = {k: v.clone() for k, v in learner.lm.model.named_parameters()}
    m = learner.update(learner_batch(cfg.algorithm, trajs, torch.tensor([0.5, -0.3, -0.5, 0.3])))
    logp, old, adv, mask = seen[0]
    assert bool(mask.all())  # the whole 6-token canvas carries loss
    assert sorted(adv.tolist()) == pytest.approx([-0.5, -0.3, 0.3, 0.5])  # the batch's advantages, one per sequence
    # the first epoch's current ELBO equals the old one: same weights, same masks
    assert logp.sum(1).tolist() == pytest.approx(old.sum(1).tolist(), abs=1e-4)
    assert math.isfinite(m["loss/policy"]) and m["ratio/mean"] == pytest.approx(1.0, abs=1e-4)
    assert any(not torch.equal(p, start[n]) for n, p in learner.lm.model.named_parameters())
