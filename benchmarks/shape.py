"""One learner update at a real model shape: peak memory and time per method vs an AR-style update.

Shared by benchmarks/learner.py and benchmarks/memory.py when they are given a model shape
(`--vocab --hidden --layers --gen`). The model is a randomly initialised Qwen3 block-diffusion
LM of that shape (tied embeddings, 16 query / 8 KV heads per 1024 hidden, MLP 3x hidden: at
vocab 151,936, hidden 1024 and 4 layers that is 206M parameters), saved once to a temporary
directory with a tokenizer of exactly `vocab` ids, so no id is excluded as padding and the
softmax spans the whole vocabulary as SDAR's does. The batch is synthetic: `--batch` samples of
`--prompt-len` random prompt ids and `--gen` random completion ids (no EOS: every token carries
loss), each block of `--block` tokens decoded one token per step in a random order, as the
static sampler does. Weights are random, so only cost is measured, not learning.

Per method, a fresh `rl.learner.Learner` (one minibatch, one epoch, beta = 0, as in
benchmarks/learner.py) does one warm-up update, then `--repeats` timed ones. The AR-style
baseline is `benchmarks.learner.ARUpdate` on the same weights and tokens: one causal pass and a
full-vocabulary log-softmax over the completion, the way an autoregressive RL trainer scores it.

Peak memory of an update = the highest resident memory during it minus the memory just before
it (weights, gradients and AdamW state are already there). On CPU it is read from the kernel's
high-water mark (/proc/self/status VmHWM, reset through /proc/self/clear_refs), with glibc's
mmap threshold fixed at 64 KiB so freed tensors go back to the system at once instead of being
kept by malloc; on CUDA from torch.cuda.max_memory_allocated.

On a GPU (one short run, prepared for a lent device), the Qwen3-0.6B shape (hidden 1024,
28 layers, MLP 3072, 16 query / 8 KV heads of 64) in bf16, with the largest batch that fits:

    python benchmarks/learner.py --vocab 151936 --hidden 1024 --layers 28 --gen 1024 --batch 4 \
        --device cuda --bf16 --fit --repeats 2 --json learner_gpu.json
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import re
import statistics
import string
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# label -> config overrides (on top of beta 0, one minibatch, one epoch)
SHAPE_METHODS: dict[str, list[str]] = {
    "trace s=1": ["algorithm.estimator=trace", "algorithm.shrink=1"],
    # the same update with one backward after all passes: what learner.backward_per_pass saves
    "trace s=1 1 bwd": ["algorithm.estimator=trace", "algorithm.shrink=1", "learner.backward_per_pass=false"],
    "trace s=2": ["algorithm.estimator=trace", "algorithm.shrink=2"],
    "one_step": ["algorithm.estimator=one_step"],
    "coupled": ["algorithm.estimator=coupled"],
    "coupled 1 bwd": ["algorithm.estimator=coupled", "learner.backward_per_pass=false"],
    "value": ["algorithm.estimator=trace", "algorithm.shrink=1", "algorithm.value.enabled=true"],
    # GSPO's sequence ratio (like coupled): per-pass backwards after a graph-free pass for every log-prob, or one backward
    "gspo": ["algorithm.estimator=trace", "algorithm.shrink=1", "algorithm.loss=gspo"],
    "gspo 1 bwd": ["algorithm.estimator=trace", "algorithm.shrink=1", "algorithm.loss=gspo", "learner.backward_per_pass=false"],
}
AR = "AR (causal, 1 pass)"


def add_shape_args(ap: argparse.ArgumentParser) -> None:
    """The model-shape options both benchmarks take; --vocab switches them to this mode."""
    g = ap.add_argument_group("model shape (random weights; --vocab turns this mode on)")
    g.add_argument("--vocab", type=int, help="vocabulary size (SDAR / TraDo: 151936)")
    g.add_argument("--hidden", type=int, default=1024)
    g.add_argument("--layers", type=int, default=4)
    g.add_argument("--gen", type=int, default=256, help="completion tokens per sample")
    g.add_argument("--prompt-len", type=int, default=64)
    g.add_argument("--batch", type=int, default=2, help="samples per update")
    g.add_argument("--block", type=int, default=4, help="block size")
    g.add_argument("--methods", default=",".join(SHAPE_METHODS), help=f"comma-separated subset of: {', '.join(SHAPE_METHODS)}")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: the learner and the AR update on the GPU")
    g.add_argument("--bf16", action="store_true", help="bf16 autocast for every update (learner.bf16), AR included")
    g.add_argument("--attention", choices=("sdpa", "flex"), default="sdpa", help="learner.attention (flex: GPU only)")
    g.add_argument("--fit", action="store_true", help="cuda: also find the largest batch (doubling from --batch) one update of "
                   "trace s=1 and of AR fits in")


def shape_tokenizer(vocab: int):
    """A character tokenizer with exactly `vocab` ids (pad, eos, mask, then distinct characters)."""
    from rollout.tokenizer import DEFAULT_CHARS, build_char_tokenizer

    need = vocab - 3 - len(DEFAULT_CHARS)
    if need < 0:
        return build_char_tokenizer(string.digits + string.ascii_letters[: max(vocab - 13, 0)])
    # code points from U+0100 on, skipping the surrogates, which are no characters
    extra = "".join(chr(c) for c in range(0x100, 0x100 + need + 2048) if not 0xD800 <= c <= 0xDFFF)[:need]
    return build_char_tokenizer(DEFAULT_CHARS + extra)


def build_shape_checkpoint(path: Path, args) -> int:
    """Save a random block LM of the requested shape (and its tokenizer) to `path`; returns its parameter count."""
    from transformers.utils import logging as hf_logging

    from rollout.models import build_tiny_lm

    hf_logging.disable_progress_bar()  # the shard-writing bar is noise in a benchmark's output
    tok = shape_tokenizer(args.vocab)
    assert len(tok) == args.vocab, (len(tok), args.vocab)
    heads = max(1, args.hidden // 64)
    lm = build_tiny_lm(
        tok, block_size=args.block, hidden_size=args.hidden, num_layers=args.layers, num_heads=heads,
        num_kv_heads=max(1, heads // 2), intermediate_size=3 * args.hidden,
        max_positions=2 * (args.prompt_len + args.gen) + args.block, seed=0,
    )  # fmt: skip
    lm.save_pretrained(path)
    return sum(p.numel() for p in lm.model.parameters())


def synthetic_batch(args, vocab: int, seed: int = 0):
    """`args.batch` trajectories with random ids (never pad / eos / mask) and a one-token-per-step map."""
    from rollout.trajectory import Trajectory

    g = torch.Generator().manual_seed(seed)
    trajs = []
    for i in range(args.batch):
        prompt = torch.randint(3, vocab, (args.prompt_len,), generator=g).tolist()
        completion = torch.randint(3, vocab, (args.gen,), generator=g).tolist()
        steps, step, c = [], 0, 0
        while c < args.gen:  # blocks on the absolute grid: the first may be cut by the prompt
            end = min(((args.prompt_len + c) // args.block + 1) * args.block - args.prompt_len, args.gen)
            order = torch.randperm(end - c, generator=g).tolist()
            steps += [step + o for o in order]
            step, c = step + end - c, end
        trajs.append(Trajectory(prompt, completion, steps, [0.0] * args.gen, args.block, 1.0, step, "length", group=0))
    return trajs


class PeakMemory:
    """Resident-memory rise during a call: the CPU high-water mark, or CUDA's allocator peak."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if not self.cuda:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD: large blocks mmapped, returned on free; fixed, so never raised
            libc.mallopt(-1, 1 << 16)  # M_TRIM_THRESHOLD: give the heap's free top back too

    @staticmethod
    def _status(key: str) -> int:
        return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

    def measure(self, fn) -> int:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - base
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        base = self._status("VmRSS")
        # VmHWM alone has read as no rise at all on a loaded machine (a baseline of 0, so every ratio to it
        # NaN): RSS is also sampled every 2 ms while fn runs, and the larger of the two counts.
        high, stop = [base], threading.Event()

        def sample() -> None:
            while not stop.wait(0.002):
                high[0] = max(high[0], self._status("VmRSS"))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            fn()
        finally:
            stop.set()
            sampler.join()
        return max(self._status("VmHWM"), high[0]) - base


