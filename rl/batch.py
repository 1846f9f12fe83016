"""The batch one RL step hands from stage to stage on the driver.

    rollout     -> StepBatch(trajs, examples)          samples and the dataset rows they came from
    score       -> .rewards, .token_rewards            filled in place
    advantages  -> .advantages, .loss_mask, select()   the kept groups, every field aligned
    update      <- the learner ranks take trajs, advantages, rewards, loss_mask, token_rewards

Every per-sample field has one entry per trajectory, in the same order, and `select` keeps them
so (a filtered group leaves with its rewards, step maps and process rewards; nothing shifts).
The dataset rows (`examples`, indexed by `Trajectory.group`) stay on the driver: rewards read
their columns here, so they never travel to the rollout workers and back.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

from rollout.trajectory import Trajectory

_PER_SAMPLE = ("rewards", "token_rewards", "advantages", "loss_mask")


@dataclass
class StepBatch:
    """One step's samples and what the stages computed for them (see the module docstring)."""

    trajs: list[Trajectory]
    """The sampled completions, group i's samples taken from examples[i]."""
    examples: Sequence[Any]
    """The dataset example of each group (prompt index): prompt, columns, source."""
    rewards: list[float] | None = None
    """[B] total reward of each sample (set by score; a sample no reward could score has 0)."""
    token_rewards: list[list[float]] | None = None
    """[B] per-token process rewards (set by score when a reward returned steps; else None)."""
    advantages: list[float] | None = None
    """[B] group advantage of each sample (set by advantages)."""
    loss_mask: list[bool] | None = None
    """[B] whether a sample carries loss (False: truncated with `truncation: mask`)."""

    def __post_init__(self) -> None:
        n = len(self.trajs)
        for name in _PER_SAMPLE:
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"StepBatch.{name} has {len(value)} entries for {n} trajectories")
        for t in self.trajs:
            if not 0 <= t.group < len(self.examples):
                raise ValueError(f"a trajectory of group {t.group} but the batch has {len(self.examples)} examples")

    def __len__(self) -> int:
        return len(self.trajs)

    def __iter__(self):
        return iter(self.trajs)

    def select(self, idx: Sequence[int]) -> StepBatch:
        """The samples at `idx` (in that order), every per-sample field taken alike."""
        idx = list(idx)
        if any(not 0 <= i < len(self) for i in idx):
            raise IndexError(f"select: indices {idx} outside a batch of {len(self)}")
        picked = {name: None if getattr(self, name) is None else [getattr(self, name)[i] for i in idx] for name in _PER_SAMPLE}
        return replace(self, trajs=[self.trajs[i] for i in idx], **picked)

    def example(self, t: Trajectory) -> Any:
        """The dataset example trajectory `t` was sampled from."""
        return self.examples[t.group]


