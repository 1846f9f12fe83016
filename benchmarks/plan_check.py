"""`unmask plan` against measurement: a learner update's activations and a rollout's peak, predicted vs measured.

At shapes that run on this CPU (model widths and depths, generation lengths, estimators), one real
learner update per setting (rl.learner.Learner on a synthetic batch, benchmarks/shape.py's random
block LM) is measured with autograd's saved-tensor hooks: the bytes saved for backward between two
backward passes, parameters excluded (they exist before and after the update), each storage once,
the largest over the update's passes. That is what the update adds to the weights and optimizer
state, and it is exact, where the process's resident memory is not (freed heap pages are reused
without raising it). rl.plan.update_peak predicts the same from the model's config alone (its
backbone run on meta tensors). The peak of the update also has the gradients, a known size
(4 bytes x parameters). Prints the table and the largest relative error of the activations.

Rollout: unmask's own sampler (rollout.engine.generate) decodes `rows` random prompts to the full
generation budget (stop_at_eos off: the plan's worst case, every sequence at its full length) with a
random model of each shape, block-causal with its exact cache and full attention (LLaDA's Llama) with
and without its prefix cache. The peak is measured from torch's CPU allocator: under
`torch.profiler.profile(profile_memory=True)` every allocation and free the allocator makes is
recorded with the bytes then allocated ("Total Allocated": every tensor, the cache's, the mask's,
the kernels' own buffers), counting what is allocated while profiling, so the weights, built before,
are added as their exact size. The largest of those totals is the decode's peak above the weights.
rl.plan.rollout_memory predicts the same (weights + KV cache + the largest forward's working set or
one step's logits) from the config, the rows and the lengths alone.

    python benchmarks/plan_check.py [--shapes N] [--rollout-only] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.memory import SavedBytes, counting_backward  # noqa: E402
from benchmarks.shape import SHAPE_METHODS, add_shape_args, build_shape_checkpoint, synthetic_batch  # noqa: E402
from rl.batch import learner_batch  # noqa: E402
from rl.config import load_config  # noqa: E402
from rl.learner import Learner  # noqa: E402
from rl.plan import Shape, model_shape, parameter_count, rollout_memory, update_peak  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# (vocab, hidden, layers, prompt, gen, batch)
SHAPES = [(4096, 256, 4, 32, 64, 4), (4096, 512, 4, 32, 64, 4), (8192, 256, 6, 64, 128, 2), (16384, 384, 2, 16, 128, 6)]
# Rollouts: (family, vocab, hidden, layers, rows, prompt, gen, kv_cache, block_length)
ROLLOUT_SHAPES = [
    ("block", 4096, 256, 4, 8, 32, 64, True, None), ("block", 16384, 256, 2, 4, 16, 32, True, None),
    ("block", 2048, 512, 4, 16, 64, 32, True, None), ("block", 8192, 384, 3, 6, 30, 50, True, None),
    ("llada", 4096, 256, 4, 4, 32, 96, True, 32), ("llada", 4096, 256, 4, 4, 32, 96, False, 32),
    ("llada", 2048, 384, 2, 8, 64, 128, True, 64), ("llada", 16384, 256, 2, 4, 16, 32, False, None),
]
METHODS = {"trace s=1": lambda gen, block: gen // block, "one_step": lambda gen, block: 1, "coupled": lambda gen, block: 3}


class ActivationBytes(SavedBytes):
    """SavedBytes without the parameters' storages."""

    def __init__(self, params) -> None:
        super().__init__()
        self.params = {p.untyped_storage().data_ptr() for p in params}

    def pack(self, t: torch.Tensor):
        return t if t.untyped_storage().data_ptr() in self.params else super().pack(t)


def measure(ckpt: Path, trajs, method: str) -> int:
    cfg = load_config(ROOT / "configs" / "quickstart.yaml",
                      [f"model.path={ckpt}", "algorithm.beta=0", "algorithm.minibatches=1", "algorithm.epochs=1",
                       "wandb.mode=disabled", *SHAPE_METHODS[method]])  # fmt: skip
    learner = Learner(cfg)
    adv = [1.0 if i % 2 == 0 else -1.0 for i in range(len(trajs))]
    rewards = [float(i % 2 == 0) for i in range(len(trajs))]
    batch = learner_batch(learner.cfg.algorithm, trajs, adv, rewards=rewards)
    meter = ActivationBytes(learner.lm.model.parameters())
    with counting_backward(meter), torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda t: t):
        learner.update(batch)
    del learner
    gc.collect()
    return meter.peak


def measure_rollout_peak(lm, prompts, params) -> int:
    """Peak bytes the CPU allocator holds during `generate(lm, prompts, params)`, weights included
    (they are allocated before profiling: added as their size)."""
    import os

    from torch.profiler import ProfilerActivity, profile

    from rollout.engine import generate

    weights = sum(t.numel() * t.element_size() for t in {id(p): p for p in lm.model.parameters()}.values())
    generate(lm, prompts[:1], dataclasses.replace(params, max_new_tokens=4))  # warm-up: lazily built buffers
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        generate(lm, prompts, params, generator=torch.Generator().manual_seed(0))
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    try:
        prof.export_chrome_trace(path)
        events = json.loads(Path(path).read_text())["traceEvents"]
    finally:
        os.unlink(path)
    allocated = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return weights + max(allocated, default=0)


