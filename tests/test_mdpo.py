"""MDPO (autonomousvision/mdpo): the rollout's step records (off: nothing changes; on: they agree with
what the sampler committed), the step advantages, weights and loss by hand, the step rows replaying
the sampler's inputs, intermediate answers scored through the one scoring path, the one-line preset,
and one training step of the trainer's own stages on a tiny LLaDA."""

import math

import pytest
import torch

from algorithms.estimators import get_estimator
from algorithms.mdpo import (
    MdpoOptions,
    mdpo_advantages,
    mdpo_estimate,
    mdpo_loss,
    mdpo_step_batch,
    mdpo_step_values,
    mdpo_token_weights,
    mdpo_weights,
    scored_steps,
    select_steps,
    step_rows,
)
from rl.batch import LearnerBatch, StepBatch
from rl.config import load_config
from rl.scoring import score_steps, step_texts
from rollout import SamplingParams, build_char_tokenizer, build_tiny_block_lm, generate
from rollout.engine import _Decoder
from rollout.models import build_tiny_lm

from .conftest import BASE_CKPT


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def llada(tok):
    lm = build_tiny_lm(tok, family="llada", hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    lm.model.double()
    return lm


def small_block(tok):
    lm = build_tiny_block_lm(tok, block_size=4, hidden_size=32, num_layers=1, intermediate_size=64, seed=0)
    lm.model.double()
    return lm


def _prompts(tok):
    return [tok(t)["input_ids"] for t in ("047+385=", "12+34=", "5+6=")]


@pytest.mark.parametrize(("family", "temperature"), [("block", 1.0), ("llada", 0.0), ("llada", 1.0)])
def test_record_steps_off_changes_nothing_and_on_each_commit_is_its_steps_prediction(tok, family, temperature, monkeypatch):
    lm = small_block(tok) if family == "block" else llada(tok)
    # margin confidence: the commit criterion differs from the prediction's probability, which is what is recorded
    kw = {"block_length": 4, "confidence": "margin"} if family == "llada" else {"strategy": "threshold", "threshold": 0.3, "max_batch": 2}
    base = SamplingParams(max_new_tokens=9, temperature=temperature, **kw)
    records = []
    init = _Decoder.__init__

    def spy(self, *args):
        init(self, *args)
        records.append(self.records)

    monkeypatch.setattr(_Decoder, "__init__", spy)
    off = generate(lm, _prompts(tok), base, torch.Generator().manual_seed(3))
    assert records and all(r is None for r in records)  # off: no record list, nothing kept
    records.clear()
    on = generate(lm, _prompts(tok), SamplingParams(**{**base.__dict__, "record_steps": True}), torch.Generator().manual_seed(3))
    assert records and all(isinstance(r, list) and r for r in records)
    for a, b in zip(off, on):
        # the same decode: tokens, step map, log-probs and forward count
        assert (a.completion_ids, a.step_map, a.logprobs, a.nfe) == (b.completion_ids, b.step_map, b.logprobs, b.nfe)
        assert a.step_predictions is None and a.step_confidences is None
        preds, conf = b.step_predictions, b.step_confidences
        assert preds.shape == conf.shape == (b.num_steps, len(b.completion_ids))
        for c, s in enumerate(b.step_map):
            assert int(preds[s, c]) == b.completion_ids[c]  # a committed token is its step's prediction
            assert all(int(preds[t, c]) == b.completion_ids[c] for t in range(s + 1, b.num_steps))  # and stays
            assert conf[s, c] > 0 and math.isclose(float(conf[s, c]), math.exp(b.logprobs[c]), rel_tol=1e-5)
            assert all(float(conf[t, c]) == 0.0 for t in range(s + 1, b.num_steps))  # no prediction once committed
        assert preds[-1].tolist() == b.completion_ids  # the last intermediate answer is the answer


def test_a_later_block_is_not_predicted_and_stays_masked(tok):
    lm = llada(tok)
    (t,) = generate(lm, [tok("12+3=")["input_ids"]], SamplingParams(max_new_tokens=8, block_length=4, temperature=0.0, record_steps=True))
    # steps 0-3 decode the first block: the second block's positions hold the mask id, with no confidence
    assert t.step_predictions[:4, 4:].eq(lm.mask_id).all() and t.step_confidences[:4, 4:].eq(0).all()
    assert not t.step_predictions[4:, 4:].eq(lm.mask_id).any()
    # batch and back: the records travel with the learner batch
    back = LearnerBatch.pack([t, t], [0.0, 0.0]).trajectories()
    assert torch.equal(back[1].step_predictions, t.step_predictions) and torch.equal(back[1].step_confidences, t.step_confidences)


def test_step_values_and_advantages_by_hand():
    # r = [0, 1, 1]: diff + 1 = [1, 2, 1]; mean of later rewards = [1, 1], last step + r_2 = 1 -> [2, 3, 2]
    # r = [1, 1, 0]: diff + 1 = [2, 1, 0]; later means [0.5, 0], last + 0 -> [2.5, 1, 0]
    a = mdpo_step_values(torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]]))
    assert a.tolist() == [[2.0, 3.0, 2.0], [2.5, 1.0, 0.0]]
    # group z-score per step, std with G - 1: column 0 = [2, 2.5] -> mean 2.25, std sqrt(0.125)
    s0, s1, s2 = math.sqrt(0.125), math.sqrt(2.0), math.sqrt(2.0)
    adv = mdpo_advantages(torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]]), torch.tensor([7, 7]))
    expect = [[-0.25 / (s0 + 1e-4), 1 / (s1 + 1e-4), 1 / (s2 + 1e-4)], [0.25 / (s0 + 1e-4), -1 / (s1 + 1e-4), -1 / (s2 + 1e-4)]]
    assert adv.flatten().tolist() == pytest.approx([x for row in expect for x in row], abs=1e-12)
    # a sample with fewer scored steps: its values use its own steps, its padding gets 0, and a step
    # only one member of the group has is 0 (no group statistics)
    adv = mdpo_advantages(torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]), torch.tensor([1, 1, 1]), torch.tensor([3, 1, 2]))
    # sample 1 has one step: a = r_0 + 1 + r_0 = 3; sample 2: r = [0, 0] -> [1 + 0, 1 + 0] = [1, 1]
    col0 = torch.tensor([2.0, 3.0, 1.0])
    assert adv[:, 0].tolist() == pytest.approx(((col0 - col0.mean()) / (col0.std() + 1e-4)).tolist())
    col1 = torch.tensor([3.0, 1.0])  # samples 0 and 2
    assert adv[[0, 2], 1].tolist() == pytest.approx(((col1 - col1.mean()) / (col1.std() + 1e-4)).tolist())
    assert adv[1, 1:].tolist() == [0.0, 0.0] and adv[2, 2] == 0.0 and adv[0, 2] == 0.0


