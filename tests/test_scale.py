"""Scale and faults through the real trainer: two rollout workers and two learner ranks in Ray
placement groups, a worker killed mid-step, a learner crash, one-step off-policy overlap,
checkpoints written by the driver, and a two-node Ray cluster."""

import json

import pytest
import ray
import torch
from safetensors.torch import load_file

from rl.checkpoint import CheckpointStore
from rl.cluster import local_model_path, pack_dir
from rl.config import load_config
from rl.trainer import LearnerDied, Trainer

from .conftest import BASE_CKPT, ROOT

SMALL = [
    "rollout.prompts_per_step=4", "rollout.samples_per_prompt=4", "eval.heldout_limit=8",
    "wandb.mode=disabled", "train.save_every=1", "eval.every=0",
]


def small_config(*extra):
    return load_config(ROOT / "configs" / "quickstart.yaml", SMALL + list(extra))


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_checkpoint_store_writes_reads_and_ignores_incomplete(tmp_path):
    for root in (tmp_path / "ckpts", "memory://unmask-test/ckpts"):
        store = CheckpointStore(root)
        assert store.latest() is None
        store.write(1, {"model/a.bin": b"one", "learner.pt": b"x"}, {"step": 1})
        store.write(2, {"model/a.bin": b"two", "learner.pt": b"y"}, {"step": 2})
        # A step whose marker was never written (a kill while saving) does not count.
        store.fs.makedirs(store.path + "/step_000003/model", exist_ok=True)
        store.fs.pipe(store.path + "/step_000003/model/a.bin", b"partial")
        latest = store.latest()
        assert latest.endswith("step_000002")
        files, state = store.read(latest)
        assert files == {"model/a.bin": b"two", "learner.pt": b"y"} and state == {"step": 2}


def test_a_model_directory_ships_to_a_node_that_lacks_it(tmp_path):
    packed = pack_dir(BASE_CKPT)
    assert local_model_path(str(BASE_CKPT), packed) == str(BASE_CKPT)  # this node has it: no copy
    copy = local_model_path(str(tmp_path / "not-here"), packed)
    assert load_file(f"{copy}/model.safetensors").keys() == load_file(BASE_CKPT / "model.safetensors").keys()


@pytest.mark.parametrize("mode", ["separate", "colocated"])
def test_placement_bundles_for_workers_and_learner_ranks(mode):
    from rl.cluster import connect, place
    from rl.config import ClusterConfig

    connect(None)
    p = place(ClusterConfig(placement=mode, cpus_per_bundle=0.5), num_workers=2, num_ranks=2)
    try:
        bundle = lambda o: o["scheduling_strategy"].placement_group_bundle_index  # noqa: E731
        ray.get(p.groups[0].ready(), timeout=60)
        if mode == "separate":
            assert [bundle(o) for o in p.rollout] == [0, 1] and [bundle(o) for o in p.learner] == [2, 3]
            assert all(o["num_cpus"] == 0.5 for o in p.rollout + p.learner)
            assert len(p.groups[0].bundle_specs) == 4
        else:  # worker i and rank i share bundle i, half each
            assert [bundle(o) for o in p.rollout] == [bundle(o) for o in p.learner] == [0, 1]
            assert all(o["num_cpus"] == 0.25 for o in p.rollout + p.learner)
            assert len(p.groups[0].bundle_specs) == 2
    finally:
        p.remove()


