"""Rollout speed: KV-cached block decoding vs. full recompute vs. autoregressive generate().

Everything runs in one process on the same tiny model (the quickstart base checkpoint),
with a fixed seed and a warm-up, so the ratios are comparable even on a noisy machine.

    python benchmarks/rollout.py [--gen-length 256] [--batch 8] [--json out.json] [--plot out.png]
                                 [--demo-problems 100] [--demo-batches 8,64] [--demo-pairs "1600 steps"]
                                 [--head-vocab 151936]

Prints a table (NFE, tokens per forward, tokens/s, peak memory per strategy), the host time
per forward (wall time outside the backbone's forward, per forward) of cached static decoding
and of HF generate(), and the accuracy-vs-NFE trade-off of every decoder on the held-out
arithmetic task. It then scores every decoder of the demo's diffusion checkpoints against AR
models of the same shape, data and training budget (`examples/checkpoints/demo-ar*`, trained with
`unmask sft configs/sft_demo.yaml --set objective=ar`) on the demos' held-out math and code
problems (answers of up to 12 and 32 tokens), at each `--demo-batches` size: accuracy, NFE and
answer tokens/s (tokens up to the first EOS), and `speedup_vs_ar`, the fastest decoder at AR's
accuracy or better. At a real vocabulary (`--head-vocab`, a small random Qwen3-shaped model) it
measures what predicting only the masked positions of a block saves (`masked_head`). Two budgets: 560 steps (the RL demos' base, stopped early on purpose) and
1600 steps (both converged).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rl.evaluate import evaluate_task  # noqa: E402
from rl.tasks import ArithmeticTask  # noqa: E402
from rollout import SamplingParams, generate, load_model  # noqa: E402
from rollout.attention import SDPA_GQA  # noqa: E402
from rollout.models import build_tiny_lm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "examples" / "checkpoints" / "arith3-base"


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


class BackboneClock:
    """Time spent inside the backbone's forward (and how many forwards), via forward hooks.
    On CPU a forward is synchronous, so wall time minus this is host work around the model."""

    def __init__(self, module):
        self.seconds, self.calls, self._t0 = 0.0, 0, None
        self._hooks = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _pre(self, *_):
        self._t0 = time.perf_counter()

    def _post(self, *_):
        self.seconds += time.perf_counter() - self._t0
        self.calls += 1

    def close(self):
        for h in self._hooks:
            h.remove()


def host_ms_per_forward(fn, module) -> tuple[float, float]:
    """(host ms per forward, backbone ms per forward) of one call of `fn` (after a warm-up)."""
    fn()
    clock = BackboneClock(module)
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    clock.close()
    return (wall - clock.seconds) / clock.calls * 1e3, clock.seconds / clock.calls * 1e3


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
    ap.add_argument("--demo-problems", type=int, default=100, help="held-out problems per demo source (0: skip the demo comparison)")
    ap.add_argument("--demo-batches", type=_batch_sizes, default="8,64", help="problems decoded at once in the demo comparison, comma-separated")
    ap.add_argument("--demo-pairs", default=",".join(DEMO_PAIRS), help=f"which (diffusion, AR) budgets to compare, of: {', '.join(DEMO_PAIRS)}")
    ap.add_argument("--refill-prompts", type=int, default=64, help="prompts of the skewed-length batch (demo math + code)")
    ap.add_argument("--refill-rows", type=int, default=8, help="rows decoded at once, with and without refill")
    ap.add_argument("--head-vocab", type=int, default=151936, help="vocabulary of the LM-head figure (0: skip it)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="measure rollout.compile (eager vs torch.compile; ~1-2 min compiling)")
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
        "cached adaptive (factor 1)": run(strategy="adaptive", factor=1.0),
        "cached prophet": run(strategy="prophet"),
    }

    # Autoregressive baseline: HF generate() with its KV cache on the same backbone.
    ids = torch.tensor(prompts)

    def hf():  # stock transformers: its own "sdpa" attention, not the one DiffusionLM installs (rollout.attention)
        lm.model.set_attn_implementation("sdpa")
        try:
            return lm.model.generate(ids, max_new_tokens=L, min_new_tokens=L, do_sample=False, pad_token_id=lm.pad_id)
        finally:
            lm.model.set_attn_implementation(SDPA_GQA)

    with PeakRSS() as mem:
        _, secs = timed(hf)
    results["HF generate (autoregressive)"] = {"tokens_per_s": args.batch * L / secs, "nfe": L, "tokens_per_forward": 1.0, "seconds": secs, "peak_mb": mem.peak / 2**20}
    static_params = SamplingParams(max_new_tokens=L, temperature=0.0, stop_at_eos=False)
    host_static, fwd_static = host_ms_per_forward(lambda: generate(lm, prompts, static_params), lm.model.model)
    host_ar, fwd_ar = host_ms_per_forward(hf, lm.model.model)

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
    equal_forwards = results["cached static"]["tokens_per_s"] / ar
    print(f"one token per forward each (cached static vs HF generate): {equal_forwards:.2f}x tokens/s;\n"
          f"  host ms per forward {host_static:.2f} vs {host_ar:.2f} ({host_static / host_ar:.2f}x); backbone ms per forward {fwd_static:.2f} vs {fwd_ar:.2f}\n"
          f"  (a block step encodes its {lm.block_size} tokens, the first step of a block {2 * lm.block_size}: more work per forward than one AR token)")

    # Accuracy vs NFE on the held-out arithmetic task.
    heldout = task.heldout_rows(args.heldout)
    sweep = ([("static", {"steps_per_block": s}) for s in (4, 2, 1)] + [("static", {"schedule": "ascending"})]
             + [("threshold", {"threshold": t}) for t in (0.95, 0.9, 0.7, 0.5)]
             + [("adaptive", {"factor": f}) for f in (0.5, 1.0, 2.0)] + [("prophet", {}), ("prophet", {"prophet_gaps": (2.0, 1.0, 0.5)})])
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
    demo = None
    if args.demo_problems > 0:
        names = [n.strip() for n in args.demo_pairs.split(",") if n.strip()]
        unknown = [n for n in names if n not in DEMO_PAIRS]
        if unknown:
            ap.error(f"--demo-pairs: unknown {unknown}; choose from {list(DEMO_PAIRS)}")
        pairs = {n: tuple(ROOT / "examples" / "checkpoints" / d for d in DEMO_PAIRS[n]) for n in names}
        demo = demo_vs_ar(pairs, args.demo_problems, args.demo_batches)
    refill = refill_figure(args.refill_prompts, args.refill_rows)
    head = head_figure(args.head_vocab, args.batch, min(L, 64)) if args.head_vocab > 0 else None
    compiled = compile_figure(args.demo_problems, args.demo_batches) if args.compile and args.demo_problems > 0 else None

    summary = {
        "speedup_vs_naive": fast / base,
        "speedup_vs_ar": demo["speedup_vs_ar"] if demo else None,
        "speedup_vs_ar_by_batch": demo["speedup_vs_ar_by_batch"] if demo else None,
        "speedup_vs_ar_arith_threshold": fast / ar,
        "equal_forwards_vs_ar": equal_forwards,
        "host_ms_per_forward": {"cached_static": host_static, "hf_generate": host_ar},
        "host_cost_vs_ar": host_static / host_ar,
        "backbone_ms_per_forward": {"cached_static": fwd_static, "hf_generate": fwd_ar},
        "tokens_per_forward": {k: r["tokens_per_forward"] for k, r in results.items()},
        "accuracy": {c["strategy"]: c["accuracy"] for c in curve},
        "demo": demo,
        "refill": refill,
        "masked_head": head,
        "compile": compiled,
        "identical_to_naive": identical,
        "gen_length": L,
        "batch": args.batch,
        "strategies": {k: {m: v for m, v in r.items() if m != "trajs"} for k, r in results.items()},
        "accuracy_vs_nfe": curve,
    }
    print(f"\nspeedup_vs_naive {summary['speedup_vs_naive']:.1f}x, equal_forwards_vs_ar {equal_forwards:.2f}x, host_cost_vs_ar {host_static / host_ar:.2f}x"
          + (f", speedup_vs_ar (demo, at AR's accuracy, by batch) {demo['speedup_vs_ar_by_batch']}" if demo else ""))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


def _batch_sizes(text: str) -> list[int]:
    """--demo-batches: comma-separated positive ints."""
    try:
        sizes = [int(b) for b in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive batch sizes, e.g. 8,64; got {text!r}")
    return sizes


def _demo_prompts(lm, problems: int) -> list[tuple[list[list[int]], object]]:
    """(encoded prompts, its Benchmark) of the demos' first `problems` held-out math and code problems."""
    from rl.cli import _data_benchmarks
    from rl.data import encode_messages

    benches = _data_benchmarks(ROOT / "configs" / "sft_demo.yaml", problems, None)
    return [([encode_messages(lm.tokenizer, e.messages, b.chat)[0] for e in b.examples], b) for b in benches]


