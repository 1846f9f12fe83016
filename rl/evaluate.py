"""Held-out accuracy of a checkpoint (diffusion or autoregressive) on a synthetic task, in one process."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rewards import get_reward
from rl.tasks import ArithmeticTask
from rollout.autoregressive import ARModel, is_ar_checkpoint
from rollout.engine import SamplingParams, generate
from rollout.models import DiffusionLM, load_model

Policy = DiffusionLM | ARModel


def load_policy(path: str | Path, **kwargs) -> Policy:
    """A diffusion LM, or an ARModel for checkpoints saved as autoregressive baselines."""
    return ARModel.load(path) if is_ar_checkpoint(path) else load_model(path, **kwargs)


def decode(policy: Policy, prompts, params: SamplingParams, generator: torch.Generator, columns=None):
    """Trajectories from either kind of policy (AR models ignore the diffusion-only settings)."""
    if isinstance(policy, ARModel):
        return policy.generate(prompts, params.max_new_tokens, params.temperature, generator, columns=columns)
    return generate(policy, prompts, params, generator, columns=columns)


def evaluate_task(
    policy: Policy, task: ArithmeticTask, rows: list[dict[str, str]], params: SamplingParams, batch_size: int = 256, seed: int = 0
) -> dict[str, Any]:
    """Decode every row's prompt and score it with the task's verifier.

    Returns accuracy, mean NFE, tokens per forward and decoded tokens/s.
    """
    verifier = get_reward(task.reward)
    gen = torch.Generator().manual_seed(seed)
    trajs, t0 = [], time.perf_counter()
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        prompts = [policy.tokenizer(r["prompt"])["input_ids"] for r in chunk]
        trajs += decode(policy, prompts, params, gen, columns=chunk)
    elapsed = time.perf_counter() - t0
    correct = verifier([r["prompt"] for r in rows], [t.text for t in trajs], answer=[r["answer"] for r in rows])
    n_tok = sum(len(t.completion_ids) for t in trajs)
    return {
        "accuracy": float(np.mean([c == 1.0 for c in correct])),
        "n": len(rows),
        "nfe_mean": float(np.mean([t.nfe for t in trajs])),
        "tokens_per_forward": n_tok / max(1, sum(t.nfe for t in trajs)),
        "tokens_per_s": n_tok / elapsed,
        "examples": [{"prompt": r["prompt"], "completion": t.text, "answer": r["answer"]} for r, t in zip(rows[:5], trajs[:5])],
    }
