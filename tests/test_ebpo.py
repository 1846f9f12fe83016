"""EBPO (arXiv:2602.05165): the shrinkage baseline and the batch-standardised advantages by hand over
two steps of a running prior, the prior's checkpoint round trip (a resumed run computes the
advantages the uninterrupted run would), the trainer's advantages stage, and a learner update."""

import json
import math

import pytest
import torch

from algorithms.ebpo import EbpoPrior, Welford
from rl.batch import StepBatch, learner_batch
from rl.config import RunConfig, config_help, load_config
from rl.learner import Learner
from rl.trainer import Trainer
from rollout import SamplingParams, build_char_tokenizer
from rollout.models import build_tiny_lm
from rollout.trajectory import Trajectory
from rollout.worker import RolloutWorker

from .conftest import BASE_CKPT

EPS = 1e-6
STEP1 = (torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0, 0, 1, 1]))  # a mixed group, a group that fails every sample
STEP2 = (torch.tensor([1.0, 1.0, 0.0, 1.0]), torch.tensor([7, 7, 8, 8]))


def _std(xs):
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def test_welford_is_the_sample_mean_and_variance():
    w = Welford()
    w.update([1.0, 0.0, 0.0, 0.0])
    assert (w.count, w.mean, w.m2, w.variance) == pytest.approx((4, 0.25, 0.75, 0.25), abs=1e-12)  # M2 = 0.75^2 + 3 * 0.25^2
    assert Welford().variance == 0.0 and Welford(1, 3.0, 0.0).variance == 0.0


def test_two_steps_by_hand():
    prior = EbpoPrior()
    # step 1. W_r = {1, 0, 0, 0}: mu_glob 0.25, sigma^2 = 0.75 / 3 = 0.25; W_mu = {0.5, 0}: tau^2 = 0.125 / 1
    # S = (0.25 / 2) / (0.25 / 2 + 0.125) = 0.5; V_0 = 0.5 * 0.5 + 0.5 * 0.25 = 0.375, V_1 = 0.5 * 0.25 = 0.125
    adv, m = prior.advantages(*STEP1)
    raw = [0.625, -0.375, -0.125, -0.125]  # mean 0
    assert adv.tolist() == pytest.approx([a / (_std(raw) + EPS) for a in raw], abs=1e-6)
    assert adv[2] < 0 and adv[2] == adv[3]  # the all-fail group is penalised (GRPO: 0)
    assert (m["ebpo/mu_glob"], m["ebpo/sigma2"], m["ebpo/tau2"], m["ebpo/shrinkage"]) == pytest.approx((0.25, 0.25, 0.125, 0.5))
    # step 2 (the prior keeps step 1). W_r = {1,0,0,0,1,1,0,1}: mean 0.5, sigma^2 = 2 / 7; W_mu = {0.5, 0, 1, 0.5}: tau^2 = 0.5 / 3
    # S = (1/7) / (1/7 + 1/6) = 6/13; V_A = 7/13 * 1 + 6/13 * 0.5 = 10/13, V_B = 7/13 * 0.5 + 6/13 * 0.5 = 0.5
    adv, m = prior.advantages(*STEP2)
    raw = [3 / 13, 3 / 13, -0.5, 0.5]
    mean = sum(raw) / 4
    assert adv.tolist() == pytest.approx([(a - mean) / (_std(raw) + EPS) for a in raw], abs=1e-6)
    assert (m["ebpo/sigma2"], m["ebpo/tau2"], m["ebpo/shrinkage"]) == pytest.approx((2 / 7, 1 / 6, 6 / 13))


def test_no_spread_yet_gives_the_group_mean_and_bad_input_is_refused():
    adv, m = EbpoPrior().advantages(torch.tensor([1.0, 1.0]), torch.tensor([0, 0]))
    assert adv.tolist() == [0.0, 0.0] and m["ebpo/shrinkage"] == 0.0
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        EbpoPrior().advantages(torch.ones(3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="non-finite"):
        EbpoPrior().advantages(torch.tensor([float("nan"), 1.0]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="EBPO prior state"):
        EbpoPrior().load_state_dict({"rewards": {"count": 1}})


def test_a_prior_restored_from_its_json_state_gives_identical_advantages():
    whole = EbpoPrior()
    whole.advantages(*STEP1)
    want, _ = whole.advantages(*STEP2)
    first = EbpoPrior()
    first.advantages(*STEP1)
    resumed = EbpoPrior()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))  # through trainer_state.json
    got, _ = resumed.advantages(*STEP2)
    assert torch.equal(got, want)
    fresh, _ = EbpoPrior().advantages(*STEP2)  # without the prior the advantages differ: the state matters
    assert not torch.allclose(fresh, want)


