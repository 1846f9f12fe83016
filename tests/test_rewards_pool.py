"""One worker pool (rewards/_pool.py) runs both math-verify checks and reward plugins."""

import importlib
import logging
import os
import threading
import time
from pathlib import Path

import pytest

import rewards._pool as rpool
import rewards.math as rmath
from rewards import math_reward, score

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def plugin(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    rpool.shutdown_workers()  # fresh workers: they see this sys.path and this test's stdout/stderr
    yield importlib.import_module("tests.reward_plugin_example")
    rpool.shutdown_workers()


def pids() -> set[int]:
    p = rpool.pool()
    with p.lock:
        return {w.proc.pid for w in p.idle}


def test_math_and_plugins_share_the_workers(plugin):
    got = math_reward(["q"] * 4, [r"\boxed{3}"] * 4, answer=["3", "4", "3", "4"], num_workers=2)
    assert got == [1.0, 0.0, 1.0, 0.0]
    math_pids = pids()
    assert len(math_pids) == 2
    # The plugin's batch call and the math check run at the same time, one warm worker each.
    res = score([plugin.length_reward, "math"], None, ["q"] * 2, [r"\boxed{3}", "xy"], columns={"answer": ["3", "3"]},
                num_workers=2)  # fmt: skip
    assert res.per_fn == {"length_reward": [9.0, 2.0], "math": [1.0, 0.0]} and res.errors == {}
    assert pids() == math_pids  # no second pool, no worker started
    assert rmath.verify_answers([("1", "1")] * 4, num_workers=2) == [1.0] * 4
    assert pids() == math_pids
    rmath.shutdown_workers()  # one function stops them all
    assert rpool.pool().size == 0


def test_fewer_workers_asked_keeps_the_warm_ones(plugin):
    rmath.verify_answers([("1", "1")] * 4, num_workers=2)
    before = pids()
    assert len(before) == 2
    rmath.verify_answers([("1", "1")] * 4, num_workers=1)  # uses one of them, stops none
    assert pids() == before


def test_math_runs_while_a_plugin_call_holds_a_worker(plugin):
    rmath.verify_answers([("1", "1")] * 2, num_workers=2)  # two warm workers with math-verify loaded
    warm = pids()
    task = rpool.Task("hanging_reward", rpool.function_bytes(plugin.hanging_reward), ["p"], ["hang"], {})
    out = []
    hung = threading.Thread(target=lambda: out.extend(rpool.pool().run([task], 6.0, 1)))
    hung.start()
    for _ in range(2000):  # until the plugin call has taken one of the two warm workers
        if len(pids()) == 1:
            break
        time.sleep(0.01)
    (free,) = pids()
    held = (warm - {free}).pop()
    assert rmath.verify_answers([("1", "1"), ("1", "2")], timeout_s=5.0, num_workers=1) == [1.0, 0.0]
    # The math checks ran on the free worker while the plugin call still held the other: it had
    # not returned (its 6 s limit had not passed), and no worker was started or killed for them.
    assert hung.is_alive() and out == [], "the math checks waited for the plugin call"
    assert pids() == {free}
    os.kill(held, 0)  # the held worker is still running the plugin call
    hung.join(30)
    assert [o.kind for o in out] == ["timeout"]
    # Past its limit, the plugin's worker was killed and replaced.
    with pytest.raises(ProcessLookupError):
        os.kill(held, 0)
    assert free in pids() and held not in pids()


def test_worker_prints_stay_off_the_callers_stdout(plugin, monkeypatch, capfd):
    monkeypatch.setattr(rmath, "_CHECK", plugin.chatty_check)
    assert rmath.verify_answers([("1", "1"), ("1", "2")], num_workers=1) == [1.0, 0.0]
    out, err = capfd.readouterr()
    assert "chatty_check" not in out
    assert "chatty_check: 1 vs 1" in err  # still visible, for debugging


def test_math_verify_timeout_warnings_silenced_in_workers(plugin, monkeypatch):
    monkeypatch.setattr(rmath, "_CHECK", plugin.warnings_silenced_check)
    assert rmath.verify_answers([("a", "b")] * 3, num_workers=2) == [1.0] * 3


def test_math_check_that_crashes_its_worker_scores_zero(plugin, monkeypatch, caplog):
    monkeypatch.setattr(rmath, "_CHECK", plugin.crashing_check)
    with caplog.at_level(logging.WARNING, logger="rewards.math"):
        got = rmath.verify_answers([("3", "3"), ("crash", "crash"), ("4", "4")], num_workers=1)
    assert got == [1.0, 0.0, 1.0]
    assert "worker died while checking sample 1" in caplog.text
    assert rmath.verify_answers([("5", "5")], num_workers=1) == [1.0]  # replaced, still serving


def test_math_check_that_cannot_be_imported_is_refused(monkeypatch):
    monkeypatch.setattr(rmath, "_CHECK", lambda pred, gold: True)
    with pytest.raises(ValueError, match="must be importable"):
        rmath.verify_answers([("1", "1")], num_workers=1)
    assert rmath.verify_answers([("1", "1")], num_workers=0) == [1.0]  # in process it is fine