def rollout_rows(shapes) -> list[dict]:
    """Predicted and measured rollout peaks at `shapes` (ROLLOUT_SHAPES' layout)."""
    from benchmarks.shape import shape_tokenizer
    from rollout.models import build_tiny_lm
    from rollout.sampling import SamplingParams

    out = []
    for family, vocab, hidden, layers, rows, prompt, gen, kv_cache, block_length in shapes:
        heads = max(1, hidden // 64)
        lm = build_tiny_lm(shape_tokenizer(vocab), family=family, hidden_size=hidden, num_layers=layers, num_heads=heads,
                           num_kv_heads=max(1, heads // 2), intermediate_size=3 * hidden, max_positions=prompt + gen + 8)  # fmt: skip
        g = torch.Generator().manual_seed(1)
        prompts = [torch.randint(3, vocab, (prompt,), generator=g).tolist() for _ in range(rows)]
        params = SamplingParams(max_new_tokens=gen, strategy="static", temperature=1.0, stop_at_eos=False, kv_cache=kv_cache,
                                block_length=block_length)  # fmt: skip
        got = measure_rollout_peak(lm, prompts, params)
        shape = Shape(lm.model.config, family, lm.block_size if lm.traits.block_causal else None, "built")
        n = sum(p.numel() for p in {id(p): p for p in lm.model.parameters()}.values())
        parts = rollout_memory(shape, rows, prompt, gen, dtype_bytes=4, kv_cache=kv_cache, block_length=block_length, n_params=n)
        pred = sum(parts.values())
        out.append({"family": family, "vocab": vocab, "hidden": hidden, "layers": layers, "rows": rows, "prompt": prompt, "gen": gen,
                    "kv_cache": kv_cache, "block_length": block_length, "predicted_mib": pred / 2**20, "measured_mib": got / 2**20,
                    "ratio": pred / got, "parts_mib": {k: v / 2**20 for k, v in parts.items()}})  # fmt: skip
        del lm
        gc.collect()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--shapes", type=int, default=len(SHAPES), help="the first N shapes")
    ap.add_argument("--rollout-only", action="store_true", help="only the rollout table")
    opts = ap.parse_args()
    torch.set_num_threads(2)
    print("rollout peak (weights + KV cache + working set), predicted / measured by the CPU allocator:")
    print("family  vocab hidden layers rows prompt  gen kv_cache block_len   predicted   measured  ratio")
    roll = rollout_rows(ROLLOUT_SHAPES)
    for r in roll:
        print(f"{r['family']:6} {r['vocab']:6d} {r['hidden']:6d} {r['layers']:6d} {r['rows']:4d} {r['prompt']:6d} {r['gen']:4d} "
              f"{r['kv_cache']!s:8} {r['block_length']!s:9} {r['predicted_mib']:8.2f}Mi {r['measured_mib']:8.2f}Mi {r['ratio']:6.3f}",
              flush=True)  # fmt: skip
    roll_worst = max(abs(r["ratio"] - 1) for r in roll)
    print(f"largest relative error of the rollout peak: {roll_worst:.1%}")
    if opts.rollout_only:
        if opts.json:
            opts.json.write_text(json.dumps({"rollout": roll, "rollout_largest_relative_error": roll_worst}, indent=1))
        return
    print("learner update, saved activations predicted / measured:")
    rows = []
    for vocab, hidden, layers, prompt, gen, batch in SHAPES[: opts.shapes]:
        sp = argparse.ArgumentParser()
        add_shape_args(sp)
        args = sp.parse_args(["--vocab", str(vocab), "--hidden", str(hidden), "--layers", str(layers), "--prompt-len", str(prompt),
                              "--gen", str(gen), "--batch", str(batch)])  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp)
            build_shape_checkpoint(ckpt, args)
            shape = model_shape(str(ckpt))
            n = parameter_count(shape)
            trajs = synthetic_batch(args, vocab)
            for method, passes in METHODS.items():
                got = measure(ckpt, trajs, method)
                acts, peak = update_peak(shape, n, batch, prompt, gen, passes=passes(gen, args.block))
                rows.append({"vocab": vocab, "hidden": hidden, "layers": layers, "prompt": prompt, "gen": gen, "batch": batch,
                             "method": method, "predicted_mib": acts / 2**20, "measured_mib": got / 2**20, "ratio": acts / got,
                             "predicted_peak_mib": peak / 2**20})  # fmt: skip
                r = rows[-1]
                print(f"{vocab:6d} {hidden:6d} {layers:6d} {prompt:6d} {gen:5d} {batch:5d} {method:10} "
                      f"{r['predicted_mib']:8.1f}Mi {r['measured_mib']:8.1f}Mi {r['ratio']:6.3f}", flush=True)
    worst = max(abs(r["ratio"] - 1) for r in rows)
    print(f"largest relative error of the activations: {worst:.1%}")
    if opts.json:
        opts.json.write_text(json.dumps({"rows": rows, "largest_relative_error": worst, "rollout": roll,
                                         "rollout_largest_relative_error": roll_worst}, indent=1))


if __name__ == "__main__":
    main()