def test_two_workers_two_learner_ranks_survive_a_killed_worker(tmp_path):
    cfg = small_config("train.steps=2", "rollout.num_workers=2", "learner.ranks=2", "eval.benchmarks=['arithmetic,limit=8,label=arith']")
    trainer = Trainer(cfg, tmp_path)
    launch = trainer.launch_rollout

    def launch_then_kill(step):
        job = launch(step)
        if step == 1:
            ray.kill(trainer.workers[0])  # dies with its share of step 2's prompts in flight
        return job

    trainer.launch_rollout = launch_then_kill
    try:
        summary = trainer.train()
        groups = {ray.get(a.__ray_call__.remote(lambda self: ray.get_runtime_context().get_placement_group_id())) for a in [*trainer.learners, *trainer.workers]}
    finally:
        trainer.shutdown()
    assert summary["steps"] == 2 and trainer.workers.restarts == 1
    rows = [r for r in metrics(tmp_path) if "loss/total" in r]
    assert [r["step"] for r in rows] == [1, 2] and rows[-1]["faults/worker_restarts"] == 1
    assert len(groups) == 1 and None not in groups, "every actor runs in the run's placement group"
    assert (tmp_path / "checkpoints" / "step_000002" / "trainer_state.json").exists()
    # The benchmark path (encode, decode on the workers, score with the benchmark's reward) agrees
    # with the task's own held-out scoring on the same 8 problems.
    evals = [r for r in metrics(tmp_path) if "eval/arith/pass@1" in r]
    assert [r["step"] for r in evals] == [0, 2]
    assert all(r["eval/arith/pass@1"] == r["accuracy/heldout"] for r in evals)


def test_learner_crash_ends_the_run_with_the_last_checkpoint_intact(tmp_path):
    cfg = small_config("train.steps=3", "cluster.placement=colocated")  # worker and learner share one bundle
    trainer = Trainer(cfg, tmp_path)
    save = trainer.save

    def save_then_crash(step, extra):
        path = save(step, extra)
        if step == 2:
            ray.kill(trainer.learners[0])  # the learner dies before step 3's update
        return path

    trainer.save = save_then_crash
    try:
        with pytest.raises(LearnerDied, match="step_000002") as err:
            trainer.train()
        assert "--resume" in str(err.value)
    finally:
        trainer.shutdown()
    assert CheckpointStore(tmp_path / "checkpoints").latest().endswith("step_000002")
    resumed = Trainer(cfg, tmp_path, resume=True)
    try:
        assert resumed.train()["steps"] == 3
    finally:
        resumed.shutdown()
    assert [r["step"] for r in metrics(tmp_path) if "loss/total" in r] == [1, 2, 3]


def test_overlap_decodes_the_next_step_during_the_update_with_staleness_one(tmp_path):
    cfg = small_config("train.steps=3", "rollout.overlap=true", f"train.checkpoint_dir={tmp_path / 'elsewhere'}")
    trainer = Trainer(cfg, tmp_path)
    try:
        trainer.train()
    finally:
        trainer.shutdown()
    rows = [r for r in metrics(tmp_path) if "loss/total" in r]
    assert [r["rollout/staleness"] for r in rows] == [0.0, 1.0, 1.0]
    assert all(0 < r["tokens_per_s"] < 2e4 for r in rows), "decoding speed, not tokens over the (hidden) wait"
    # The importance ratio uses the rollout's log-probs: at staleness 0 it is exactly 1.
    assert rows[0]["logp_mismatch"] < 1e-4
    assert CheckpointStore(tmp_path / "elsewhere").latest().endswith("step_000003")
    assert not (tmp_path / "checkpoints").exists()


def test_training_on_a_two_node_ray_cluster(tmp_path):
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        cfg = small_config("train.steps=1", "cluster.strategy=STRICT_SPREAD", "cluster.cpus_per_bundle=1")
        cfg.cluster.address = cluster.address
        trainer = Trainer(cfg, tmp_path)
        try:
            trainer.train()
            node = lambda a: ray.get(a.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))  # noqa: E731
            assert node(trainer.learners[0]) != node(trainer.workers[0]), "learner and rollout worker on different nodes"
        finally:
            trainer.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert (tmp_path / "checkpoints" / "step_000001" / "trainer_state.json").exists()
    assert torch.load(tmp_path / "checkpoints" / "step_000001" / "learner.pt", weights_only=False)["step"] == 1
