"""SDAR-30B-A3B-Chat/-Sci (`SDARMoeForCausalLM`, model_type `sdar_moe`) load onto Qwen3MoeForCausalLM exactly;
mixture-of-experts models under LoRA keep their router frozen; RL adds no load-balancing loss.

The checkpoint is tiny and random but laid out as JetLM/SDAR-30B-A3B-Chat is, from its public files
(config.json, model.safetensors.index.json, tokenizer_config.json): model_type `sdar_moe`, auto_map to
configuration_sdar_moe / modeling_sdar_moe, `num_experts`, `num_experts_per_tok`, `moe_intermediate_size`,
`norm_topk_prob: true`, `decoder_sparse_step: 1`, `mlp_only_layers: []`, `output_router_logits: false`,
`router_aux_loss_coef`, a head_dim that is not hidden_size / heads (128 vs 64 in the real one), no
block_size or mask_token_id; per-expert tensors `mlp.experts.E.{gate,up,down}_proj.weight` and the router
`mlp.gate.weight`; the tokenizer naming `<|MASK|>` (151669) as its mask token, eos = pad 151643. The
reference logits come from the stock Qwen3-MoE model the weights were made with, so a stacking or
config-mapping mistake shows; the comparison against SDAR-MoE's own modeling code is run outside the
repository (closing note of issue 31).
"""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from rollout.attention import additive_mask
from rollout.convert import UnsupportedCheckpoint, hub_family, stock_config
from rollout.convert_sdar_moe import sdar_moe_to_stock
from rollout.engine import SamplingParams
from rollout.models import load_model

from .test_hub_checkpoints import hub_tokenizer

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}
MOE = {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 16, "norm_topk_prob": True, "decoder_sparse_step": 1,
       "mlp_only_layers": []}  # fmt: skip
EOS, MASK, VOCAB, N_TOK = 151643, 151669, 151936, 151670
IDS = torch.tensor([[3, 7, 10, 11, 2, 5, 9, 1, 4, 4, 12, 0]])  # three blocks of 4


def _hub_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Qwen3-MoE's stacked experts written as the hub stores them, one tensor per expert and projection."""
    out = {}
    for name, t in state.items():
        if name.endswith("mlp.experts.gate_up_proj"):  # [E, 2I, H]: gate rows, then up rows
            i = t.shape[1] // 2
            for e in range(t.shape[0]):
                out[f"{name[: -len('gate_up_proj')]}{e}.gate_proj.weight"] = t[e, :i]
                out[f"{name[: -len('gate_up_proj')]}{e}.up_proj.weight"] = t[e, i:]
        elif name.endswith("mlp.experts.down_proj"):
            for e in range(t.shape[0]):
                out[f"{name[: -len('down_proj')]}{e}.down_proj.weight"] = t[e]
        else:
            out[name] = t
    return out


def sdar_moe_checkpoint(path, seed=5, tokenizer=None, **over):
    """A tiny SDAR-30B-A3B-Chat-layout checkpoint; returns the stock Qwen3-MoE model its weights came from.

    `tokenizer`: written instead of SDAR's, the vocabulary (embedding, head, eos) its size; the layout and
    the conversion stay SDAR-MoE's. For multi-rank tests, where a 152k-row head would dominate the time."""
    vocab, eos = (VOCAB, EOS) if tokenizer is None else (len(tokenizer), tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = {**SMALL, **MOE, **{k: v for k, v in over.items() if k in {**SMALL, **MOE}}}
    ref = Qwen3MoeForCausalLM(Qwen3MoeConfig(vocab_size=vocab, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, **model)).eval()
    with torch.no_grad():  # a trained router: far from uniform, so a wrong top-k or renormalisation shows
        for layer in ref.model.layers:
            if hasattr(layer.mlp, "gate"):
                layer.mlp.gate.weight.normal_(0, 0.5)
    config = {
        "architectures": ["SDARMoeForCausalLM"], "model_type": "sdar_moe",
        "auto_map": {"AutoConfig": "configuration_sdar_moe.SDARMoeConfig", "AutoModel": "modeling_sdar_moe.SDARMoeModel",
                     "AutoModelForCausalLM": "modeling_sdar_moe.SDARMoeForCausalLM"},
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": eos, "eos_token_id": eos, "hidden_act": "silu",
        "initializer_range": 0.02, "max_position_embeddings": 32768, "max_window_layers": 48, "output_router_logits": False,
        "rms_norm_eps": 1e-6, "rope_scaling": None, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001, "sliding_window": None,
        "tie_word_embeddings": False, "torch_dtype": "float32", "transformers_version": "4.51.0", "use_cache": True,
        "use_sliding_window": False, "vocab_size": vocab, **SMALL, **MOE, **over,
    }  # fmt: skip
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in _hub_tensors(ref.state_dict()).items()}, str(path / "model.safetensors"))
    (tokenizer or hub_tokenizer("sdar")).save_pretrained(path)  # SDAR's tokenizer_config.json names mask_token <|MASK|>
    return ref


