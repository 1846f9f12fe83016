"""wd1 (xiaohangt/wd1): the ratio-free weighted likelihood as a unit: its weights and loss by hand,
its preset from a one-line config, and a learner update that takes no old-policy pass."""

import math

import pytest
import torch

from algorithms.estimators import get_estimator
from algorithms.losses import LossTotals
from algorithms.wd1 import wd1_loss, wd1_weights
from rl.batch import learner_batch
from rl.config import ConfigError, config_yaml, estimators_help, load_config
from rl.learner import Learner
from rollout import SamplingParams
from rollout.worker import RolloutWorker

from .conftest import BASE_CKPT

# sigmoid(1) = e^0.5 / (e^0.5 + e^-0.5): group [0.5, -0.5]'s softmax of A, and softmax of -A reversed
S1 = 1 / (1 + math.exp(-1.0))  # 0.7310585786


def test_weights_by_hand_per_group_in_any_row_order():
    # group 7: A = [0.5, -0.5] (rows 0 and 2); group 3: A = [0.2, 0.2, 0.2] (rows 1, 3, 4): no signal
    adv = torch.tensor([0.5, 0.2, -0.5, 0.2, 0.2])
    groups = torch.tensor([7, 3, 7, 3, 3])
    # row 0: |g| (w+ - w-) = 2 (S1 - (1 - S1)) = 2 (2 S1 - 1) = 2 tanh(0.5) = 0.92423; row 2 its negative
    want = [2 * (2 * S1 - 1), 0.0, -2 * (2 * S1 - 1), 0.0, 0.0]
    assert wd1_weights(adv, groups).tolist() == pytest.approx(want, abs=1e-6)
    # a big advantage saturates: softmax([10, 0, 0]) ~ [1, 0, 0], softmax(-A) ~ [0, 1/2, 1/2] -> 3 * [1, -1/2, -1/2]
    assert wd1_weights(torch.tensor([10.0, 0.0, 0.0]), torch.zeros(3, dtype=torch.long)).tolist() == pytest.approx([3.0, -1.5, -1.5], abs=1e-3)


def test_loss_by_hand_is_the_weighted_sum_of_sequence_loglikelihoods_over_samples():
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -0.5, -3.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True]])  # row 0's third token: after its EOS
    omega = torch.tensor([0.8, -0.8])
    # sequence log-likelihoods (sums, no length normalisation): L0 = -3, L1 = -4
    # loss = -(0.8 * -3 + -0.8 * -4) / 2 samples = -(-2.4 + 3.2) / 2 = -0.4
    loss, m = wd1_loss(logp, None, omega, mask)
    assert loss.item() == pytest.approx(-0.4, abs=1e-6) and m["loss/policy"] == pytest.approx(-0.4, abs=1e-6)
    assert m["logp/sequence"] == pytest.approx(-3.5, abs=1e-6)
    loss.backward()
    # d loss / d logp_ic = -omega_i / N on loss tokens: raise the good answer, lower the bad one
    assert logp.grad.flatten().tolist() == pytest.approx([-0.4, -0.4, 0.0, 0.4, 0.4, 0.4], abs=1e-6)
    # pieces with the whole's totals sum to the whole (ranks, micro-batches)
    whole = LossTotals.of(mask)
    parts = sum(wd1_loss(logp[i : i + 1], None, omega[i : i + 1], mask[i : i + 1], totals=whole)[0].item() for i in range(2))
    assert parts == pytest.approx(-0.4, abs=1e-6)
    with pytest.raises(ValueError, match="wd1 has no KL term"):
        wd1_loss(logp, None, omega, mask, beta=0.04)


def _config(tmp_path, algorithm: str):
    p = tmp_path / "run.yaml"
    p.write_text(f"data: {{sources: [{{path: arithmetic}}]}}\nmodel: {{path: {BASE_CKPT}}}\nwandb: {{mode: disabled}}\nalgorithm: {{{algorithm}}}\n")
    return load_config(p)


