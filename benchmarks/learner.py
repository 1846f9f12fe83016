"""Learner speed: tokens/s of one RL update per likelihood estimator vs. an AR-style update.

One update is what `rl.learner.Learner.update` does for a rollout batch with one minibatch,
one epoch and no reference policy (beta = 0): the old log-probs (no grad), the current
log-probs, the clipped policy loss, backward, gradient clipping and an AdamW step. It is timed
on the real `Learner` class (no Ray) for TraceRL with s = 1, 2, 4 and for the one_step,
coupled, mc_elbo (n = 4) and block_random estimators, and compared with one AR-style
policy-gradient update written inline on the same backbone and the same batch: a causal
forward over prompt + completion with the stock transformers causal mask (2D padding mask),
the log-probs of the completion tokens (logits / temperature, as the estimators score them),
the same clipped loss, backward, clipping and step. That is the cost an autoregressive LM
pays for the same tokens, so a ratio below 1 is the price of the diffusion estimator.

The batch is a real rollout of the committed base checkpoint (examples/checkpoints/arith3-base)
through `rollout.generate` with a fixed seed, in two settings: the task's own length (answer
+ EOS, stop at EOS; TraceRL then replays 4 steps per block) and a long generation
(`--long-tokens`, default 64, stop_at_eos=False: 16 blocks of 4, still 4 passes for s = 1,
because all blocks of a response advance together in one packed pass). Every method gets a
fresh model and optimizer from the checkpoint and one warm-up update; then `--repeats` rounds
time one update of every method in turn (round-robin, so load from other processes on a
shared machine falls on all methods alike) and the median per method is reported.

    python benchmarks/learner.py [--prompts 32] [--samples 8] [--long-tokens 64] [--repeats 5] [--json out.json]

tokens/s = completion tokens of the batch (EOS included, padding excluded) / seconds per update.

At a real model's shape (random weights, synthetic batch: benchmarks/shape.py), peak memory and
time of one update for trace s = 1 and 2, one_step, coupled and the value model, each vs the
AR-style update on the same model and tokens; --json then also writes trace_peak_vs_ar and
trace_time_vs_ar (trace s = 1):

    python benchmarks/learner.py --vocab 151936 --hidden 1024 --layers 4 --gen 256 --batch 2 --repeats 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from algorithms.advantages import group_advantages  # noqa: E402
from algorithms.estimators import count_forward_passes  # noqa: E402
from algorithms.losses import policy_loss  # noqa: E402
from benchmarks.shape import add_shape_args, run_shape  # noqa: E402
from rewards import get_reward  # noqa: E402
from rl.config import load_config  # noqa: E402
from rl.batch import learner_batch  # noqa: E402
from rl.learner import Learner, estimator_options  # noqa: E402
from rl.tasks import ArithmeticTask  # noqa: E402
from rollout import SamplingParams, generate, load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "examples" / "checkpoints" / "arith3-base"

# name -> (estimator, shrink)
METHODS: dict[str, tuple[str, int]] = {
    "trace s=1": ("trace", 1),
    "trace s=2": ("trace", 2),
    "trace s=4": ("trace", 4),
    "one_step": ("one_step", 1),
    "coupled": ("coupled", 1),
    "mc_elbo": ("mc_elbo", 1),
    "block_random": ("block_random", 1),
}


def rollout_batch(lm, task, prompts: int, samples: int, max_new_tokens: int, stop_at_eos: bool, seed: int):
    """A real rollout batch (temperature 1, as in training) and its group z-score advantages."""
    rows = task.train_rows(prompts, seed=seed, step=0)
    ids = [lm.tokenizer(r["prompt"])["input_ids"] for r in rows for _ in range(samples)]
    groups = [g for g in range(prompts) for _ in range(samples)]
    cols = [r for r in rows for _ in range(samples)]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, stop_at_eos=stop_at_eos)
    trajs = generate(lm, ids, params, torch.Generator().manual_seed(seed), groups=groups, columns=cols)
    verifier = get_reward(task.reward)
    rewards = verifier([c["prompt"] for c in cols], [t.text for t in trajs], answer=[c["answer"] for c in cols])
    r = torch.tensor([0.0 if v is None else float(v) for v in rewards])
    adv = group_advantages(r, torch.tensor(groups), "zscore")
    return trajs, adv, float(r.mean())


class ARUpdate:
    """One AR-style policy-gradient update on the same backbone: causal mask, single pass."""

    def __init__(self, path: Path, lr: float, grad_clip: float, device: torch.device = torch.device("cpu"), bf16: bool = False):
        self.lm = load_model(path)
        self.lm.model.to(device)
        self.device, self.bf16 = device, bf16
        self.opt = torch.optim.AdamW(self.lm.model.parameters(), lr=lr)
        self.grad_clip = grad_clip

    def prepare(self, trajs):
        lm = self.lm
        seqs = [t.prompt_ids + t.completion_ids for t in trajs]
        width, comp = max(map(len, seqs)), max(len(t.completion_ids) for t in trajs)
        self.input_ids = torch.full((len(seqs), width), lm.pad_id, dtype=torch.long)
        self.attention = torch.zeros((len(seqs), width), dtype=torch.long)  # 2D: transformers builds the causal mask
        self.targets = torch.zeros((len(seqs), comp), dtype=torch.long)
        self.mask = torch.zeros((len(seqs), comp), dtype=torch.bool)
        self.select = torch.zeros((len(seqs), comp), dtype=torch.long)
        for i, (s, t) in enumerate(zip(seqs, trajs)):
            p, c = len(t.prompt_ids), len(t.completion_ids)
            self.input_ids[i, : len(s)] = torch.tensor(s)
            self.attention[i, : len(s)] = 1
            self.targets[i, :c] = torch.tensor(t.completion_ids)
            self.mask[i, :c] = True
            self.select[i, :] = (torch.arange(comp) + p - 1).clamp(max=width - 1)  # position p+c-1 predicts token c
        self.temperature = trajs[0].temperature
        for name in ("input_ids", "attention", "targets", "mask", "select"):
            setattr(self, name, getattr(self, name).to(self.device))

    def logp(self) -> torch.Tensor:
        lm = self.lm
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            hidden = lm.model.model(input_ids=self.input_ids, attention_mask=self.attention).last_hidden_state
            rows = hidden.gather(1, self.select[:, :, None].expand(-1, -1, hidden.shape[-1]))
            logits = lm.model.lm_head(rows)
        lp = lm.sampling_logprobs(logits, self.temperature)
        tok = lp.gather(-1, self.targets[..., None]).squeeze(-1)
        return torch.where(self.mask, tok, torch.zeros_like(tok))

    def update(self, trajs, adv) -> None:
        with torch.no_grad():
            old = self.logp()
        self.lm.model.train()
        loss, _ = policy_loss(self.logp(), old, adv, self.mask, 0.2, 0.2)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.lm.model.parameters(), self.grad_clip)
        self.opt.step()
        self.lm.model.eval()


def bench_setting(name: str, trajs, adv, args) -> dict:
    tokens = sum(len(t.completion_ids) for t in trajs)
    updates: dict[str, tuple[int, Callable[[], object]]] = {}
    ar = ARUpdate(BASE, lr=1e-4, grad_clip=1.0)
    ar.prepare(trajs)
    updates["AR (causal, 1 pass)"] = (1, lambda: ar.update(trajs, adv))
    for label, (est, shrink) in METHODS.items():
        cfg = load_config(
            ROOT / "configs" / "quickstart.yaml",
            [f"model.path={BASE}", f"algorithm.estimator={est}", f"algorithm.shrink={shrink}", "algorithm.beta=0",
             "algorithm.minibatches=1", "algorithm.epochs=1", "algorithm.mc_samples=4"],
        )
        learner = Learner(cfg)
        passes = count_forward_passes(est, trajs, **estimator_options(cfg.algorithm))
        updates[label] = (passes, lambda learner=learner: learner.update(learner_batch(learner.cfg.algorithm, trajs, adv.tolist())))
    for _, update in updates.values():
        update()  # warm-up (AdamW state allocation, allocator, kernels)
    # Round-robin: repeat r times every method once, so load from other processes on a shared
    # machine hits all methods alike instead of whichever happened to run at the time.
    secs: dict[str, list[float]] = {label: [] for label in updates}
    for _ in range(args.repeats):
        for label, (_, update) in updates.items():
            t0 = time.perf_counter()
            update()
            secs[label].append(time.perf_counter() - t0)
    res = {
        label: {"forward_passes_per_estimate": passes, "seconds": statistics.median(secs[label]), "min_seconds": min(secs[label]), "all_seconds": secs[label]}
        for label, (passes, _) in updates.items()
    }
    ar_tps = tokens / res["AR (causal, 1 pass)"]["seconds"]
    for r in res.values():
        r["forward_passes_per_update"] = 2 * r["forward_passes_per_estimate"]  # old + current
        r["tokens_per_s"] = tokens / r["seconds"]
        r["ratio_vs_ar"] = r["tokens_per_s"] / ar_tps
    lens = [len(t.completion_ids) for t in trajs]
    print(f"\n{name}: {len(trajs)} completions, {tokens} completion tokens (mean {tokens / len(trajs):.1f}, max {max(lens)}), "
          f"prompt {len(trajs[0].prompt_ids)} tokens, block size {trajs[0].block_size}")
    head = f"{'method':20s} {'fwd/estimate':>12s} {'fwd/update':>10s} {'s/update':>9s} {'tokens/s':>9s} {'vs AR':>7s}"
    print(head)
    print("-" * len(head))
    for label, r in res.items():
        print(f"{label:20s} {r['forward_passes_per_estimate']:12d} {r['forward_passes_per_update']:10d} {r['seconds']:9.3f} {r['tokens_per_s']:9.0f} {r['ratio_vs_ar']:6.2f}x")
    return {"completions": len(trajs), "completion_tokens": tokens, "max_completion_len": max(lens), "methods": res}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--samples", type=int, default=8, help="completions per prompt")
    ap.add_argument("--long-tokens", type=int, default=64, help="max_new_tokens of the long setting (stop_at_eos=False); 0 skips it")
    ap.add_argument("--repeats", type=int, default=5, help="timed updates per method (after one warm-up); the median is reported")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", type=Path)
    add_shape_args(ap)
    args = ap.parse_args(argv)
    if args.vocab:
        out = run_shape(args)
        _write_json(args.json, out)
        return out
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    task = ArithmeticTask(digits=3)
    lm = load_model(BASE)
    settings = {f"task length ({task.max_new_tokens} new tokens, stop at EOS)": (task.max_new_tokens, True)}
    if args.long_tokens:
        settings[f"long ({args.long_tokens} new tokens, no EOS stop)"] = (args.long_tokens, False)
    print(f"learner update speed: {args.prompts} prompts x {args.samples} samples, {sum(p.numel() for p in lm.model.parameters()) / 1e6:.2f}M params, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} after 1 warm-up")
    out = {}
    for name, (max_new, stop) in settings.items():
        trajs, adv, reward = rollout_batch(lm, task, args.prompts, args.samples, max_new, stop, args.seed)
        out[name] = bench_setting(name, trajs, adv, args) | {"reward_mean": reward, "max_new_tokens": max_new, "stop_at_eos": stop}
    _write_json(args.json, out)
    return out


def _write_json(path: Path | None, out: dict) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2))
        print(f"json: {path}")


if __name__ == "__main__":
    main()
