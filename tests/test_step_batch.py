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
    got = (s.rewards.tolist(), s.token_rewards.tolist(), s.advantages.tolist(), s.loss_mask.tolist())
    assert got == ([4.0, 1.0], [[4.0], [1.0]], [0.4, 0.1], [False, True])
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
    assert kept.rewards.tolist() == [1.0, 0.0] and kept.token_rewards.tolist() == [[2.0], [3.0]]
    assert kept.advantages.tolist() == pytest.approx([1.0, -1.0], abs=1e-5) and kept.loss_mask.tolist() == [True, True]
    assert m["frac_filtered"] == pytest.approx(4 / 6) and m["frac_truncated"] == pytest.approx(1 / 6)


def test_learner_batch_is_tensors_that_give_back_the_exact_trajectories():
    """What crosses to the learner: tensors only (no lists, rows or texts), and the rows it rebuilds
    are the sampled ones, to the bit (log-probs and temperatures are not rounded to float32)."""
    import dataclasses

    import torch

    from rl.batch import LearnerBatch

    trajs = [
        Trajectory([5, 6, 7], [9, 2, 4], [1, 0, 2], [-0.1234567891234, -2.5, -1e-9], 4, 0.7, 3, "eos", text="x", group=0,
                   columns={"answer": "1"}),
        Trajectory([5], [3, 3], [0, 1], [-0.3, -0.2], 4, 0.7, 2, "length", group=1),
    ]  # fmt: skip
    b = StepBatch(trajs, ["a", "b"], rewards=[1.0, 0.0], token_rewards=[[0.5, 0.0, 0.25], [1.0, 2.0]],
                  advantages=[0.5, -0.5], loss_mask=[True, False], value_rewards=[0.7, -0.7]).for_learner()  # fmt: skip
    for f in dataclasses.fields(b):
        value = getattr(b, f.name)
        assert isinstance(value, torch.Tensor) or f.name == "block_size", f.name
    assert b.block_size == 4 and b.prompt_ids.tolist() == [[5, 6, 7], [5, 0, 0]] and b.prompt_lens.tolist() == [3, 1]
    assert b.token_rewards.tolist() == [[0.5, 0.0, 0.25], [1.0, 2.0, 0.0]] and b.value_rewards.tolist() == [0.7, -0.7]
    assert b.advantages.tolist() == [0.5, -0.5] and b.loss_mask.tolist() == [True, False]
    for got, want in zip(b.trajectories(), trajs):
        assert (got.prompt_ids, got.completion_ids, got.step_map, got.logprobs) == (want.prompt_ids, want.completion_ids, want.step_map, want.logprobs)
        assert (got.temperature, got.finish_reason, got.group, got.block_size) == (want.temperature, want.finish_reason, want.group, 4)
        assert got.columns == {} and got.text == ""  # the dataset row and the text stay on the driver
    with pytest.raises(ValueError, match="2 trajectories but 3 advantages"):
        LearnerBatch.pack(trajs, [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="needs advantages"):
        StepBatch(trajs, ["a", "b"]).for_learner()
    with pytest.raises(ValueError, match="one model"):
        LearnerBatch.pack([trajs[0], dataclasses.replace(trajs[1], block_size=None)], [0.0, 0.0])


def test_advantages_stage_gives_the_value_model_its_outcome_rewards():
    """The value model's rewards are derived on the driver (the learner no longer z-scores):
    group z-scores by default, the rewards as scored with value.reward: raw, none without it."""
    trainer = Trainer.__new__(Trainer)
    trajs = [_traj(0), _traj(0), _traj(0), _traj(1), _traj(1), _traj(1)]
    rewards = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    # group 0: mean 1/3, population std (the trace default) sqrt(2/9) = 0.4714: z = 1.4142, -0.7071
    z = [1.4142136, -0.7071068, -0.7071068, 0.7071068, 0.7071068, -1.4142136]
    for value, want in [({"enabled": True}, z), ({"enabled": True, "reward": "raw"}, rewards), ({"enabled": False}, None)]:
        trainer.cfg = SimpleNamespace(algorithm=AlgorithmConfig(value=value), rollout=SimpleNamespace(samples_per_prompt=3))
        kept, _ = trainer.advantages(StepBatch(trajs, ["e0", "e1"], rewards=rewards))
        got = None if kept.value_rewards is None else kept.value_rewards.tolist()
        assert got == (None if want is None else pytest.approx(want, abs=1e-5)), value
        if want is not None:
            assert kept.for_learner().value_rewards.tolist() == got
