"""LLaDA2.0 / LLaDA2.1-mini (`LLaDA2MoeModelLM`) in their hub layout load onto Glm4MoeForCausalLM exactly.

The checkpoint is tiny and random but laid out as inclusionAI/LLaDA2.0-mini is, from its public files:
config.json field names and kinds (model_type `llada2_moe`, `num_experts`, `num_shared_experts`,
`n_group`/`topk_group`, `routed_scaling_factor`, `score_function: sigmoid`,
`moe_router_enable_expert_bias`, `first_k_dense_replace: 1`, `use_qk_norm`, `partial_rotary_factor:
0.5`, `rotary_dim`, no block_size / mask_token_id), tensor names (`model.word_embeddings`,
`attention.query_key_value` fused q/k/v, `attention.dense`, `query_layernorm`/`key_layernorm`,
`mlp.gate.expert_bias`, per-expert `mlp.experts.E.{gate,up,down}_proj`, `mlp.shared_experts`), and
the special ids its own generate() uses (mask 156895, eos 156892; blocks of 32 from position 0).
The reference logits come from the stock Glm4Moe model the weights were made with, so a renaming,
splitting or config-mapping mistake shows; the comparison against LLaDA2's own modeling code is run
outside the repository (closing note of issue 31).
"""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import Glm4MoeConfig, Glm4MoeForCausalLM

from rollout.attention import additive_mask
from rollout.convert import UnsupportedCheckpoint, stock_config
from rollout.engine import SamplingParams
from rollout.models import load_model

from .test_hub_checkpoints import CHARS, hub_tokenizer

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8)
MOE = dict(moe_intermediate_size=16, num_experts_per_tok=2, n_group=4, topk_group=2, routed_scaling_factor=2.5, first_k_dense_replace=1)
N_EXPERTS, EOS, MASK, VOCAB = 8, 156892, 156895, 157184


def _hub_name(name: str, t: torch.Tensor, heads: int, kv: int, hd: int) -> dict[str, torch.Tensor]:
    """One Glm4Moe tensor under LLaDA2's names (fused q/k/v and per-expert tensors handled by the caller)."""
    top = {"model.embed_tokens.weight": "model.word_embeddings.weight"}
    if name in top:
        return {top[name]: t}
    per_layer = {"self_attn.o_proj.weight": "attention.dense.weight", "self_attn.q_norm.weight": "attention.query_layernorm.weight",
                 "self_attn.k_norm.weight": "attention.key_layernorm.weight", "mlp.gate.e_score_correction_bias": "mlp.gate.expert_bias"}  # fmt: skip
    if name.startswith("model.layers."):
        _, _, n, rest = name.split(".", 3)
        if rest in per_layer:
            return {f"model.layers.{n}.{per_layer[rest]}": t}
        if rest == "mlp.experts.gate_up_proj":  # [E, 2I, H]: gate rows, then up rows
            i = t.shape[1] // 2
            return {f"model.layers.{n}.mlp.experts.{e}.{p}_proj.weight": (t[e, :i] if p == "gate" else t[e, i:]) for e in range(t.shape[0]) for p in ("gate", "up")}
        if rest == "mlp.experts.down_proj":
            return {f"model.layers.{n}.mlp.experts.{e}.down_proj.weight": t[e] for e in range(t.shape[0])}
    return {name: t}


