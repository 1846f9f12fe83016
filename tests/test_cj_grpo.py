"""CJ-GRPO (yjyddq/EOSER-ASS-RL): the per-step weights and the loss by hand, its preset from a
one-line config, a learner update that replays the trajectory and reduces per step, and the refusal
of a block-causal model."""

import math

import pytest
import torch

from algorithms.cj_grpo import cj_grpo_loss, cj_step_weights
from algorithms.estimators import get_estimator
from rl.batch import learner_batch
from rl.config import load_config
from rl.learner import Learner
from rollout import SamplingParams, build_char_tokenizer
from rollout.models import build_tiny_lm
from rollout.worker import RolloutWorker

from .conftest import BASE_CKPT


def test_weights_by_hand_per_step_then_steps_then_groups():
    # group 5: rows 0, 1; step 0 holds 3 tokens, step 2 holds 1 -> 1 / (3 * 2 steps * 2 groups) = 1/12, 1 / (1 * 2 * 2) = 1/4
    # group 9: row 2; step 7 holds 2 tokens (its third token carries no loss) -> 1 / (2 * 1 * 2) = 1/4
    keep = torch.tensor([[True, True, False], [True, True, False], [True, True, False]])
    steps = torch.tensor([[0, 0, 3], [0, 2, 3], [7, 7, 8]])
    w = cj_step_weights(keep, steps, torch.tensor([5, 5, 9]))
    assert w.flatten().tolist() == pytest.approx([1 / 12, 1 / 12, 0, 1 / 12, 1 / 4, 0, 1 / 4, 1 / 4, 0], abs=1e-12)
    assert w.sum().item() == pytest.approx(1.0)


def test_loss_by_hand():
    # one group, steps 0 (tokens a, b) and 1 (token c): weights 1/4, 1/4, 1/2; A = 1, eps 0.5
    logp = torch.tensor([[0.0, math.log(2.0), 0.0]], requires_grad=True)
    old = torch.zeros(1, 3)
    w = cj_step_weights(torch.ones(1, 3, dtype=torch.bool), torch.tensor([[0, 0, 1]]), torch.tensor([0]))
    # ratios 1, 2 (clipped to 1.5), 1: l = [-1, -1.5, -1]; loss = (1/2)(-1 - 1.5)/2 + (1/2)(-1) = -0.625 - 0.5 = -1.125
    loss, m = cj_grpo_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 3, dtype=torch.bool), 0.5, 0.5, weights=w)
    assert loss.item() == pytest.approx(-1.125) and m["clipfrac"] == pytest.approx(0.25)
    loss.backward()
    # d/dlogp: -w r where unclipped: [-1/4, 0 (clipped), -1/2]
    assert logp.grad.flatten().tolist() == pytest.approx([-0.25, 0.0, -0.5])
    # k3 to the reference joins each token's loss before the reduction: ref = logp + log 2 at a -> k3 = 2 - log 2 - 1
    ref = logp.detach().clone()
    ref[0, 0] += math.log(2.0)
    kl_loss, m = cj_grpo_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 3, dtype=torch.bool), 0.5, 0.5, ref_logp=ref, beta=0.1, weights=w)
    assert kl_loss.item() == pytest.approx(-1.125 + 0.1 * 0.25 * (1 - math.log(2.0)))
    with pytest.raises(ValueError, match="needs weights="):
        cj_grpo_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 3, dtype=torch.bool))


def test_the_replay_scores_the_eos_filler_as_cj_grpo_does():
    from algorithms.cj_grpo import cj_estimate
    from rollout.trajectory import Trajectory

    lm = build_tiny_lm(build_char_tokenizer(), family="llada", hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    a, b = [i for i in range(lm.num_tokens) if i not in (lm.mask_id, lm.eos_id, lm.pad_id)][:2]
    t = Trajectory([a, b], [b, lm.eos_id, lm.eos_id, lm.eos_id], [1, 0, 0, 1], [0.0] * 4, None, 1.0, 2, "eos")
    logp, mask = cj_estimate(lm, [t])
    # every canvas token is scored at its own step, the filler after the first EOS (c2, c3) included
    assert mask.tolist() == [[True] * 4] and bool((logp < 0).all())
    logp_eos, mask_eos = cj_estimate(lm, [t], canvas=False)
    assert mask_eos.tolist() == [[True, True, False, False]] and logp_eos[0, 2:].tolist() == [0.0, 0.0]


def _config(tmp_path, algorithm: str, model: str = str(BASE_CKPT)):
    p = tmp_path / "run.yaml"
    p.write_text(f"data: {{sources: [{{path: arithmetic}}]}}\nmodel: {{path: {model}}}\nwandb: {{mode: disabled}}\nalgorithm: {{{algorithm}}}\n")
    return load_config(p)


def test_a_one_line_config_gets_cj_grpos_preset_and_a_block_causal_model_is_refused(tmp_path):
    cfg = _config(tmp_path, "estimator: cj_grpo")
    algo = cfg.algorithm
    # yjyddq/EOSER-ASS-RL: A = r - mean (:587), epsilon 0.5, beta 0.04 (k3 to the adapter-disabled base), deterministic replay
    assert (algo.advantage, algo.eps_low, algo.eps_high, algo.beta, algo.redraw_masks) == ("mean", 0.5, 0.5, 0.04, False)
    unit = algo.estimator_unit()
    assert unit is get_estimator("cj_grpo") and unit.objective is cj_grpo_loss and unit.replays_trace and unit.check_options({}).canvas
    with pytest.raises(ValueError, match=r"'cj_grpo' is defined for full attention only; model family 'block' has block_causal attention"):
        Learner(cfg)


def test_a_learner_update_reduces_per_decoding_step_of_each_group(tmp_path):
    lm = build_tiny_lm(build_char_tokenizer(), family="llada", hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    lm.save_pretrained(tmp_path / "llada")
    cfg = _config(tmp_path, "estimator: cj_grpo, lr: 1.0e-3, epochs: 1", model=str(tmp_path / "llada"))
    learner = Learner(cfg)
    worker = RolloutWorker(str(tmp_path / "llada"))
    tok = worker.lm.tokenizer
    trajs = worker.generate([tok("12+3=")["input_ids"], tok("45+6=")["input_ids"]] * 2,
                            SamplingParams(max_new_tokens=6, temperature=1.0), seed=0, groups=[0, 1] * 2)  # fmt: skip
    seen = []

    def spy(logp, old_logp, advantages, mask, *args, **kwargs):
        seen.append((mask, kwargs["weights"], kwargs["ref_logp"]))
        return cj_grpo_loss(logp, old_logp, advantages, mask, *args, **kwargs)

    learner.loss_fn = spy
    start = {k: v.clone() for k, v in learner.lm.model.named_parameters()}
    m = learner.update(learner_batch(cfg.algorithm, trajs, torch.tensor([0.5, -0.3, -0.5, 0.3])))
    mask, w, ref = seen[0]
    assert ref is not None and bool(mask.all())  # beta 0.04: a reference pass; the whole canvas carries loss
    # per group: each decoding step's tokens share 1 / (steps x 2 groups) equally, and the weights sum to 1
    assert w.sum().item() == pytest.approx(1.0)
    assert math.isfinite(m["loss/policy"])
    assert any(not torch.equal(p, start[n]) for n, p in learner.lm.model.named_parameters())
