"""The step batch: per-sample fields stay aligned through selection and the driver's stages."""

from types import SimpleNamespace

import pytest

from rl.batch import StepBatch
from rl.config import AlgorithmConfig
from rl.trainer import Trainer
from rollout.trajectory import Trajectory


def _traj(group: int, reason: str = "eos", n: int = 2) -> Trajectory:
    return Trajectory([1], [7] * n, list(range(n)), [0.0] * n, None, 1.0, n, reason, group=group)


def test_select_keeps_every_field_aligned_and_checks_sizes():
    trajs = [_traj(g, n=k + 1) for k, g in enumerate([0, 0, 1, 1])]
    b = StepBatch(trajs, ["a", "b"], rewards=[1.0, 2.0, 3.0, 4.0], token_rewards=[[1.0], [2.0], [3.0], [4.0]],
                  advantages=[0.1, 0.2, 0.3, 0.4], loss_mask=[True, False, True, False])  # fmt: skip
    s = b.select([3, 0])
    assert [len(t.completion_ids) for t in s] == [4, 1]
    assert (s.rewards, s.token_rewards, s.advantages, s.loss_mask) == ([4.0, 1.0], [[4.0], [1.0]], [0.4, 0.1], [False, True])
    assert s.example(s.trajs[0]) == "b" and s.examples is b.examples
    with pytest.raises(ValueError, match="rewards has 3 entries for 4 trajectories"):
        StepBatch(trajs, ["a", "b"], rewards=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="group 1 but the batch has 1 examples"):
        StepBatch(trajs, ["a"])
    with pytest.raises(IndexError):
        b.select([4])


def test_advantages_drop_a_filtered_group_with_its_rewards_and_process_rewards():
    """Groups of 2: group 0 rewards [1, 1] (no variance, dropped by drop_zero_std), group 1 [1, 0]
    (mean 0.5, population std 0.5: z-scores +1 and -1), group 2 [0, 1] with the second sample
    truncated and truncation 'wrong' (its reward becomes 0: no variance, dropped)."""
    trainer = Trainer.__new__(Trainer)
    algo = AlgorithmConfig(drop_zero_std=True, truncation="wrong")
    trainer.cfg = SimpleNamespace(algorithm=algo, rollout=SimpleNamespace(samples_per_prompt=2))
    trajs = [_traj(0), _traj(0), _traj(1), _traj(1), _traj(2), _traj(2, "length")]
    batch = StepBatch(trajs, ["e0", "e1", "e2"], rewards=[1.0, 1.0, 1.0, 0.0, 0.0, 1.0], token_rewards=[[float(i)] for i in range(6)])
    kept, m = trainer.advantages(batch)
    assert kept.trajs == trajs[2:4]
    assert kept.rewards == [1.0, 0.0] and kept.token_rewards == [[2.0], [3.0]]
    assert kept.advantages == pytest.approx([1.0, -1.0], abs=1e-5) and kept.loss_mask == [True, True]
    assert m["frac_filtered"] == pytest.approx(4 / 6) and m["frac_truncated"] == pytest.approx(1 / 6)
