import copy

import pytest
import torch

import rl.learner
from algorithms.estimators import loss_length
from rl.config import RunConfig
from rl.batch import learner_batch
from rl.learner import Learner
from rollout import SamplingParams, Trajectory
from rollout.worker import RolloutWorker

from .conftest import BASE_CKPT


def run_cfg(**algo):
    # one pass per batch unless a test asks for more (the presets' passes, d1's 12, are tested in test_presets.py)
    return RunConfig.model_validate(
        {"data": {"sources": [{"path": "arithmetic"}]}, "model": {"path": str(BASE_CKPT)}, "algorithm": {"lr": 1e-3, "minibatches": 2, "epochs": 1, **algo}, "wandb": {"mode": "disabled"}}
    )


def rollouts(worker, tok, n=8, seed=0):
    prompts = [tok("123+456=")["input_ids"], tok("507+045=")["input_ids"]] * (n // 2)
    return worker.generate(prompts, SamplingParams(max_new_tokens=5, temperature=1.0), seed=seed, groups=[0, 1] * (n // 2))


def test_worker_rollouts_change_after_an_in_memory_weight_update():
    worker = RolloutWorker(str(BASE_CKPT))
    tok = worker.lm.tokenizer
    before = [t.completion_ids for t in rollouts(worker, tok)]
    assert [t.completion_ids for t in rollouts(worker, tok)] == before  # same seed, same weights
    state = {k: v + 0.05 * torch.randn_like(v) for k, v in worker.lm.model.state_dict().items()}
    assert worker.load_weights(state, version=3) == 3
    after = [t.completion_ids for t in rollouts(worker, tok)]
    assert after != before
    with pytest.raises(ValueError, match="weight sync mismatch"):
        worker.load_weights({"bogus.weight": torch.zeros(1)})


def test_update_moves_every_parameter_and_logp_matches_rollout():
    learner = Learner(run_cfg(beta=0.05))
    worker = RolloutWorker(str(BASE_CKPT))
    trajs = rollouts(worker, worker.lm.tokenizer, n=16)
    start = {k: v.clone() for k, v in learner.lm.model.named_parameters()}
    adv = torch.linspace(-1, 1, len(trajs)).tolist()
    m = learner.update(learner_batch(learner.cfg.algorithm, trajs, adv))
    assert m["logp_mismatch"] < 1e-4  # learner replays the rollout's own log-probs
    assert learner.step == 1
    for name, p in learner.lm.model.named_parameters():
        assert not torch.equal(p, start[name]), f"{name} did not change"
    for name, p in learner.ref.model.named_parameters():  # the reference stays the initial policy
        assert torch.equal(p, start[name])
    with pytest.raises(ValueError, match="advantages"):
        learner.update(learner_batch(learner.cfg.algorithm, trajs, adv[:-1]))


def test_checkpoint_restores_step_optimizer_and_the_next_update(tmp_path):
    worker = RolloutWorker(str(BASE_CKPT))
    b1 = rollouts(worker, worker.lm.tokenizer, n=8, seed=1)
    b2 = rollouts(worker, worker.lm.tokenizer, n=8, seed=2)
    adv1, adv2 = [1.0, -1.0] * 4, [-0.5, 0.5] * 4
    a = Learner(run_cfg(beta=0.05))
    a.update(learner_batch(a.cfg.algorithm, b1, adv1))
    a.save(tmp_path / "ckpt")
    # the same checkpoint as bytes, for a driver that stores it without a shared filesystem
    files = a.state_files()
    on_disk = {p.relative_to(tmp_path / "ckpt").as_posix(): p.read_bytes() for p in (tmp_path / "ckpt").rglob("*") if p.is_file()}
    assert set(files) == set(on_disk) and {"learner.pt", "model/model.safetensors", "model/config.json"} <= set(files)
    assert files["model/model.safetensors"] == on_disk["model/model.safetensors"]
    a.update(learner_batch(a.cfg.algorithm, b2, adv2))

    b = Learner(run_cfg(beta=0.05))
    assert b.load(tmp_path / "ckpt") == 1 and b.step == 1
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert sb[0]["step"] == 2 * 1  # two minibatches per update
    b.update(learner_batch(b.cfg.algorithm, b2, adv2))
    for (name, pa), (_, pb) in zip(a.lm.model.named_parameters(), b.lm.model.named_parameters()):
        assert torch.allclose(pa, pb, atol=1e-6), name
    assert all(torch.allclose(sa[k]["exp_avg_sq"], b.optimizer.state_dict()["state"][k]["exp_avg_sq"], atol=1e-9) for k in sa)

    c = Learner(run_cfg(beta=0.05))
    assert c.load_state_files(files) == 1
    c.update(learner_batch(c.cfg.algorithm, b2, adv2))
    for (name, pa), (_, pc) in zip(a.lm.model.named_parameters(), c.lm.model.named_parameters()):
        assert torch.allclose(pa, pc, atol=1e-6), name
    with pytest.raises(ValueError, match="relative path"):
        c.load_state_files({"../escape": b""})


@pytest.mark.parametrize("estimator", ["one_step", "coupled", "mc_elbo", "block_random"])
def test_every_estimator_trains_through_the_learner(estimator):
    learner = Learner(run_cfg(estimator=estimator, beta=0.05))
    worker = RolloutWorker(str(BASE_CKPT))
    trajs = rollouts(worker, worker.lm.tokenizer, n=8)
    start = {k: v.clone() for k, v in learner.lm.model.named_parameters()}
    m = learner.update(learner_batch(learner.cfg.algorithm, trajs, [1.0, -1.0] * 4))
    assert "logp_mismatch" not in m and m["kl"] >= 0
    assert any(not torch.equal(p, start[n]) for n, p in learner.lm.model.named_parameters())


def _loss_tokens(t, eos_id):
    return loss_length(t.completion_ids, eos_id)  # up to and including the first EOS


def _spy(learner, monkeypatch):
    """Record what the learner's first optimizer step hands the losses: the policy loss's
    advantages [n, C] and the value loss's old values and returns [n, C], rows in minibatch
    order, and that order ("order": the batch rows of the first minibatch piece, in its order)."""
    seen = {}
    real_loss, real_value_loss, real_pieces = learner.loss_fn, rl.learner.value_loss, rl.learner.minibatch_pieces

    def pieces(*a, **k):
        out = real_pieces(*a, **k)
        seen.setdefault("order", list(out[0].idx))
        return out

    def loss_fn(logp, old, adv, keep, *a, **k):
        seen.setdefault("adv", adv.detach().clone())
        seen.setdefault("keep", keep.clone())
        return real_loss(logp, old, adv, keep, *a, **k)

    def value_loss(values, old_values, returns, mask, *a, **k):
        seen.setdefault("old_values", old_values.detach().clone())
        seen.setdefault("returns", returns.detach().clone())
        return real_value_loss(values, old_values, returns, mask, *a, **k)

    learner.loss_fn = loss_fn
    monkeypatch.setattr(rl.learner, "value_loss", value_loss)
    monkeypatch.setattr(rl.learner, "minibatch_pieces", pieces)
    return seen


def _in_batch_order(seen, trajs, rows):
    """Per-trajectory expected rows [len(trajs), C] reordered as the minibatch saw them (one minibatch)."""
    order = seen["order"]
    assert sorted(order) == list(range(len(trajs)))
    return rows[order]


def test_value_model_trains_and_checkpoints(tmp_path, monkeypatch):
    # raw rewards: each group's rewards are equal here, so their z-scores (the default) would be 0
    cfg = run_cfg(value={"enabled": True, "lr": 1e-3, "reward": "raw"}, minibatches=1)
    learner = Learner(cfg)
    worker = RolloutWorker(str(BASE_CKPT))
    trajs = rollouts(worker, worker.lm.tokenizer, n=8)
    rewards = [1.0, 0.0] * 4
    head0 = learner.value.head.weight.clone()
    seen = _spy(learner, monkeypatch)
    m = learner.update(learner_batch(learner.cfg.algorithm, trajs, [0.0] * 8, rewards=rewards))
    assert "loss/value" in m and not torch.equal(learner.value.head.weight, head0)
    # zero-initialised head: values are 0, and with gamma = lam = 1 every loss token's return (the
    # value target) and advantage is its sample's reward; 0 past the first EOS and at padding
    eos = learner.lm.eos_id
    width = seen["returns"].shape[1]
    want = torch.tensor([[r] * _loss_tokens(t, eos) + [0.0] * (width - _loss_tokens(t, eos)) for t, r in zip(trajs, rewards)])
    assert (seen["old_values"] == 0).all()
    want = _in_batch_order(seen, trajs, want)
    assert torch.equal(seen["returns"], want)
    assert torch.equal(seen["adv"], want)  # the policy's advantages are the GAE ones, not the [0.0] * 8 passed
    # so the first value loss is 0.5 * (share of loss tokens in rewarded samples)
    rewarded = sum(_loss_tokens(t, eos) for t, r in zip(trajs, rewards) if r == 1.0)
    assert m["loss/value"] == pytest.approx(0.5 * rewarded / sum(_loss_tokens(t, eos) for t in trajs), rel=1e-5)

    # exact resume: the value model AND its optimizer state come back, so the next update is the
    # uninterrupted learner's
    saved_opt = copy.deepcopy(learner.value_optimizer.state_dict())
    learner.save(tmp_path / "c")
    other = Learner(cfg)
    other.load(tmp_path / "c")
    assert torch.equal(other.value.head.weight, learner.value.head.weight)
    restored = other.value_optimizer.state_dict()
    assert set(restored["state"]) == set(saved_opt["state"]) and len(saved_opt["state"]) == len(list(learner.value.parameters()))
    for k, st in saved_opt["state"].items():
        assert float(restored["state"][k]["step"]) == float(st["step"]) == 1.0
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(restored["state"][k][name], st[name]), (k, name)
    b2, rewards2 = trajs[:4], [0.0, 1.0, 1.0, 0.0]  # a smaller second batch, other rewards
    learner.update(learner_batch(learner.cfg.algorithm, b2, [0.0] * 4, rewards=rewards2))
    other.update(learner_batch(other.cfg.algorithm, b2, [0.0] * 4, rewards=rewards2))
    for (name, pa), (_, pb) in zip(learner.value.named_parameters(), other.value.named_parameters()):
        assert torch.allclose(pa, pb, atol=1e-7, rtol=0), name
    for (name, pa), (_, pb) in zip(learner.lm.model.named_parameters(), other.lm.model.named_parameters()):
        assert torch.allclose(pa, pb, atol=1e-7, rtol=0), name
    with pytest.raises(ValueError, match="value model needs value_rewards"):
        learner.update(learner_batch(learner.cfg.algorithm, trajs, [0.0] * 8))


def test_value_model_uses_process_rewards_on_their_steps(monkeypatch):
    learner = Learner(run_cfg(value={"enabled": True}, minibatches=1))
    worker = RolloutWorker(str(BASE_CKPT))
    trajs = rollouts(worker, worker.lm.tokenizer, n=8)  # static decoding: one token per step
    # sample i gets (i + 1) / 8 on the token decoded at step 0: with gamma = lam = 1 and a zero
    # critic, only that token's step has a return (no reward comes after it), (i + 1) / 8, and its
    # advantage is the same; every other token gets 0. Distinct per sample, so a reward read
    # from another sample's row shows.
    token_rewards = [[(i + 1) / 8 if s == 0 else 0.0 for s in t.step_map] for i, t in enumerate(trajs)]
    eos = learner.lm.eos_id
    assert all(t.step_map.index(0) < _loss_tokens(t, eos) for t in trajs)  # step 0 carries loss in every sample
    seen = _spy(learner, monkeypatch)
    m = learner.update(learner_batch(learner.cfg.algorithm, trajs, [0.0] * 8, rewards=[0.0] * 8, token_rewards=token_rewards))
    width = seen["returns"].shape[1]
    want = torch.tensor([[(i + 1) / 8 if c == t.step_map.index(0) else 0.0 for c in range(width)] for i, t in enumerate(trajs)])
    want = _in_batch_order(seen, trajs, want)
    assert torch.equal(seen["returns"], want) and torch.equal(seen["adv"], want)
    # first value loss: 0.5 * sum_i ((i + 1) / 8)^2 / #tokens = 0.5 * (1 + 4 + ... + 64) / 64 / #tokens = 0.5 * 204 / 64 / #tokens
    tokens = sum(_loss_tokens(t, eos) for t in trajs)
    assert m["loss/value"] == pytest.approx(0.5 * 204 / 64 / tokens, rel=1e-5)


def test_default_value_form_gives_each_token_its_own_baseline(monkeypatch):
    """TraceRL's value form is the default: with gamma = lam = 1 (the defaults) and a terminal
    reward R, A_j = R - V_j for every token j (its own value, not its step's mean) and the value
    target is R. shrink 2 puts two tokens in each MDP step, so the step form would differ."""
    learner = Learner(run_cfg(shrink=2, value={"enabled": True, "reward": "raw"}, minibatches=1))
    torch.nn.init.normal_(learner.value.head.weight, std=0.5, generator=torch.Generator().manual_seed(0))
    tok = learner.lm.tokenizer
    prompt = tok("12+3")["input_ids"]  # 4 tokens: the completion is exactly block 1, steps {0, 1} and {2, 3}
    t = Trajectory(prompt, tok("0015")["input_ids"], [0, 1, 2, 3], [0.0] * 4, 4, 1.0, 4, "length")
    seen = _spy(learner, monkeypatch)
    learner.update(learner_batch(learner.cfg.algorithm, [t], [0.0], rewards=[1.0]))
    v = seen["old_values"][0].tolist()
    assert abs(v[0] - v[1]) > 1e-3 and abs(v[2] - v[3]) > 1e-3  # values differ inside each step
    assert seen["returns"][0].tolist() == pytest.approx([1.0] * 4, abs=1e-6)
    assert seen["adv"][0].tolist() == pytest.approx([1.0 - x for x in v], abs=1e-6)
    # (the step form: 1 - (v0 + v1) / 2 twice, then 1 - (v2 + v3) / 2 twice)


@pytest.mark.parametrize("overlap", [False, True])
def test_overlap_ratio_is_taken_against_the_rollout_log_probs(overlap):
    """One-step off-policy: the behaviour policy is the rollout's own distribution, so a batch
    whose recorded log-probs are 0.1 below the learner's gives ratio exp(0.1) on the first
    step; without overlap the learner recomputes old log-probs and the ratio starts at 1."""
    cfg = run_cfg(minibatches=1)
    cfg.rollout.overlap = overlap
    learner = Learner(cfg)
    worker = RolloutWorker(str(BASE_CKPT))
    trajs = rollouts(worker, worker.lm.tokenizer, n=8)
    for t in trajs:
        t.logprobs = [lp - 0.1 for lp in t.logprobs]
    m = learner.update(learner_batch(learner.cfg.algorithm, trajs, [1.0, -1.0] * 4))
    expected = torch.exp(torch.tensor(0.1)).item() if overlap else 1.0
    assert m["ratio/mean"] == pytest.approx(expected, abs=1e-4)
    assert m["logp_mismatch"] == pytest.approx(0.1, abs=1e-4)