BASE = {"data": {"sources": [{"path": "arithmetic"}]}, "model": {"path": str(BASE_CKPT)}, "wandb": {"mode": "disabled"},
        "rollout": {"samples_per_prompt": 2}}  # fmt: skip


def _trainer(cfg):
    """The driver's advantages stage and checkpoint hooks, without Ray or a model."""
    trainer = Trainer.__new__(Trainer)
    trainer.cfg = cfg  # the unit and its options follow from cfg
    trainer.ebpo_prior = EbpoPrior() if cfg.algorithm.advantage == "ebpo" else None
    return trainer


def _batch(rewards, groups):
    trajs = [Trajectory([5], [7, 2], [0, 1], [0.0, 0.0], None, 1.0, 2, "eos", group=int(g)) for g in groups]
    return StepBatch(trajs, None, rewards=rewards.double())


def test_the_trainer_uses_the_prior_saves_it_with_the_checkpoint_and_restores_it_on_resume():
    cfg = RunConfig.model_validate({**BASE, "algorithm": {"estimator": "one_step", "advantage": "ebpo"}})
    whole, first = _trainer(cfg), _trainer(cfg)
    for t in (whole, first):
        _, metrics = t.advantages(_batch(*STEP1))
        assert metrics["ebpo/shrinkage"] == pytest.approx(0.5)
    state = json.loads(json.dumps({"data_cursor": None, **first._advantage_state()}))  # trainer_state.json
    assert state["ebpo_prior"]["rewards"]["count"] == 4 and state["ebpo_prior"]["rewards"]["m2"] == pytest.approx(0.75)
    resumed = _trainer(cfg)
    resumed._restore_advantage_state(state)
    want, got = whole.advantages(_batch(*STEP2))[0].advantages, resumed.advantages(_batch(*STEP2))[0].advantages
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="the checkpoint has no EBPO prior"):
        _trainer(cfg)._restore_advantage_state({"data_cursor": None})
    other = _trainer(RunConfig.model_validate({**BASE, "algorithm": {"estimator": "one_step"}}))
    assert other._advantage_state() == {} and other.advantages(_batch(*STEP1))[0].advantages.tolist() == [0.5, -0.5, 0.0, 0.0]


def test_config_help_names_ebpo_and_a_learner_update_takes_its_advantages(tmp_path):
    assert "ebpo (EBPO, arXiv:2602.05165" in config_help()
    lm = build_tiny_lm(build_char_tokenizer(), family="llada", hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    lm.save_pretrained(tmp_path / "llada")
    p = tmp_path / "run.yaml"
    p.write_text(f"data: {{sources: [{{path: arithmetic}}]}}\nmodel: {{path: {tmp_path / 'llada'}}}\nwandb: {{mode: disabled}}\n"
                 "algorithm: {advantage: ebpo, estimator: one_step, epochs: 1, beta: 0.0, lr: 1.0e-3}\n")  # fmt: skip
    cfg = load_config(p)
    assert cfg.algorithm.advantage == "ebpo"
    learner = Learner(cfg)
    worker = RolloutWorker(str(tmp_path / "llada"))
    tok = worker.lm.tokenizer
    trajs = worker.generate([tok("12+3=")["input_ids"], tok("45+6=")["input_ids"]] * 2,
                            SamplingParams(max_new_tokens=4, temperature=1.0), seed=0, groups=[0, 1] * 2)  # fmt: skip
    adv, _ = EbpoPrior().advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([t.group for t in trajs]))
    start = {k: v.clone() for k, v in learner.lm.model.named_parameters()}
    m = learner.update(learner_batch(cfg.algorithm, trajs, adv))
    assert math.isfinite(m["loss/policy"])
    assert any(not torch.equal(p_, start[n]) for n, p_ in learner.lm.model.named_parameters())