def _reference_logits(ref, lm, ids):
    pos = torch.arange(ids.shape[1])[None]
    allowed = lm.attention_allowed(pos, torch.ones_like(ids, dtype=torch.bool))
    return ref.lm_head(ref.model(input_ids=ids, position_ids=pos, attention_mask=additive_mask(allowed, torch.float32)).last_hidden_state)


# The real layout (every layer MoE, renormalised top-k), and dense layers where mlp_only_layers and
# decoder_sparse_step put them (4 layers: 0 and 2 off the sparse step, 1 listed, 3 the only MoE) without renormalisation.
@pytest.mark.parametrize("over", [{}, {"num_hidden_layers": 4, "decoder_sparse_step": 2, "mlp_only_layers": [1], "norm_topk_prob": False}])
def test_sdar_moe_loads_onto_qwen3moe_with_identical_logits_and_its_special_ids(tmp_path, over):
    ref = sdar_moe_checkpoint(tmp_path / "hub", **over)
    lm = load_model(tmp_path / "hub")  # no remote code
    assert type(lm.model).__name__ == "Qwen3MoeForCausalLM"
    assert lm.traits.name == "sdar_moe" and lm.traits.block_causal and not lm.traits.shift_logits and lm.block_size == 4
    assert (lm.mask_id, lm.eos_id, lm.pad_id, lm.num_tokens) == (MASK, EOS, EOS, N_TOK)
    cfg = lm.model.config
    assert cfg.head_dim == 16 and cfg.num_experts == 8 and cfg.num_experts_per_tok == 2 and cfg.norm_topk_prob == over.get("norm_topk_prob", True)
    assert cfg.mlp_only_layers == over.get("mlp_only_layers", []) and cfg.decoder_sparse_step == over.get("decoder_sparse_step", 1)
    moe_layers = [i for i, layer in enumerate(lm.model.model.layers) if hasattr(layer.mlp, "experts")]
    assert moe_layers == ([3] if over else [0, 1])
    sel = torch.arange(IDS.shape[1])[None]
    assert (lm.sequence_logits(IDS, sel) - _reference_logits(ref, lm, IDS)).abs().max().item() == 0.0


