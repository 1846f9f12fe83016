"""Every benchmarks/ script runs end to end with tiny settings (no timing asserted).

Speeds depend on the machine, so what is checked is what does not: the JSON's keys and sizes,
counts (forward passes, tokens, parameters) against hand counts, identical tokens between the
paths a script compares, and every ratio it reports against the raw timings in its own JSON.
benchmarks/shape.py is the model-shape mode of learner.py and memory.py (run below through them).
"""

import json
import os
import random
import re
import statistics
import subprocess
import sys
from fractions import Fraction

import pytest

from .conftest import ROOT


def _run(args, tmp_path, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    res = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res.stdout


@pytest.mark.slow  # two methods' Ray runs and held-out evals: ~30-60 s; the default stage keeps the other scripts' smokes
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


def _timings_agree(m: dict, repeats: int) -> None:
    """A method's reported seconds are the median of its raw timings, one per repeat."""
    assert len(m["all_seconds"]) == repeats
    assert m["seconds"] == pytest.approx(statistics.median(m["all_seconds"]), rel=1e-12)


# Forward passes per estimate, by hand, for the quickstart base (blocks of 4 decoded one token per
# step at T=1: 4 distinct steps per block, every block advancing together in TraceRL's packed pass).
LEARNER_PASSES = {
    "AR (causal, 1 pass)": 1, "trace s=1": 4, "trace s=2": 2, "trace s=4": 1, "one_step": 1,
    "coupled": 3,  # mask, complement, and DiffuCoder's fully masked pass (coupled_full_mask_pass default)
    "mc_elbo": 4,  # algorithm.mc_samples=4 in the script
    "block_random": 1,
}


@pytest.mark.slow  # every method's update on the base checkpoint: ~15-30 s; the default stage keeps the other scripts' smokes
def test_learner_benchmark_smoke(tmp_path):
    out = tmp_path / "learner.json"
    _run(["benchmarks/learner.py", "--prompts", "2", "--samples", "2", "--long-tokens", "8", "--repeats", "1", "--threads", "2", "--json", str(out)], tmp_path)
    res = json.loads(out.read_text())
    task, long = "task length (5 new tokens, stop at EOS)", "long (8 new tokens, no EOS stop)"
    assert set(res) == {task, long}
    # 2 prompts x 2 samples; a 3-digit prompt is 8 tokens (2 blocks): 8 new tokens = 2 more blocks
    # each; 5 new tokens round up to the same block boundary, and EOS may end a sample a block early.
    assert res[long]["completions"] == res[task]["completions"] == 4
    assert res[long]["completion_tokens"] == 4 * 8 and res[long]["max_completion_len"] == 8
    assert res[task]["max_completion_len"] in (4, 8) and res[task]["completion_tokens"] % 4 == 0 and 16 <= res[task]["completion_tokens"] <= 32
    for setting in res.values():
        methods = setting["methods"]
        assert set(methods) == set(LEARNER_PASSES)
        ar = methods["AR (causal, 1 pass)"]
        for label, m in methods.items():
            assert m["forward_passes_per_estimate"] == LEARNER_PASSES[label], label
            assert m["forward_passes_per_update"] == 2 * LEARNER_PASSES[label]  # old + current policy
            _timings_agree(m, repeats=1)
            assert m["tokens_per_s"] == pytest.approx(setting["completion_tokens"] / m["seconds"], rel=1e-9)
            assert m["ratio_vs_ar"] == pytest.approx(ar["seconds"] / m["seconds"], rel=1e-9)


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


@pytest.mark.slow  # a 1024-wide layer saved, loaded and sent through Ray: ~25-50 s; the default stage keeps the other scripts' smokes
def test_scaling_sync_only_smoke(tmp_path):
    out = tmp_path / "scaling.json"
    stdout = _run(["benchmarks/scaling.py", "--sync-only", "--sync-layers", "1", "--repeats", "1", "--json", str(out)], tmp_path)
    res = json.loads(out.read_text())
    # One Qwen3 layer of the sync shape: q, o 1024x1024; k, v 512x1024; up, gate, down 3072x1024;
    # q/k norms 64 each, two layer norms, the final norm; the 82 x 1024 tied embedding.
    layer = 2 * 1024 * 1024 + 2 * 512 * 1024 + 3 * 3072 * 1024 + 2 * 64 + 2 * 1024
    assert res["sync_params"] == layer + 1024 + 82 * 1024
    assert res["sync_1m"]["params"] == 994944
    assert set(res["sync_ms"]) == {"memory", "disk", "copy_floor"} and res["sync_device"] == "CPU learner and worker, rollout.dtype auto"
    # the speedups are disk time / in-memory time, from the same run's own figures
    assert res["sync_speedup_vs_disk"] == pytest.approx(res["sync_ms"]["disk"] / res["sync_ms"]["memory"], rel=1e-9)
    assert res["sync_1m"]["speedup_vs_disk"] == pytest.approx(res["sync_1m"]["ms"]["disk"] / res["sync_1m"]["ms"]["memory"], rel=1e-9)
    assert "save_pretrained + from_pretrained" in stdout


def test_rollout_gpu_script_runs_on_a_tiny_shape(tmp_path):
    # The GPU script prepared for a lent device runs its whole path on CPU at a tiny shape.
    out = tmp_path / "gpu.json"
    stdout = _run(["benchmarks/rollout_gpu.py", "--tiny", "--json", str(out)], tmp_path)
    res = json.loads(out.read_text())
    tps = res["tokens_per_s"]
    one, every = "unmask static, 1 token/step", "unmask static, 1 token/step, every position"
    assert set(tps) == {one, "unmask static, 2 tokens/step", every, "HF generate"}
    assert res["device"] == "cpu" and (res["batch"], res["gen"], res["vocab"], res["dtype"]) == (2, 16, 512, "fp32") and "x HF generate" in stdout
    # Qwen3, hidden 64, 2 layers, 4 query / 2 kv heads of 16, MLP 128, 512 ids, tied embedding:
    # per layer q, o 64x64; k, v 32x64; gate, up, down 64x128; two norms of 64, q/k norms of 16.
    layer = 2 * 64 * 64 + 2 * 32 * 64 + 3 * 64 * 128 + 2 * 64 + 2 * 16
    assert res["params_m"] == pytest.approx((512 * 64 + 2 * layer + 64) / 1e6, rel=1e-12)
    # ratios of the script's own tokens/s figures
    assert res["equal_forwards_vs_ar"] == pytest.approx(tps[one] / tps["HF generate"], rel=1e-9)
    assert res["masked_head_speedup"] == pytest.approx(tps[one] / tps[every], rel=1e-9)


@pytest.mark.slow  # ~1-4 min: every decoder, the LLaDA caches, the demo model's refill batch, compiling it
def test_rollout_benchmark_writes_every_figure(tmp_path):
    out = tmp_path / "rollout.json"
    _run(["benchmarks/rollout.py", "--gen-length", "8", "--batch", "2", "--heldout", "8", "--refill-prompts", "8", "--refill-rows", "2", "--demo-problems", "4",
          "--demo-batches", "3,8", "--head-vocab", "600", "--json", str(out), "--plot", str(tmp_path / "acc.png")], tmp_path, timeout=1200)
    res = json.loads(out.read_text())
    assert res["identical_to_naive"] is True and res["refill"]["identical_tokens"] is True
    tps = {k: r["tokens_per_s"] for k, r in res["strategies"].items()}
    # every ratio from the run's own figures (threshold 0.9 is the script's default)
    assert res["speedup_vs_naive"] == pytest.approx(tps["cached threshold 0.9"] / tps["naive static (full recompute)"], rel=1e-9)
    assert res["equal_forwards_vs_ar"] == pytest.approx(tps["cached static"] / tps["HF generate (autoregressive)"], rel=1e-9)
    assert res["host_cost_vs_ar"] == pytest.approx(res["host_ms_per_forward"]["cached_static"] / res["host_ms_per_forward"]["hf_generate"], rel=1e-9)
    # 2 prompts x 8 tokens: tokens/s is 16 / seconds; static and the naive recompute take one step per token
    for name, r in res["strategies"].items():
        assert r["tokens_per_s"] == pytest.approx(2 * 8 / r["seconds"], rel=1e-9), name
        assert r["tokens_per_forward"] == pytest.approx(8 / r["nfe"], rel=1e-9), name
    assert res["strategies"]["cached static"]["nfe"] == res["strategies"]["naive static (full recompute)"]["nfe"] == 8
    refill = res["refill"]
    assert refill["prompts"] == 8 and refill["rows"] == 2
    # the same answer tokens both ways, so the speedup is the ratio of the two rates
    assert refill["refill_speedup"] == pytest.approx(refill["tokens_per_s_refill"] / refill["tokens_per_s_fixed"], rel=1e-9)
    head = res["masked_head"]
    assert head["vocab"] == 600 and all(head[k]["identical_tokens"] for k in ("static", "static:2"))
    for k in ("static", "static:2"):
        assert head[k]["speedup"] == pytest.approx(head[k]["tokens_per_s_masked_only"] / head[k]["tokens_per_s_every_position"], rel=1e-9)
    assert {"static schedule=ascending", "adaptive factor=1.0", "prophet "} <= set(res["accuracy"])
    assert res["tokens_per_forward"]["cached static"] == 1.0
    assert set(res["demo"]["pairs"]) == {"560 steps", "1600 steps"} and res["demo"]["batches"] == [3, 8]
    for pair in res["demo"]["pairs"].values():
        for batch in ("3", "8"):
            point = pair["by_batch"][batch]
            assert point["ar"]["problems"] == 8 and set(point["decoders"]) >= {"static", "adaptive:1", "prophet"}
            assert point["decoders"]["static"]["nfe"] > point["decoders"]["static:2"]["nfe"]  # 4 vs 2 steps per block
    assert set(res["compile"]["by_batch"]) == {"3", "8"}
    for b in res["compile"]["by_batch"].values():
        assert b["identical_tokens"] is True and b["speedup"] == pytest.approx(b["eager_s"] / b["compiled_s"], rel=1e-9)
    assert set(res["speedup_vs_ar_by_batch"]) == {"3", "8"} and res["speedup_vs_ar"] == res["speedup_vs_ar_by_batch"]["8"]
    # by batch: the fastest decoder at AR's accuracy or better, over the pairs, against AR's rate
    for batch in ("3", "8"):
        found = []
        for pair in res["demo"]["pairs"].values():
            point = pair["by_batch"][batch]
            ok = [d["answer_tokens_per_s"] for d in point["decoders"].values() if d["accuracy"] >= point["ar"]["accuracy"]]
            if ok:
                found.append(max(ok) / point["ar"]["answer_tokens_per_s"])
        want = max(found) if found else None
        assert res["speedup_vs_ar_by_batch"][batch] == (None if want is None else pytest.approx(want, rel=1e-9))

SHAPE = ["--vocab", "600", "--hidden", "32", "--layers", "1", "--gen", "12", "--prompt-len", "6", "--batch", "2", "--threads", "1"]


def test_learner_benchmark_at_a_model_shape_reports_ratios_to_ar(tmp_path):
    out = tmp_path / "shape.json"
    # --bf16: the autocast path the GPU run takes (learner.bf16 and the AR update alike)
    _run(["benchmarks/learner.py", *SHAPE, "--methods", "trace s=1,one_step,value", "--repeats", "1", "--bf16", "--json", str(out)], tmp_path)
    res = json.loads(out.read_text())
    assert res["shape"]["vocab"] == 600 and res["completion_tokens"] == 24
    assert set(res["methods"]) == {"AR (causal, 1 pass)", "trace s=1", "one_step", "value"}
    assert res["methods"]["AR (causal, 1 pass)"]["time_vs_ar"] == 1.0 == res["methods"]["AR (causal, 1 pass)"]["peak_vs_ar"]
    assert res["trace_time_vs_ar"] == res["methods"]["trace s=1"]["time_vs_ar"]
    assert res["trace_peak_vs_ar"] == res["methods"]["trace s=1"]["peak_vs_ar"]
    ar = res["methods"]["AR (causal, 1 pass)"]
    for label, m in res["methods"].items():  # each ratio from the run's own seconds and bytes; 2 x 12 tokens
        _timings_agree(m, repeats=1)
        assert m["tokens_per_s"] == pytest.approx(24 / m["seconds"], rel=1e-9), label
        assert m["time_vs_ar"] == pytest.approx(m["seconds"] / ar["seconds"], rel=1e-9), label
        assert m["peak_vs_ar"] == pytest.approx(m["peak_bytes"] / ar["peak_bytes"], rel=1e-9), label
    # 4 passes x 32 packed tokens (18 clean + 14 noisy from column 4) vs 18 through the backbone; 12 head rows each
    head, backbone = 600 * 32, res["shape"]["params"] - 600 * 32
    want = (4 * 32 * backbone + 12 * head) / (18 * backbone + 12 * head)
    assert res["trace_time_floor_vs_ar"] == pytest.approx(want)


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
    for label, r in m.items():
        assert r["saved_vs_ar"] == pytest.approx(r["saved_bytes"] / m["AR (causal, 1 pass)"]["saved_bytes"], rel=1e-9), label


def test_families_benchmark_separates_exact_from_approximate_caches(tmp_path):
    out = tmp_path / "families.json"
    stdout = _run(["benchmarks/families.py", "--samples", "2", "--json", str(out)], tmp_path)
    res = json.loads(out.read_text())
    exact = ["block/kv_cache", "block/recompute", "llada/recompute", "dream/recompute", "llada2/kv_cache", "llada2/recompute",
             "sdar_moe/kv_cache", "sdar_moe/recompute", "fast_dllm_v2/kv_cache", "fast_dllm_v2/recompute",
             "stable_diffcoder/kv_cache", "stable_diffcoder/recompute"]  # fmt: skip
    approximate = ["llada/prefix cache", "llada/dual cache", "dream/prefix cache", "dream/dual cache"]
    assert set(res) == set(exact + approximate) and all(set(v) == {"mean", "max"} for v in res.values())
    # The block cache is exact and a recompute is the policy itself: the learner's replay gives the
    # rollout's log-probs to fp32 rounding. The full-attention caches reuse keys computed while the
    # block was masked (Fast-dLLM): their log-probs are visibly not the policy's.
    for key in exact:
        assert 0.0 <= res[key]["mean"] <= res[key]["max"] < 1e-5, (key, res[key])
    for key in approximate:
        assert res[key]["mean"] > 1e-3, (key, res[key])
    assert stdout.count("logp_mismatch") == 16


def _number(text: str) -> Fraction:
    """The forms benchmarks/rewards.py writes answers in: 12, 2.25, \\frac{3}{4}, 61\\%."""
    m = re.fullmatch(r"\\frac\{(\d+)\}\{(\d+)\}", text)
    if m:
        return Fraction(int(m[1]), int(m[2]))
    return Fraction(text[:-2]) / 100 if text.endswith("\\%") else Fraction(text)


def test_rewards_benchmark_scores_its_samples_right(tmp_path):
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.rewards import PROBLEMS, code_samples, math_pairs
    finally:
        sys.path.remove(str(ROOT))
    out = tmp_path / "rewards.json"
    _run(["benchmarks/rewards.py", "--workers", "1", "--math-n", "40", "--code-n", "6", "--rounds", "1", "--per-round", "1",
          "--json", str(out)], tmp_path)
    res = json.loads(out.read_text())
    # The script's inputs (seed 0: math pairs, then code samples, from one generator), scored here by hand.
    rng = random.Random(0)
    pairs = math_pairs(40, rng)
    completions, tests = code_samples(6, rng)
    assert res["math"]["checks"] == 40 and res["math"]["accepted"] == sum(_number(p) == _number(g) for p, g in pairs)
    # A wrong program passes these of its three tests: add(a, b) = a - b none; rev(s) = s, fib(n) = n and
    # mode(xs) = xs[0] one each (rev(''), fib(1), mode([3])).
    bad_passes = {"add": 0, "rev": 1, "fib": 1, "mode": 1}
    want = []
    for c in completions:
        good, bad, _ = next(p for p in PROBLEMS if p[0] in c or p[1] in c)
        name = re.search(r"def (\w+)", good)[1]
        want.append(1.0 if good in c else bad_passes[name] / 3)
    assert res["code"]["programs"] == 6 and res["code"]["tests"] == 18
    assert res["code"]["mean_reward"] == pytest.approx(sum(want) / 6, abs=1e-12)
    # rates and ratios from the run's own timings
    assert res["math"]["per_s"] == pytest.approx(40 / res["math"]["seconds"], rel=1e-9) == res["math_checks_per_s"]
    assert res["code"]["per_s"] == pytest.approx(6 / res["code"]["seconds"], rel=1e-9) == res["code_programs_per_s"]
    backend = res["sandbox_backend"]
    assert backend == res["sandbox_info"]["backend"] and set(res["overhead"]) == ({"bwrap", "rlimit"} if backend == "bwrap" else {backend})
    for o in res["overhead"].values():
        assert o["ratio"] == pytest.approx(o["sandbox_ms"] / o["bare_ms"], rel=1e-9)
        assert o["cold_ratio"] == pytest.approx(o["cold_ms"] / o["bare_ms"], rel=1e-9)
    assert res["sandbox_overhead_ratio"] == res["overhead"][backend]["ratio"] and res["workers"] == 1
