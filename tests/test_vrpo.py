"""VRPO (LLaDA 1.5): the loss and the ELBO by hand, masks shared by policy and reference, the
preference-pair data source and its errors, and `unmask train` on a tiny full-attention model."""

import copy
import json
import math

import pytest
import torch
from typer.testing import CliRunner

from algorithms import estimators, vrpo
from algorithms.estimators import get_estimator
from algorithms.vrpo import VrpoOptions, sequence_elbo, vrpo_estimate, vrpo_loss
from rl.cli import app
from rl.config import ConfigError, config_yaml, estimators_help, load_config
from rl.data import DataError, load_source
from rl.data.prompts import encode_messages
from rl.preference import PreferenceTrainer
from rl.trainer import Trainer, trainer_class
from rollout import build_char_tokenizer
from rollout.models import build_tiny_lm
from rollout.trajectory import Trajectory

from .conftest import BASE_CKPT


def softplus(x: float) -> float:  # -log sigmoid(-x)
    return math.log1p(math.exp(x))


# -- the loss ------------------------------------------------------------------------------------
def test_loss_by_hand_dpo_on_elbo_differences():
    pc = torch.tensor([-10.0, -4.0], requires_grad=True)  # policy ELBOs of y_w
    pr = torch.tensor([-12.0, -3.0], requires_grad=True)  # policy ELBOs of y_l
    rc = torch.tensor([-11.0, -4.0], requires_grad=True)
    rr = torch.tensor([-11.0, -5.0], requires_grad=True)
    # beta 0.1: chosen rewards 0.1 * (1, 0), rejected 0.1 * (-1, 2); margins (0.2, -0.2)
    loss, m = vrpo_loss(pc, pr, rc, rr, beta=0.1)
    want = (softplus(-0.2) + softplus(0.2)) / 2  # -log sig(0.2) = 0.598139, -log sig(-0.2) = 0.798139
    assert loss.item() == pytest.approx(want, abs=1e-6) and want == pytest.approx(0.698139, abs=1e-6)
    assert m["rewards/chosen"] == pytest.approx(0.05) and m["rewards/rejected"] == pytest.approx(0.05)
    assert m["rewards/margins"] == pytest.approx(0.0, abs=1e-7) and m["rewards/accuracies"] == 0.5
    assert (m["elbo/chosen"], m["elbo/rejected"]) == (-7.0, -7.5)
    loss.backward()
    # d loss / d B_theta(y_w) = -beta sigma(-margin) / B; d / d B_theta(y_l) its negative; the reference gets none
    s = [1 / (1 + math.exp(0.2)), 1 / (1 + math.exp(-0.2))]
    assert pc.grad.tolist() == pytest.approx([-0.1 * s[0] / 2, -0.1 * s[1] / 2], abs=1e-7)
    assert pr.grad.tolist() == pytest.approx([0.1 * s[0] / 2, 0.1 * s[1] / 2], abs=1e-7)
    assert rc.grad is None and rr.grad is None
    # a micro-batch's share: pairs = the whole step's count, so the pieces add up to the whole
    parts = sum(vrpo_loss(pc[i : i + 1], pr[i : i + 1], rc[i : i + 1], rr[i : i + 1], beta=0.1, pairs=2)[0].item() for i in range(2))
    assert parts == pytest.approx(want, abs=1e-6)
    with pytest.raises(ValueError, match="beta must be > 0"):
        vrpo_loss(pc, pr, rc, rr, beta=0.0)


# -- the ELBO ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llada():
    torch.manual_seed(0)
    lm = build_tiny_lm(build_char_tokenizer(), family="llada", hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    lm.model.double()
    return lm


def _traj(lm, prompt: str, response: str) -> Trajectory:
    tok = lm.tokenizer
    ids = tok(response, add_special_tokens=False)["input_ids"] + [lm.eos_id]
    return Trajectory(tok(prompt)["input_ids"], ids, [0] * len(ids), [0.0] * len(ids), None, 1.0, 0, "eos")


def _by_hand(lm, t: Trajectory, masked: list[bool]) -> torch.Tensor:
    """log p(y_c | prompt clean, response with `masked` masked) [C], one plain forward, LLaDA's way."""
    ids = torch.tensor([t.prompt_ids + [lm.mask_id if m else y for y, m in zip(t.completion_ids, masked)]])
    bidirectional = torch.zeros((1, 1, ids.shape[1], ids.shape[1]), dtype=torch.float64)  # every token sees every token
    with torch.no_grad():
        logits = lm.model(input_ids=ids, attention_mask=bidirectional).logits[0, len(t.prompt_ids) :].clone()  # no shift (LLaDA)
    logits[:, lm.mask_id] = float("-inf")  # the model never predicts the mask itself (unmask's sampling distribution)
    logits[:, lm.num_tokens :] = float("-inf")  # nor an id past the tokenizer
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(t.completion_ids)[:, None])[:, 0]


