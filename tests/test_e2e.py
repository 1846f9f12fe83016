"""End to end through Ray and the CLI: train, get killed, resume, and match an uninterrupted run
(on the built-in task and on a data file whose over-long prompts are dropped)."""

import functools
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from .conftest import ROOT

STEPS = 4
ARGS = [
    "--set", f"train.steps={STEPS}", "--set", "train.save_every=1", "--set", "eval.heldout_limit=24",
    "--set", "rollout.prompts_per_step=4", "--set", "rollout.samples_per_prompt=4", "--set", "eval.every=2",
    "--set", "wandb.mode=disabled",
]


CONFIGS = {"arithmetic": "configs/quickstart.yaml", "data_file": "tests/fixtures/data/sums.yaml"}


def _cli(run_dir, *extra, config="configs/quickstart.yaml"):
    return [sys.executable, "-m", "rl.cli", "train", config, "--output-dir", str(run_dir), *ARGS, *extra]


def final_weights(run_dir):
    return load_file(run_dir / "checkpoints" / f"step_{STEPS:06d}" / "model" / "model.safetensors")


# The data-file run (prompts dropped, a file's rows) is in the default stage; the built-in task's
# run, the same path on other rows, only in the slow stage (one kill-resume pair costs ~1-2 min).
@pytest.mark.parametrize("source", [pytest.param(s, marks=pytest.mark.slow) if s == "arithmetic" else s for s in CONFIGS])
def test_train_kill_resume_matches_uninterrupted_run(tmp_path, source):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli = functools.partial(_cli, config=CONFIGS[source])
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cli(killed), cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = killed / "checkpoints" / "step_000002" / "trainer_state.json"
    deadline = time.time() + 600
    while not marker.exists():
        assert proc.poll() is None, "training died before its second checkpoint"
        assert time.time() < deadline, "no checkpoint within 600 s"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9 the driver and its Ray actors
    proc.wait()

    res = subprocess.run(cli(killed, "--resume"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stdout
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["steps"] == STEPS and 0.0 <= summary["accuracy_after"] <= 1.0
    records = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "loss/policy" in r]
    assert train_steps == list(range(1, STEPS + 1)), "each RL step logged exactly once across the kill"
    assert {"reward/mean", "accuracy/train", "kl", "tokens_per_s", "timing_s/update", "logp_mismatch", "rollout/response_length"} <= set(records[-2])
    assert max(r["logp_mismatch"] for r in records if "logp_mismatch" in r) < 1e-4
    assert (killed / "curves.png").stat().st_size > 10_000 and (killed / "config.yaml").exists()
    assert "\n  loss_norm: pass  # trace preset: Gen-Verse/dLLM-RL " in (killed / "config.yaml").read_text()  # each preset with its source
    state = json.loads((killed / "checkpoints" / f"step_{STEPS:06d}" / "trainer_state.json").read_text())
    name = "arithmetic" if source == "arithmetic" else "sums"
    assert state["data_cursor"][name]["draws"] == STEPS * 4  # 4 prompts per step, all from the one source
    if source == "data_file":  # every 20th prompt of the file is over max_prompt_tokens: dropped before any rollout
        data = json.loads((killed / "data.json").read_text())["sums"]
        assert data["dropped_train"] == 6 and data["train_rows"] == 114 and data["heldout_scored"] == 24
        assert records[-2]["data/sums/dropped"] == 6.0 and 0.0 <= records[-1]["accuracy/sums/heldout"] <= 1.0
        assert state["data_cursor"]["sums"]["position"] == STEPS * 4 and summary["sources"]["sums"]["heldout_size"] == 24

    straight = tmp_path / "straight"  # uninterrupted: the same prompts in the same order give the same weights
    res = subprocess.run(cli(straight), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = final_weights(killed), final_weights(straight)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), f"{name} differs after resume"
    base = load_file(ROOT / "examples" / "checkpoints" / "arith3-base" / "model.safetensors")
    assert any(not torch.equal(a[n], base[n]) for n in a), "training changed nothing"


def test_sigterm_finishes_the_step_and_checkpoints(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = tmp_path / "run"
    args = [a if a != f"train.steps={STEPS}" else "train.steps=50" for a in ARGS]
    args = [a if a != "train.save_every=1" else "train.save_every=100" for a in args]
    cmd = [sys.executable, "-m", "rl.cli", "train", "configs/quickstart.yaml", "--output-dir", str(run), *args]  # noqa: E501
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 600
    while not (metrics.exists() and '"loss/policy"' in metrics.read_text()):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)  # the whole group, as a scheduler's kill would
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, out[-2000:]
    ckpts = sorted((run / "checkpoints").iterdir())
    assert len(ckpts) == 1 and (ckpts[0] / "trainer_state.json").exists()
    assert "stopped by signal" in out and "--resume" in out


def test_a_driver_killed_alone_leaves_no_ray_processes_once_its_successor_starts(tmp_path):
    # kill -9 of the driver alone (not its process group, as a scheduler or an OOM killer does it):
    # Ray's GCS, raylet and workers outlive it. The next run in the same directory ends them first.
    from rl.cluster import SESSION_FILE, _alive

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = tmp_path / "run"
    small = ["--set", "rollout.prompts_per_step=2", "--set", "rollout.samples_per_prompt=2", "--set", "eval.heldout_limit=4",
             "--set", "wandb.mode=disabled", "--set", "eval.every=0"]  # fmt: skip
    cmd = [sys.executable, "-m", "rl.cli", "train", "configs/quickstart.yaml", "--output-dir", str(run), *small]
    proc = subprocess.Popen([*cmd, "--set", "train.steps=50"], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    recorded = []
    try:
        deadline = time.time() + 300
        while not (run / "metrics.jsonl").exists():  # Ray up, its processes recorded, the run under way
            assert proc.poll() is None and time.time() < deadline, "the run did not start"
            time.sleep(0.2)
        recorded = json.loads((run / SESSION_FILE).read_text())["processes"]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(2)
        left = [pid for pid, started in recorded if _alive(pid, started)]
        assert left, "Ray ended its own processes: nothing for the successor to do"
        res = subprocess.run([*cmd, "--set", "train.steps=1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        assert "Ray process(es) left by a killed run" in res.stdout
        assert [pid for pid, started in recorded if _alive(pid, started)] == []
    finally:
        for pid, started in recorded:
            p = _alive(pid, started)
            if p is not None:
                p.kill()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
