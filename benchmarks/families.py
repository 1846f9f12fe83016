"""logp_mismatch per model family: rollout log-probs vs the learner's TraceRL replay of the same tokens.

For each family (block = SDAR/TraDo, llada, dream) a tiny model of its architecture decodes the
same prompts with each cache setting; the learner's `trace_logprobs` then scores the sampled
tokens on the decoded trajectory. The mean and max |rollout - learner| per token is what the
metric `logp_mismatch` reports during training: ~1e-7 means the rollout's log-probs are the
policy's own (exact cache, or none), larger values come from an approximate cache (full-attention
prefix/dual caches, Fast-dLLM style), which is why rollout.overlap refuses them.

The models are the SFT-trained quickstart base (block) and tiny random models for the full-attention
families, so the numbers show the size of the cache approximation, not a real model's.

    python benchmarks/families.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from algorithms import trace_logprobs  # noqa: E402
from rl.tasks import ArithmeticTask  # noqa: E402
from rollout import SamplingParams, build_char_tokenizer, generate, load_model  # noqa: E402
from rollout.models import build_tiny_lm  # noqa: E402

BASE = Path(__file__).resolve().parents[1] / "examples" / "checkpoints" / "arith3-base"
SETTINGS = {"block": [("kv_cache", {"kv_cache": True}), ("recompute", {"kv_cache": False})],
            "llada": [("prefix cache", {"kv_cache": True}), ("dual cache", {"kv_cache": True, "dual_cache": True}), ("recompute", {"kv_cache": False})]}  # fmt: skip
SETTINGS["dream"] = SETTINGS["llada"]


def mismatch(lm, prompts, params, seed: int) -> tuple[float, float]:
    trajs = generate(lm, prompts, params, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        logp, mask, _ = trace_logprobs(lm, trajs, shrink=1)
    rollout = torch.zeros_like(logp)
    for i, t in enumerate(trajs):
        rollout[i, : len(t.logprobs)] = torch.tensor(t.logprobs, dtype=logp.dtype)
    diff = (logp - rollout).abs()[mask]
    return float(diff.mean()), float(diff.max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    task = ArithmeticTask(3)
    tok = build_char_tokenizer()
    rows = task.train_rows(args.samples, seed=args.seed, step=0)
    prompts = [tok(r["prompt"])["input_ids"] for r in rows]
    out = {}
    for family, settings in SETTINGS.items():
        lm = load_model(BASE) if family == "block" else build_tiny_lm(tok, family=family, seed=args.seed)
        for label, kw in settings:
            extra = {"block_length": 4} if family != "block" else {}
            params = SamplingParams(max_new_tokens=8, temperature=1.0, **kw, **extra)
            mean, mx = mismatch(lm, prompts, params, args.seed)
            out[f"{family}/{label}"] = {"mean": mean, "max": mx}
            print(f"{family:6s} {label:13s} logp_mismatch mean {mean:.2e}  max {mx:.2e}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
