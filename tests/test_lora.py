"""LoRA: adapter-only weight sync, reference = adapter disabled, checkpoint, merge."""

import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM

from rl.config import RunConfig
from rl.batch import learner_batch
from rl.learner import Learner
from rollout import SamplingParams, generate, load_model
from rollout.worker import RolloutWorker

from .conftest import BASE_CKPT, ROOT

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "up_proj", "down_proj"]}


def cfg():
    return RunConfig.model_validate({
        "data": {"sources": [{"path": "arithmetic"}]}, "model": {"path": str(BASE_CKPT), "lora": {"enabled": True, **LORA}},
        "algorithm": {"lr": 5e-3, "beta": 0.1, "minibatches": 1},
        "wandb": {"mode": "disabled"},
    })


def batch(worker, n=16, seed=0):
    tok = worker.lm.tokenizer
    prompts = [tok("123+456=")["input_ids"], tok("507+045=")["input_ids"]] * (n // 2)
    return worker.generate(prompts, SamplingParams(max_new_tokens=5, temperature=1.0), seed=seed, groups=[0, 1] * (n // 2))


def test_lora_update_syncs_only_the_adapter_and_changes_rollouts(tmp_path):
    learner = Learner(cfg())
    worker = RolloutWorker(str(BASE_CKPT), lora=LORA)
    base = {k: v.clone() for k, v in learner.lm.model.state_dict().items() if "lora_" not in k}
    trajs = batch(worker)
    before = [t.completion_ids for t in batch(worker, seed=5)]
    m = learner.update(learner_batch(learner.cfg.algorithm, trajs, torch.linspace(-1, 1, len(trajs)).tolist()))
    assert m["kl"] == 0.0  # first update: old policy == base with adapter off (lora_B starts at 0)
    weights = learner.get_weights()
    full = sum(v.numel() for v in learner.lm.model.state_dict().values())
    assert all("lora_" in k for k in weights) and sum(v.numel() for v in weights.values()) < 0.1 * full
    for k, v in learner.lm.model.state_dict().items():  # base weights frozen
        if "lora_" not in k:
            assert torch.equal(v, base[k]), k
    worker.load_weights(weights, version=1)
    assert [t.completion_ids for t in batch(worker, seed=5)] != before
    m2 = learner.update(learner_batch(learner.cfg.algorithm, batch(worker, seed=7), torch.linspace(-1, 1, 16).tolist()))
    assert m2["kl"] > 0  # the reference (adapter disabled) now differs from the policy

    # checkpoint -> resume restores the adapter; merge -> plain transformers model, same tokens
    learner.save(tmp_path / "ckpt")
    again = Learner(cfg())
    again.load(tmp_path / "ckpt")
    assert all(torch.equal(again.get_weights()[k], v) for k, v in learner.get_weights().items())
    out = tmp_path / "merged"
    res = subprocess.run([sys.executable, "-m", "rl.cli", "merge", str(tmp_path / "ckpt"), str(out)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    # The merged checkpoint is the LoRA policy as a plain model: the same logits as the in-memory
    # adapter model on a fixed canvas (prompt + masked block), and not the base model's.
    worker.load_weights(learner.get_weights())
    tok = worker.lm.tokenizer
    x = torch.tensor([tok("123+456=")["input_ids"] + [worker.lm.mask_id] * 4])
    every = torch.arange(x.shape[1])[None]
    merged = load_model(out)
    assert not any("lora_" in k for k in merged.model.state_dict())
    plain = AutoModelForCausalLM.from_pretrained(out)  # transformers alone, as a user loads it
    with torch.no_grad():
        lora_logits = worker.lm.sequence_logits(x, every)
        base_logits = load_model(BASE_CKPT).sequence_logits(x, every)
        torch.testing.assert_close(merged.sequence_logits(x, every), lora_logits, atol=1e-4, rtol=1e-4)
        assert (lora_logits - base_logits).abs().max() > 1e-2, "the adapter changed nothing: the merge check would be vacuous"
        torch.testing.assert_close(plain(input_ids=x).logits, worker.lm.model(input_ids=x).logits, atol=1e-4, rtol=1e-4)
    prompts = [merged.tokenizer("123+456=")["input_ids"], merged.tokenizer("99+1=")["input_ids"]]
    greedy = SamplingParams(max_new_tokens=5, temperature=0.0)
    assert [t.completion_ids for t in generate(merged, prompts, greedy)] == [t.completion_ids for t in generate(worker.lm, prompts, greedy)]


def test_value_model_with_lora_trains_only_its_own_adapter_and_head():
    c = cfg()
    c.algorithm.value.enabled = True
    learner = Learner(c)
    worker = RolloutWorker(str(BASE_CKPT), lora=LORA)
    value_before = {k: v.clone() for k, v in learner.value.state_dict().items()}
    trainable = {n for n, p in learner.value.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    # The head starts at zero, so the critic's adapter gets gradient from the second update on.
    # Rewards vary inside each group (groups alternate 0, 1): the critic sees their z-scores.
    learner.update(learner_batch(learner.cfg.algorithm, batch(worker), [0.0] * 16, rewards=[float(i % 3 == 0) for i in range(16)]))
    learner.update(learner_batch(learner.cfg.algorithm, batch(worker, seed=1), [0.0] * 16, rewards=[float(i % 3 == 1) for i in range(16)]))
    after = learner.value.state_dict()
    changed = {k for k in after if not torch.equal(after[k], value_before[k])}
    assert "head.weight" in changed and any("lora_B" in k for k in changed)
    assert all("lora_" in k or k.startswith("head.") for k in changed), "the critic's base weights stay frozen"
    policy = learner.lm.model.state_dict()
    shared = [k for k in policy if "lora_B" in k]
    assert any(not torch.equal(policy[k], after["backbone." + k]) for k in shared), "critic and actor adapters are separate"
