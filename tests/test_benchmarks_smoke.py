"""The ablation and learner benchmarks run end to end with tiny settings (no timing asserted)."""

import json
import os
import subprocess
import sys

import pytest

from .conftest import ROOT


def _run(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    res = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res.stdout


def test_ablation_smoke(tmp_path):
    out = tmp_path / "ablation.json"
    stdout = _run(
        [
            "benchmarks/ablation.py", "--methods", "trace,one_step", "--steps", "1", "--heldout", "8",
            "--set", "rollout.prompts_per_step=2", "--set", "rollout.samples_per_prompt=2",
            "--out-dir", str(tmp_path / "runs"), "--json", str(out), "--plot", str(tmp_path / "rewards.png"),
        ],
        tmp_path,
    )
    res = json.loads(out.read_text())
    assert set(res) == {"trace", "one_step"}
    for r in res.values():
        assert {"accuracy_before", "accuracy_after", "wall_seconds", "forward_passes_per_update"} <= set(r)
        assert r["steps"] == 1 and 0.0 <= r["accuracy_after"] <= 1.0
    assert res["trace"]["accuracy_before"] == res["one_step"]["accuracy_before"]  # same greedy eval of the same base
    assert res["trace"]["forward_passes_per_update"] == 4 and res["one_step"]["forward_passes_per_update"] == 1
    assert (tmp_path / "rewards.png").stat().st_size > 0 and (tmp_path / "runs" / "trace" / "metrics.jsonl").exists()
    assert "TraceRL s=1" in stdout and "diffu-GRPO" in stdout


def test_learner_benchmark_smoke(tmp_path):
    out = tmp_path / "learner.json"
    _run(["benchmarks/learner.py", "--prompts", "2", "--samples", "2", "--long-tokens", "8", "--repeats", "1", "--threads", "2", "--json", str(out)], tmp_path)
    res = json.loads(out.read_text())
    assert len(res) == 2
    for setting in res.values():
        methods = setting["methods"]
        assert methods["AR (causal, 1 pass)"]["ratio_vs_ar"] == 1.0
        assert methods["trace s=1"]["forward_passes_per_estimate"] == 4 and methods["trace s=4"]["forward_passes_per_estimate"] == 1
        assert all(m["tokens_per_s"] > 0 for m in methods.values())


def test_memory_benchmark_micro_batches_and_checkpointing_cut_saved_activations(tmp_path):
    out = tmp_path / "memory.json"
    _run(["benchmarks/memory.py", "--prompts", "2", "--samples", "4", "--long-tokens", "16", "--json", str(out)], tmp_path)
    res = json.loads(out.read_text())
    # Byte counts, not timings: deterministic. Half the samples per forward -> about half the
    # activations (at this tiny size the weights autograd saves are a floor of ~0.1x).
    assert 0.4 < res["micro_batches=2"]["memory_ratio"] < 0.6
    assert 0.15 < res["micro_batches=4"]["memory_ratio"] < 0.45
    assert res["micro_batches=4"]["saved_bytes"] < 0.8 * res["micro_batches=2"]["saved_bytes"]
    # one backward after the 4 passes (block 4, 4 steps) holds ~4 passes at once, not one
    assert res["one backward (backward_per_pass off)"]["memory_ratio"] > 2.5
    assert res["gradient_checkpointing"]["memory_ratio"] < 0.3
    assert res["checkpointing + micro_batches=4"]["saved_bytes"] < res["gradient_checkpointing"]["saved_bytes"]


def test_scaling_sync_only_smoke(tmp_path):
    out = tmp_path / "scaling.json"
    stdout = _run(["benchmarks/scaling.py", "--sync-only", "--sync-layers", "1", "--repeats", "1", "--json", str(out)], tmp_path)
    res = json.loads(out.read_text())
    # One Qwen3 layer of the sync shape: q, o 1024x1024; k, v 512x1024; up, gate, down 3072x1024;
    # q/k norms 64 each, two layer norms, the final norm; the 82 x 1024 tied embedding.
    layer = 2 * 1024 * 1024 + 2 * 512 * 1024 + 3 * 3072 * 1024 + 2 * 64 + 2 * 1024
    assert res["sync_params"] == layer + 1024 + 82 * 1024
    assert res["sync_1m"]["params"] == 994944 and res["sync_speedup_vs_disk"] > 0
    assert res["sync_ms"]["memory"] > 0 and res["sync_ms"]["disk"] > 0 and res["sync_ms"]["copy_floor"] > 0
    assert "save_pretrained + from_pretrained" in stdout


def test_rollout_gpu_script_runs_on_a_tiny_shape(tmp_path):
    # The GPU script prepared for a lent device runs its whole path on CPU at a tiny shape.
    out = tmp_path / "gpu.json"
    stdout = _run(["benchmarks/rollout_gpu.py", "--tiny", "--json", str(out)], tmp_path)
    res = json.loads(out.read_text())
    assert set(res["tokens_per_s"]) == {"unmask static, 1 token/step", "unmask static, 2 tokens/step", "unmask static, 1 token/step, every position", "HF generate"}
    assert res["equal_forwards_vs_ar"] > 0 and res["masked_head_speedup"] > 0 and res["gen"] == 16 and "x HF generate" in stdout


@pytest.mark.slow  # ~1-4 min: every decoder, the LLaDA caches, the demo model's refill batch, compiling it
def test_rollout_benchmark_writes_every_figure(tmp_path):
    out = tmp_path / "rollout.json"
    _run(["benchmarks/rollout.py", "--gen-length", "8", "--batch", "2", "--heldout", "8", "--refill-prompts", "8", "--refill-rows", "2", "--demo-problems", "4",
          "--demo-batches", "3,8", "--head-vocab", "600", "--json", str(out), "--plot", str(tmp_path / "acc.png")], tmp_path)
    res = json.loads(out.read_text())
    assert res["identical_to_naive"] is True and res["refill"]["identical_tokens"] is True
    for key in ("speedup_vs_naive", "equal_forwards_vs_ar", "host_cost_vs_ar"):
        assert res[key] > 0
    assert res["refill"]["prompts"] == 8 and res["refill"]["refill_speedup"] > 0
    head = res["masked_head"]
    assert head["vocab"] == 600 and all(head[k]["identical_tokens"] and head[k]["speedup"] > 0 for k in ("static", "static:2"))
    assert {"static schedule=ascending", "adaptive factor=1.0", "prophet "} <= set(res["accuracy"])
    assert res["tokens_per_forward"]["cached static"] == 1.0
    assert set(res["demo"]["pairs"]) == {"560 steps", "1600 steps"} and res["demo"]["batches"] == [3, 8]
    for pair in res["demo"]["pairs"].values():
        for batch in ("3", "8"):
            point = pair["by_batch"][batch]
            assert point["ar"]["problems"] == 8 and set(point["decoders"]) >= {"static", "adaptive:1", "prophet"}
            assert point["decoders"]["static"]["nfe"] > point["decoders"]["static:2"]["nfe"]  # 4 vs 2 steps per block
    assert set(res["compile"]["by_batch"]) == {"3", "8"} and all(b["identical_tokens"] and b["speedup"] > 0 for b in res["compile"]["by_batch"].values())
    assert set(res["speedup_vs_ar_by_batch"]) == {"3", "8"} and res["speedup_vs_ar"] == res["speedup_vs_ar_by_batch"]["8"]

SHAPE = ["--vocab", "600", "--hidden", "32", "--layers", "1", "--gen", "12", "--prompt-len", "6", "--batch", "2", "--threads", "1"]


def test_learner_benchmark_at_a_model_shape_reports_ratios_to_ar(tmp_path):
    out = tmp_path / "shape.json"
    # --bf16: the autocast path the GPU run takes (learner.bf16 and the AR update alike)
    _run(["benchmarks/learner.py", *SHAPE, "--methods", "trace s=1,one_step,value", "--repeats", "1", "--bf16", "--json", str(out)], tmp_path)
    res = json.loads(out.read_text())
    assert res["shape"]["vocab"] == 600 and res["completion_tokens"] == 24
    assert set(res["methods"]) == {"AR (causal, 1 pass)", "trace s=1", "one_step", "value"}
    assert res["methods"]["AR (causal, 1 pass)"]["time_vs_ar"] == 1.0 == res["methods"]["AR (causal, 1 pass)"]["peak_vs_ar"]
    assert res["trace_time_vs_ar"] == res["methods"]["trace s=1"]["time_vs_ar"] > 0
    assert res["trace_peak_vs_ar"] == res["methods"]["trace s=1"]["peak_vs_ar"]
    # 4 passes x 32 packed tokens (18 clean + 14 noisy from column 4) vs 18 through the backbone; 12 head rows each
    head, backbone = 600 * 32, res["shape"]["params"] - 600 * 32
    want = (4 * 32 * backbone + 12 * head) / (18 * backbone + 12 * head)
    assert res["trace_time_floor_vs_ar"] == pytest.approx(want)
    assert all(m["peak_bytes"] >= 0 and m["tokens_per_s"] > 0 for m in res["methods"].values())


def test_memory_benchmark_at_a_model_shape_counts_saved_activations(tmp_path):
    out = tmp_path / "shape_memory.json"
    _run(["benchmarks/memory.py", *SHAPE, "--methods", "trace s=1,trace s=1 1 bwd,trace s=2", "--json", str(out)], tmp_path)
    res = json.loads(out.read_text())
    m = res["methods"]
    # byte counts are deterministic. With a backward per pass autograd holds one packed pass at a
    # time, whatever the shrink; with one backward it holds all 4 (block 4, one token per step).
    assert m["trace s=2"]["saved_bytes"] == pytest.approx(m["trace s=1"]["saved_bytes"], rel=0.05)
    assert m["trace s=1"]["saved_bytes"] < 0.4 * m["trace s=1 1 bwd"]["saved_bytes"]
    assert m["AR (causal, 1 pass)"]["saved_vs_ar"] == 1.0 and m["trace s=1"]["saved_vs_ar"] > 1.0
