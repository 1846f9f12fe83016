"""The learner: policy, frozen reference, and an optimizer that lives for the whole run.

A plain class; the trainer runs it as a Ray actor. One `update` consumes one rollout
batch: old and reference log-probs first, then `epochs x minibatches` optimizer steps
of the TraceRL clipped objective.
"""

from __future__ import annotations

import copy
import random
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from algorithms.losses import policy_loss
from algorithms.trace import trace_logprobs
from rl.config import RunConfig
from rollout.models import load_model
from rollout.trajectory import Trajectory


class Learner:
    """Owns the trainable policy and its AdamW state."""

    def __init__(self, cfg: RunConfig):
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.cfg = cfg
        m = cfg.model
        self.lm = load_model(m.path, family=m.family, block_size=m.block_size, trust_remote_code=m.trust_remote_code)
        self.ref = None
        if cfg.algorithm.beta > 0:
            # The reference is the initial policy, frozen.
            self.ref = copy.deepcopy(self.lm)
            self.ref.model.requires_grad_(False)
        algo = cfg.algorithm
        self.optimizer = torch.optim.AdamW(self.lm.model.parameters(), lr=algo.lr, weight_decay=algo.weight_decay)
        self.step = 0

    def get_weights(self) -> dict[str, torch.Tensor]:
        """The policy's state dict (CPU tensors) for in-memory sync to rollout workers."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.lm.model.state_dict().items()}

    def update(self, trajs: Sequence[Trajectory], advantages: Sequence[float]) -> dict[str, float]:
        """One RL update on a rollout batch; returns averaged diagnostics."""
        algo = self.cfg.algorithm
        if len(trajs) != len(advantages):
            raise ValueError(f"{len(trajs)} trajectories but {len(advantages)} advantages")
        adv = torch.tensor(list(advantages), dtype=torch.float32)
        gen = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + self.step)
        chunks = [c.tolist() for c in torch.randperm(len(trajs), generator=gen).chunk(algo.minibatches)]

        # Old and reference log-probs, per minibatch, before any parameter changes.
        old, ref, metrics = {}, {}, defaultdict(list)
        with torch.no_grad():
            for j, idx in enumerate(chunks):
                batch = [trajs[i] for i in idx]
                old[j], mask, _ = trace_logprobs(self.lm, batch, algo.shrink)
                if self.ref is not None:
                    ref[j], _, _ = trace_logprobs(self.ref, batch, algo.shrink)
                rollout_lp = torch.zeros_like(old[j])
                for r, t in enumerate(batch):
                    rollout_lp[r, : len(t.logprobs)] = torch.tensor(t.logprobs)
                # ~0 when rollout and learner agree on weights and replay; large = stale or misaligned.
                metrics["logp_mismatch"].append(float(((old[j] - rollout_lp).abs() * mask).sum() / mask.sum()))

        self.lm.model.train()
        for _ in range(algo.epochs):
            for j, idx in enumerate(chunks):
                batch = [trajs[i] for i in idx]
                logp, mask, entropy = trace_logprobs(self.lm, batch, algo.shrink, with_entropy=True)
                loss, m = policy_loss(
                    logp, old[j], adv[idx], mask, algo.eps_low, algo.eps_high,
                    ref_logp=ref.get(j), beta=algo.beta, norm=algo.loss_norm,
                )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.lm.model.parameters(), algo.grad_clip)
                self.optimizer.step()
                m["loss/total"] = loss.item()
                m["grad_norm"] = float(grad_norm)
                m["entropy"] = float((entropy * mask).sum() / mask.sum())
                for k, v in m.items():
                    metrics[k].append(v)
        self.lm.model.eval()
        self.step += 1
        return {k: float(np.mean(v)) for k, v in metrics.items()}

    def save(self, path: str | Path) -> None:
        """Weights in transformers format under path/model, optimizer + RNG in path/learner.pt."""
        path = Path(path)
        self.lm.save_pretrained(path / "model")
        torch.save(
            {
                "step": self.step,
                "optimizer": self.optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "python_rng": random.getstate(),
                "ref": None if self.ref is None else self.ref.model.state_dict(),
            },
            path / "learner.pt",
        )

    def load(self, path: str | Path) -> int:
        """Restore weights, optimizer, step and RNG from a checkpoint written by `save`."""
        path = Path(path)
        state = torch.load(path / "learner.pt", weights_only=False)
        restored = load_model(path / "model", family=self.lm.family.name, block_size=self.lm.block_size)
        self.lm.model.load_state_dict(restored.model.state_dict())
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ref is not None and state["ref"] is not None:
            self.ref.model.load_state_dict(state["ref"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        self.step = state["step"]
        return self.step
