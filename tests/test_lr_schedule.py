"""Learning-rate schedule and AdamW betas (algorithm.lr_schedule, min_lr_ratio, warmup_steps, adam_betas):
the published recipes' optimizers (d1, DiffuCoder, DiRL), by transformers' own schedule functions."""

import math

import pytest
import torch

from rl.batch import learner_batch
from rl.config import load_config
from rl.learner import Learner
from rollout import Trajectory

from .conftest import ROOT


def learner(*sets):
    cfg = load_config(ROOT / "configs" / "quickstart.yaml",
                      ["wandb.mode=disabled", "algorithm.beta=0", "algorithm.lr=1e-3", "train.steps=5", "algorithm.minibatches=2", *sets])  # fmt: skip
    return Learner(cfg)


def test_cosine_with_warmup_and_a_floor_by_hand():
    lrn = learner("algorithm.lr_schedule=cosine", "algorithm.warmup_steps=2", "algorithm.min_lr_ratio=0.1")
    # 5 RL steps x 1 epoch x 2 minibatches = 10 optimizer steps. Warm-up: step / 2 (0 at the first step);
    # then 0.1 + 0.9 * (1 + cos(pi * (s - 2) / 8)) / 2.
    want = {0: 0.0, 1: 5e-4, 2: 1e-3, 6: 1e-3 * (0.1 + 0.9 * 0.5), 10: 1e-4}
    for s, lr in want.items():
        assert math.isclose(lrn.lr_at(s), lr, rel_tol=1e-9, abs_tol=1e-15), (s, lrn.lr_at(s), lr)
    assert lrn.lr_at(4) > lrn.lr_at(5) > lrn.lr_at(6)  # decreasing after the warm-up


def test_constant_is_the_default_and_warmup_alone_ramps():
    assert learner().lr_at(0) == learner().lr_at(7) == 1e-3
    ramp = learner("algorithm.warmup_steps=10")
    assert ramp.lr_at(0) == 0.0 and math.isclose(ramp.lr_at(5), 5e-4) and ramp.lr_at(10) == ramp.lr_at(50) == 1e-3


def test_the_update_steps_with_the_scheduled_lr_and_the_betas_and_a_resumed_run_continues():
    lrn = learner("algorithm.lr_schedule=cosine", "algorithm.warmup_steps=1", "algorithm.adam_betas=[0.9,0.99]")
    assert lrn.optimizer.param_groups[0]["betas"] == (0.9, 0.99)
    trajs = [Trajectory([5, 6], [7, 8, 9, 10], [0, 1, 2, 3], [0.0] * 4, lrn.lm.block_size, 1.0, 4, "length", group=0) for _ in range(4)]
    batch = learner_batch(lrn.cfg.algorithm, trajs, [1.0, -1.0, 1.0, -1.0], rewards=[1.0, 0.0, 1.0, 0.0])
    before = [p.detach().clone() for p in lrn.lm.model.parameters()]
    m = lrn.update(batch)
    # Optimizer steps 0 (lr 0: warm-up) and 1, averaged in the metrics; the last one is what the optimizer holds.
    assert math.isclose(m["lr"], (lrn.lr_at(0) + lrn.lr_at(1)) / 2) and lrn.lr_at(0) == 0.0
    assert lrn.optimizer.param_groups[0]["lr"] == lrn.lr_at(1)
    assert any(not torch.equal(a, b) for a, b in zip(before, lrn.lm.model.parameters()))
    lrn.update(batch)
    assert lrn.optimizer.param_groups[0]["lr"] == pytest.approx(lrn.lr_at(3))
    # A resumed learner (its step restored) continues the schedule at optimizer step 2 * 2.
    other = learner("algorithm.lr_schedule=cosine", "algorithm.warmup_steps=1")
    other.step = lrn.step
    other.update(batch)
    assert other.optimizer.param_groups[0]["lr"] == pytest.approx(lrn.lr_at(5))
