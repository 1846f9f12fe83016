"""The batch one RL step hands from stage to stage, and the part of it the learner takes.

    rollout     -> StepBatch(trajs, examples)          samples and the dataset rows they came from
    score       -> .rewards [B], .token_rewards [B, C]  filled in place
    advantages  -> .advantages [B], .loss_mask [B], .value_rewards [B], select()
                                                       the kept groups, every field aligned
    update      <- .for_learner() -> LearnerBatch      tensors only, put once in Ray's object store

Every per-sample field is a tensor with one row per trajectory, in the same order, and
`select` keeps them so (a filtered group leaves with its rewards, step maps and process
rewards; nothing shifts). The dataset rows (`examples`, indexed by `Trajectory.group`) and the
completion texts stay on the driver: rewards read their columns here, so they never travel to
the rollout workers or the learners.

`LearnerBatch` is what the learner ranks consume: the kept trajectories as padded tensors
(ids, step maps, rollout log-probs, lengths, groups) with the advantages, loss mask, outcome
rewards for the value model and process rewards, all computed on the driver. Values are kept
in float64 so a learner reads back exactly the numbers the driver computed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Sequence

import torch

from algorithms.advantages import group_advantages
from rollout.trajectory import Trajectory

_PER_SAMPLE = ("rewards", "token_rewards", "advantages", "loss_mask", "value_rewards", "step_rewards", "scored_steps", "siblings")


def _vector(values: Any, dtype: torch.dtype) -> torch.Tensor | None:
    if values is None:
        return None
    t = torch.as_tensor(values if isinstance(values, torch.Tensor) else list(values), dtype=dtype)
    if t.dim() != 1:
        raise ValueError(f"expected one value per sample, got a tensor of shape {tuple(t.shape)}")
    return t


def padded(rows: Sequence[Sequence[float]] | torch.Tensor | None, dtype: torch.dtype = torch.float64, width: int | None = None) -> torch.Tensor | None:
    """[B, width] tensor of ragged rows, zero after each row's end (width: the longest row)."""
    if rows is None or isinstance(rows, torch.Tensor):
        return rows if rows is None else rows.to(dtype)
    rows = [list(r) for r in rows]
    width = max((len(r) for r in rows), default=0) if width is None else width
    out = torch.zeros((len(rows), width), dtype=dtype)
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = torch.tensor(r, dtype=dtype)
    return out