def run_shape(args, saved_bytes: bool = False) -> dict:
    """Measure every selected method and the AR baseline; returns the results dict (see module doc).

    saved_bytes: also count the bytes autograd saves for backward (benchmarks/memory.py's meter)
    during the first timed update."""
    from benchmarks.learner import ARUpdate
    from rl.config import load_config
    from rl.batch import learner_batch
    from rl.learner import Learner

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(SHAPE_METHODS))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; known: {', '.join(SHAPE_METHODS)}")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="unmask-shape-")
    ckpt = Path(tmp.name)
    params = build_shape_checkpoint(ckpt, args)
    trajs = synthetic_batch(args, args.vocab, args.seed)
    tokens = args.batch * args.gen
    print(f"learner update at shape vocab {args.vocab}, hidden {args.hidden}, {args.layers} layers ({params / 1e6:.0f}M params): "
          f"{args.batch} samples x {args.gen} tokens, prompt {args.prompt_len}, block {args.block}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} after 1 warm-up")

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if args.fit and args.device != "cuda":
        raise SystemExit("--fit needs --device cuda (it grows the batch until the GPU runs out of memory)")
    device_overrides = [f"learner.bf16={str(args.bf16).lower()}", f"learner.attention={args.attention}"]
    if args.device == "cuda":
        device_overrides.append("cluster.gpus_per_bundle=1")  # the learner's device is then the GPU (rl.learner)

    def make(label: str, trajs=trajs):
        adv = [1.0 if i % 2 == 0 else -1.0 for i in range(len(trajs))]
        if label == AR:
            ar = ARUpdate(ckpt, lr=1e-4, grad_clip=1.0, device=torch.device(args.device), bf16=args.bf16)
            ar.prepare(trajs)
            return ar, lambda: ar.update(trajs, torch.tensor(adv, device=ar.device)), ar.device
        cfg = load_config(
            ROOT / "configs" / "quickstart.yaml",
            [f"model.path={ckpt}", "algorithm.beta=0", "algorithm.minibatches=1", "algorithm.epochs=1",
             f"train.threads={args.threads}", "wandb.mode=disabled", *device_overrides, *SHAPE_METHODS[label]],
        )  # fmt: skip
        learner = Learner(cfg)
        rewards = [float(i % 2 == 0) for i in range(len(trajs))]
        return learner, lambda: learner.update(learner_batch(learner.cfg.algorithm, trajs, adv, rewards=rewards)), learner.device

    results: dict[str, dict] = {}
    for label in [AR, *methods]:
        owner, update, device = make(label)
        meter = PeakMemory(device)
        update()  # warm-up: AdamW state, allocator, kernels
        secs, peaks, saved = [], [], None
        for r in range(args.repeats):
            t0 = time.perf_counter()
            if saved_bytes and r == 0:
                from benchmarks.memory import SavedBytes, counting_backward

                counter = SavedBytes()
                with counting_backward(counter), torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
                    peaks.append(meter.measure(update))
                saved = counter.peak
            else:
                peaks.append(meter.measure(update))
            secs.append(time.perf_counter() - t0)
        results[label] = {"seconds": statistics.median(secs), "all_seconds": secs, "peak_bytes": max(peaks)}
        if saved is not None:
            results[label]["saved_bytes"] = saved
        print(f"  {label}: {results[label]['seconds']:.2f} s, peak +{results[label]['peak_bytes'] / 2**20:.0f} MiB", flush=True)
        del owner, update
        gc.collect()
    fits = {label: largest_batch(make, args, label) for label in (AR, "trace s=1")} if args.fit else None
    tmp.cleanup()

    base = results[AR]
    for r in results.values():
        r["tokens_per_s"] = tokens / r["seconds"]
        r["time_vs_ar"] = r["seconds"] / base["seconds"]
        # Resident memory can rise by nothing at a tiny shape (freed heap pages reused): no ratio then.
        r["peak_vs_ar"] = r["peak_bytes"] / base["peak_bytes"] if base["peak_bytes"] else float("nan")
        if "saved_bytes" in r:
            r["saved_vs_ar"] = r["saved_bytes"] / base["saved_bytes"]
    head = f"{'method':20s} {'s/update':>9s} {'tokens/s':>9s} {'time vs AR':>10s} {'peak MiB':>9s} {'peak vs AR':>10s}"
    head += f" {'saved MiB':>9s} {'vs AR':>6s}" if saved_bytes else ""
    print(head)
    print("-" * len(head))
    for label, r in results.items():
        line = f"{label:20s} {r['seconds']:9.2f} {r['tokens_per_s']:9.1f} {r['time_vs_ar']:9.2f}x {r['peak_bytes'] / 2**20:9.0f} {r['peak_vs_ar']:9.2f}x"
        if saved_bytes:
            line += f" {r['saved_bytes'] / 2**20:9.0f} {r['saved_vs_ar']:5.2f}x"
        print(line)
    out = {
        "shape": {k: getattr(args, k) for k in ("vocab", "hidden", "layers", "gen", "prompt_len", "batch", "block")} | {"params": params},
        "completion_tokens": tokens,
        "threads": torch.get_num_threads(),
        "methods": results,
    }
    if "trace s=1" in results:
        out["trace_peak_vs_ar"] = results["trace s=1"]["peak_vs_ar"]
        out["trace_time_vs_ar"] = results["trace s=1"]["time_vs_ar"]
        out["trace_time_floor_vs_ar"] = trace_time_floor(trajs, args, params, shrink=1)
        print(f"trace s=1 time floor vs AR (linear-layer FLOPs): {out['trace_time_floor_vs_ar']:.2f}x; "
              f"measured {out['trace_time_vs_ar']:.2f}x")
    if fits is not None:
        out["largest_batch"] = fits
        print("largest batch one update fits in: " + ", ".join(f"{k} {v}" for k, v in fits.items()))
    return out