def test_a_one_line_config_gets_wd1s_preset_and_refuses_a_loss_or_kl(tmp_path):
    cfg = _config(tmp_path, "estimator: wd1")
    algo = cfg.algorithm
    # xiaohangt/wd1: A = r - mean (rev_grpo_trainer.py:638), no KL (:160), a mask seed per iteration (:550),
    # p_mask_prompt 0.15 (train.yaml:69)
    assert (algo.advantage, algo.zscore_std, algo.beta, algo.redraw_masks, algo.p_mask_prompt) == ("mean", "sample", 0.0, True, 0.15)
    unit = algo.estimator_unit()
    assert unit is get_estimator("wd1") and unit.objective is wd1_loss and not unit.needs_old_logp
    text = config_yaml(cfg.model_dump(mode="json"), algo)
    assert "  p_mask_prompt: 0.15  # wd1 preset: xiaohangt/wd1 wd1/train.yaml:69" in text
    assert "  advantage: mean  # wd1 preset: xiaohangt/wd1 wd1/trainers/rev_grpo_trainer.py:638" in text
    assert "objective: algorithms.wd1.wd1_loss (ratio-free: no old-policy pass)" in estimators_help()
    with pytest.raises(ConfigError, match="algorithm.loss: estimator 'wd1' brings its own objective"):
        _config(tmp_path, "estimator: wd1, loss: gspo")
    with pytest.raises(ConfigError, match="algorithm.beta: estimator 'wd1' brings its own objective"):
        _config(tmp_path, "estimator: wd1, beta: 0.04")


def test_a_learner_update_takes_one_pass_per_epoch_and_weighs_each_whole_group(tmp_path):
    """What `unmask train` runs per step, from the one-line config: the rollout worker's samples,
    then Learner.update (two inner epochs, two minibatches that split the groups)."""
    cfg = _config(tmp_path, "estimator: wd1, lr: 1.0e-3, epochs: 2, minibatches: 2")
    learner = Learner(cfg)
    worker = RolloutWorker(str(BASE_CKPT))
    tok = worker.lm.tokenizer
    trajs = worker.generate([tok("123+456=")["input_ids"], tok("507+045=")["input_ids"]] * 3,
                            SamplingParams(max_new_tokens=5, temperature=1.0), seed=0, groups=[0, 1] * 3)  # fmt: skip
    adv = torch.tensor([0.5, -0.2, -0.25, 0.4, -0.25, -0.2])  # group 0: rows 0, 2, 4; group 1: rows 1, 3, 5
    passes, seen = [], []
    forward = learner.lm.forward_logprobs
    learner.lm.forward_logprobs = lambda *a, **k: passes.append(1) or forward(*a, **k)

    def spy(logp, old_logp, advantages, mask, *args, **kwargs):
        seen.append((logp.detach(), old_logp, advantages, mask, kwargs["totals"]))
        return wd1_loss(logp, old_logp, advantages, mask, *args, **kwargs)

    learner.loss_fn = spy
    start = {k: v.clone() for k, v in learner.lm.model.named_parameters()}
    m = learner.update(learner_batch(cfg.algorithm, trajs, adv))
    # no old-policy pass, no reference pass: one forward per optimizer step (2 epochs x 2 minibatches)
    assert len(passes) == 4 and len(seen) == 4
    assert all(old is None for _, old, _, _, _ in seen)
    # each minibatch holds 3 samples, but every weight is its whole group's softmax
    omega = wd1_weights(adv.float(), torch.tensor([t.group for t in trajs]))
    assert sorted(torch.cat([a for _, _, a, _, _ in seen[:2]]).tolist()) == pytest.approx(sorted(omega.tolist()), abs=1e-6)
    logp, _, a, mask, totals = seen[0]
    assert totals.sequences == 3
    want = -(a * (logp * mask).sum(1)).sum().item() / 3
    assert m["loss/policy"] == pytest.approx(sum(-(x[2] * (x[0] * x[3]).sum(1)).sum().item() / 3 for x in seen) / 4, abs=1e-6)
    assert wd1_loss(logp, None, a, mask)[0].item() == pytest.approx(want, abs=1e-6)
    changed = [n for n, p in learner.lm.model.named_parameters() if not torch.equal(p, start[n])]
    assert len(changed) == len(start)
