"""Data-parallel learner: the gradient of every optimizer step equals a single-rank run's.

Two gloo ranks run in spawned processes (one spawn for every scenario, to pay the start-up
once); the single-rank references run here. Gradients are read at `optimizer.step`, after the
cross-rank reduction, with clipping out of the way (grad_clip huge), so a wrong normaliser
shows up as a factor instead of being clipped away.

Mixture of experts (`MOE_SCENARIOS`): tiny checkpoints in SDAR-30B-A3B's and LLaDA2.0-mini's hub
layouts (tests/test_sdar_moe.py, tests/test_moe_family.py), loaded onto Qwen3-MoE and Glm4Moe, train
under fsdp2 on their own rollouts. Their stacked expert tensors are sharded on the expert dimension
(each rank stores half the experts), the routing inside each decoder layer differs between ranks, and
the expert and router gradients still equal the one-rank run's; the SDAR-MoE checkpoint asks for the
router's load-balancing loss and gets none.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.multiprocessing as mp

from algorithms.estimators import (
    count_forward_passes,
    occurrence_index,
    one_step_estimate,
)
from rl.batch import learner_batch
from rl.config import RunConfig
from rl.distributed import free_port, minibatch_pieces
from rl.learner import Learner
from rollout import SamplingParams
from rollout.worker import RolloutWorker

from .conftest import BASE_CKPT

N = 8  # trajectories per batch

# name -> (algorithm overrides, learner overrides, batch size, LoRA); all run on 2 ranks
SCENARIOS = {
    "trace_token_kl_value": ({"estimator": "trace", "loss_norm": "token", "beta": 0.05, "value": {"enabled": True, "lr": 1e-3}}, {}, N, False),
    "trace_sequence": ({"estimator": "trace", "loss_norm": "sequence"}, {}, N, False),
    "one_step_token_kl": ({"estimator": "one_step", "loss_norm": "token", "beta": 0.05}, {}, N, False),
    # 3 samples per minibatch over 2 ranks x 2 micro-batches: one piece is an empty stand-in
    "one_step_sequence_micro2_uneven": ({"estimator": "one_step", "loss_norm": "sequence"}, {"micro_batches": 2}, 6, False),
    # the reference is the base with the adapter off, through the DDP module
    "lora_one_step_token_kl": ({"estimator": "one_step", "loss_norm": "token", "beta": 0.05}, {}, N, True),
    "fsdp2_trace_token_kl_value": (
        {"estimator": "trace", "loss_norm": "token", "beta": 0.05, "value": {"enabled": True, "lr": 1e-3}},
        {"parallel": "fsdp2"},
        N,
        False,
    ),
    # the frozen base sharded too; the reference is the base with the adapter off; only the adapter is gathered
    "fsdp2_lora_one_step_token_kl": ({"estimator": "one_step", "loss_norm": "token", "beta": 0.05}, {"parallel": "fsdp2"}, N, True),
    # LoRA on the MoE: adapters on the stacked experts (peft target_parameters), sharded by expert with them
    "fsdp2_lora_sdar_moe_trace_token": ({"estimator": "trace", "loss_norm": "token", "beta": 0.0}, {"parallel": "fsdp2"}, 4, True),
    # 4 rollouts: one sample per rank and minibatch (the dense fsdp2 scenario covers a sharded reference and critic)
    "fsdp2_sdar_moe_trace_token": ({"estimator": "trace", "loss_norm": "token", "beta": 0.0}, {"parallel": "fsdp2"}, 4, False),
    # LLaDA2's rollouts fill its block of 32 (26 tokens): shrink 4 replays them in a quarter of the passes
    "fsdp2_llada2_trace_sequence": ({"estimator": "trace", "loss_norm": "sequence", "beta": 0.0, "shrink": 4}, {"parallel": "fsdp2"}, 4, False),
}
# scenario -> family: these run on the `moe` fixture's checkpoint of that family and its rollouts, not the base's
MOE_SCENARIOS = {"fsdp2_sdar_moe_trace_token": "sdar_moe", "fsdp2_llada2_trace_sequence": "llada2", "fsdp2_lora_sdar_moe_trace_token": "sdar_moe"}


def cfg_for(algo: dict, learner: dict | None = None, lora: bool = False, path=BASE_CKPT) -> RunConfig:
    return RunConfig.model_validate(
        {
            "data": {"sources": [{"path": "arithmetic"}]}, "model": {"path": str(path), "lora": {"enabled": lora, "r": 4}},
            "algorithm": {"lr": 1e-3, "minibatches": 2, "grad_clip": 1e9, "epochs": 1, **algo},  # one pass, whatever the preset's
            "learner": learner or {},
            "train": {"threads": 1},
            "wandb": {"mode": "disabled"},
        }
    )


def _full(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().cpu().clone()


def capture_grads(learner: Learner) -> dict[str, list]:
    """Record the (reduced, clipped) gradients each optimizer step applies."""
    seen: dict[str, list] = {"policy": [], "value": []}
    names = {id(p): n for n, p in learner.lm.model.named_parameters()}  # the sharded parameters themselves under fsdp2
    seen["policy_names"] = [names[id(p)] for g in learner.optimizer.param_groups for p in g["params"]]
    for key, opt in (("policy", learner.optimizer), ("value", learner.value_optimizer)):
        if opt is None:
            continue
        params = [p for g in opt.param_groups for p in g["params"]]
        step = opt.step

        def recording_step(*a, _step=step, _params=params, _key=key, **k):
            seen[_key].append([None if p.grad is None else _full(p.grad) for p in _params])
            return _step(*a, **k)

        opt.step = recording_step
    return seen


def make_learner(cfg: RunConfig, rank: int = 0, world_size: int = 1) -> Learner:
    torch.manual_seed(0)  # LoRA's random init; under DDP every rank then gets rank 0's anyway
    return Learner(cfg, rank=rank, world_size=world_size)


def run_update(learner: Learner, trajs, n: int) -> tuple[dict, dict]:
    grads = capture_grads(learner)
    adv = torch.linspace(-1, 1, n).tolist()
    # rewards that vary inside each group (groups alternate 0, 1): the value model sees their
    # group z-scores, which a constant group would turn into zeros
    rewards = [float(i % 3 == 0) for i in range(n)]
    metrics = learner.update(learner_batch(learner.cfg.algorithm, trajs[:n], adv, rewards=rewards))
    return grads, metrics


def expert_shards(learner: Learner) -> dict[str, tuple[str, tuple, tuple]]:
    """name -> (placements, local shape, global shape) of the policy's routed experts and routers."""
    from torch.distributed.tensor import DTensor

    out = {}
    for n, p in learner.lm.model.named_parameters():
        if ".mlp.experts." in n or n.endswith(".mlp.gate.weight"):
            local = p.to_local() if isinstance(p, DTensor) else p
            out[n] = (str(getattr(p, "placements", None)), tuple(local.shape), tuple(p.shape))
    return out


