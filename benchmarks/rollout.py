"""Rollout speed: KV-cached block decoding vs. full recompute vs. autoregressive generate().

Everything runs in one process on the same tiny model (the quickstart base checkpoint),
with a fixed seed and a warm-up, so the ratios are comparable even on a noisy machine.

    python benchmarks/rollout.py [--gen-length 256] [--batch 8] [--json out.json] [--plot out.png]

Prints a table (NFE, tokens per forward, tokens/s, peak memory per strategy) and the
accuracy-vs-NFE trade-off of the strategies on the held-out arithmetic task.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rl.evaluate import evaluate_task  # noqa: E402
from rl.tasks import ArithmeticTask  # noqa: E402
from rollout import SamplingParams, generate, load_model  # noqa: E402
from rollout.models import build_tiny_lm  # noqa: E402

BASE = Path(__file__).resolve().parents[1] / "examples" / "checkpoints" / "arith3-base"


class PeakRSS:
    """Peak resident memory above the starting point while the block runs (sampled every 2 ms)."""

    def __enter__(self):
        self.proc, self.start, self.peak, self.run = psutil.Process(), psutil.Process().memory_info().rss, 0, True
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while self.run:
            self.peak = max(self.peak, self.proc.memory_info().rss - self.start)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.run = False
        self.thread.join()


def timed(fn, repeats=1):
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gen-length", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--heldout", type=int, default=500, help="held-out problems for accuracy vs NFE")
    ap.add_argument("--ar-checkpoint", type=Path, help="an AR baseline (unmask sft --set objective=ar) to score on the task")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path, default=Path("benchmarks/rollout_accuracy_vs_nfe.png"))
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)

    lm = load_model(BASE)
    # RoPE extrapolates; raise the nominal limit so generate() does not warn past 256 positions.
    lm.model.config.max_position_embeddings = max(lm.model.config.max_position_embeddings, 1024)
    task = ArithmeticTask(digits=3)
    rows = task.train_rows(args.batch, seed=123, step=0)
    prompts = [lm.tokenizer(r["prompt"])["input_ids"] for r in rows]
    L = args.gen_length

    def run(**kw):
        params = SamplingParams(max_new_tokens=L, temperature=0.0, stop_at_eos=False, **kw)
        with PeakRSS() as mem:
            trajs, secs = timed(lambda: generate(lm, prompts, params))
        toks = sum(len(t.completion_ids) for t in trajs)
        nfe = sum(t.nfe for t in trajs) / len(trajs)
        return {"trajs": trajs, "tokens_per_s": toks / secs, "nfe": nfe, "tokens_per_forward": toks / len(trajs) / nfe,
                "seconds": secs, "peak_mb": mem.peak / 2**20}

    results = {
        "naive static (full recompute)": run(kv_cache=False),
        "cached static": run(),
        f"cached threshold {args.threshold}": run(strategy="threshold", threshold=args.threshold),
        "cached threshold 0.7": run(strategy="threshold", threshold=0.7),
    }

    # Autoregressive baseline: HF generate() with its KV cache on the same backbone.
    ids = torch.tensor(prompts)
    hf = lambda: lm.model.generate(ids, max_new_tokens=L, min_new_tokens=L, do_sample=False, pad_token_id=lm.pad_id)  # noqa: E731
    with PeakRSS() as mem:
        _, secs = timed(hf)
    results["HF generate (autoregressive)"] = {"tokens_per_s": args.batch * L / secs, "nfe": L, "tokens_per_forward": 1.0, "seconds": secs, "peak_mb": mem.peak / 2**20}

    # Full-attention family (LLaDA layout): prefix / dual cache vs full recompute, on a tiny
    # random Llama-architecture model of the same size (speed only; the caches are approximate).
    llada = build_tiny_lm(lm.tokenizer, family="llada", max_positions=1024)
    full_kw = dict(max_new_tokens=L, block_length=32, temperature=0.0, strategy="threshold", threshold=args.threshold)
    for name, extra in (("LLaDA naive (full recompute)", {"kv_cache": False}), ("LLaDA prefix cache", {}), ("LLaDA dual cache", {"dual_cache": True})):
        params = SamplingParams(**full_kw, **extra)
        with PeakRSS() as mem:
            trajs, secs = timed(lambda params=params: generate(llada, prompts, params))
        nfe = sum(t.nfe for t in trajs) / len(trajs)
        results[name] = {"tokens_per_s": args.batch * L / secs, "nfe": nfe, "tokens_per_forward": L / nfe, "seconds": secs, "peak_mb": mem.peak / 2**20}

    # Token identity, static decoding at T=0: float64 so 1e-7 near-ties cannot flip a token.
    lm.model.double()
    p64 = dict(max_new_tokens=L, temperature=0.0, stop_at_eos=False)
    a = generate(lm, prompts, SamplingParams(**p64))
    b = generate(lm, prompts, SamplingParams(**p64, kv_cache=False))
    identical = all(x.completion_ids == y.completion_ids and x.step_map == y.step_map for x, y in zip(a, b))
    lm.model.float()

    base = results["naive static (full recompute)"]["tokens_per_s"]
    ar = results["HF generate (autoregressive)"]["tokens_per_s"]
    print(f"\nrollout speed: {args.batch} prompts x {L} tokens, block size {lm.block_size}, {sum(p.numel() for p in lm.model.parameters())/1e6:.2f}M params, {torch.get_num_threads()} threads")
    print(f"{'strategy':34s} {'NFE':>6s} {'tok/fwd':>8s} {'tok/s':>9s} {'vs naive':>9s} {'vs AR':>7s} {'peak MB':>8s}")
    for name, r in results.items():
        print(f"{name:34s} {r['nfe']:6.1f} {r['tokens_per_forward']:8.2f} {r['tokens_per_s']:9.0f} {r['tokens_per_s']/base:8.1f}x {r['tokens_per_s']/ar:6.2f}x {r['peak_mb']:8.1f}")
    fast = results[f"cached threshold {args.threshold}"]["tokens_per_s"]
    print(f"identical tokens and step maps, cached vs naive static at T=0 (float64): {identical}")

    # Accuracy vs NFE on the held-out arithmetic task.
    heldout = task.heldout_rows(args.heldout)
    sweep = [("static", {"steps_per_block": s}) for s in (4, 2, 1)] + [("threshold", {"threshold": t}) for t in (0.95, 0.9, 0.7, 0.5)]
    curve = []
    print(f"\naccuracy vs NFE on {args.heldout} held-out 3-digit additions (greedy)")
    for strategy, kw in sweep:
        r = evaluate_task(lm, task, heldout, SamplingParams(max_new_tokens=task.max_new_tokens, strategy=strategy, temperature=0.0, **kw))
        label = f"{strategy} " + ", ".join(f"{k}={v}" for k, v in kw.items())
        curve.append({"strategy": label, "accuracy": r["accuracy"], "nfe": r["nfe_mean"], "tokens_per_s": r["tokens_per_s"]})
        print(f"  {label:32s} accuracy {r['accuracy']:.3f}  NFE {r['nfe_mean']:.2f}  {r['tokens_per_s']:.0f} tok/s")
    if args.ar_checkpoint:
        from rl.evaluate import load_policy

        r = evaluate_task(load_policy(args.ar_checkpoint), task, heldout, SamplingParams(max_new_tokens=task.max_new_tokens, temperature=0.0))
        curve.append({"strategy": "autoregressive (HF generate)", "accuracy": r["accuracy"], "nfe": r["nfe_mean"], "tokens_per_s": r["tokens_per_s"]})
        print(f"  {'autoregressive (HF generate)':32s} accuracy {r['accuracy']:.3f}  NFE {r['nfe_mean']:.2f}  {r['tokens_per_s']:.0f} tok/s")
    _plot(curve, args.plot)
    print(f"plot: {args.plot}")

    summary = {
        "speedup_vs_naive": fast / base,
        "speedup_vs_ar": fast / ar,
        "identical_to_naive": identical,
        "gen_length": L,
        "batch": args.batch,
        "strategies": {k: {m: v for m, v in r.items() if m != "trajs"} for k, r in results.items()},
        "accuracy_vs_nfe": curve,
    }
    print(f"\nspeedup_vs_naive {summary['speedup_vs_naive']:.1f}x, speedup_vs_ar {summary['speedup_vs_ar']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


def _plot(curve, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for kind, marker in (("static", "o"), ("threshold", "s"), ("autoregressive", "^")):
        pts = [c for c in curve if c["strategy"].startswith(kind)]
        ax.plot([c["nfe"] for c in pts], [c["accuracy"] for c in pts], marker=marker, label=kind)
        for c in pts:
            ax.annotate(c["strategy"].split(" ", 1)[-1], (c["nfe"], c["accuracy"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("forward passes per answer (NFE)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title("accuracy vs NFE, tiny block-diffusion LM")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