def trace_time_floor(trajs, args, params: int, shrink: int) -> float:
    """What the passes alone cost TraceRL against the AR update: the ratio of linear-layer FLOPs.

    Both updates run an old (no-grad) and a current (forward + backward) estimate, so the ratio
    of one estimate's FLOPs is the ratio of the updates'. Per sample, TraceRL sends
    passes x packed length ([prompt | clean | noisy]) tokens through the backbone, AR
    prompt + completion; the LM head (vocab x hidden) runs at the completion tokens in both.
    Attention's quadratic term is left out (small at these lengths), so this is a lower bound.
    """
    from algorithms.estimators import count_forward_passes
    from algorithms.packing import pack_noisy

    head = args.vocab * args.hidden  # tied: the embedding's FLOPs are the head's
    backbone = params - head
    passes = count_forward_passes("trace", trajs, shrink=shrink)
    t = trajs[0]  # every sample has the same lengths; the mask and pad ids (2, 0) do not change the packed length
    packed = pack_noisy([t.prompt_ids], [t.completion_ids], [[True] * len(t.completion_ids)], args.block, 2, 0).input_ids.shape[1]
    trace = passes * packed * backbone + args.gen * head
    ar = (args.prompt_len + args.gen) * backbone + args.gen * head
    return trace / ar


def largest_batch(make, args, label: str, limit: int = 1024) -> int:
    """The largest batch (doubling from --batch) whose update of `label` runs without CUDA OOM."""
    ok, batch = 0, args.batch
    while batch <= limit:
        owner = update = None
        try:
            owner, update, _ = make(label, synthetic_batch(argparse.Namespace(**{**vars(args), "batch": batch}), args.vocab, args.seed))
            update()
            ok, batch = batch, batch * 2
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            del owner, update
            gc.collect()
            torch.cuda.empty_cache()
    return ok
