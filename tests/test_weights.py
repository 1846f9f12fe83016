"""Weight sync in transit: WeightsSnapshot pickles as raw buffers, reads zero-copy from Ray's
object store, and a worker adopts received buffers without ever writing into them."""

import pickle

import pytest
import ray
import torch

from rl.config import RunConfig
from rl.learner import Learner
from rollout import SamplingParams, generate
from rollout.weights import WeightsSnapshot, flatten_parameters, separate_storages, snapshot
from rollout.worker import RolloutWorker

from .conftest import BASE_CKPT, tiny_lm


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


def out_of_band(obj) -> tuple[bytes, list]:
    """Pickle with protocol 5 as Ray does: (the in-band bytes, the buffers handed over apart)."""
    buffers = []
    return pickle.dumps(obj, protocol=5, buffer_callback=buffers.append), buffers


def test_flatten_parameters_keeps_values_ties_and_training_and_the_snapshot_travels_as_one_buffer(tokenizer):
    plain, flat = tiny_lm(tokenizer, double=False), tiny_lm(tokenizer, double=False)
    for lm in (plain, flat):  # a second dtype
        lm.model.model.norm.weight.data = lm.model.model.norm.weight.data.bfloat16()
    before = {k: v.clone() for k, v in flat.model.state_dict().items()}
    assert flatten_parameters(flat.model) == 2  # one buffer per dtype
    state = flat.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in before.items())
    params = dict(flat.model.named_parameters(remove_duplicate=False))
    assert params["lm_head.weight"] is params["model.embed_tokens.weight"]  # still one tied Parameter
    fp32 = [p for p in flat.model.parameters() if p.dtype == torch.float32]
    base = fp32[0].untyped_storage().data_ptr()
    assert len(fp32) > 10 and all(p.untyped_storage().data_ptr() == base for p in fp32)
    # The same optimizer step on the flattened model gives the same weights.
    ids = torch.tensor([tokenizer("123+456=579")["input_ids"]])
    for lm in (plain, flat):
        opt = torch.optim.AdamW([p for p in lm.model.parameters() if p.dtype == torch.float32], lr=1e-2)
        lm.model(input_ids=ids).logits.float().square().mean().backward()
        opt.step()
    assert all(torch.equal(v, flat.model.state_dict()[k]) for k, v in plain.model.state_dict().items())
    # A snapshot crosses the store as one buffer per dtype, the tied head included in its embedding's.
    blob, buffers = out_of_band(snapshot(flat.model.state_dict()))
    nbytes = sum(p.numel() * p.element_size() for p in flat.model.parameters())
    assert len(buffers) == 2 and sum(memoryview(b).nbytes for b in buffers) == nbytes
    back = pickle.loads(blob, buffers=buffers)
    assert all(torch.equal(back[k], v) for k, v in flat.model.state_dict().items())
    assert back["lm_head.weight"].data_ptr() == back["model.embed_tokens.weight"].data_ptr()


def test_snapshot_sends_a_small_view_of_a_big_storage_alone_not_the_storage():
    big = torch.randn(1000, 64)
    blob, buffers = out_of_band(WeightsSnapshot({"row": big[10], "cols": big[:, :2]}))  # contiguous slice, strided slice
    assert sorted(memoryview(b).nbytes for b in buffers) == [64 * 4, 1000 * 2 * 4]
    back = pickle.loads(blob, buffers=buffers)
    assert torch.equal(back["row"], big[10]) and torch.equal(back["cols"], big[:, :2])


def test_a_flattened_model_saves_without_copies_and_loads_back_equal(tokenizer, tmp_path):
    from rollout.models import load_model

    lm = tiny_lm(tokenizer, double=False)
    flatten_parameters(lm.model)
    state = lm.model.state_dict()
    apart = separate_storages(state)
    # Same memory (no copy), each over its own storage; the tied head stays the embedding's alias.
    assert all(apart[k].data_ptr() == v.data_ptr() for k, v in state.items())
    ptrs = [apart[k].untyped_storage().data_ptr() for k in state if k != "lm_head.weight"]
    assert len(set(ptrs)) == len(ptrs)
    assert apart["lm_head.weight"].untyped_storage().data_ptr() == apart["model.embed_tokens.weight"].untyped_storage().data_ptr()
    lm.save_pretrained(tmp_path)
    back = load_model(tmp_path).model.state_dict()
    assert set(back) == set(state) and all(torch.equal(back[k], v) for k, v in state.items())


