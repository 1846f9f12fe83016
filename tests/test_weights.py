"""Weight sync in transit: WeightsSnapshot pickles as raw buffers, reads zero-copy from Ray's
object store, and a worker adopts received buffers without ever writing into them."""

import pickle

import pytest
import ray
import torch

from rl.config import RunConfig
from rl.learner import Learner
from rollout import SamplingParams, generate
from rollout.weights import WeightsSnapshot, snapshot
from rollout.worker import RolloutWorker

from .conftest import BASE_CKPT


def mixed_snapshot():
    emb = torch.randn(6, 4)
    return WeightsSnapshot({"emb": emb, "head": emb, "half": torch.randn(3, 5, dtype=torch.bfloat16), "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3)})


def test_snapshot_round_trips_dtypes_shapes_and_ties_sending_a_tied_tensor_once():
    snap = mixed_snapshot()
    blob = pickle.dumps(snap, protocol=5)
    back = pickle.loads(blob)
    assert isinstance(back, WeightsSnapshot) and back.received and not snap.received
    assert list(back) == list(snap)
    for k, v in snap.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k
    assert back["head"].data_ptr() == back["emb"].data_ptr()  # still tied
    # 24 + 15 x 2 bytes bf16 + 1 scalar: the tied copy adds nothing (4 bytes a float32).
    payload = 6 * 4 * 4 + 3 * 5 * 2 + 4
    assert payload < len(blob) < payload + 600


def test_snapshot_reads_zero_copy_from_the_object_store():
    started = not ray.is_initialized()  # earlier tests (Trainer) may have left a session running
    if started:
        ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=False, num_cpus=1)
    try:
        big = WeightsSnapshot({"w": torch.randn(256, 1024), "b": torch.randn(1024)})
        ref = ray.put(big)
        a, b = ray.get(ref), ray.get(ref)
        assert a.received and torch.equal(a["w"], big["w"]) and torch.equal(a["b"], big["b"])
        # Two reads of one object map the same shared memory: no copy was made for either.
        assert a["w"].data_ptr() == b["w"].data_ptr() and a["w"].data_ptr() != big["w"].data_ptr()
    finally:
        if started:
            ray.shutdown()


def test_learner_snapshot_is_a_view_of_its_weights_on_cpu():
    learner = Learner(RunConfig.model_validate({"data": {"sources": [{"path": "arithmetic"}]}, "model": {"path": str(BASE_CKPT)}, "wandb": {"mode": "disabled"}}))
    state = learner.lm.model.state_dict()
    snap = learner.get_weights()
    assert isinstance(snap, WeightsSnapshot) and set(snap) == set(state)
    assert all(snap[k].data_ptr() == v.data_ptr() and not snap[k].requires_grad for k, v in state.items())
    assert snapshot({"x": torch.ones(2, requires_grad=True)})["x"].requires_grad is False


def test_worker_adopts_received_buffers_and_never_writes_into_them():
    worker = RolloutWorker(str(BASE_CKPT))
    tok = worker.lm.tokenizer
    prompts = [tok("123+456=")["input_ids"], tok("507+045=")["input_ids"]]
    greedy = SamplingParams(max_new_tokens=5, temperature=0.0)
    torch.manual_seed(0)
    new = {k: v + 0.05 * torch.randn_like(v) for k, v in worker.lm.model.state_dict().items()}
    new["lm_head.weight"] = new["model.embed_tokens.weight"]  # tied, as a learner's state dict is
    want = worker.lm.model.state_dict()
    reference = RolloutWorker(str(BASE_CKPT))
    reference.load_weights(dict(new))  # plain dict: copied into its own parameters
    received = pickle.loads(pickle.dumps(snapshot(new), protocol=5))
    assert worker.load_weights(received, version=4) == 4
    params = dict(worker.lm.model.named_parameters(remove_duplicate=False))
    assert params["model.layers.0.mlp.up_proj.weight"].data_ptr() == received["model.layers.0.mlp.up_proj.weight"].data_ptr()
    assert params["lm_head.weight"] is params["model.embed_tokens.weight"]  # re-tied after assign
    assert [t.completion_ids for t in generate(worker.lm, prompts, greedy)] == [t.completion_ids for t in generate(reference.lm, prompts, greedy)]
    # A later plain load must not write into the adopted (possibly shared) buffers.
    kept = {k: v.clone() for k, v in received.items()}
    worker.load_weights(want)
    assert all(torch.equal(received[k], v) for k, v in kept.items())
    assert all(torch.equal(worker.lm.model.state_dict()[k], v) for k, v in want.items())
    with pytest.raises(ValueError, match="weight sync mismatch"):
        worker.load_weights(pickle.loads(pickle.dumps(WeightsSnapshot({"bogus.weight": torch.zeros(1)}))))