@dataclass
class StepBatch:
    """One step's samples and what the stages computed for them (see the module docstring)."""

    trajs: list[Trajectory]
    """The sampled completions, group i's samples taken from examples[i]."""
    examples: Sequence[Any] | None
    """The dataset example of each group (prompt index): prompt, columns, source (None in
    learner-only tests, which have no dataset rows)."""
    rewards: torch.Tensor | None = None
    """[B] float64 total reward of each sample (set by score; a sample no reward could score has 0;
    after `advantages`, the truncation rule applied)."""
    token_rewards: torch.Tensor | None = None
    """[B, C] float64 per-token process rewards, zero after each completion (set by score when a
    reward returned steps; else None)."""
    advantages: torch.Tensor | None = None
    """[B] float64 group advantage of each sample (set by advantages)."""
    loss_mask: torch.Tensor | None = None
    """[B] bool, whether a sample carries loss (False: truncated with `truncation: mask`)."""
    value_rewards: torch.Tensor | None = None
    """[B] float64 outcome reward the value model's GAE sees (group z-score, or raw with
    value.reward: raw); set by advantages when the value model is on."""
    step_rewards: torch.Tensor | None = None
    """[B, T] float64 reward of each sample's intermediate answer at its scored steps (units that
    `needs_step_predictions`, MDPO; set by score; 0 after a sample's steps)."""
    scored_steps: torch.Tensor | None = None
    """[B, T] long the recorded step of each step_rewards column, -1 after a sample's steps."""
    siblings: torch.Tensor | None = None
    """[B] long parent node of each row of a tree rollout's edge rows (`EstimatorUnit.tree_batch`): rows with
    one id are one parent's children; None for other batches."""

    def __post_init__(self) -> None:
        self.rewards = _vector(self.rewards, torch.float64)
        self.advantages = _vector(self.advantages, torch.float64)
        self.loss_mask = _vector(self.loss_mask, torch.bool)
        self.value_rewards = _vector(self.value_rewards, torch.float64)
        self.token_rewards = padded(self.token_rewards)
        n = len(self.trajs)
        for name in _PER_SAMPLE:
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"StepBatch.{name} has {len(value)} entries for {n} trajectories")
        if self.examples is not None:
            for t in self.trajs:
                if not 0 <= t.group < len(self.examples):
                    raise ValueError(f"a trajectory of group {t.group} but the batch has {len(self.examples)} examples")

    def __len__(self) -> int:
        return len(self.trajs)

    def __iter__(self):
        return iter(self.trajs)

    @property
    def groups(self) -> torch.Tensor:
        """[B] long: the prompt index of each sample."""
        return torch.tensor([t.group for t in self.trajs], dtype=torch.long)

    def select(self, idx: Sequence[int] | torch.Tensor) -> StepBatch:
        """The samples at `idx` (in that order), every per-sample field taken alike."""
        idx = idx.tolist() if isinstance(idx, torch.Tensor) else list(idx)
        if any(not 0 <= i < len(self) for i in idx):
            raise IndexError(f"select: indices {idx} outside a batch of {len(self)}")
        rows = torch.tensor(idx, dtype=torch.long)
        picked = {name: None if getattr(self, name) is None else getattr(self, name)[rows] for name in _PER_SAMPLE}
        return replace(self, trajs=[self.trajs[i] for i in idx], **picked)

    def example(self, t: Trajectory) -> Any:
        """The dataset example trajectory `t` was sampled from."""
        if self.examples is None:
            raise ValueError("this batch holds no dataset examples")
        return self.examples[t.group]

    def for_learner(self) -> LearnerBatch:
        """The tensors the learner ranks take (no dataset rows, no texts); needs `advantages`."""
        if self.advantages is None:
            raise ValueError("the learner needs advantages: run the advantages stage first")
        return LearnerBatch.pack(self.trajs, self.advantages, loss_mask=self.loss_mask, value_rewards=self.value_rewards,
                                 token_rewards=self.token_rewards, siblings=self.siblings)  # fmt: skip