def llada2_checkpoint(path, seed=3, tokenizer=None, **over):
    """A tiny LLaDA2.0-mini-layout checkpoint; returns the stock Glm4Moe model its weights came from.

    `tokenizer`: written instead of LLaDA2's, the vocabulary (embedding, head, eos = pad) its size; the
    layout and the conversion stay LLaDA2's. For multi-rank tests, where a 157k-row head would dominate."""
    vocab, eos = (VOCAB, EOS) if tokenizer is None else (len(tokenizer), tokenizer.eos_token_id)
    torch.manual_seed(seed)
    ref = Glm4MoeForCausalLM(Glm4MoeConfig(vocab_size=vocab, n_routed_experts=N_EXPERTS, n_shared_experts=1, norm_topk_prob=True, use_qk_norm=True,
                                           rope_parameters={"rope_type": "default", "rope_theta": 600000.0, "partial_rotary_factor": 0.5},
                                           rms_norm_eps=1e-6, tie_word_embeddings=False, **SMALL, **MOE)).eval()  # fmt: skip
    with torch.no_grad():  # a trained router's bias: large enough to change which experts are picked
        for layer in ref.model.layers[1:]:
            layer.mlp.gate.weight.normal_(0, 0.5)
            layer.mlp.gate.e_score_correction_bias.normal_(0, 0.3)
    heads, kv, hd = SMALL["num_attention_heads"], SMALL["num_key_value_heads"], SMALL["head_dim"]
    tensors = {}
    qkv = {}
    for name, t in ref.state_dict().items():
        if ".self_attn." in name and name.rsplit(".", 2)[-2] in ("q_proj", "k_proj", "v_proj"):
            layer = name.split(".")[2]
            qkv.setdefault(layer, {})[name.rsplit(".", 2)[-2][0]] = t
        else:
            tensors.update(_hub_name(name, t, heads, kv, hd))
    for layer, p in qkv.items():
        tensors[f"model.layers.{layer}.attention.query_key_value.weight"] = torch.cat([p["q"], p["k"], p["v"]])
    config = {
        "architectures": ["LLaDA2MoeModelLM"], "model_type": "llada2_moe",
        "auto_map": {"AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig", "AutoModel": "modeling_llada2_moe.LLaDA2MoeModel",
                     "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM"},
        "attention_dropout": 0.0, "embedding_dropout": 0.0, "output_dropout": 0.0, "hidden_act": "silu", "initializer_range": 0.02,
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 600000, "rope_scaling": None, "partial_rotary_factor": 0.5,
        "rotary_dim": 4, "use_qk_norm": True, "use_qkv_bias": False, "use_bias": False, "norm_head": False, "norm_softmax": False,
        "num_experts": N_EXPERTS, "num_shared_experts": 1, "moe_shared_expert_intermediate_size": 16, "norm_topk_prob": True,
        "score_function": "sigmoid", "moe_router_enable_expert_bias": True, "router_dtype": "fp32", "output_router_logits": False,
        "use_rmsnorm": True, "tie_word_embeddings": False, "torch_dtype": "float32", "vocab_size": vocab, "pad_token_id": eos,
        "eos_token_id": eos, "use_cache": True, **SMALL, **MOE, **over,
    }  # fmt: skip
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    (tokenizer or hub_tokenizer("llada2")).save_pretrained(path)
    return ref


def test_llada2_loads_onto_glm4moe_with_identical_logits_and_its_special_ids(tmp_path):
    ref = llada2_checkpoint(tmp_path / "hub")
    lm = load_model(tmp_path / "hub")  # no remote code
    assert type(lm.model).__name__ == "Glm4MoeForCausalLM"
    assert lm.traits.name == "llada2" and lm.traits.block_causal and not lm.traits.shift_logits and lm.block_size == 32
    assert (lm.mask_id, lm.eos_id, lm.pad_id) == (MASK, EOS, EOS)
    cfg = lm.model.config
    assert cfg.norm_topk_prob and cfg.n_group == 4 and cfg.topk_group == 2 and cfg.first_k_dense_replace == 1 and cfg.routed_scaling_factor == 2.5
    assert cfg.rope_parameters["partial_rotary_factor"] == 0.5 and cfg.use_qk_norm
    ids = torch.tensor([[3, 7, 10, 11, 2, 5, 9, 1] * 5])  # 40 tokens: two blocks of 32
    sel = torch.arange(ids.shape[1])[None]
    got = lm.sequence_logits(ids, sel)
    pos = torch.arange(ids.shape[1])[None]
    allowed = lm.attention_allowed(pos, torch.ones_like(ids, dtype=torch.bool))
    assert allowed[0, 31, 32].item() is False and allowed[0, 32, 31].item() is True  # blocks of 32 from position 0
    want = ref.lm_head(ref.model(input_ids=ids, position_ids=pos, attention_mask=additive_mask(allowed, torch.float32)).last_hidden_state)
    assert (got - want).abs().max().item() == 0.0


