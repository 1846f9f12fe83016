"""Trainer.score on its own (no Ray): each source's rewards, and accuracy from the reward that decides it."""

from types import SimpleNamespace

from rewards import get_reward
from rl.config import RewardSpec, SourceConfig
from rl.data import load_source
from rl.batch import StepBatch
from rl.trainer import Trainer
from rollout.trajectory import Trajectory


def test_accuracy_comes_from_the_preset_reward_even_when_listed_second(tmp_path):
    f = tmp_path / "gsm.jsonl"
    f.write_text('{"question": "1+1?", "answer": "#### 2"}\n{"question": "2+2?", "answer": "#### 4"}\n')
    src = load_source(SourceConfig(path=str(f), preset="gsm8k", name="gsm",
                                   rewards=[RewardSpec(name="boxed_format", weight=0.1), RewardSpec(name="math")]))  # fmt: skip
    trainer = Trainer.__new__(Trainer)  # score needs only these
    trainer.sources = [src]
    trainer.reward_fns = {"gsm": [get_reward(s.name, **s.kwargs) for s in src.rewards]}
    trainer.reward_weights = {"gsm": [s.weight for s in src.rewards]}
    trainer.cfg = SimpleNamespace(scoring=SimpleNamespace(fail_fast=False, timeout_s=60.0, num_workers=None))
    ex = src.train
    trajs = [Trajectory([1], [2], [0], [0.0], None, 1.0, 1, "eos", text=text, group=g) for g, text in [(0, "\\boxed{2}"), (1, "\\boxed{5}")]]
    batch = StepBatch(trajs, ex)  # the rows stay on the driver: the trajectories carry no columns
    m = trainer.score(batch)
    scores = batch.rewards.tolist()
    assert m["accuracy/gsm/train"] == 0.5 and m["accuracy/train"] == 0.5  # both boxed, one right: not the format reward's 1.0
    assert scores == [1.1, 0.1] and m["reward/gsm/boxed_format_reward/mean"] == 1.0