def _rank_main(rank: int, world: int, port: int, data: dict, out: str) -> None:
    torch.set_num_threads(1)
    results = {}
    learner = None
    for name, (algo, lrn, n, lora) in SCENARIOS.items():
        path, trajs = data[MOE_SCENARIOS.get(name, "base")]
        learner = make_learner(cfg_for(algo, {"ranks": world, **lrn}, lora, path), rank, world)
        learner.setup_distributed("127.0.0.1", port)
        grads, metrics = run_update(learner, trajs, n)
        res = {"grads": grads, "metrics": metrics, "weights": learner.get_weights()}
        if name.startswith("fsdp2") or name in ("trace_sequence", "lora_one_step_token_kl"):
            res["files"] = learner.state_files()
        if name == "fsdp2_lora_one_step_token_kl":  # resume on two ranks: the sharded adapter and its optimizer state
            import torch.distributed as dist

            files = [res["files"]]
            dist.broadcast_object_list(files, src=0)  # every rank loads the same files
            res["grads"] = {k: list(v) for k, v in grads.items()}  # the capture goes on recording
            run_update(learner, trajs, n)  # move away from the saved state
            step = learner.load_state_files(files[0])
            res["resumed"] = (step, learner.get_weights(), len(learner.optimizer.state))
        if name in MOE_SCENARIOS:
            from torch.distributed.fsdp import FSDPModule

            res["units"] = [n for n, m in learner._policy.named_modules() if isinstance(m, FSDPModule)]
            res["experts"] = expert_shards(learner)
            res["output_router_logits"] = learner.lm.model.config.output_router_logits
        results[name] = res
    learner.shutdown_distributed()
    torch.save(results, f"{out}/rank{rank}.pt")