def _record(monkeypatch):
    """Every forward of the estimators: (noisy mask per sample, scored log-probs)."""
    seen = []
    real = estimators._score

    def spy(lm, trajs, noisy, *a, **kw):
        out = real(lm, trajs, noisy, *a, **kw)
        seen.append(([list(m) for m in noisy], out[0].detach()))
        return out

    monkeypatch.setattr(estimators, "_score", spy)
    monkeypatch.setattr(vrpo, "_score", spy)
    return seen


def test_time_elbo_by_hand_weights_masked_tokens_by_one_over_n_t(llada, monkeypatch):
    t = _traj(llada, "12+3=", "15")  # response "15" + EOS: 3 scored tokens; the prompt is never masked
    levels = []
    real = estimators.elbo_schedule
    monkeypatch.setattr(estimators, "elbo_schedule", lambda *a, **kw: levels.append(real(*a, **kw)) or levels[-1])
    seen = _record(monkeypatch)
    logp, mask = vrpo_estimate(llada, [t], n=3, seed=4)
    assert mask.tolist() == [[True, True, True]] and len(seen) == 3 and len(levels) == 1
    want = torch.zeros(3, dtype=torch.float64)
    for (tk, wk), (noisy, _) in zip(levels[0], seen):
        assert wk == pytest.approx(1 / 3) and 1e-3 <= tk <= 1.0  # n distinct timesteps, one mask each
        m = noisy[0]
        want += torch.tensor([wk / tk if mk else 0.0 for mk in m], dtype=torch.float64) * _by_hand(llada, t, m)
    assert logp[0].tolist() == pytest.approx(want.tolist(), abs=1e-9)
    # the sequence ELBO is the sum over the response's tokens, EOS included, not a mean
    assert sequence_elbo(llada, [t], seed=4, n=3).item() == pytest.approx(float(want.sum()), abs=1e-9)


def test_count_elbo_by_hand_masks_exactly_l_tokens_with_weight_L_over_l(llada, monkeypatch):
    t = _traj(llada, "7*8=", "56")
    seen = _record(monkeypatch)
    logp, _ = vrpo_estimate(llada, [t], n=4, seed=1, elbo="count")
    want = torch.zeros(3, dtype=torch.float64)
    for noisy, _ in seen:
        m = noisy[0]
        l = sum(m)
        assert 1 <= l <= 3
        want += torch.tensor([3 / l / 4 if mk else 0.0 for mk in m], dtype=torch.float64) * _by_hand(llada, t, m)
    assert len(seen) == 4 and logp[0].tolist() == pytest.approx(want.tolist(), abs=1e-9)
    with pytest.raises(ValueError, match="elbo must be one of"):
        VrpoOptions(elbo="mean")


def test_policy_and_reference_share_masks_identical_models_give_zero_margin_and_log_2(llada):
    ref = copy.deepcopy(llada)
    chosen = [_traj(llada, "12+3=", "15"), _traj(llada, "4+4=", "8")]
    rejected = [_traj(llada, "12+3=", "16"), _traj(llada, "4+4=", "9")]
    trajs = chosen + rejected
    pol = sequence_elbo(llada, trajs, seed=9, n=2)
    same = sequence_elbo(ref, trajs, seed=9, n=2)
    assert torch.equal(pol, same)  # antithetic: same timesteps and masks for the same response
    loss, m = vrpo_loss(pol[:2], pol[2:], same[:2], same[2:], beta=0.2)
    assert loss.item() == math.log(2) and m["rewards/margins"] == 0.0 and m["rewards/accuracies"] == 0.0
    # independent draws for the reference (what antithetic sampling removes) leave a non-zero margin
    other = sequence_elbo(ref, trajs, seed=10, n=2)
    assert not torch.equal(pol, other)
    assert vrpo_loss(pol[:2], pol[2:], other[:2], other[2:], beta=0.2)[1]["rewards/margins"] != 0.0
    # a pair's masks do not depend on the batch it is scored in (micro-batches draw the whole's masks)
    assert sequence_elbo(llada, trajs[1:2], seed=9, n=2).item() == pytest.approx(pol[1].item(), abs=1e-12)


