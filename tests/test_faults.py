"""A rollout worker killed during a step is replaced and the step completes with the same data."""

import ray

from rl.config import load_config
from rl.trainer import Trainer

from .conftest import ROOT


def test_killed_rollout_worker_is_replaced_and_its_prompts_redone(tmp_path):
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", [
        "rollout.num_workers=2", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=4",
        "wandb.mode=disabled", "eval.heldout_limit=8",
    ])
    trainer = Trainer(cfg, tmp_path)
    try:
        trainer.sync_weights(version=0)
        reference = trainer.rollout(step=3)
        # Kill worker 0 while its generate call is in flight.
        victim = trainer.workers[0]
        pending = victim.generate.remote([[5, 6, 7]] * 64, trainer.train_params, 0)
        ray.kill(victim)
        redone = trainer.rollout(step=3)
        assert trainer.worker_restarts == 1 and trainer.workers[0] is not victim
        assert [t.completion_ids for t in redone] == [t.completion_ids for t in reference]
        assert [t.group for t in redone] == [t.group for t in reference]
        del pending
    finally:
        trainer.shutdown()
