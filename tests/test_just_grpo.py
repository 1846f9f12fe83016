"""JustGRPO (LeapLabTHU/JustGRPO): the weights and the loss by hand, the exact left-to-right
likelihood, its preset from a one-line config, a learner update on a left-to-right rollout, and the
refusals (another decoding order, a block-causal model)."""

import math

import pytest
import torch

from algorithms import just_grpo
from algorithms.estimators import get_estimator
from algorithms.just_grpo import (
    JustGrpoOptions,
    just_grpo_estimate,
    just_grpo_loss,
    just_grpo_loss_weights,
    just_grpo_weights,
)
from rl.batch import learner_batch
from rl.config import estimators_help, load_config
from rl.learner import Learner
from rollout import SamplingParams, build_char_tokenizer
from rollout.models import build_tiny_lm
from rollout.trajectory import Trajectory
from rollout.worker import RolloutWorker

from .conftest import BASE_CKPT


def _llada():
    return build_tiny_lm(build_char_tokenizer(), family="llada", hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)


def test_weights_by_hand_zscore_then_valid_count_per_cell(monkeypatch):
    monkeypatch.setattr(just_grpo, "RANKS", 2)  # cells of 2 groups, in order of first appearance: {7, 3}, {5, 9}
    adv = torch.tensor([0.5, -0.5, 0.0, 0.0, 1.0, 1.0, -2.0, 2.0, -2.0], dtype=torch.float64)  # r - mean of each group
    groups = torch.tensor([7, 7, 3, 3, 5, 5, 5, 9, 9])
    z7 = 0.5 / (math.sqrt(0.5) + 1e-4)  # sample std (G - 1) of [0.5, -0.5] is sqrt(0.5), + 1e-4 (grpo.py:61)
    z5 = 1.0 / (math.sqrt(3.0) + 1e-4)  # [1, 1, -2]: squared deviations 6 / 2 = 3
    z9 = 2.0 / (math.sqrt(8.0) + 1e-4)
    # cell {7, 3}: valid counts 2 and 0, mean 1, 2 ranks; cell {5, 9}: counts 3 and 2, mean 2.5
    c0, c1 = 2 * (1.0 + 1e-5), 2 * (2.5 + 1e-5)
    want = [z7 / c0, -z7 / c0, 0.0, 0.0, z5 / c1, z5 / c1, -2 * z5 / c1, z9 / c1, -z9 / c1]
    assert just_grpo_weights(adv, groups).tolist() == pytest.approx(want, rel=1e-9, abs=1e-12)
    with pytest.raises(ValueError, match="one advantage per sample"):
        just_grpo_weights(adv[:3], groups)


def test_loss_weights_are_one_over_the_canvas_length():
    eos = 2
    trajs = [Trajectory([5], [7, eos, 8, 8], [0, 1, 2, 3], [0.0] * 4, None, 1.0, 4, "eos"),
             Trajectory([5], [7, 7], [0, 1], [0.0] * 2, None, 1.0, 2, "length")]  # fmt: skip
    keep = torch.tensor([True, True])
    w = just_grpo_loss_weights(trajs, keep, JustGrpoOptions(), eos)
    assert w.tolist() == [[0.25] * 4, [0.5, 0.5, 0.0, 0.0]]  # the EOS filler too: grpo.py scores the whole canvas
    # canvas false: up to the first EOS, still divided by the canvas (gen_length, grpo.py:32); a dropped row gets none
    w = just_grpo_loss_weights(trajs, torch.tensor([True, False]), JustGrpoOptions(canvas=False), eos)
    assert w.tolist() == [[0.25, 0.25, 0.0, 0.0], [0.0] * 4]


def test_loss_by_hand():
    # two samples, omega 0.5 and -0.25, canvas weights 1/3 each; the ratio is exp(logp - sg(logp)) = 1
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -1.1]], requires_grad=True)
    w = torch.full((2, 3), 1 / 3, dtype=torch.float64)
    eos_mask = torch.tensor([[True, False, False], [True, True, True]])  # the learner's mask stops at EOS: not used
    loss, m = just_grpo_loss(logp, None, torch.tensor([0.5, -0.25]), eos_mask, 0.2, 0.2, weights=w)
    assert loss.item() == pytest.approx(-(0.5 - 0.25))  # sum_i omega_i sum_t w_t * -1
    assert m["loss/policy"] == pytest.approx(-0.25)
    loss.backward()
    # d/dlogp_it = -omega_i w_it on every canvas token, the filler of row 0 included
    assert logp.grad.flatten().tolist() == pytest.approx([-0.5 / 3] * 3 + [0.25 / 3] * 3)
    with pytest.raises(ValueError, match="beta must be 0"):
        just_grpo_loss(logp, None, torch.tensor([0.5, -0.25]), eos_mask, beta=0.1, weights=w)
    with pytest.raises(ValueError, match="needs weights="):
        just_grpo_loss(logp, None, torch.tensor([0.5, -0.25]), eos_mask)


