"""The code sandbox is chosen by config and reaches the sandbox as an argument, not through os.environ.

`scoring.sandbox` goes to every code score of a run (training rewards, held-out accuracy,
eval.benchmarks), and `rewards.score(..., sandbox=)` hands it to the rewards that run code; the
`UNMASK_SANDBOX` environment variable is only the fallback when no choice is given, and the trainer
never sets it. Each test sets the environment to the other backend, so a choice that is lost on the
way (and falls back to the environment) shows up as the wrong backend in the sandbox's results.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

import rl.trainer
from rewards import get_reward, score
from rewards import sandbox as sb
from rl.batch import StepBatch
from rl.config import load_config
from rollout.trajectory import Trajectory

from .conftest import ROOT

FIX = ROOT / "tests" / "fixtures" / "eval" / "humaneval.jsonl"
OTHER = {"bwrap": "rlimit", "rlimit": "bwrap"}


@pytest.fixture(params=["rlimit", "bwrap"])
def chosen(request, monkeypatch):
    """The configured backend (skipped where it cannot run); the environment names the other one."""
    try:
        sb.sandbox_info(request.param)
    except sb.SandboxError as exc:
        pytest.skip(f"{request.param} sandbox unavailable here: {exc}")
    monkeypatch.setenv("UNMASK_SANDBOX", OTHER[request.param])
    return request.param


@pytest.fixture
def ran_on(monkeypatch):
    """The backend of every sandbox run from now on (the code reward calls sandbox.run_programs)."""
    backends: list[str] = []
    real = sb.run_programs

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        backends.append(result.backend)
        return result

    monkeypatch.setattr(sb, "run_programs", spy)
    return backends


def test_score_hands_the_sandbox_choice_to_the_code_reward(chosen, ran_on):
    tests = {"tests": [["assert f(2) == 4"]] * 2}
    res = score(["code"], None, ["q"] * 2, ["def f(x): return 2 * x"] * 2, tests, sandbox=chosen)
    assert res.per_fn["code"] == [1.0, 1.0]
    assert ran_on == [chosen, chosen]
    # An explicit backend of the reward itself wins over the scoring choice.
    from rewards.registry import with_sandbox

    explicit = get_reward("code", backend=chosen)
    assert with_sandbox(explicit, OTHER[chosen]) is explicit
    # Rewards that run no code are left as they are.
    arithmetic = get_reward("arithmetic")
    assert with_sandbox(arithmetic, chosen) is arithmetic


def test_without_a_choice_the_environment_still_decides(chosen, ran_on, monkeypatch):
    monkeypatch.setenv("UNMASK_SANDBOX", chosen)
    score(["code"], None, ["q"], ["def f(x): return 2 * x"], {"tests": [["assert f(2) == 4"]]})
    assert ran_on == [chosen]


def test_trainer_runs_every_code_score_on_the_configured_sandbox(chosen, ran_on, monkeypatch, tmp_path, capsys):
    class Stop(Exception):
        pass

    def no_cluster(*args, **kwargs):
        raise Stop  # the set-up before Ray is all this test needs

    monkeypatch.setattr(rl.trainer, "connect", no_cluster)
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", [
        "model.path=examples/checkpoints/demo-base",  # a byte-level tokenizer: HumanEval prompts encode
        f"data.sources=[{{path: {FIX}, preset: humaneval, template: raw, heldout: {{size: 1}}}}]",
        f"eval.benchmarks=['humaneval:{FIX},template=raw']",
        f"scoring.sandbox={chosen}", "wandb.mode=disabled",
    ])  # fmt: skip
    trainer = rl.trainer.Trainer.__new__(rl.trainer.Trainer)
    with pytest.raises(Stop):
        trainer.__init__(cfg, tmp_path)
    assert os.environ["UNMASK_SANDBOX"] == OTHER[chosen]  # the trainer left the environment alone
    assert f"'backend': '{chosen}'" in capsys.readouterr().out  # the sandbox it reports is the one it uses

    body = "    return 0\n"  # a program that runs (and fails its tests): the backend is what counts here
    trainer.workers = SimpleNamespace(run=lambda items, seed, params: [
        Trajectory([1], [2], [0], [0.0], None, 1.0, 1, "eos", text=body, group=g) for _, g in items
    ])  # fmt: skip
    (src,) = trainer.sources
    trajs = [Trajectory([1], [2], [0], [0.0], None, 1.0, 1, "eos", text=body, group=g) for g in range(len(src.train))]
    trainer.score(StepBatch(trajs, src.train))
    assert len(ran_on) == len(src.train) and set(ran_on) == {chosen}, ran_on  # training rewards
    metrics = trainer.evaluate(step=0)
    assert "accuracy/heldout" in metrics and "eval/humaneval/pass@1" in metrics
    # held-out accuracy (one problem) and eval.benchmarks (three) ran on the configured sandbox too
    assert len(ran_on) == len(src.train) + 1 + 3 and set(ran_on) == {chosen}, ran_on