# -- config and unit -----------------------------------------------------------------------------
def _write_pairs(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run_yaml(tmp_path, model, data: str, algorithm: str = "estimator: vrpo", extra: str = ""):
    p = tmp_path / "run.yaml"
    p.write_text(f"model: {{path: {model}}}\ndata: {{sources: [{data}]}}\nwandb: {{mode: disabled}}\nalgorithm: {{{algorithm}}}\n{extra}")
    return p


def test_a_one_line_config_gets_the_preset_and_the_pair_path(tmp_path):
    pairs = _write_pairs(tmp_path / "p.jsonl", [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}])
    cfg = load_config(_run_yaml(tmp_path, BASE_CKPT, f"{{path: {pairs}, preset: preference}}"))
    algo = cfg.algorithm
    assert (algo.beta, algo.mc_samples, algo.redraw_masks) == (0.2, 8, False)
    unit = algo.estimator_unit()
    assert unit is get_estimator("vrpo") and unit.offline_pairs and unit.objective is vrpo_loss and unit.attention == {"full"}
    assert algo.estimator_options() == {"n": 8} and unit.passes([], n=8) == 8
    assert trainer_class(cfg) is PreferenceTrainer
    assert trainer_class(load_config(_run_yaml(tmp_path, BASE_CKPT, "{path: arithmetic}", "estimator: trace"))) is Trainer
    text = config_yaml(cfg.model_dump(mode="json"), algo)
    assert "  beta: 0.2  # vrpo preset: LLaDA 1.5 (Zhu et al., 2025, arXiv:2505.19223)" in text
    assert "  mc_samples: 8  # vrpo preset:" in text
    assert "  vrpo: VRPO, LLaDA 1.5" in estimators_help()
    assert load_config(_run_yaml(tmp_path, BASE_CKPT, f"{{path: {pairs}, preset: preference}}", "estimator: vrpo, beta: 0.1, mc_samples: 2")).algorithm.beta == 0.1
    with pytest.raises(ConfigError, match="algorithm.loss: estimator 'vrpo' brings its own objective"):
        load_config(_run_yaml(tmp_path, BASE_CKPT, f"{{path: {pairs}, preset: preference}}", "estimator: vrpo, loss: gspo"))
    with pytest.raises(ConfigError, match="did you mean 'chosen'"):
        load_config(_run_yaml(tmp_path, BASE_CKPT, f"{{path: {pairs}, choosen: a}}"))
    with pytest.raises(ValueError, match=r"'vrpo' is defined for full attention only; model family 'block' has block_causal attention"):
        PreferenceTrainer(cfg, tmp_path / "run")  # arith3-base is a block (SDAR-style) model
    with pytest.raises(ValueError, match="needs beta > 0"):
        PreferenceTrainer(load_config(_run_yaml(tmp_path, BASE_CKPT, f"{{path: {pairs}, preset: preference}}", "estimator: vrpo, beta: 0.0")), tmp_path / "r")


# -- the data source -----------------------------------------------------------------------------
def _source(tmp_path, rows, **cfg):
    from rl.config import SourceConfig

    path = _write_pairs(tmp_path / "pairs.jsonl", rows)
    return load_source(SourceConfig(path=str(path), **cfg))


def test_pair_rows_in_the_common_formats(tmp_path):
    def user(s):
        return {"role": "user", "content": s}

    def bot(s):
        return {"role": "assistant", "content": s}

    rows = [
        {"prompt": "1+1=", "chosen": "2", "rejected": "3"},  # plain text
        {"prompt": "2+2=", "chosen": [user("2+2="), bot("4")], "rejected": [user("2+2="), bot("5")]},  # UltraFeedback binarized
        {"prompt": [user("3+3=")], "chosen": [bot("6")], "rejected": [bot("7")]},  # TRL conversational
        {"chosen": [user("hi"), bot("hello"), user("4+4=")] + [bot("8")], "rejected": [user("hi"), bot("hello"), user("4+4="), bot("9")]},
    ]
    src = _source(tmp_path, rows, preset="preference")
    got = [(ex.prompt, ex.chosen, ex.rejected) for ex in src.train]
    assert got == [("1+1=", "2", "3"), ("2+2=", "4", "5"), ("3+3=", "6", "7"), ("4+4=", "8", "9")]
    assert src.train[2].messages == [user("3+3=")] and src.train[3].messages == [user("hi"), bot("hello"), user("4+4=")]
    # any file with its own column names
    custom = _source(tmp_path, [{"q": "5+5=", "good": "10", "bad": "11"}], prompt="q", chosen="good", rejected="bad")
    assert (custom.train[0].prompt, custom.train[0].chosen, custom.train[0].rejected) == ("5+5=", "10", "11")
    assert _source(tmp_path, [{"q": "x", "a": "y"}], prompt="q").train[0].chosen is None  # no pairs: RL/SFT sources unchanged


