"""The learner: policy, frozen reference, optional value model, and optimizers that live for
the whole run.

A plain class; the trainer runs it as a Ray actor. One `update` consumes one rollout batch:
old and reference log-probs (and old values) first, then `epochs x minibatches` optimizer
steps of the configured estimator and loss.
"""

from __future__ import annotations

import copy
import random
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from algorithms.estimators import get_estimator
from algorithms.losses import LOSSES
from algorithms.value import ValueModel, terminal_token_rewards, trace_gae, value_loss
from rl.config import RunConfig
from rollout.lora import adapter_state, apply_lora, load_adapter_state
from rollout.models import load_model
from rollout.trajectory import Trajectory


def step_map_tensor(trajs: Sequence[Trajectory], width: int) -> torch.Tensor:
    """[N, width] long step maps, -1 at padding."""
    out = torch.full((len(trajs), width), -1, dtype=torch.long)
    for i, t in enumerate(trajs):
        out[i, : len(t.step_map)] = torch.tensor(t.step_map)
    return out


class Learner:
    """Owns the trainable policy (and value model) and their AdamW states."""

    def __init__(self, cfg: RunConfig):
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.cfg = cfg
        m, algo = cfg.model, cfg.algorithm
        self.lm = load_model(m.path, family=m.family, block_size=m.block_size, trust_remote_code=m.trust_remote_code)
        self.ref = self.peft = None
        if m.lora.enabled:
            # The reference is then the base model with the adapter disabled: no second copy.
            self.peft = apply_lora(self.lm, m.lora.r, m.lora.alpha, m.lora.dropout, m.lora.target_modules)
            if Path(m.path).exists():  # saved adapters must find their base from any directory
                self.peft.peft_config["default"].base_model_name_or_path = str(Path(m.path).resolve())
        elif algo.beta > 0:
            # The reference is the initial policy, frozen.
            self.ref = copy.deepcopy(self.lm)
            self.ref.model.requires_grad_(False)
        trainable = [p for p in self.lm.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=algo.lr, weight_decay=algo.weight_decay)
        self.value = self.value_optimizer = None
        if algo.value.enabled:
            # The critic starts from the policy's weights, with its own copy and optimizer.
            self.value = ValueModel(copy.deepcopy(self.lm))
            self.value_optimizer = torch.optim.AdamW(self.value.parameters(), lr=algo.value.lr)
        self.estimate = get_estimator(algo.estimator)
        self.estimator_opts = {"shrink": algo.shrink, "p_mask_prompt": algo.p_mask_prompt, "n": algo.mc_samples, "quadrature": algo.quadrature}
        self.loss_fn = LOSSES[algo.loss]
        self.step = 0

    def get_weights(self) -> dict[str, torch.Tensor]:
        """What rollout workers need to match the policy (CPU tensors): the full state dict, or
        only the adapter's tensors with LoRA."""
        if self.peft is not None:
            return adapter_state(self.peft)
        return {k: v.detach().to("cpu", copy=True) for k, v in self.lm.model.state_dict().items()}

    def _ref_estimate(self, batch, seed, opts):
        if self.peft is not None:
            with self.peft.disable_adapter():
                return self.estimate(self.lm, batch, None, seed=seed, **opts)[0]
        return self.estimate(self.ref, batch, None, seed=seed, **opts)[0]

    def update(
        self,
        trajs: Sequence[Trajectory],
        advantages: Sequence[float],
        rewards: Sequence[float] | None = None,
        loss_mask: Sequence[bool] | None = None,
        token_rewards: Sequence[Sequence[float]] | None = None,
    ) -> dict[str, float]:
        """One RL update on a rollout batch; returns averaged diagnostics.

        Args:
            advantages: per sample (group advantages); ignored when the value model is on.
            rewards: per sample, needed by the value model (placed on the last trace step).
            loss_mask: per sample, False to keep a sample out of the loss (truncation: mask).
            token_rewards: per completion token (process rewards placed on their trace steps,
                rl.process_rewards); the value model uses them instead of the terminal reward.
        """
        algo = self.cfg.algorithm
        if len(trajs) != len(advantages):
            raise ValueError(f"{len(trajs)} trajectories but {len(advantages)} advantages")
        if self.value is not None and (rewards is None or len(rewards) != len(trajs)):
            raise ValueError("the value model needs one reward per trajectory")
        adv_all = torch.tensor(list(advantages), dtype=torch.float32)
        keep_all = torch.tensor(list(loss_mask) if loss_mask is not None else [True] * len(trajs))
        seed = self.cfg.train.seed * 1_000_003 + self.step
        gen = torch.Generator().manual_seed(seed)
        chunks = [c.tolist() for c in torch.randperm(len(trajs), generator=gen).chunk(algo.minibatches)]
        opts = self.estimator_opts
        # Old, reference and current passes draw the same masks: same seed, per-sample RNG.
        mb_seed = lambda j: seed * 131 + j  # noqa: E731

        old, ref, adv, returns, old_values, metrics = {}, {}, {}, {}, {}, defaultdict(list)
        with torch.no_grad():
            for j, idx in enumerate(chunks):
                batch = [trajs[i] for i in idx]
                old[j], mask = self.estimate(self.lm, batch, None, seed=mb_seed(j), **opts)
                if algo.beta > 0:
                    ref[j] = self._ref_estimate(batch, mb_seed(j), opts)
                adv[j] = adv_all[idx]
                if self.value is not None:
                    steps = step_map_tensor(batch, mask.shape[1])
                    old_values[j] = self.value.values(batch, algo.shrink).float()
                    if token_rewards is not None:
                        tok_r = torch.zeros(steps.shape)
                        for r, i in enumerate(idx):
                            tok_r[r, : len(token_rewards[i])] = torch.tensor(token_rewards[i], dtype=torch.float32)
                    else:
                        tok_r = terminal_token_rewards(torch.tensor([rewards[i] for i in idx], dtype=torch.float32), steps)
                    adv[j], returns[j] = trace_gae(tok_r, old_values[j], steps, algo.value.gamma, algo.value.lam)
                if algo.estimator == "trace":
                    # ~0 when rollout and learner agree on weights and replay; large = stale or misaligned.
                    rollout_lp = torch.zeros_like(old[j])
                    for r, t in enumerate(batch):
                        rollout_lp[r, : len(t.logprobs)] = torch.tensor(t.logprobs)
                    metrics["logp_mismatch"].append(float(((old[j] - rollout_lp).abs() * mask).sum() / mask.sum()))

        self.lm.model.train()
        for _ in range(algo.epochs):
            for j, idx in enumerate(chunks):
                batch = [trajs[i] for i in idx]
                logp, mask, entropy = self.estimate(self.lm, batch, None, seed=mb_seed(j), with_entropy=True, **opts)
                mask = mask & keep_all[idx][:, None]
                loss, m = self.loss_fn(
                    logp, old[j], adv[j], mask, algo.eps_low, algo.eps_high,
                    ref_logp=ref.get(j), beta=algo.beta, norm=algo.loss_norm, norm_constant=algo.norm_constant,
                )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], algo.grad_clip)
                self.optimizer.step()
                m["loss/total"] = loss.item()
                m["grad_norm"] = float(grad_norm)
                m["entropy"] = float((entropy * mask).sum() / mask.sum().clamp(min=1))
                if self.value is not None:
                    values = self.value.values(batch, algo.shrink).float()
                    vloss, vm = value_loss(values, old_values[j], returns[j], mask, algo.value.clip)
                    self.value_optimizer.zero_grad(set_to_none=True)
                    vloss.backward()
                    torch.nn.utils.clip_grad_norm_(self.value.parameters(), algo.grad_clip)
                    self.value_optimizer.step()
                    m.update(vm)
                for k, v in m.items():
                    metrics[k].append(v)
        self.lm.model.eval()
        self.step += 1
        return {k: float(np.mean(v)) for k, v in metrics.items()}

    def save(self, path: str | Path) -> None:
        """Weights in transformers format under path/model (or the LoRA adapter under path/adapter);
        optimizer, value model and RNG in path/learner.pt."""
        path = Path(path)
        if self.peft is not None:
            self.peft.save_pretrained(path / "adapter")  # base_model_name_or_path points at the base
            self.lm.tokenizer.save_pretrained(path / "adapter")
        else:
            self.lm.save_pretrained(path / "model")
        torch.save(
            {
                "step": self.step,
                "optimizer": self.optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "python_rng": random.getstate(),
                "ref": None if self.ref is None else self.ref.model.state_dict(),
                "value": None if self.value is None else self.value.state_dict(),
                "value_optimizer": None if self.value is None else self.value_optimizer.state_dict(),
            },
            path / "learner.pt",
        )

    def load(self, path: str | Path) -> int:
        """Restore weights, optimizers, value model, step and RNG from a checkpoint written by `save`."""
        path = Path(path)
        state = torch.load(path / "learner.pt", weights_only=False)
        if self.peft is not None:
            from safetensors.torch import load_file

            load_adapter_state(self.peft, load_file(path / "adapter" / "adapter_model.safetensors"))
        else:
            restored = load_model(path / "model", family=self.lm.family.name, block_size=self.lm.block_size)
            self.lm.model.load_state_dict(restored.model.state_dict())
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ref is not None and state["ref"] is not None:
            self.ref.model.load_state_dict(state["ref"])
        if self.value is not None:
            if state.get("value") is None:
                raise ValueError(f"{path} has no value model, but algorithm.value.enabled is set")
            self.value.load_state_dict(state["value"])
            self.value_optimizer.load_state_dict(state["value_optimizer"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        self.step = state["step"]
        return self.step