def test_selected_steps_and_scored_steps():
    assert select_steps(torch.tensor([[0.1, -2.0, 0.5, 1.0]]), 2).tolist() == [1, 3]
    assert select_steps(torch.tensor([[0.1, -2.0]]), 5).tolist() == [1, 0]  # fewer steps than K: all of them
    assert scored_steps(7, 3) == [0, 3, 6] and scored_steps(8, 3) == [0, 3, 6, 7] and scored_steps(3, 1) == [0, 1, 2]
    with pytest.raises(ValueError, match="score_every"):
        scored_steps(3, 0)


def test_weights_and_loss_by_hand():
    # one row, M = positions 0, 1 (conf 0.5, 1.0), L = 4: lambda = 4 / 2, token mean over |M| = 2, N = 1
    conf = torch.tensor([[0.5, 1.0, 0.3, 0.0]])
    masked = torch.tensor([[True, True, False, False]])
    w = mdpo_token_weights(conf, masked, torch.tensor([4]), 1.0)
    lam = 4 / (2 + 1e-4)
    assert w[0, :, 0].tolist() == pytest.approx([0.5 * lam / (2 + 1e-4), lam / (2 + 1e-4), 0, 0])
    assert w[0, :, 1].tolist() == pytest.approx([0.5 / (2 + 1e-4), 1 / (2 + 1e-4), 0, 0])
    logp = torch.tensor([[0.0, math.log(2.0), -1.0, -1.0]], requires_grad=True)
    old = torch.zeros(1, 4)
    # A = 1, eps 0.2: ratios 1 and 2 (clipped to 1.2): l = -[0.5 * 1, 1 * 1.2] * lam / 2
    loss, m = mdpo_loss(logp, old, torch.tensor([1.0]), masked, 0.2, 0.2, weights=w)
    assert loss.item() == pytest.approx(-(0.5 + 1.2) * lam / (2 + 1e-4))
    loss.backward()
    assert logp.grad[0].tolist() == pytest.approx([-0.5 * lam / (2 + 1e-4), 0.0, 0.0, 0.0])  # the clipped token has no gradient
    assert m["clipfrac"] == pytest.approx(0.5)
    # their k2 KL joins after the lambda scaling: beta * (d^2 / 2) * conf / |M|, d = ref - logp
    ref = torch.tensor([[1.0, math.log(2.0), 0.0, 0.0]])
    kl_loss, _ = mdpo_loss(logp.detach(), old, torch.tensor([1.0]), masked, 0.2, 0.2, ref_logp=ref, beta=0.1, weights=w)
    assert kl_loss.item() == pytest.approx(loss.item() + 0.1 * 0.5 * 0.5 / (2 + 1e-4))
    with pytest.raises(ValueError, match="needs weights="):
        mdpo_loss(logp, old, torch.tensor([1.0]), masked)