@pytest.mark.parametrize(
    "row, cfg, message",
    [
        ({"prompt": "1+1=", "chosen": "2"}, {"preset": "preference"}, r"pairs.jsonl:line 2: missing field 'rejected' \(a preference row has prompt, chosen and rejected; fields present: chosen, prompt\)"),
        ({"chosen": "2", "rejected": "3"}, {"preset": "preference"}, r"pairs.jsonl:line 2: missing field 'prompt'"),
        ({"prompt": "1+1=", "chosen": "2", "rejected": "2"}, {"preset": "preference"}, r"pairs.jsonl:line 2: the chosen and rejected responses are identical"),
        ({"prompt": "1+1=", "chosen": "  ", "rejected": "3"}, {"preset": "preference"}, r"pairs.jsonl:line 2: missing field 'chosen'"),
        ({"prompt": "1+1=", "chosen": [{"role": "user", "content": "2"}], "rejected": "3"}, {"preset": "preference"},
         r"pairs.jsonl:line 2: column 'chosen' is a conversation whose last turn is 'user', not the assistant's answer"),
        ({"q": "1+1=", "good": "2"}, {"prompt": "q", "chosen": "good", "rejected": "bad"},
         r"pairs.jsonl:line 2: missing rejected response column 'bad' \(columns: good, id, q\)"),
        ({"q": "1+1=", "good": "2"}, {"prompt": "q", "chosen": "good"}, r"preference pairs need both chosen: and rejected: columns \(only chosen is set\)"),
    ],
)
def test_bad_pair_rows_are_named_by_file_and_line(tmp_path, row, cfg, message):
    good = {"prompt": "0+0=", "chosen": "0", "rejected": "1"} if cfg.get("preset") else {"q": "0+0=", "good": "0", "bad": "1"}
    with pytest.raises(DataError, match=message):
        _source(tmp_path, [good, row], **cfg)


