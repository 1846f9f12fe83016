"""Learner activation memory: bytes saved for the backward pass per micro-batch, with gradient
accumulation (learner.micro_batches) and gradient checkpointing, as ratios to a plain update.

    python benchmarks/memory.py [--prompts 16] [--samples 8] [--long-tokens 64] [--json out.json]

Peak memory of an update is weights + optimizer state + the activations autograd keeps between
a forward and its backward. The last term is what micro-batches and checkpointing cut, and it
is measured exactly, not through a noisy process RSS: a `saved_tensors_hooks` pack hook adds up
the bytes of every tensor saved for backward (distinct storages once), and the count restarts at
each backward, so the figure is the largest forward's activations. One TraceRL update of the
real `Learner` on a real rollout batch of the committed base checkpoint (long generations, so
activations dominate), baseline first, in one process; wall seconds per update are printed too.

Given a model shape (--vocab --hidden --layers --gen; benchmarks/shape.py) it instead measures
one update per method (trace s = 1 and 2, one_step, coupled, value) on a random model of that
shape: peak memory, time and saved-for-backward bytes, each vs the AR-style update:

    python benchmarks/memory.py --vocab 151936 --hidden 1024 --layers 4 --gen 256 --batch 2 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.learner import BASE, rollout_batch  # noqa: E402
from benchmarks.shape import add_shape_args, run_shape  # noqa: E402
from rl.config import load_config  # noqa: E402
from rl.batch import learner_batch  # noqa: E402
from rl.learner import Learner  # noqa: E402
from rl.tasks import ArithmeticTask  # noqa: E402
from rollout import load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "baseline": [],
    "one backward (backward_per_pass off)": ["learner.backward_per_pass=false"],
    "micro_batches=2": ["learner.micro_batches=2"],
    "micro_batches=4": ["learner.micro_batches=4"],
    "gradient_checkpointing": ["learner.gradient_checkpointing=true"],
    "checkpointing + micro_batches=4": ["learner.gradient_checkpointing=true", "learner.micro_batches=4"],
}


class SavedBytes:
    """Peak bytes saved for backward between two backward passes."""

    def __init__(self):
        self.current = self.peak = 0
        self._seen: set[int] = set()

    def pack(self, t: torch.Tensor):
        key = t.untyped_storage().data_ptr()
        if key not in self._seen:  # views of one storage count once
            self._seen.add(key)
            self.current += t.untyped_storage().nbytes()
            self.peak = max(self.peak, self.current)
        return t

    def reset(self):
        self.current = 0
        self._seen.clear()


@contextlib.contextmanager
def counting_backward(meter: SavedBytes):
    """Restart `meter`'s count at every backward: a forward's saved activations are freed by it."""
    backward = torch.Tensor.backward

    def counted_backward(self, *a, **k):
        out = backward(self, *a, **k)
        meter.reset()
        return out

    torch.Tensor.backward = counted_backward
    try:
        yield meter
    finally:
        torch.Tensor.backward = backward


def measure(overrides: list[str], trajs, adv) -> tuple[int, float]:
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", ["wandb.mode=disabled", "algorithm.minibatches=1", "algorithm.beta=0", *overrides])
    learner = Learner(cfg)
    meter = SavedBytes()
    with counting_backward(meter):
        learner.update(learner_batch(learner.cfg.algorithm, trajs, adv))  # warm-up
        meter.peak = 0
        t0 = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda t: t):
            learner.update(learner_batch(learner.cfg.algorithm, trajs, adv))
        return meter.peak, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--long-tokens", type=int, default=64)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--repeats", type=int, default=1, help="shape mode: timed updates per method (after one warm-up)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    add_shape_args(ap)
    args = ap.parse_args()
    if args.vocab:
        out = run_shape(args, saved_bytes=True)
        if args.json:
            args.json.write_text(json.dumps(out, indent=2))
        return
    lm = load_model(BASE)
    trajs, adv, _ = rollout_batch(lm, ArithmeticTask(digits=3), args.prompts, args.samples, args.long_tokens, stop_at_eos=False, seed=0)
    adv = adv.tolist()
    results = {}
    for name, overrides in SETTINGS.items():
        peak, seconds = measure(overrides, trajs, adv)
        results[name] = {"saved_bytes": peak, "seconds": seconds}
    base = results["baseline"]
    print(f"one TraceRL update, {len(trajs)} samples x {args.long_tokens} tokens; activations saved for backward (peak per micro-batch):")
    for name, r in results.items():
        r["memory_ratio"] = r["saved_bytes"] / base["saved_bytes"]
        r["time_ratio"] = r["seconds"] / base["seconds"]
        print(f"  {name:32s} {r['saved_bytes'] / 2**20:8.1f} MiB  {r['memory_ratio']:.2f}x memory  {r['time_ratio']:.2f}x time")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