def test_step_rows_replay_the_samplers_input(tok):
    """A step row is the canvas the sampler saw: scoring its committed-at-this-step tokens gives the
    rollout's own log-probs (full recompute, so the sampler's logits are exact)."""
    lm = llada(tok)
    trajs = generate(lm, _prompts(tok)[:2], SamplingParams(max_new_tokens=8, block_length=4, steps_per_block=2, temperature=1.0,
                                                           kv_cache=False, record_steps=True), torch.Generator().manual_seed(0))  # fmt: skip
    steps = [list(range(t.num_steps)) for t in trajs]
    adv = torch.arange(8, dtype=torch.float64).view(2, 4) - 3.5  # |A| largest at steps 0, 1 (sample 0) and 3, 2 (sample 1)
    rows, row_adv, owner = step_rows(trajs, adv, 2, steps)
    assert owner == [0, 0, 1, 1] and row_adv.tolist() == [-3.5, -2.5, 3.5, 2.5]
    logp, mask = mdpo_estimate(lm, rows)
    for r, (row, i, t) in enumerate(zip(rows, owner, [0, 1, 3, 2])):
        traj = trajs[i]
        assert row.step_map == [0 if s < t else (1 if traj.step_map[c] // 2 == t // 2 else 2) for c, s in enumerate(traj.step_map)]
        assert mask[r].tolist() == [m == 1 for m in row.step_map]  # the loss: the positions the step predicted
        for c, s in enumerate(traj.step_map):
            if s == t:
                assert logp[r, c].item() == pytest.approx(traj.logprobs[c], abs=1e-9)
    # the minibatch's weights: 4 rows of 2 samples (train_steps 2), each row's conf over its predicted positions
    w = mdpo_weights(rows, torch.tensor([True, True, True, False]), MdpoOptions(train_steps=2), lm.eos_id)
    for r, row in enumerate(rows[:3]):
        m = torch.tensor([x == 1 for x in row.step_map])
        conf = row.step_confidences[0].double() * m
        assert w[r, :, 1].tolist() == pytest.approx((conf / (m.sum() + 1e-4) / 2).tolist())
        assert w[r, :, 0].tolist() == pytest.approx((conf * 8 / (m.sum() + 1e-4) ** 2 / 2).tolist())
    assert w[3].abs().sum() == 0  # a row out of the loss (loss_mask False) has no weight
    with pytest.raises(ValueError, match="block-causal"):
        mdpo_estimate(small_block(tok), rows)


def test_intermediate_answers_are_scored_through_the_one_scoring_path(tok):
    from rollout.trajectory import Trajectory

    a, b = tok.convert_tokens_to_ids(["1", "2"])
    eos, mask = tok.eos_token_id, tok.mask_token_id
    # step 0 predicted [1, -, EOS, 2]: the answer is "1" (cut at the first EOS, no mask id); step 1 is the completion
    preds = torch.tensor([[a, mask, eos, b], [a, b, b, eos]])
    t = Trajectory([a], [a, b, b, eos], [0, 1, 1, 1], [0.0] * 4, None, 1.0, 2, "eos", text="122",
                   step_predictions=preds, step_confidences=torch.ones(2, 4))  # fmt: skip
    texts = step_texts(t, [0, 1], tok)
    assert texts == ["1", "122"]
    calls = []

    def length_reward(prompts, completions, answer, **kw):
        calls.append((list(prompts), list(completions), list(answer)))
        return [float(len(c)) for c in completions]

    out = score_steps(None, [length_reward], [0.5], ["p", "q"], [t, t], [[0, 1], [1]], tok, {"answer": ["15", "7"]}, timeout_s=30)
    assert out == [[0.5, 1.5], [1.5]]  # weighted like the completion's own reward
    assert calls == [(["p", "p", "q"], ["1", "122", "122"], ["15", "15", "7"])]  # one call; each step keeps its sample's prompt and columns


def _config(tmp_path, algorithm, model=str(BASE_CKPT)):
    p = tmp_path / "run.yaml"
    p.write_text(f"data: {{sources: [{{path: arithmetic}}]}}\nmodel: {{path: {model}}}\nwandb: {{mode: disabled}}\nalgorithm: {{{algorithm}}}\n")
    return load_config(p)


def test_a_one_line_config_gets_mdpos_preset_and_a_block_causal_model_is_refused(tmp_path):
    from rl.learner import Learner

    cfg = _config(tmp_path, "estimator: mdpo")
    algo = cfg.algorithm
    # autonomousvision/mdpo: epsilon 0.2, beta 0.0 (the recipe), num_iterations 1, std with G - 1
    assert (algo.eps_low, algo.eps_high, algo.beta, algo.epochs, algo.zscore_std) == (0.2, 0.2, 0.0, 1, "sample")
    unit = algo.estimator_unit()
    assert unit is get_estimator("mdpo") and unit.objective is mdpo_loss and unit.needs_step_predictions
    assert unit.check_options({}) == MdpoOptions(train_steps=16, score_every=1)
    with pytest.raises(ValueError, match=r"'mdpo' is defined for full attention only"):
        Learner(cfg)


def test_one_training_step_through_the_trainers_stages(tmp_path, tok):
    """The trainer's own score and advantages stages (without Ray) on a tiny LLaDA's rollouts, then a
    learner update on the step rows: every sample's intermediate answers are scored, each gives
    train_steps rows, and the policy moves."""
    from rl.data import PromptStream, load_source
    from rl.learner import Learner
    from rl.trainer import Trainer
    from rollout.worker import RolloutWorker

    lm = llada(tok)
    lm.model.float()
    lm.save_pretrained(tmp_path / "llada")
    cfg = _config(tmp_path, "estimator: mdpo, lr: 1.0e-3, options: {train_steps: 2, score_every: 2}", model=str(tmp_path / "llada"))
    tr = Trainer.__new__(Trainer)  # the stages, not Ray: the attributes __init__ sets for them
    tr.cfg, tr.tokenizer = cfg, tok
    tr.sources = [load_source(s, cfg.rewards) for s in cfg.data.sources]
    def ones(prompts, completions, **kw):  # a reward the random model's intermediate answers differ on
        return [float(c.count("1")) for c in completions]

    tr.reward_fns = {s.name: [ones for _ in s.rewards] for s in tr.sources}
    tr.reward_weights = {s.name: [r.weight for r in s.rewards] for s in tr.sources}
    cfg.rollout.samples_per_prompt = 2
    examples = PromptStream(tr.sources, tok, 0).batch(0, 2)
    worker = RolloutWorker(str(tmp_path / "llada"))
    params = SamplingParams(max_new_tokens=6, steps_per_block=5, temperature=1.0, record_steps=True)
    trajs = worker.generate([ex.prompt_ids for ex in examples for _ in range(2)], params, seed=0, groups=[0, 0, 1, 1])
    batch = StepBatch(trajs, examples)
    tr.score(batch)
    assert batch.scored_steps.tolist() == [[0, 2, 4]] * 4 and batch.step_rewards.shape == (4, 3)
    kept, metrics = tr.advantages(batch)
    assert metrics["step_rows"] == 8 and len(kept) == 8 and kept.advantages.shape == (8,)
    expect = mdpo_step_batch(trajs, batch.step_rewards, [[0, 2, 4]] * 4, MdpoOptions(train_steps=2))[1]
    assert kept.advantages.tolist() == pytest.approx(expect.tolist())
    from rl.plan import learner_rows  # `unmask plan` sizes the learner by these rows, not the 4 samples

    cfg.rollout.prompts_per_step = 2
    assert learner_rows(get_estimator("mdpo"), cfg) == (len(kept), math.ceil(len(kept) / cfg.algorithm.minibatches))
    learner = Learner(cfg)
    start = {k: v.clone() for k, v in learner.lm.model.named_parameters()}
    m = learner.update(kept.for_learner())
    assert math.isfinite(m["loss/policy"])
    assert any(not torch.equal(p, start[n]) for n, p in learner.lm.model.named_parameters())


@pytest.mark.slow
def test_unmask_train_runs_mdpo_from_a_one_line_config(tmp_path, tok):
    """`unmask train` with `algorithm: {estimator: mdpo}` on a tiny LLaDA: the rollout records its
    steps, the intermediate answers are scored, the update trains the step rows, and config.yaml
    names the preset's sources."""
    import json
    import subprocess
    import sys

    from .conftest import ROOT

    llada(tok).save_pretrained(tmp_path / "llada")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"model: {{path: {tmp_path / 'llada'}}}\n"
        "data: {sources: [{path: arithmetic, options: {digits: 1}, heldout: {size: 4}}]}\n"
        "rollout: {prompts_per_step: 2, samples_per_prompt: 2, sampling: {max_new_tokens: 4, steps_per_block: 4}}\n"
        "algorithm: {estimator: mdpo, options: {train_steps: 2, score_every: 2}}\n"
        "train: {steps: 1, save_every: 1}\neval: {every: 0}\nwandb: {mode: disabled}\n"
    )
    run = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "rl.cli", "train", str(cfg), "--output-dir", str(run)], check=False, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in records if "loss/policy" in r)
    assert step["step_rows"] == 2 * 2 * 2 and step["reward/steps_scored"] == 4 * 3  # steps 0, 2, 3 of 4 per sample
    assert "autonomousvision/mdpo" in (run / "config.yaml").read_text()