@pytest.mark.parametrize("over, field", [
    ({"hidden_act": "gelu"}, "hidden_act"), ({"use_sliding_window": True}, "use_sliding_window"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"), ({"shared_expert_intermediate_size": 64}, "shared_expert_intermediate_size"),
    ({"num_experts_per_tok": 9}, "num_experts_per_tok"), ({"mlp_only_layers": [2]}, "mlp_only_layers"),
    ({"decoder_sparse_step": 0}, "decoder_sparse_step"), ({"scoring_func": "sigmoid"}, "scoring_func"),
    ({"num_experts": 0}, "num_experts"), ({"routed_scaling_factor": 2.5}, "routed_scaling_factor"),
])  # fmt: skip
def test_variants_the_conversion_cannot_reproduce_are_refused_by_name(over, field):
    cfg = {"model_type": "sdar_moe", "vocab_size": 64, **SMALL, **MOE, **over}
    with pytest.raises(UnsupportedCheckpoint, match=rf"sdar_moe config {field}="):
        stock_config(cfg)


def test_a_config_without_the_model_fields_is_refused_naming_them():
    cfg = {"model_type": "sdar_moe", "vocab_size": 64, "num_hidden_layers": 2, **MOE}
    with pytest.raises(UnsupportedCheckpoint, match=r"sdar_moe config lacks \['hidden_size', 'intermediate_size', 'num_attention_heads'\]: .*own config.json"):
        stock_config(cfg)


def test_expert_tensors_that_disagree_with_num_experts_are_refused_naming_what_was_found(tmp_path):
    """A checkpoint whose shards were not all fetched (expert 5's tensors absent), and one whose
    config.json counts fewer experts than its weights hold: refused before loading, with the layer,
    the experts found and what to do."""
    from safetensors.torch import load_file

    sdar_moe_checkpoint(tmp_path / "hub")
    weights = load_file(tmp_path / "hub" / "model.safetensors")
    partial = {k: v for k, v in weights.items() if ".mlp.experts.5." not in k}
    with pytest.raises(UnsupportedCheckpoint, match=r"model.layers.0.mlp.experts: gate_proj of 7 experts, config.json num_experts=8 "
                                                    r"\(missing \[5\], beyond it \[\]\): .*fetch every safetensors file"):  # fmt: skip
        save_file(partial, str(tmp_path / "hub" / "model.safetensors"))
        load_model(tmp_path / "hub")
    fewer = stock_config({"model_type": "sdar_moe", "vocab_size": 64, **SMALL, **MOE, "num_experts": 6})[1]
    with pytest.raises(UnsupportedCheckpoint, match=r"gate_proj of 8 experts, config.json num_experts=6 \(missing \[\], beyond it \[6, 7\]\)"):
        sdar_moe_to_stock(weights, fewer)


def test_family_from_model_type_or_architecture_and_no_aux_loss_in_the_converted_config():
    assert hub_family({"model_type": "sdar_moe"}) == "sdar_moe"
    assert hub_family({"model_type": "x", "architectures": ["SDARMoeForCausalLM"]}) == "sdar_moe"  # not the dense SDAR
    assert hub_family({"model_type": "x", "architectures": ["SDARForCausalLM"]}) == "block"
    base = {"model_type": "sdar_moe", "vocab_size": 64, **SMALL, **MOE}
    _, out, _ = stock_config({**base, "output_router_logits": True, "router_aux_loss_coef": 0.5})
    assert out.output_router_logits is False and out.router_aux_loss_coef == 0.5 and out.block_size == 4
    assert stock_config({**base, "block_size": 32})[1].block_size == 32  # the -b32 checkpoints
    _, absent, _ = stock_config({k: v for k, v in base.items() if k not in ("norm_topk_prob", "head_dim")})
    assert absent.norm_topk_prob is False and absent.head_dim == 8  # SDARMoeConfig's defaults, not another class's


def _learner_and_worker(path, **algo):
    from rl.config import RunConfig
    from rl.learner import Learner
    from rollout.worker import RolloutWorker

    lora = algo.pop("lora", None)
    model = {"path": str(path), **({"lora": {"enabled": True, **lora}} if lora else {})}
    cfg = RunConfig.model_validate({"data": {"sources": [{"path": "arithmetic"}]}, "model": model,
                                    "algorithm": {"lr": 1e-3, "minibatches": 1, "beta": 0.0, **algo}, "wandb": {"mode": "disabled"}})  # fmt: skip
    return Learner(cfg), RolloutWorker(str(path), lora=lora)


def _rollouts(worker, seed=0):
    tok = worker.lm.tokenizer
    prompts = [tok("12+34=")["input_ids"], tok("50+05=")["input_ids"]] * 2
    return worker.generate(prompts, SamplingParams(max_new_tokens=8, temperature=1.0, kv_cache=True), seed=seed, groups=[0, 1] * 2)


@pytest.mark.slow
def test_sdar_moe_decodes_trains_syncs_saves_reloads_and_exports_with_no_load_balancing_term(tmp_path):
    """The checkpoint asks for the balance loss (output_router_logits, a large coefficient): with every
    advantage 0 and no KL the policy loss is flat, so any gradient would be an auxiliary term's."""
    from safetensors.torch import load_file

    from rl.batch import learner_batch
    from rollout.convert import export_original

    sdar_moe_checkpoint(tmp_path / "hub", output_router_logits=True, router_aux_loss_coef=10.0)
    learner, worker = _learner_and_worker(tmp_path / "hub")
    assert learner.lm.model.config.output_router_logits is False
    trajs = _rollouts(worker)
    for t in trajs:
        assert t.block_size == 4 and max(t.completion_ids) < N_TOK and MASK not in t.completion_ids
        assert isinstance(worker.lm.tokenizer.decode(t.completion_ids), str)
    assert learner.update(learner_batch(learner.cfg.algorithm, trajs, [0.0] * 4))["grad_norm"] == 0.0  # no hidden aux term
    before = {k: v.clone() for k, v in learner.lm.model.named_parameters()}
    trajs = _rollouts(worker, seed=1)
    m = learner.update(learner_batch(learner.cfg.algorithm, trajs, [1.0, -1.0] * 2))
    assert m["logp_mismatch"] < 1e-4 and m["grad_norm"] > 0  # the learner replays exactly what the sampler saw, routing included
    changed = {k for k, v in learner.lm.model.named_parameters() if not torch.equal(v, before[k])}
    assert any(k.endswith("mlp.experts.gate_up_proj") for k in changed) and any(k.endswith("mlp.gate.weight") for k in changed)
    worker.load_weights(learner.get_weights(), version=1)
    sel = torch.arange(IDS.shape[1])[None]
    with torch.no_grad():
        assert (worker.lm.sequence_logits(IDS, sel) - learner.lm.sequence_logits(IDS, sel)).abs().max().item() == 0.0
        learner.lm.save_pretrained(tmp_path / "trained")
        again = load_model(tmp_path / "trained")  # unmask's own checkpoint: the stock class, family kept
        assert again.traits.name == "sdar_moe" and again.block_size == 4 and again.mask_id == MASK
        assert (again.sequence_logits(IDS, sel) - learner.lm.sequence_logits(IDS, sel)).abs().max().item() == 0.0
        assert export_original(tmp_path / "trained", tmp_path / "out") == "sdar_moe"
        hub, out = load_file(tmp_path / "hub" / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
        assert set(out) == set(hub)  # SDAR-MoE's own names, one tensor per expert
        assert json.loads((tmp_path / "out" / "config.json").read_text()) == json.loads((tmp_path / "hub" / "config.json").read_text())
        back = load_model(tmp_path / "out")
        assert (back.sequence_logits(IDS, sel) - learner.lm.sequence_logits(IDS, sel)).abs().max().item() == 0.0


def _tiny_moe(family: str):
    """An in-memory tiny MoE on the family's stock class (vocab 64): SDAR-MoE's Qwen3-MoE, LLaDA2's Glm4Moe."""
    from transformers import Glm4MoeConfig, Glm4MoeForCausalLM

    torch.manual_seed(0)
    if family == "sdar_moe":
        return Qwen3MoeForCausalLM(Qwen3MoeConfig(vocab_size=64, **SMALL, **MOE)).eval()
    return Glm4MoeForCausalLM(Glm4MoeConfig(vocab_size=64, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=16,
                                            n_group=4, topk_group=2, first_k_dense_replace=1, norm_topk_prob=True, **SMALL)).eval()  # fmt: skip


LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]}