@dataclass
class LearnerBatch:
    """The kept samples as padded tensors, one row per sample: what `Learner.update` consumes.

    Rows are right-padded with 0 after `prompt_lens` / `completion_lens`. Build one with
    `StepBatch.for_learner()` (the trainer) or `LearnerBatch.pack` (tests and benchmarks that
    hold trajectories and advantages); the estimators read `trajectories()`.
    """

    prompt_ids: torch.Tensor
    """[B, P] long prompt ids."""
    prompt_lens: torch.Tensor
    """[B] long."""
    completion_ids: torch.Tensor
    """[B, C] long sampled ids (EOS and the rest of its block included)."""
    completion_lens: torch.Tensor
    """[B] long."""
    step_map: torch.Tensor
    """[B, C] long denoising step at which each completion token was unmasked."""
    logprobs: torch.Tensor
    """[B, C] float64 rollout log-prob of each completion token."""
    group: torch.Tensor
    """[B] long prompt index (group statistics)."""
    temperature: torch.Tensor
    """[B] float64 sampling temperature."""
    finished: torch.Tensor
    """[B] bool, True where an EOS was decoded."""
    advantages: torch.Tensor
    """[B] float64 group advantages (unused when the value model supplies per-token ones)."""
    loss_mask: torch.Tensor
    """[B] bool, False keeps a sample out of the loss."""
    block_size: int | None = None
    """Tokens per block of the model that decoded the batch; None for full attention."""
    value_rewards: torch.Tensor | None = None
    """[B] float64 outcome reward for the value model's GAE (None without a value model)."""
    token_rewards: torch.Tensor | None = None
    """[B, C'] float64 per-token process rewards (None: the outcome reward at the last step)."""
    step_predictions: torch.Tensor | None = None
    """[B, S, C] long predicted canvas of each sample at each denoising step (`Trajectory.step_predictions`,
    rollouts with record_steps only, else [B, 0, 0]; rows past a sample's steps and columns past its completion are 0)."""
    step_confidences: torch.Tensor | None = None
    """[B, S, C] float32 probability of each prediction (`Trajectory.step_confidences`), 0-padded alike."""
    num_steps: torch.Tensor | None = None
    """[B] long recorded steps of each sample (with step_predictions)."""
    siblings: torch.Tensor | None = None
    """[B] long parent node of each tree edge row (`StepBatch.siblings`); `pack` gives other batches
    arange(B) (every row its own parent's only child), so only tensors cross to the learner."""

    def __post_init__(self) -> None:
        n = len(self.prompt_ids)
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor) and len(value) != n:
                raise ValueError(f"LearnerBatch.{f.name} has {len(value)} rows for {n} samples")

    @classmethod
    def pack(
        cls,
        trajs: Sequence[Trajectory],
        advantages: Sequence[float] | torch.Tensor,
        *,
        loss_mask: Sequence[bool] | torch.Tensor | None = None,
        value_rewards: Sequence[float] | torch.Tensor | None = None,
        token_rewards: Sequence[Sequence[float]] | torch.Tensor | None = None,
        siblings: Sequence[int] | torch.Tensor | None = None,
    ) -> LearnerBatch:
        """Pack trajectories and their per-sample values; sizes are checked."""
        trajs = list(trajs)
        n = len(trajs)
        if any(t.remasked for t in trajs):  # the flag does not survive packing: refuse here, before any estimator
            raise ValueError("a trajectory decoded with re-masking (strategy 'rcr') cannot be trained on: its step map holds each "
                             "token's last commit, not an unmask-once trace; roll out with static, threshold, adaptive or prophet")  # fmt: skip
        adv = _vector(advantages, torch.float64)
        if len(adv) != n:
            raise ValueError(f"{n} trajectories but {len(adv)} advantages")
        sizes = {t.block_size for t in trajs}
        if len(sizes) > 1:
            raise ValueError(f"one batch must come from one model, got block sizes {sorted(sizes, key=str)}")
        long = torch.long
        recorded = [t.step_predictions is not None for t in trajs]
        steps = {}
        if trajs and all(recorded):
            shape = (n, max(len(t.step_predictions) for t in trajs), max(len(t.completion_ids) for t in trajs))
            preds, conf = torch.zeros(shape, dtype=long), torch.zeros(shape, dtype=torch.float32)
            for i, t in enumerate(trajs):
                s, c = t.step_predictions.shape
                preds[i, :s, :c], conf[i, :s, :c] = t.step_predictions, t.step_confidences
            steps = {"step_predictions": preds, "step_confidences": conf,
                     "num_steps": torch.tensor([len(t.step_predictions) for t in trajs], dtype=long)}
        elif any(recorded):
            raise ValueError("some trajectories recorded their steps (record_steps) and some did not: one batch, one rollout setting")
        else:  # tensors only cross to the learner: no steps recorded is zero steps
            steps = {"step_predictions": torch.zeros((n, 0, 0), dtype=long), "step_confidences": torch.zeros((n, 0, 0)),
                     "num_steps": torch.zeros(n, dtype=long)}
        return cls(
            prompt_ids=padded([t.prompt_ids for t in trajs], long),
            prompt_lens=torch.tensor([len(t.prompt_ids) for t in trajs], dtype=long),
            completion_ids=padded([t.completion_ids for t in trajs], long),
            completion_lens=torch.tensor([len(t.completion_ids) for t in trajs], dtype=long),
            step_map=padded([t.step_map for t in trajs], long),
            logprobs=padded([t.logprobs for t in trajs], torch.float64),
            group=torch.tensor([t.group for t in trajs], dtype=long),
            temperature=torch.tensor([t.temperature for t in trajs], dtype=torch.float64),
            finished=torch.tensor([t.finish_reason == "eos" for t in trajs], dtype=torch.bool),
            advantages=adv,
            loss_mask=torch.ones(n, dtype=torch.bool) if loss_mask is None else _vector(loss_mask, torch.bool),
            block_size=next(iter(sizes)) if sizes else None,
            value_rewards=_vector(value_rewards, torch.float64),
            token_rewards=padded(token_rewards),
            siblings=torch.arange(n) if siblings is None else _vector(siblings, long),
            **steps,
        )

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def trajectories(self) -> list[Trajectory]:
        """The rows as `Trajectory` records (what the estimators and the value model read)."""
        out = []
        for i in range(len(self)):
            p, c = int(self.prompt_lens[i]), int(self.completion_lens[i])
            steps = {}
            if self.step_predictions is not None and self.step_predictions.shape[1]:
                s = int(self.num_steps[i])
                steps = {"step_predictions": self.step_predictions[i, :s, :c], "step_confidences": self.step_confidences[i, :s, :c]}
            out.append(Trajectory(
                prompt_ids=self.prompt_ids[i, :p].tolist(), completion_ids=self.completion_ids[i, :c].tolist(),
                step_map=self.step_map[i, :c].tolist(), logprobs=self.logprobs[i, :c].tolist(), block_size=self.block_size,
                temperature=float(self.temperature[i]), nfe=0, finish_reason="eos" if self.finished[i] else "length",
                group=int(self.group[i]), **steps,
            ))  # fmt: skip
        return out