def test_the_estimate_is_the_exact_left_to_right_likelihood_and_other_orders_are_refused():
    lm = _llada()
    a, b, c = [i for i in range(lm.num_tokens) if i not in (lm.mask_id, lm.eos_id, lm.pad_id)][:3]
    prompt, comp = [a, b], [c, lm.eos_id, b, lm.eos_id]
    t = Trajectory(prompt, comp, [0, 1, 2, 3], [0.0] * 4, None, 1.0, 4, "eos")
    logp, mask = just_grpo_estimate(lm, [t])
    assert mask.tolist() == [[True] * 4]
    with torch.no_grad():  # grpo.py:34-44: [prompt | completion[:k] | MASK x (L - k)], the column of token k
        want = []
        for k in range(4):
            x = torch.tensor([prompt + comp[:k] + [lm.mask_id] * (4 - k)])
            lp = lm.sampling_logprobs(lm.sequence_logits(x, torch.arange(6)[None]), 1.0)
            want.append(float(lp[0, 2 + k, comp[k]]))
    assert logp[0].tolist() == pytest.approx(want, abs=1e-5)
    with pytest.raises(ValueError, match="block_length: 1"):
        just_grpo_estimate(lm, [Trajectory(prompt, comp, [1, 0, 2, 3], [0.0] * 4, None, 1.0, 4, "eos")])
    with pytest.raises(ValueError, match="block_length: 1"):  # two tokens in one step is not left to right either
        just_grpo_estimate(lm, [Trajectory(prompt, comp, [0, 0, 1, 2], [0.0] * 4, None, 1.0, 3, "eos")])
    block = build_tiny_lm(build_char_tokenizer(), hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    with pytest.raises(ValueError, match="block-causal"):
        just_grpo_estimate(block, [t])


def _config(tmp_path, algorithm: str, model: str = str(BASE_CKPT)):
    p = tmp_path / "run.yaml"
    p.write_text(f"data: {{sources: [{{path: arithmetic}}]}}\nmodel: {{path: {model}}}\nwandb: {{mode: disabled}}\nalgorithm: {{{algorithm}}}\n")
    return load_config(p)


def test_a_one_line_config_gets_just_grpos_preset_and_a_block_causal_model_is_refused(tmp_path):
    cfg = _config(tmp_path, "estimator: just_grpo")
    algo = cfg.algorithm
    # LeapLabTHU/JustGRPO: r - mean (the std + 1e-4 in the unit's weights), eps 0.2, no KL, a deterministic replay
    assert (algo.advantage, algo.zscore_std, algo.eps_low, algo.eps_high, algo.beta, algo.redraw_masks, algo.epochs, algo.minibatches) == (
        "mean", "sample", 0.2, 0.2, 0.0, False, 1, 1)  # fmt: skip
    unit = algo.estimator_unit()
    assert unit is get_estimator("just_grpo") and unit.objective is just_grpo_loss and not unit.needs_old_logp
    assert unit.advantage_weights is just_grpo_weights and unit.check_options({}).canvas
    # grpo.py:13-15 decodes one token per step, left to right: the run's rollout does too unless the config says otherwise
    assert cfg.rollout.sampling.block_length == 1 and _config(tmp_path, "estimator: trace").rollout.sampling.block_length is None
    own = tmp_path / "own.yaml"
    own.write_text((tmp_path / "run.yaml").read_text().replace("estimator: trace", "estimator: just_grpo") + "rollout: {sampling: {block_length: 4}}\n")
    assert load_config(own).rollout.sampling.block_length == 4
    assert "rollout.sampling (when a config leaves it unset): block_length=1" in estimators_help()
    with pytest.raises(ValueError, match=r"'just_grpo' is defined for full attention only; model family 'block' has block_causal attention"):
        Learner(cfg)


def test_a_learner_update_on_a_left_to_right_rollout(tmp_path):
    lm = _llada()
    lm.save_pretrained(tmp_path / "llada")
    cfg = _config(tmp_path, "estimator: just_grpo, lr: 1.0e-3", model=str(tmp_path / "llada"))
    learner = Learner(cfg)
    worker = RolloutWorker(str(tmp_path / "llada"))
    tok = worker.lm.tokenizer
    prompts, groups = [tok("12+3=")["input_ids"], tok("45+6=")["input_ids"]] * 2, [0, 1] * 2
    trajs = worker.generate(prompts, SamplingParams(max_new_tokens=5, temperature=1.0, block_length=1), seed=0, groups=groups)
    assert all(t.step_map == list(range(5)) for t in trajs)  # one token per step, left to right
    seen = []

    def spy(logp, old_logp, advantages, mask, *args, **kwargs):
        seen.append((old_logp, advantages, kwargs["weights"]))
        return just_grpo_loss(logp, old_logp, advantages, mask, *args, **kwargs)

    learner.loss_fn = spy
    start = {k: v.clone() for k, v in learner.lm.model.named_parameters()}
    m = learner.update(learner_batch(cfg.algorithm, trajs, torch.tensor([0.5, -0.3, -0.5, 0.3])))
    old, omega, w = seen[0]
    assert old is None  # ratio-free in value: no old-policy pass
    assert w.flatten().tolist() == pytest.approx([0.2] * 20)  # 1 / canvas length on every canvas token
    # r - mean per group [0.5, -0.5] and [-0.3, 0.3]: each z = +-1 / (sqrt(2) + 1e-4 / |a|), one cell of 2 groups with 2 valid each
    z = [0.5 / (math.sqrt(0.5) + 1e-4), -0.3 / (math.sqrt(0.18) + 1e-4)]
    want = [z[0], z[1], -z[0], -z[1]]
    assert sorted(omega.tolist()) == pytest.approx(sorted(v / (2 * (2 + 1e-5)) for v in want), rel=1e-5)  # the piece's row order
    assert math.isfinite(m["loss/policy"])
    assert any(not torch.equal(p, start[n]) for n, p in learner.lm.model.named_parameters())
    other = worker.generate(prompts[:2], SamplingParams(max_new_tokens=5, temperature=1.0), seed=0, groups=[0, 1])
    with pytest.raises(ValueError, match="block_length: 1"):  # one block of 5 decoded by confidence: not JustGRPO's order
        learner.update(learner_batch(cfg.algorithm, other, torch.tensor([0.5, -0.5])))