@pytest.mark.parametrize("over, field", [
    ({"use_bias": True}, "use_bias"), ({"use_qkv_bias": True}, "use_qkv_bias"), ({"norm_head": True}, "norm_head"),
    ({"score_function": "softmax"}, "score_function"), ({"moe_shared_expert_intermediate_size": 32}, "moe_shared_expert_intermediate_size"),
    ({"num_shared_experts": 0}, "num_shared_experts"), ({"rotary_dim": 8}, "rotary_dim"), ({"n_group": 3}, "n_group"),
    ({"use_sliding_window": True}, "use_sliding_window"), ({"use_qk_norm": False}, "use_qk_norm"),
])  # fmt: skip
def test_variants_the_conversion_cannot_reproduce_are_refused_by_name(tmp_path, over, field):
    llada2_checkpoint(tmp_path / "hub", **over)
    with pytest.raises(UnsupportedCheckpoint, match=rf"llada2 config {field}="):
        load_model(tmp_path / "hub")


LLADA2_CFG = {"model_type": "llada2_moe", "vocab_size": 64, "num_experts": N_EXPERTS, "num_shared_experts": 1, **SMALL, **MOE}


# the flags the checkpoint-building test above does not set, checked on the config alone
@pytest.mark.parametrize("over, field", [
    ({"hidden_act": "gelu"}, "hidden_act"), ({"norm_softmax": True}, "norm_softmax"), ({"router_dtype": "bf16"}, "router_dtype"),
    ({"use_rmsnorm": False}, "use_rmsnorm"), ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"num_experts": 0}, "num_experts"),
])  # fmt: skip
def test_other_variants_are_refused_by_name(over, field):
    with pytest.raises(UnsupportedCheckpoint, match=rf"llada2 config {field}=.*; unmask converts this family only without it"):
        stock_config({**LLADA2_CFG, **over})


def test_a_config_without_the_moe_fields_is_refused_naming_them():
    cfg = {k: v for k, v in LLADA2_CFG.items() if k not in ("moe_intermediate_size", "num_experts_per_tok")}
    with pytest.raises(UnsupportedCheckpoint, match=r"llada2 config lacks \['moe_intermediate_size', 'num_experts_per_tok'\]: .*own config.json"):
        stock_config(cfg)


def test_tensors_the_conversion_cannot_place_are_refused_naming_them():
    """Missing experts (an incomplete download), a tensor of a variant (a bias), and at export a
    tensor that did not come from LLaDA2's layout: each named, with what to do."""
    from rollout.convert_llada2 import llada2_to_hub, llada2_to_stock

    config = stock_config(LLADA2_CFG)[1]
    experts = {f"model.layers.1.mlp.experts.{e}.{p}_proj.weight": torch.zeros(1) for e in range(N_EXPERTS) if e != 3 for p in ("gate", "up", "down")}
    with pytest.raises(UnsupportedCheckpoint, match=r"llada2 layer 1: gate_proj of 7 experts, config.json num_experts=8 \(missing \[3\], beyond it \[\]\): .*fetch every safetensors file"):
        llada2_to_stock(experts, config)
    with pytest.raises(UnsupportedCheckpoint, match=r"'model.layers.0.attention.dense.bias' has no Glm4Moe counterpart .*does not convert"):
        llada2_to_stock({"model.layers.0.attention.dense.bias": torch.zeros(1)}, config)
    with pytest.raises(UnsupportedCheckpoint, match=r"'model.layers.0.mlp.value_head.weight' has no LLaDA2 counterpart: export writes back only"):
        llada2_to_hub({"model.layers.0.mlp.value_head.weight": torch.zeros(1)}, {})