def refill_figure(n_prompts: int, rows: int) -> dict:
    """Continuous batching on a batch of skewed answer lengths: the demo base model on held-out
    math (answers ~10 tokens) and code (~30) prompts, up to 64 new tokens, `rows` samples at a
    time: fixed batches (each waits for its slowest sample) vs refilling finished rows."""
    lm = load_model(ROOT / "examples" / "checkpoints" / "demo-base")
    enc = [prompts for prompts, _ in _demo_prompts(lm, n_prompts // 2)]
    prompts = [p for pair in zip(*enc) for p in pair][:n_prompts]  # math and code interleaved
    params = SamplingParams(max_new_tokens=64, temperature=0.0)

    def fixed():
        return [t for a in range(0, len(prompts), rows) for t in generate(lm, prompts[a : a + rows], params)]

    def answer_tokens(trajs):
        return sum(t.completion_ids.index(lm.eos_id) + 1 if lm.eos_id in t.completion_ids else len(t.completion_ids) for t in trajs)

    a, t_fixed = timed(fixed)
    b, t_refill = timed(lambda: generate(lm, prompts, replace(params, max_batch=rows)))
    same = all(x.completion_ids == y.completion_ids and x.step_map == y.step_map for x, y in zip(a, b))
    lengths = [answer_tokens([t]) for t in a]
    out = {"rows": rows, "prompts": len(prompts), "answer_tokens_min_max": [min(lengths), max(lengths)],
           "tokens_per_s_fixed": answer_tokens(a) / t_fixed, "tokens_per_s_refill": answer_tokens(b) / t_refill,
           "refill_speedup": t_fixed / t_refill, "identical_tokens": same}
    print(f"\nrefill: {len(prompts)} prompts, answers of {min(lengths)}-{max(lengths)} tokens, {rows} rows at a time:"
          f" fixed batches {out['tokens_per_s_fixed']:.0f} tok/s, refill {out['tokens_per_s_refill']:.0f} tok/s"
          f" -> {out['refill_speedup']:.2f}x; identical tokens: {same}")
    return out


def head_figure(vocab: int, batch: int, gen: int) -> dict:
    """The LM head at a real vocabulary: a step predicts only its block's still-masked positions
    (`_Decoder.masked_logits`) vs every position of the block, on a small Qwen3-shaped block
    model with random weights and `vocab` ids (Qwen3's 151936 by default), where the LM head
    and the softmax over the vocabulary are most of a step's work. Same tokens either way;
    HF generate() on the same model for reference."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from rollout import build_char_tokenizer
    from rollout.engine import _Decoder
    from rollout.models import DiffusionLM

    tok = build_char_tokenizer()
    config = Qwen3Config(vocab_size=vocab, hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=64, max_position_embeddings=1024, tie_word_embeddings=True,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    config.mask_token_id, config.block_size = tok.mask_token_id, 4
    torch.manual_seed(0)
    lm = DiffusionLM(Qwen3ForCausalLM(config).eval(), tok, family="block", block_size=4)
    low = max(tok.mask_token_id, tok.eos_token_id, tok.pad_token_id) + 1
    prompts = torch.randint(low, len(tok), (batch, 16), generator=torch.Generator().manual_seed(0)).tolist()
    out = {"vocab": vocab, "batch": batch, "gen": gen, "params_m": sum(p.numel() for p in lm.model.parameters()) / 1e6}
    print(f"\nLM head at a {vocab}-id vocabulary ({out['params_m']:.0f}M params, {batch} x {gen} tokens, block 4): masked positions only vs every block position")
    for label, kw in (("static", {}), ("static:2", {"steps_per_block": 2})):
        params = SamplingParams(max_new_tokens=gen, temperature=0.0, stop_at_eos=False, **kw)
        speeds, tokens = {}, {}
        for masked_only in (False, True):
            _Decoder.masked_logits = masked_only
            try:
                trajs, secs = timed(lambda params=params: generate(lm, prompts, params), repeats=2)
            finally:
                _Decoder.masked_logits = True
            speeds[masked_only], tokens[masked_only] = batch * gen / secs, [t.completion_ids for t in trajs]
        out[label] = {"tokens_per_s_every_position": speeds[False], "tokens_per_s_masked_only": speeds[True],
                      "speedup": speeds[True] / speeds[False], "identical_tokens": tokens[True] == tokens[False]}
        print(f"  {label:9s} every position {speeds[False]:7.0f} tok/s, masked only {speeds[True]:7.0f} tok/s -> {speeds[True] / speeds[False]:.2f}x;"
              f" identical tokens: {tokens[True] == tokens[False]}")
    ids = torch.tensor(prompts)
    _, secs = timed(lambda: lm.model.generate(ids, max_new_tokens=gen, min_new_tokens=gen, do_sample=False, pad_token_id=tok.pad_token_id))
    out["hf_generate_tokens_per_s"] = batch * gen / secs
    out["equal_forwards_vs_ar"] = out["static"]["tokens_per_s_masked_only"] / out["hf_generate_tokens_per_s"]
    print(f"  HF generate {out['hf_generate_tokens_per_s']:.0f} tok/s: static at one token per step is {out['equal_forwards_vs_ar']:.2f}x"
          f" (every position: {out['static']['tokens_per_s_every_position'] / out['hf_generate_tokens_per_s']:.2f}x)")
    return out


DEMO_DECODERS = [
    ("static", {}), ("static:2", {"steps_per_block": 2}), ("static:ascending", {"schedule": "ascending"}),
    ("threshold:0.9", {"strategy": "threshold", "threshold": 0.9}), ("threshold:0.7", {"strategy": "threshold", "threshold": 0.7}),
    ("adaptive:1", {"strategy": "adaptive", "factor": 1.0}), ("adaptive:2:4", {"strategy": "adaptive", "factor": 2.0, "max_tokens_per_step": 4}),
    ("prophet", {"strategy": "prophet"}), ("prophet:2,1,0.5", {"strategy": "prophet", "prophet_gaps": (2.0, 1.0, 0.5)}),
]

# (diffusion, AR) checkpoint pairs of one shape, data and budget (examples/README.md says how each
# was trained): at 560 steps the diffusion base is stopped early on purpose (RL's starting
# point), at 1600 steps both have converged on the held-out problems.
DEMO_PAIRS = {"560 steps": ("demo-base", "demo-ar"), "1600 steps": ("demo-base-1600", "demo-ar-1600")}


def demo_vs_ar(pairs: dict[str, tuple[Path, Path]], problems: int, batches: list[int]) -> dict:
    """Every decoder of each diffusion checkpoint vs the AR model of the same shape and training
    budget, on the demos' held-out math and code, decoding `batch` problems at a time: accuracy
    (pooled over both) and answer tokens/s. `speedup_vs_ar` is the fastest decoder at AR's
    accuracy or better, over the pairs, at the largest batch (the per-worker rollout batch of the
    demos); `speedup_vs_ar_by_batch` has it at every batch."""
    from rl.cli import _data_benchmarks
    from rl.evaluate import evaluate_benchmark, load_policy

    benches = _data_benchmarks(ROOT / "configs" / "sft_demo.yaml", problems, None)

    def point(policy, params, batch):
        acc = toks = secs = fwd = 0.0
        n = 0
        for b in benches:
            m, _ = evaluate_benchmark(policy, b, params, batch_size=batch)
            acc += m["pass@1"] * len(b.problems)
            fwd += m["nfe"] * len(b.problems)
            n += len(b.problems)
            toks += m["answer_tokens_per_s"] * m["decode_seconds"]
            secs += m["decode_seconds"]
        return {"accuracy": acc / n, "answer_tokens_per_s": toks / secs, "nfe": fwd / n, "problems": n}

    out: dict = {"pairs": {}, "batches": batches}
    for name, (base_path, ar_path) in pairs.items():
        base, ar = load_policy(base_path), load_policy(ar_path)
        out["pairs"][name] = pair = {"diffusion": str(base_path), "ar_checkpoint": str(ar_path), "by_batch": {}}
        for batch in batches:
            res = {"ar": point(ar, SamplingParams(temperature=0.0), batch), "decoders": {}}
            a = res["ar"]
            print(f"\ndemo {name}, {a['problems']} held-out math + code problems, {batch} at a time (greedy): accuracy, NFE, answer tokens/s")
            print(f"  {'AR (HF generate)':22s} {a['accuracy']:.3f} {a['nfe']:5.1f} {a['answer_tokens_per_s']:8.0f}")
            for label, kw in DEMO_DECODERS:
                r = res["decoders"][label] = point(base, SamplingParams(temperature=0.0, **kw), batch)
                print(f"  {label:22s} {r['accuracy']:.3f} {r['nfe']:5.1f} {r['answer_tokens_per_s']:8.0f}  {r['answer_tokens_per_s'] / a['answer_tokens_per_s']:.2f}x AR")
            ok = {k: r for k, r in res["decoders"].items() if r["accuracy"] >= a["accuracy"]}
            best = max(ok, key=lambda k: ok[k]["answer_tokens_per_s"]) if ok else None
            res["best_at_ar_accuracy"] = best
            res["speedup_vs_ar"] = ok[best]["answer_tokens_per_s"] / a["answer_tokens_per_s"] if best else None
            print(f"  fastest decoder at AR's accuracy or better: {best} -> {res['speedup_vs_ar'] and round(res['speedup_vs_ar'], 2)}x AR")
            pair["by_batch"][batch] = res
    by_batch = {}
    for batch in batches:
        found = [p["by_batch"][batch]["speedup_vs_ar"] for p in out["pairs"].values() if p["by_batch"][batch]["speedup_vs_ar"]]
        by_batch[batch] = max(found) if found else None
    out["speedup_vs_ar_by_batch"] = by_batch
    out["speedup_vs_ar"] = by_batch[max(batches)]
    return out


def compile_figure(problems: int, batches: list[int]) -> dict:
    """`rollout.compile` on the converged demo model: threshold 0.9 decoding of the demos'
    held-out math and code prompts, `batch` at a time, eager vs compiled (timed after a first
    pass that compiles every shape), with the compilation time and an identical-tokens check."""
    eager = load_model(ROOT / "examples" / "checkpoints" / "demo-base-1600")
    compiled = load_model(ROOT / "examples" / "checkpoints" / "demo-base-1600").compile()
    jobs = [(prompts, SamplingParams(max_new_tokens=b.max_new_tokens, temperature=0.0, strategy="threshold", threshold=0.9))
            for prompts, b in _demo_prompts(eager, problems)]

    def decode_all(lm, batch):
        return [t for prompts, params in jobs for a in range(0, len(prompts), batch) for t in generate(lm, prompts[a : a + batch], params)]

    t0 = time.perf_counter()
    for batch in batches:
        decode_all(compiled, batch)
    out = {"compile_seconds": time.perf_counter() - t0, "by_batch": {}}
    print(f"\ncompiled decoding (rollout.compile), threshold 0.9, {problems} math + {problems} code prompts; first pass (compiling) {out['compile_seconds']:.0f} s")
    for batch in batches:
        a, t_eager = timed(lambda batch=batch: decode_all(eager, batch))
        b, t_comp = timed(lambda batch=batch: decode_all(compiled, batch))
        same = all(x.completion_ids == y.completion_ids and x.step_map == y.step_map for x, y in zip(a, b))
        out["by_batch"][batch] = {"eager_s": t_eager, "compiled_s": t_comp, "speedup": t_eager / t_comp, "identical_tokens": same}
        print(f"  {batch:3d} at a time: eager {t_eager:.2f} s, compiled {t_comp:.2f} s -> {t_eager / t_comp:.2f}x; identical tokens: {same}")
    return out


def _plot(curve, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for kind, marker in (("static", "o"), ("threshold", "s"), ("adaptive", "D"), ("prophet", "v"), ("autoregressive", "^")):
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