def test_a_mismatched_sync_is_refused_before_any_weight_changes():
    worker = RolloutWorker(str(BASE_CKPT))
    want = {k: v.clone() for k, v in worker.lm.model.state_dict().items()}
    bad = {k: torch.zeros_like(v) for k, v in want.items()}
    bad["model.norm.weight"] = torch.zeros(3)  # one wrong shape, listed after most tensors
    with pytest.raises(ValueError, match="model.norm.weight: \\(3,\\)"):
        worker.load_weights(bad)
    incomplete = {k: torch.zeros_like(v) for k, v in want.items() if k != "model.layers.0.mlp.up_proj.weight"}
    with pytest.raises(ValueError, match="missing=\\['model.layers.0.mlp.up_proj.weight'\\]"):
        worker.load_weights(incomplete)
    assert all(torch.equal(worker.lm.model.state_dict()[k], v) for k, v in want.items())


def test_snapshot_casts_each_buffer_once_to_the_readers_dtype(tokenizer):
    lm = tiny_lm(tokenizer, double=False)
    flatten_parameters(lm.model)
    state = {**lm.model.state_dict(), "counts": torch.arange(5)}  # integers are never cast
    snap = snapshot(state, torch.bfloat16)
    assert all(torch.equal(snap[k], v.to(torch.bfloat16)) for k, v in state.items() if k != "counts")
    assert snap["counts"].dtype == torch.int64 and torch.equal(snap["counts"], state["counts"])
    assert snap["lm_head.weight"].data_ptr() == snap["model.embed_tokens.weight"].data_ptr()  # still tied
    blob, buffers = out_of_band(snap)
    half = sum(p.numel() for p in lm.model.parameters()) * 2
    assert sorted(memoryview(b).nbytes for b in buffers) == [5 * 8, half]  # the model in one bf16 buffer
    # No cast asked (or the same dtype): CPU tensors stay views of the live weights.
    same = snapshot(state, torch.float32)
    assert all(same[k].data_ptr() == v.data_ptr() for k, v in state.items())


def test_a_bf16_worker_decodes_in_bf16_and_adopts_a_cast_snapshot():
    from rollout.worker import decoding_dtype

    assert decoding_dtype("auto", "cpu") == torch.float32 and decoding_dtype("auto", "cuda:1") == torch.bfloat16
    with pytest.raises(ValueError, match="rollout dtype 'bf16'"):
        decoding_dtype("bf16", "cpu")
    worker, reference = RolloutWorker(str(BASE_CKPT), dtype="bfloat16"), RolloutWorker(str(BASE_CKPT), dtype="bfloat16")
    assert worker.decoding_dtype() == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in worker.lm.model.parameters())
    torch.manual_seed(0)
    new = {k: v.float() + 0.05 * torch.randn(v.shape) for k, v in worker.lm.model.state_dict().items()}  # an fp32 learner's
    new["lm_head.weight"] = new["model.embed_tokens.weight"]
    reference.load_weights(new)  # plain fp32 dict: cast while copied into the bf16 parameters
    received = pickle.loads(pickle.dumps(snapshot(new, torch.bfloat16), protocol=5))
    worker.load_weights(received)
    key = "model.layers.0.mlp.up_proj.weight"
    assert dict(worker.lm.model.named_parameters())[key].data_ptr() == received[key].data_ptr()  # adopted, no copy
    tok = worker.lm.tokenizer
    prompts = [tok("123+456=")["input_ids"], tok("507+045=")["input_ids"]]
    greedy = SamplingParams(max_new_tokens=5, temperature=0.0)
    assert [t.completion_ids for t in generate(worker.lm, prompts, greedy)] == [t.completion_ids for t in generate(reference.lm, prompts, greedy)]


def test_bf16_rollout_workers_get_the_learners_weights_cast_by_the_trainer(tmp_path):
    import json

    from rl.config import load_config
    from rl.trainer import Trainer

    from .conftest import ROOT

    cfg = load_config(ROOT / "configs" / "quickstart.yaml", [
        "rollout.prompts_per_step=4", "rollout.samples_per_prompt=4", "wandb.mode=disabled", "eval.every=0",
        "train.steps=1", "eval.heldout_limit=8", "rollout.dtype=bfloat16",
    ])
    trainer = Trainer(cfg, tmp_path)
    try:
        trainer.train()
        learner = ray.get(trainer.learners[0].__ray_call__.remote(lambda self: {k: v.clone() for k, v in self.lm.model.state_dict().items()}))
        worker = ray.get(trainer.workers[0].__ray_call__.remote(lambda self: {k: v.clone() for k, v in self.lm.model.state_dict().items()}))
    finally:
        trainer.shutdown()
    assert trainer.workers.sync_dtype == torch.bfloat16
    assert set(worker) == set(learner)
    assert all(learner[k].dtype == torch.float32 and v.dtype == torch.bfloat16 and torch.equal(v, learner[k].bfloat16()) for k, v in worker.items())
    row = next(json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if "loss/total" in line)
    # The learner recomputes the old log-probs in fp32 (1e-6 from fp32 rollouts): bf16 decoding shows, a little.
    assert 1e-4 < row["logp_mismatch"] < 0.05