def test_topk_renormalisation_follows_the_remote_code_not_the_flag():
    """LLaDA2's own router renormalises the chosen scores whenever k > 1 (and never for k = 1),
    whatever norm_topk_prob says: the converted config says what the code does."""
    base = {"model_type": "llada2_moe", "vocab_size": 64, "num_experts": 8, "num_shared_experts": 1, "n_group": 4, "topk_group": 2, **SMALL,
            "moe_intermediate_size": 16}  # fmt: skip
    assert stock_config({**base, "num_experts_per_tok": 2, "norm_topk_prob": False})[1].norm_topk_prob is True
    assert stock_config({**base, "num_experts_per_tok": 1, "norm_topk_prob": True})[1].norm_topk_prob is False


def test_llada2_decodes_and_takes_a_tracerl_update_with_exact_replay(tmp_path):
    from rl.batch import learner_batch
    from rl.config import RunConfig
    from rl.learner import Learner
    from rollout.worker import RolloutWorker

    llada2_checkpoint(tmp_path / "hub")
    cfg = RunConfig.model_validate({"data": {"sources": [{"path": "arithmetic"}]}, "model": {"path": str(tmp_path / "hub")},
                                    "algorithm": {"lr": 1e-3, "minibatches": 1}, "wandb": {"mode": "disabled"}})  # fmt: skip
    learner, worker = Learner(cfg), RolloutWorker(str(tmp_path / "hub"))
    tok = worker.lm.tokenizer
    prompts = [tok("12+34=")["input_ids"], tok("50+05=")["input_ids"]] * 2
    params = SamplingParams(max_new_tokens=8, temperature=1.0, kv_cache=True)
    trajs = worker.generate(prompts, params, seed=0, groups=[0, 1] * 2)
    for t in trajs:
        assert t.block_size == 32 and max(t.completion_ids) < worker.lm.num_tokens and MASK not in t.completion_ids
        assert isinstance(tok.decode(t.completion_ids), str)
    before = {k: v.clone() for k, v in learner.lm.model.named_parameters()}
    m = learner.update(learner_batch(learner.cfg.algorithm, trajs, [1.0, -1.0] * 2))
    assert m["logp_mismatch"] < 1e-4  # the learner replays exactly what the sampler saw, experts and all
    changed = {k for k, v in learner.lm.model.named_parameters() if not torch.equal(v, before[k])}
    assert any(".mlp.experts." in k for k in changed) and any(".mlp.gate.weight" in k for k in changed)
    worker.load_weights(learner.get_weights(), version=1)
    again = worker.generate(prompts[:1], SamplingParams(max_new_tokens=4, temperature=0.0), seed=1)
    assert len(again[0].completion_ids) >= 1


def test_export_writes_llada2s_layout_back(tmp_path):
    from safetensors.torch import load_file

    from rollout.convert import export_original

    llada2_checkpoint(tmp_path / "hub")
    lm = load_model(tmp_path / "hub")
    lm.save_pretrained(tmp_path / "trained")
    ids, sel = torch.tensor([[3, 7, 10, 11, 2, 5, 9, 1]]), torch.arange(8)[None]
    again = load_model(tmp_path / "trained")  # unmask's own checkpoint: the stock class, family kept
    assert again.traits.name == "llada2" and again.block_size == 32 and again.mask_id == MASK
    assert (again.sequence_logits(ids, sel) - lm.sequence_logits(ids, sel)).abs().max().item() == 0.0
    assert export_original(tmp_path / "trained", tmp_path / "out") == "llada2"
    a, b = load_file(tmp_path / "out" / "model.safetensors"), load_file(tmp_path / "hub" / "model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "out" / "config.json").read_text()) == json.loads((tmp_path / "hub" / "config.json").read_text())


def test_chars_fit_below_the_special_ids():
    assert len(CHARS) < EOS