def value_outcome_rewards(rewards: torch.Tensor, groups: torch.Tensor, algo: Any) -> torch.Tensor | None:
    """[B] the outcome reward the value model's GAE sees (None when the value model is off):
    the group z-score (value.reward: zscore, TraceRL's) or the rewards as scored (raw).

    `algo` is the run's `algorithm` config section (value.enabled, value.reward, zscore_std).
    """
    if not algo.value.enabled:
        return None
    if algo.value.reward == "raw":
        return rewards
    return group_advantages(rewards, groups, "zscore", std=algo.zscore_std)


def learner_batch(
    algo: Any,
    trajs: Sequence[Trajectory],
    advantages: Sequence[float] | torch.Tensor,
    *,
    rewards: Sequence[float] | None = None,
    loss_mask: Sequence[bool] | None = None,
    token_rewards: Sequence[Sequence[float]] | None = None,
) -> LearnerBatch:
    """A `LearnerBatch` from trajectories, advantages and raw rewards, the value model's outcome
    rewards derived as the trainer's advantages stage derives them: for scripts, benchmarks and
    tests that drive a `Learner` without the trainer.

    >>> from types import SimpleNamespace as NS
    >>> algo = NS(value=NS(enabled=True, reward="zscore"), zscore_std="sample")
    >>> ts = [Trajectory([1], [2], [0], [0.0], None, 1.0, 1, "eos", group=0) for _ in range(2)]
    >>> learner_batch(algo, ts, [0.0, 0.0], rewards=[1.0, 0.0]).value_rewards.tolist()
    [0.7071..., -0.7071...]
    """
    value_r = None
    if rewards is not None:
        groups = torch.tensor([t.group for t in trajs], dtype=torch.long)
        value_r = value_outcome_rewards(torch.tensor(list(rewards), dtype=torch.float32), groups, algo)
    return LearnerBatch.pack(trajs, advantages, loss_mask=loss_mask, value_rewards=value_r, token_rewards=token_rewards)
