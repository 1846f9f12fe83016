"""Parallel scoring: failures stay per sample, hung plugins are cut off, step rewards pass through."""

import importlib
import os
import threading
from pathlib import Path

import pytest

import rewards._pool as rpool
from rewards import SampleFailure, StepReward, in_process, score, split_steps
from rewards.steps import merge_steps

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def plugin(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("tests.reward_plugin_example")


PROMPTS = ["p"] * 5
COMPLETIONS = ["a", "bb", "boom", "dddd", "eeeee"]


def test_plugin_that_raises_on_one_sample_loses_only_that_sample(plugin):
    res = score([plugin.flaky_reward, "tests.reward_plugin_example:length_reward"], [1.0, 0.5], PROMPTS, COMPLETIONS)
    total, per_fn, errors = res  # still unpacks as the trainer expects
    assert per_fn["flaky_reward"] == [1.0, 2.0, None, 4.0, 5.0]
    assert total == [1.5, 3.0, 2.0, 6.0, 7.5]  # the failed component is left out, the sample kept
    assert "1 of 5 samples failed" in errors["flaky_reward"] and "cannot score 'boom'" in errors["flaky_reward"]
    assert res.num_failed == {"flaky_reward": 1}
    kinds = {(f.index, f.kind) for f in res.failures["flaky_reward"]}
    assert kinds == {(-1, "error"), (2, "error")}  # the batch call, then sample 2 alone


def killed_workers(monkeypatch):
    """The pids of the reward workers the pool kills and replaces from now on (a timeout or a crash)."""
    pids = []
    replace = rpool._replace

    def spy(workers, k):
        pids.append(workers[k].proc.pid)
        replace(workers, k)

    monkeypatch.setattr(rpool, "_replace", spy)
    return pids


def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_plugin_that_hangs_on_one_sample_is_cut_off(plugin, monkeypatch):
    killed = killed_workers(monkeypatch)
    completions = ["a", "hang", "ccc", "dddd"]
    res = score([plugin.hanging_reward, "arithmetic_format"], None, ["p"] * 4, completions, timeout_s=1.0, num_workers=2)
    assert res.per_fn["hanging_reward"] == [1.0, None, 3.0, 4.0]
    assert res.num_failed == {"hanging_reward": 1}
    # Exactly two calls ran past their limit (the batch, then sample 1 alone), and each one's worker
    # was killed: the samples beside it were scored by their own calls, none of which timed out.
    assert [(f.index, f.kind) for f in res.failures["hanging_reward"]] == [(-1, "timeout"), (1, "timeout")]
    assert "timed out" in res.errors["hanging_reward"]
    assert len(killed) == 2 and all(gone(pid) for pid in killed)
    # The killed workers were replaced: the next step scores normally.
    res = score([plugin.hanging_reward], None, ["p"], ["ok"], timeout_s=5.0)
    assert res.total == [2.0] and res.errors == {}
    assert len(killed) == 2


def test_closure_plugin_runs_in_a_thread_and_still_fails_per_sample():
    release = threading.Event()

    def local_reward(prompts, completions, **columns):  # not importable: cannot go to a worker process
        out = []
        for c in completions:
            if c == "boom":
                raise KeyError("boom")
            if c == "hang":
                release.wait(60)
            out.append(1.0)
        return out

    try:
        res = score([local_reward], None, ["p"] * 4, ["a", "boom", "hang", "d"], timeout_s=0.5, num_workers=2)
    finally:
        release.set()  # let the abandoned thread finish
    assert res.per_fn["local_reward"] == [1.0, None, None, 1.0]
    assert {f.index: f.kind for f in res.failures["local_reward"]} == {-1: "error", 1: "error", 2: "timeout"}
    assert res.num_failed == {"local_reward": 2}


def test_lambda_plugin_in_a_thread():
    res = score([lambda prompts, completions, **c: [float(x == "y") for x in completions]], None, ["p"] * 2, ["y", "n"])
    assert res.total == [1.0, 0.0] and res.errors == {}


def test_fail_fast_raises_naming_the_reward(plugin):
    with pytest.raises(RuntimeError, match="flaky_reward.*cannot score 'boom'"):
        score([plugin.flaky_reward], None, PROMPTS, COMPLETIONS, fail_fast=True)
    with pytest.raises(RuntimeError, match="hanging_reward.*timed out"):
        score([plugin.hanging_reward], None, ["p"], ["hang"], fail_fast=True, timeout_s=0.5)


def test_non_finite_value_is_none_for_that_sample_only(plugin):
    res = score([plugin.nan_reward], None, ["p"] * 3, ["a", "nan", "c"])
    assert res.total == [1.0, None, 1.0]
    assert res.failures["nan_reward"] == [SampleFailure(1, "invalid", "ValueError: reward 'nan_reward' returned non-finite value nan")]


def test_a_reward_that_fails_everywhere_is_not_retried_forever(plugin, tmp_path):
    counter = tmp_path / "calls.txt"
    n = 40
    res = score(
        [plugin.count_calls_reward], None, ["p"] * n, ["boom"] * n, columns={"counter_path": [str(counter)] * n}, num_workers=2
    )
    assert res.total == [None] * n
    assert res.errors["count_calls_reward"] == "RuntimeError: boom"  # one message for a systematic failure
    calls = counter.read_text().split()
    assert calls[0] == str(n)  # the batch call
    assert 4 <= len(calls) - 1 < 10  # a few single-sample retries, then it gives up
    assert sum(f.kind == "cancelled" for f in res.failures["count_calls_reward"]) == n - (len(calls) - 1)


def test_an_always_hanging_reward_costs_a_bounded_time(plugin, monkeypatch):
    killed = killed_workers(monkeypatch)
    res = score([plugin.always_hangs, "arithmetic_format"], None, ["047+385="] * 16, ["0432"] * 16, timeout_s=0.5, num_workers=2)
    assert res.per_fn["always_hangs"] == [None] * 16
    assert res.total == [1.0] * 16  # the other reward still scores every sample
    # Bounded by counts: the batch call and the first few retries (max(4, workers) of them, plus the one
    # in flight beside the fourth) time out; the others are cancelled, not 16 timeouts in a row.
    kinds = [(f.index >= 0, f.kind) for f in res.failures["always_hangs"]]
    retried = kinds.count((True, "timeout"))
    assert kinds[0] == (False, "timeout") and 4 <= retried <= 5
    assert kinds.count((True, "cancelled")) == 16 - retried
    assert len(killed) == 1 + retried and all(gone(pid) for pid in killed)  # every hung call's worker


def test_unknown_reward_is_recorded_not_raised():
    res = score(["no_such_reward", "arithmetic"], None, ["047+385="], ["0432"])
    assert res.total == [1.0]
    assert "unknown reward 'no_such_reward'" in res.errors["no_such_reward"]
    assert res.num_failed == {"no_such_reward": 1}
    with pytest.raises(RuntimeError, match="no_such_reward"):
        score(["no_such_reward"], None, ["p"], ["c"], fail_fast=True)


def test_in_process_marker_keeps_a_reward_in_this_process():
    seen = []

    @in_process
    def local(prompts, completions, **columns):
        seen.append(threading.current_thread().name)
        return [1.0] * len(completions)

    assert score([local], None, ["p"], ["c"]).total == [1.0]
    assert seen and seen[0].startswith("reward-call")


def test_workers_survive_a_crash(plugin):
    # A plugin that kills its own worker process: that sample fails, the pool recovers.
    res = score([plugin.crashing_reward], None, ["p"] * 3, ["a", "crash", "c"], timeout_s=5.0)
    assert res.total == [1.0, None, 1.0]
    assert [(f.index, f.kind) for f in res.failures["crashing_reward"]] == [(-1, "crash"), (1, "crash")]
    assert score(["tests.reward_plugin_example:length_reward"], None, ["p"], ["abc"]).total == [3.0]


# --- step rewards -----------------------------------------------------------------------


def test_step_reward_validation_and_helpers():
    text = "a=1\n\nb\n\nc=3"
    assert split_steps(text) == (5, 8, 11)
    r = StepReward.from_text(text, [1, 0, 1])
    assert r.values == (1.0, 0.0, 1.0) and r.total == 2.0
    assert r.chunks(text) == ["a=1\n\n", "b\n\n", "c=3"]
    with pytest.raises(ValueError, match="3 chunks"):
        StepReward.from_text(text, [1.0])
    with pytest.raises(ValueError, match="increasing"):
        StepReward((1.0, 2.0), (5, 5))
    with pytest.raises(ValueError, match="finite"):
        StepReward((float("inf"),), (1,))
    merged = merge_steps([StepReward((1.0, 2.0), (3, 6)), StepReward((10.0,), (6,))])
    assert merged == StepReward((1.0, 12.0), (3, 6))


def test_score_passes_step_rewards_through(plugin):
    completions = ["x=1\n\nthen\n\ny=2", "no steps here", ""]
    res = score(
        [plugin.paragraph_reward, "tests.reward_plugin_example:length_reward"], [2.0, 0.1], ["p"] * 3, completions
    )
    steps = res.per_fn_steps["paragraph_reward"]
    assert steps[0] == StepReward((1.0, 0.0, 1.0), (5, 11, 14))
    assert steps[1] == StepReward((0.0,), (13,))
    assert steps[2] is None
    assert res.per_fn["paragraph_reward"] == [2.0, 0.0, None]  # the scalar view: the sum of the steps
    assert "length_reward" not in res.per_fn_steps
    # Weighted and merged per sample; outcome (scalar rewards) + steps == total.
    assert res.steps[0] == StepReward((2.0, 0.0, 2.0), (5, 11, 14))
    assert res.outcome == pytest.approx([1.4, 1.3, 0.0])
    assert res.total == pytest.approx([5.4, 1.3, 0.0])
    for i in range(3):
        step_sum = res.steps[i].total if res.steps[i] else 0.0
        assert res.total[i] == pytest.approx(res.outcome[i] + step_sum)


def test_step_reward_past_the_end_or_a_bare_list_is_invalid():
    def bad(prompts, completions, **columns):
        return [StepReward((1.0,), (100,)), [1.0, 2.0], 0.5]

    res = score([bad], None, ["p"] * 3, ["short", "a\n\nb", "c"])
    assert res.total == [None, None, 0.5]
    messages = {f.index: f.message for f in res.failures["bad"]}
    assert "ending at 100" in messages[0] and "StepReward" in messages[1]


def test_pool_function_bytes_refuses_what_a_worker_cannot_load(plugin):
    assert rpool.function_bytes(plugin.length_reward) is not None
    assert rpool.function_bytes(lambda *a: 0) is None

    def local(*a):
        return 0

    assert rpool.function_bytes(local) is None


def test_score_result_pickles_and_unpacks():
    import pickle

    res = score(["arithmetic"], None, ["047+385="], ["0432"])
    again = pickle.loads(pickle.dumps(res))  # e.g. returned from a Ray task
    total, per_fn, errors = again
    assert (total, per_fn, errors) == ([1.0], {"arithmetic": [1.0]}, {})
    assert again.outcome == [1.0] and again.steps == [None] and again.num_failed == {}
