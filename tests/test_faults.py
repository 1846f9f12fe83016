"""A rollout worker killed during a step is replaced and the step completes with the same data."""

from collections import Counter

import ray

from rl.config import load_config
from rl.trainer import Trainer

from .conftest import ROOT


def _die_at_forward(marker: str, at: int = 2):
    """A function for `__ray_call__` that arms a live worker: its `at`-th model forward (counted
    from now) writes `marker` and ends the process, in the middle of the generate call that made it."""

    def arm(worker):
        import os

        forward, calls = worker.lm.forward_logits, []

        def dying(*args, **kwargs):
            calls.append(1)
            if len(calls) == at:
                with open(marker, "w") as f:
                    f.write(f"{len(calls) - 1} forwards done\n")
                os._exit(1)
            return forward(*args, **kwargs)

        worker.lm.forward_logits = dying
        return os.getpid()

    return arm


def test_killed_rollout_worker_is_replaced_and_its_prompts_redone(tmp_path):
    prompts_per_step, samples = 4, 4
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", [
        "rollout.num_workers=2", f"rollout.prompts_per_step={prompts_per_step}", f"rollout.samples_per_prompt={samples}",
        "wandb.mode=disabled", "eval.heldout_limit=8",
    ])
    trainer = Trainer(cfg, tmp_path)
    try:
        trainer.sync_weights(version=0)
        reference = trainer.rollout(step=3)
        submitted = []  # (worker, groups of the prompts it was given) of every generate call
        submit = trainer.workers._submit

        def spy(w, chunk, seed, params):
            submitted.append((w, [g for _, g in chunk]))
            return submit(w, chunk, seed, params)

        trainer.workers._submit = spy
        victim = trainer.workers[0]
        marker = tmp_path / "died_mid_generate"
        ray.get(victim.__ray_call__.remote(_die_at_forward(str(marker))))
        redone = trainer.rollout(step=3)
        # The worker died inside its generate call (one forward done, the second never returned) ...
        assert marker.read_text() == "1 forwards done\n"
        assert trainer.workers.restarts == 1 and trainer.workers[0] is not victim
        # ... and its replacement decoded exactly worker 0's share again: the first half of the
        # step's 16 samples (groups 0 and 1, 4 each), once; worker 1 was asked once for the rest.
        half = prompts_per_step * samples // 2
        first = [g for g in range(prompts_per_step) for _ in range(samples)][:half]
        rest = [g for g in range(prompts_per_step) for _ in range(samples)][half:]
        assert submitted == [(0, first), (1, rest), (0, first)]
        # Nothing lost, nothing duplicated, in order: the step's data are what they were unfaulted.
        assert len(redone) == prompts_per_step * samples
        assert Counter(t.group for t in redone) == {g: samples for g in range(prompts_per_step)}
        assert [t.group for t in redone] == [t.group for t in reference]
        assert [t.prompt_ids for t in redone] == [t.prompt_ids for t in reference]
        assert [t.completion_ids for t in redone] == [t.completion_ids for t in reference]
        assert [t.step_map for t in redone] == [t.step_map for t in reference]
    finally:
        trainer.shutdown()