def test_responses_are_tokenised_after_the_runs_prompt_with_one_eos_and_cut_at_the_budget(tmp_path, llada):
    llada.save_pretrained(tmp_path / "llada")
    pairs = _write_pairs(tmp_path / "p.jsonl", [{"prompt": "1+1=", "chosen": "2", "rejected": "33333"}, {"prompt": "q", "chosen": "a", "rejected": "b"}])
    cfg = load_config(_run_yaml(tmp_path, tmp_path / "llada", f"{{path: {pairs}, preset: preference, max_new_tokens: 4}}", "estimator: vrpo, mc_samples: 1"))
    run = PreferenceTrainer(cfg, tmp_path / "run")
    ex = next(e for e in run.sources[0].train if e.prompt == "1+1=")
    chosen, rejected = run.trajectories([ex])
    tok = run.tokenizer
    assert chosen[0].prompt_ids == encode_messages(tok, ex.messages, run.sources[0].chat)[0]
    assert chosen[0].completion_ids == tok("2", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert rejected[0].completion_ids == tok("3333", add_special_tokens=False)["input_ids"]  # 5 tokens + EOS cut to 4, counted
    assert run.cut["preference"] == 1
    # the run's step: reference and policy on the same masks, so the untrained policy's margin is exactly 0 (loss log 2)
    m = run.pair_metrics(run.sources[0].train, seed=3, backward=False, pieces=2)
    assert m["loss/policy"] == pytest.approx(math.log(2), abs=1e-6) and m["rewards/margins"] == 0.0 and m["rewards/accuracies"] == 0.0
    bad = _write_pairs(tmp_path / "rl.jsonl", [{"q": "1+1=", "a": "2"}])
    with pytest.raises(DataError, match=r"rl.jsonl:line 1: source 'rl' has no preference pair"):
        PreferenceTrainer(load_config(_run_yaml(tmp_path, tmp_path / "llada", f"{{path: {bad}, prompt: q}}", "estimator: vrpo")), tmp_path / "r2")


# -- unmask train --------------------------------------------------------------------------------
@pytest.mark.slow
def test_unmask_train_runs_vrpo_from_a_one_line_config_and_the_preference_accuracy_rises(tmp_path):
    model = tmp_path / "llada"
    build_tiny_lm(build_char_tokenizer(), family="llada", hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64).save_pretrained(model)
    pairs = _write_pairs(tmp_path / "p.jsonl", [{"prompt": f"{a}{b}?", "chosen": "yes", "rejected": "no!"} for a in range(3) for b in range(3)])
    config = _run_yaml(tmp_path, model, f"{{path: {pairs}, name: yn, preset: preference, heldout: {{size: 2}}}}",
                       "estimator: vrpo, lr: 1.0e-2, mc_samples: 4", "rollout: {prompts_per_step: 3}\ntrain: {steps: 4, save_every: 2}\n")  # fmt: skip
    out = CliRunner().invoke(app, ["train", str(config), "--output-dir", str(tmp_path / "run")])
    assert out.exit_code == 0, out.output
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss/policy" in r and "grad_norm" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert steps[0]["loss/policy"] == pytest.approx(math.log(2), abs=1e-6) and steps[0]["rewards/margins"] == 0.0  # policy = reference
    assert steps[-1]["rewards/margins"] > 0.1 and steps[-1]["rewards/accuracies"] == 1.0 and steps[-1]["loss/policy"] < math.log(2) - 0.05
    before, after = records[0], records[-1]
    # held-out pairs on fixed masks: the identical start has margin 0 (accuracy 0: no margin > 0), the end a positive one
    assert (before["step"], before["eval/yn/rewards/margins"], before["eval/yn/rewards/accuracies"]) == (0, 0.0, 0.0)
    assert after["eval/yn/rewards/margins"] > 0.05 and after["eval/yn/rewards/accuracies"] > 0.0
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_000002", "step_000004"]
    assert "beta: 0.2  # vrpo preset" in (tmp_path / "run" / "config.yaml").read_text()


@pytest.mark.slow
def test_a_resumed_vrpo_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, llada):
    model = tmp_path / "llada"
    llada.save_pretrained(model)
    pairs = _write_pairs(tmp_path / "p.jsonl", [{"prompt": f"{a}?", "chosen": "yes", "rejected": "no"} for a in range(6)])
    config = _run_yaml(tmp_path, model, f"{{path: {pairs}, preset: preference}}", "estimator: vrpo, lr: 1.0e-2, mc_samples: 2",
                       "rollout: {prompts_per_step: 2}\ntrain: {steps: 4, save_every: 2}\n")  # fmt: skip
    whole = PreferenceTrainer(load_config(config), tmp_path / "whole")
    whole.train()
    half = PreferenceTrainer(load_config(config, ["train.steps=2"]), tmp_path / "half")
    half.train()
    resumed = PreferenceTrainer(load_config(config), tmp_path / "half", resume=True)
    resumed.train()
    assert resumed.learner.step == 4
    a, b = whole.lm.model.state_dict(), resumed.lm.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_with_lora_the_reference_is_the_base_with_the_adapter_off(tmp_path, llada):
    model = tmp_path / "llada"
    llada.save_pretrained(model)
    pairs = _write_pairs(tmp_path / "p.jsonl", [{"prompt": f"{a}?", "chosen": "yes", "rejected": "no"} for a in range(4)])
    config = _run_yaml(tmp_path, model, f"{{path: {pairs}, preset: preference}}", "estimator: vrpo, lr: 5.0e-2, mc_samples: 2", "rollout: {prompts_per_step: 4}\n")
    cfg = load_config(config, ["model.lora.enabled=true"])
    run = PreferenceTrainer(cfg, tmp_path / "run")
    assert run.learner.ref is None and run.learner.peft is not None
    chosen, rejected = run.trajectories(run.sources[0].train)
    trajs = chosen + rejected
    occ = list(range(len(trajs)))
    base = run._reference_elbo(trajs, 5, occ)
    run.update(0)
    run.update(1)
    assert torch.equal(run._reference_elbo(trajs, 5, occ), base)  # the adapter moved, the reference did not
    with torch.no_grad():
        assert not torch.equal(sequence_elbo(run.lm, trajs, 5, occ, n=2), base)