@pytest.mark.parametrize("family", ["sdar_moe", "llada2"])
def test_lora_on_moe_adapts_experts_not_the_router_and_merges_exactly(family):
    from types import SimpleNamespace

    from rollout.lora import apply_lora

    model = _tiny_moe(family)
    ids = torch.tensor([[3, 7, 10, 11, 2, 5, 9, 1]])
    base_logits = model(input_ids=ids).logits
    peft = apply_lora(SimpleNamespace(model=model), **LORA)
    trainable = {n for n, p in peft.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)  # router, experts and the rest frozen
    assert any(".mlp.experts." in n for n in trainable)  # the routed experts carry adapters
    assert not any(".mlp.gate." in n for n in trainable)  # the router does not
    router = {n: p.clone() for n, p in peft.named_parameters() if n.endswith("mlp.gate.weight")}
    assert router
    opt = torch.optim.SGD([p for p in peft.parameters() if p.requires_grad], lr=1.0)
    for _ in range(2):  # lora_B starts at 0: the first step moves it, the second every adapter
        opt.zero_grad()
        peft(input_ids=ids).logits[..., :8].pow(2).sum().backward()
        opt.step()
    for n, p in peft.named_parameters():
        if n in router:
            assert torch.equal(p, router[n]), n  # the router is untouched by a LoRA update
    with torch.no_grad():
        lora_logits = peft(input_ids=ids).logits
        assert (lora_logits - base_logits).abs().max() > 1e-3, "the adapter changed nothing: the merge check would be vacuous"
        merged = peft.merge_and_unload()
        assert not any("lora_" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(input_ids=ids).logits, lora_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_lora_rl_update_on_sdar_moe_changes_only_the_adapter_and_its_merge_gives_the_same_logits(tmp_path):
    from rl.batch import learner_batch

    sdar_moe_checkpoint(tmp_path / "hub")
    learner, worker = _learner_and_worker(tmp_path / "hub", lora=LORA, lr=5e-2)
    base = {k: v.clone() for k, v in learner.lm.model.state_dict().items() if "lora_" not in k}
    lora_before = {k: v.clone() for k, v in learner.lm.model.state_dict().items() if "lora_" in k}
    m = learner.update(learner_batch(learner.cfg.algorithm, _rollouts(worker), [1.0, -1.0] * 2))
    assert m["logp_mismatch"] < 1e-4
    after = learner.lm.model.state_dict()
    for k, v in base.items():  # every base weight, the router's included, is untouched
        assert torch.equal(after[k], v), k
    assert any(".mlp.experts." in k and "lora_B" in k and not torch.equal(after[k], lora_before[k]) for k in lora_before)
    weights = learner.get_weights()
    assert all("lora_" in k for k in weights)
    worker.load_weights(weights, version=1)
    ids, sel = IDS[:, :8], torch.arange(8)[None]
    learner.save(tmp_path / "ckpt")
    merged = load_model(tmp_path / "ckpt" / "adapter")  # base converted from the hub layout + adapter, merged
    assert not any("lora_" in k for k in merged.model.state_dict())
    with torch.no_grad():
        lora_logits = worker.lm.sequence_logits(ids, sel)
        base_logits = load_model(tmp_path / "hub").sequence_logits(ids, sel)
        assert (lora_logits - base_logits).abs().max() > 1e-3, "the adapter changed nothing: the merge check would be vacuous"
        torch.testing.assert_close(merged.sequence_logits(ids, sel), lora_logits, atol=1e-5, rtol=1e-5)


def test_lora_refuses_the_router_as_a_target():
    from types import SimpleNamespace

    from rollout.lora import apply_lora

    with pytest.raises(ValueError, match="names 'gate', the mixture-of-experts router"):
        apply_lora(SimpleNamespace(model=_tiny_moe("sdar_moe")), target_modules=["q_proj", "gate"])