@pytest.fixture(scope="module")
def trajs():
    worker = RolloutWorker(str(BASE_CKPT))
    tok = worker.lm.tokenizer
    prompts = [tok("123+456=")["input_ids"], tok("507+045=")["input_ids"]] * (N // 2)
    gen = worker.generate(prompts, SamplingParams(max_new_tokens=5, temperature=1.0), seed=0, groups=[0, 1] * (N // 2))
    # identical samples (as a group can hold): their masks hang on the duplicate counter, which
    # must count over the whole minibatch, not over the piece a rank happens to score
    return gen[: N // 2] + [copy.deepcopy(t) for t in gen[: N // 2]]


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    """family -> (path, rollouts): tiny hub-layout checkpoints of both MoE families, each with 4
    rollouts of its own (SDAR-MoE: two blocks of 4; LLaDA2: the rest of its first block of 32). The
    SDAR-MoE one asks for the load-balancing loss (output_router_logits, coefficient 10). The base's
    character tokenizer keeps the vocabularies at 82 rows: with the families' 152k / 157k the head,
    not the experts, would take most of the time."""
    from rollout import build_char_tokenizer

    from .test_moe_family import llada2_checkpoint
    from .test_sdar_moe import sdar_moe_checkpoint

    out = {}
    for family, build, over in (("sdar_moe", sdar_moe_checkpoint, {"output_router_logits": True, "router_aux_loss_coef": 10.0}),
                                ("llada2", llada2_checkpoint, {"mask_token_id": build_char_tokenizer().mask_token_id})):  # fmt: skip
        path = tmp_path_factory.mktemp(family) / "hub"
        build(path, tokenizer=build_char_tokenizer(), **over)
        worker = RolloutWorker(str(path))
        tok = worker.lm.tokenizer
        prompts = [tok("12+34=")["input_ids"], tok("50+05=")["input_ids"]] * 2
        params = SamplingParams(max_new_tokens=8, temperature=1.0, kv_cache=True)
        out[family] = path, worker.generate(prompts, params, seed=0, groups=[0, 1] * 2)
    return out


def scenario_data(name: str, trajs, moe):
    return moe[MOE_SCENARIOS[name]] if name in MOE_SCENARIOS else (BASE_CKPT, trajs)


@pytest.fixture(scope="module")
def one_rank(trajs, moe):
    """name -> (grads, metrics, learner) of the scenario's single-rank reference, run once per module."""
    runs = {}

    def run(name: str):
        if name not in runs:
            algo, _, n, lora = SCENARIOS[name]
            path, data = scenario_data(name, trajs, moe)
            learner = make_learner(cfg_for(algo, lora=lora, path=path))
            runs[name] = (*run_update(learner, data, n), learner)
        return runs[name]

    return run


@pytest.fixture(scope="module")
def two_ranks(trajs, moe, tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_rank_main, args=(2, free_port(), {"base": (BASE_CKPT, trajs), **moe}, str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def assert_grads_equal(got: dict, want: dict, first_step_rtol: float = 2e-6) -> None:
    for key in ("policy", "value"):
        assert len(got[key]) == len(want[key]), key
        for step, (gs, ws) in enumerate(zip(got[key], want[key])):
            # after the first step the weights differ by the first step's float noise, amplified by Adam
            rtol = first_step_rtol if step == 0 else 1e-3
            for i, (g, w) in enumerate(zip(gs, ws)):
                if w is None:
                    assert g is None or not g.any(), (key, step, i)
                    continue
                scale = w.abs().max().item()
                assert (g - w).abs().max().item() <= rtol * scale + 1e-9, (key, step, i, (g - w).abs().max().item(), scale)


def assert_metrics_equal(got: dict, want: dict, rel: float = 1e-4) -> None:
    assert set(got) == set(want)
    for k, v in want.items():
        if math.isnan(v):
            assert math.isnan(got[k]), k
        else:
            assert got[k] == pytest.approx(v, rel=rel, abs=1e-6), k


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_two_ranks_match_one_rank(name, two_ranks, one_rank):
    want_grads, want_metrics, one = one_rank(name)
    r0, r1 = two_ranks[0][name], two_ranks[1][name]
    assert_grads_equal(r0["grads"], want_grads)
    assert_metrics_equal(r0["metrics"], want_metrics)
    assert r1["metrics"] == r0["metrics"]  # every rank returns the same global metrics
    assert r1["weights"] == {}  # rank 0 answers get_weights, with full (gathered) CPU tensors
    want_weights = one.get_weights()
    assert set(r0["weights"]) == set(want_weights)
    # Adam divides by sqrt(v): where a gradient is near zero, its float noise moves the update by a
    # few % of lr (1e-3 per step here), so 1e-4 is the tolerance; a stale or misplaced shard is off
    # by the weights' own scale (~0.1).
    for k, v in want_weights.items():
        torch.testing.assert_close(r0["weights"][k], v, atol=1e-4, rtol=0, msg=k)


def test_checkpoint_files_from_two_ranks_load_into_one(two_ranks, trajs, moe):
    """state_files of a ddp and of an fsdp2 run (gathered weights, optimizer state by name)
    restore into a single-rank learner; the MoE's gathered expert stacks included."""
    for name in ("trace_sequence", "fsdp2_trace_token_kl_value", "lora_one_step_token_kl", "fsdp2_lora_one_step_token_kl", *MOE_SCENARIOS):
        algo, _, _, lora = SCENARIOS[name]
        path, _ = scenario_data(name, trajs, moe)
        r0 = two_ranks[0][name]
        assert two_ranks[1][name]["files"] == {}
        files = r0["files"]
        weights_dir = "adapter/adapter_model.safetensors" if lora else "model/model.safetensors"
        assert "learner.pt" in files and weights_dir in files
        one = make_learner(cfg_for(algo, lora=lora, path=path))
        assert one.load_state_files(files) == 1
        state = one.get_weights()
        for k, v in r0["weights"].items():
            assert torch.equal(state[k], v), (name, k)
        opt = one.optimizer.state_dict()["state"]
        assert len(opt) == len(one.optimizer.param_groups[0]["params"]) and opt[0]["step"] == 2  # two minibatches
        if "resumed" in r0:  # two ranks restored their own files: the saved adapter, step and optimizer state
            step, weights, n_states = r0["resumed"]
            assert step == 1 and n_states == len(opt) and weights.keys() == r0["weights"].keys()
            assert all(torch.equal(weights[k], v) for k, v in r0["weights"].items())
        if one.value is not None:
            assert one.value_optimizer.state_dict()["state"][0]["step"] == 2


@pytest.mark.parametrize("name", [n for n in MOE_SCENARIOS if not SCENARIOS[n][3]])
def test_moe_experts_are_sharded_by_expert_and_train_like_one_rank_with_no_balance_loss(name, two_ranks, one_rank):
    """fsdp2 on Qwen3-MoE (SDAR-MoE) and Glm4Moe (LLaDA2: layer 0 dense, layer 1 routed plus a shared
    expert): one unit per decoder layer, its stacked experts [E, 2I, H] / [E, H, I] split on the
    expert dimension (4 of the 8 experts stored per rank); after the update every expert and router
    gradient of both optimizer steps is nonzero and equals the one-rank run's (the generic test
    compares them all; this names them, so the check cannot pass vacuously). The router trains
    through the routing weights of its chosen experts alone, as in the families' own RL: the
    SDAR-MoE checkpoint asked for the balance loss (coefficient 10) and the converted config turns it
    off on every rank (rollout/convert_sdar_moe.py; a flat loss gives it zero gradient,
    tests/test_sdar_moe.py); Glm4Moe has no such loss."""
    moe_layers = {"sdar_moe": (0, 1), "llada2": (1,)}[MOE_SCENARIOS[name]]
    r0, r1 = two_ranks[0][name], two_ranks[1][name]
    assert r0["output_router_logits"] is False and r1["output_router_logits"] is False
    # the units: the estimator module (root: embeddings, final norm, head) and each decoder layer, experts inside it
    assert r0["units"] == ["", "model.model.layers.0", "model.model.layers.1"]
    for shards in (r0["experts"], r1["experts"]):
        stacks = {n: v for n, v in shards.items() if ".mlp.experts." in n}
        assert sorted(stacks) == [f"model.layers.{i}.mlp.experts.{p}" for i in moe_layers for p in ("down_proj", "gate_up_proj")]
        for n, (placements, local, full) in stacks.items():
            assert placements == "(Shard(dim=0),)" and full[0] == 8 and local == (4, *full[1:]), (n, placements, local, full)
    if SCENARIOS[name][0].get("shrink", 1) == 1:  # merged step groups replay other contexts than the rollout's
        # the replayed routing is the rollout's: a shard gathered wrong, or a stale one, would change the chosen experts
        assert r0["metrics"]["logp_mismatch"] < 1e-5
    want, _, _ = one_rank(name)
    names = r0["grads"]["policy_names"]
    assert names == want["policy_names"]
    moe_params = [i for i, k in enumerate(names) if ".mlp.experts." in k or k.endswith(".mlp.gate.weight")]
    assert len(moe_params) == 3 * len(moe_layers)  # per routed layer: gate_up_proj, down_proj, router
    for step in range(2):
        for i in moe_params:
            g, w = r0["grads"]["policy"][step][i], want["policy"][step][i]
            assert w.abs().max() > 0, names[i]
            torch.testing.assert_close(g, w, rtol=0, atol=2e-6 * w.abs().max().item() if step == 0 else 1e-3 * w.abs().max().item(), msg=names[i])


@pytest.mark.parametrize("family", ["sdar_moe", "llada2"])
def test_fsdp2_units_are_decoder_layers_and_expert_stacks_shard_by_expert(family):
    """What `fully_shard` wraps on both MoE families (in this process, a group of one rank): one unit
    per decoder layer and the root, never the experts or the router on their own (routing differs
    between ranks, so a unit that only some ranks' tokens reach would leave its collectives
    unmatched), and the stacked expert tensors split on dim 0, the expert index."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor, Shard

    from rl.learner_state import _fully_shard

    from .test_sdar_moe import _tiny_moe

    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        root = torch.nn.Module()
        root.model = _tiny_moe(family)  # sdar_moe: both layers routed; llada2: layer 0 dense, layer 1 routed + shared expert
        _fully_shard(root, root.model, init_device_mesh("cpu", (1,)))
        assert [n for n, m in root.named_modules() if isinstance(m, FSDPModule)] == ["", "model.model.layers.0", "model.model.layers.1"]
        stacks = {n: p for n, p in root.named_parameters() if ".mlp.experts." in n}
        assert sorted(stacks) == [f"model.model.layers.{i}.mlp.experts.{p}" for i in ((0, 1) if family == "sdar_moe" else (1,)) for p in ("down_proj", "gate_up_proj")]
        for n, p in stacks.items():
            assert isinstance(p, DTensor) and p.placements == (Shard(0),) and p.shape[0] == 8, n
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("estimator,norm,n", [("trace", "token", N), ("one_step", "sequence", 6)])
def test_micro_batches_match_one_piece(estimator, norm, n, trajs):
    algo = {"estimator": estimator, "loss_norm": norm, "beta": 0.05}
    want_grads, want_metrics = run_update(Learner(cfg_for(algo)), trajs, n)
    got_grads, got_metrics = run_update(Learner(cfg_for(algo, {"micro_batches": 2})), trajs, n)
    assert_grads_equal(got_grads, want_grads)
    assert_metrics_equal(got_metrics, want_metrics)


def test_constant_norm_and_gspo_split_exactly(trajs):
    algo = {"estimator": "trace", "loss": "gspo", "loss_norm": "constant", "norm_constant": 40.0}
    want_grads, want_metrics = run_update(Learner(cfg_for(algo)), trajs, N)
    got_grads, got_metrics = run_update(Learner(cfg_for(algo, {"micro_batches": 3})), trajs, N)
    assert_grads_equal(got_grads, want_grads)
    assert_metrics_equal(got_metrics, want_metrics)


def test_gradient_checkpointing_gives_the_same_gradients(trajs):
    algo = {"estimator": "trace", "loss_norm": "token", "value": {"enabled": True}}
    calls = []

    def counted(learner):  # calls of one layer's MLP, which a checkpointed backward recomputes
        for lm in (learner.lm, learner.value.lm):
            mlp = lm.model.model.layers[0].mlp
            mlp.forward = lambda *a, _f=mlp.forward, **k: calls.append(1) or _f(*a, **k)  # hooks do not see recomputes
        return learner

    want_grads, _ = run_update(counted(Learner(cfg_for(algo))), trajs, N)
    plain, calls[:] = len(calls), []
    got_grads, _ = run_update(counted(Learner(cfg_for(algo, {"gradient_checkpointing": True}))), trajs, N)
    assert len(calls) > plain  # activations were recomputed, for the policy and the critic
    assert_grads_equal(got_grads, want_grads)


@pytest.mark.parametrize("estimator,loss,norm,value", [
    ("trace", "grpo", "token", True), ("trace", "grpo", "sequence", False), ("trace", "grpo", "pass", False),
    ("trace", "gspo", "sequence", True), ("coupled", "grpo", "token", False), ("mc_elbo", "gspo", "sequence", False),
])  # fmt: skip
def test_backward_per_pass_gives_the_same_update(estimator, loss, norm, value, trajs):
    algo = {"estimator": estimator, "loss": loss, "loss_norm": norm, "beta": 0.05, "value": {"enabled": value, "lr": 1e-3}}
    off = Learner(cfg_for(algo, {"backward_per_pass": False}))
    on = Learner(cfg_for(algo))
    assert on.backward_per_pass and not off.backward_per_pass
    # Only TraceRL with a per-token loss splits the loss itself; GSPO's sequence ratio and the
    # estimators that combine passes per token (coupled's full-mask pass) take all log-probs first.
    assert on.recompute_per_pass == (estimator != "trace" or loss == "gspo")
    backwards = []
    backward = torch.Tensor.backward
    torch.Tensor.backward = lambda self, *a, **k: backwards.append(1) or backward(self, *a, **k)
    try:
        want_grads, want_metrics = run_update(off, trajs, N)
        plain, backwards[:] = len(backwards), []
        got_grads, got_metrics = run_update(on, trajs, N)
    finally:
        torch.Tensor.backward = backward
    assert len(backwards) > plain  # one backward per replayed pass, not one per piece
    assert_grads_equal(got_grads, want_grads)
    assert_metrics_equal(got_metrics, want_metrics)


@pytest.mark.parametrize("estimator,loss", [("trace", "grpo"), ("trace", "gspo"), ("coupled", "grpo")])
def test_backward_per_pass_keeps_one_pass_of_activations(estimator, loss, trajs):
    from benchmarks.memory import SavedBytes, counting_backward

    peaks = {}
    for per_pass in (False, True):
        learner = Learner(cfg_for({"estimator": estimator, "loss": loss, "beta": 0.0, "minibatches": 1}, {"backward_per_pass": per_pass}))
        meter = SavedBytes()
        with counting_backward(meter), torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda t: t):
            run_update(learner, trajs, N)
        peaks[per_pass] = meter.peak
    passes = count_forward_passes(estimator, trajs[:N], **learner.estimator_opts)
    assert passes >= 3
    # what autograd holds between backwards: one pass's activations instead of all of them
    assert peaks[True] < 1.5 * peaks[False] / passes


def test_backward_per_pass_is_off_where_there_is_one_pass():
    assert not Learner(cfg_for({"estimator": "one_step"})).backward_per_pass  # one pass: nothing to split
    assert not Learner(cfg_for({"estimator": "mc_elbo", "mc_samples": 1})).backward_per_pass
    assert Learner(cfg_for({"estimator": "mc_elbo", "mc_samples": 2})).recompute_per_pass


def test_bf16_autocast_smoke(trajs):
    algo = {"estimator": "trace", "loss_norm": "token", "beta": 0.05}
    want_grads, _ = run_update(Learner(cfg_for(algo)), trajs, N)
    learner = Learner(cfg_for(algo, {"bf16": True}))
    start = {k: v.clone() for k, v in learner.lm.model.named_parameters()}
    got_grads, metrics = run_update(learner, trajs, N)
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["logp_mismatch"] > 0  # bf16 forwards do not replay the fp32 rollout exactly ...
    g = torch.cat([t.flatten() for t in got_grads["policy"][0]])
    w = torch.cat([t.flatten() for t in want_grads["policy"][0]])
    assert torch.nn.functional.cosine_similarity(g, w, dim=0) > 0.9  # ... but the gradient points the same way
    assert all(not torch.equal(p, start[k]) for k, p in learner.lm.model.named_parameters())


def test_pieces_cover_the_minibatch_and_keep_masks(trajs):
    idx = list(range(7))
    occ = occurrence_index([trajs[i] for i in idx])
    pieces = [p for r in range(2) for p in minibatch_pieces(idx, occ, r, 2, 2)]
    assert [p.idx for p in pieces] == [[0, 1], [2, 3], [4, 5], [6]]
    stand_in = minibatch_pieces([0, 1, 2], occ[:3], 1, 2, 2)
    assert [p.weight for p in stand_in] == [1.0, 0.0]
    # a piece scored with the whole minibatch's duplicate counters draws the whole's masks
    lm = RolloutWorker(str(BASE_CKPT)).lm
    batch = [trajs[i] for i in idx]
    whole, _ = one_step_estimate(lm, batch, seed=7, p_mask_prompt=0.5)
    for p in pieces:
        part, _ = one_step_estimate(lm, [trajs[i] for i in p.idx], seed=7, p_mask_prompt=0.5, occurrences=p.occurrences)
        torch.testing.assert_close(part, whole[p.idx, : part.shape[1]], atol=1e-5, rtol=0)



def test_lora_on_an_moe_under_fsdp2_shards_the_frozen_experts_and_trains_their_adapters(two_ranks, one_rank):
    """LoRA + fsdp2 on the SDAR-MoE hub layout: the frozen base's stacked experts are sharded by expert like a full
    fine-tune's (4 of 8 per rank), the router stays frozen (never an adapter target, no optimizer state), and the
    experts' adapters (peft's target_parameters on gate_up_proj and down_proj) train with the one-rank gradients."""
    name = "fsdp2_lora_sdar_moe_trace_token"
    r0, r1 = two_ranks[0][name], two_ranks[1][name]
    for shards in (r0["experts"], r1["experts"]):
        stacks = {n: v for n, v in shards.items() if n.endswith(("base_layer.base_layer.gate_up_proj", "base_layer.base_layer.down_proj"))}
        assert len(stacks) == 4 and all(pl == "(Shard(dim=0),)" and full[0] == 8 and local == (4, *full[1:]) for pl, local, full in stacks.values())
    names = r0["grads"]["policy_names"]
    assert all(".lora_" in n for n in names) and not any(".mlp.gate." in n for n in names)  # the adapter only, router frozen
    expert_adapters = [i for i, n in enumerate(names) if ".mlp.experts." in n]
    assert len(expert_adapters) == 2 * 4  # per layer: lora_A and lora_B of gate_up_proj and of down_proj
    want, _, _ = one_rank(name)
    for i in expert_adapters:  # step 2: lora_B moved at step 1, so lora_A has a gradient too
        g, w = r0["grads"]["policy"][1][i], want["policy"][1][i]
        assert w.abs().max() > 0, names[i]
        torch.testing.assert_close(g, w, rtol=0, atol=1e-3 * w.abs().max().item(), msg=names[i])
