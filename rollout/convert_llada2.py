"""LLaDA2.0 / LLaDA2.1 (`LLaDA2MoeModelLM`, model_type `llada2_moe`) onto transformers' Glm4MoeForCausalLM.

The two compute the same function: RMSNorm pre-norm blocks; attention with per-head q/k RMSNorm
before a partial rotary embedding (the first `partial_rotary_factor` of each head, rotate-half);
the first `first_k_dense_replace` layers a dense SwiGLU MLP, the others a mixture of experts whose
router takes sigmoid scores of fp32 logits, adds the expert bias for *selection only*, keeps the
`topk_group` best of `n_group` groups (a group scores the sum of its two best experts), picks the
top k there, renormalises the chosen scores, scales them by `routed_scaling_factor`, and adds one
shared expert. What differs is layout:

- the fused `attention.query_key_value` is split into q/k/v (heads in that order), `attention.dense`
  is `o_proj`, `query_layernorm`/`key_layernorm` are `q_norm`/`k_norm`, `word_embeddings` is
  `embed_tokens`, the router's `expert_bias` is `e_score_correction_bias`;
- per-expert `experts.E.{gate,up,down}_proj` become Glm4Moe's stacked `experts.gate_up_proj`
  [E, 2I, H] (gate rows first) and `experts.down_proj` [E, H, I];
- the remote code renormalises the top-k whenever k > 1 whatever `norm_topk_prob` says (and never
  for k = 1), so `norm_topk_prob` is set from k, not copied.

Flags the conversion cannot reproduce (biases, a normalised head, another score function, sliding
windows, scaled RoPE, no shared expert, ...) are refused by name.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from rollout.conversion_rules import UnsupportedCheckpoint
from rollout.conversion_rules import require as _require

LLADA2_BLOCK_SIZE = 32  # its own generate(): blocks of 32 on absolute positions, from position 0
LLADA2_MASK_ID = 156895  # its own generate(): mask_id default (the tokenizer's <|mask|>)


def llada2_config(cfg: dict[str, Any]):
    """The Glm4MoeConfig computing what a LLaDA2 hub config.json computes (or UnsupportedCheckpoint)."""
    from transformers import Glm4MoeConfig

    f = "llada2"
    _require(cfg, "hidden_act", lambda v: v == "silu", "only the SiLU-gated MLP is converted", f)
    _require(cfg, "use_qkv_bias", lambda v: not v, "q/k/v biases are not converted", f)
    _require(cfg, "use_bias", lambda v: not v, "an output-projection bias has no place in Glm4Moe's attention", f)
    _require(cfg, "norm_head", lambda v: not v, "a normalised LM head changes every logit", f)
    _require(cfg, "norm_softmax", lambda v: not v, "softmax routing is not the sigmoid router", f)
    _require(cfg, "score_function", lambda v: v in (None, "sigmoid"), "only sigmoid routing is converted", f)
    _require(cfg, "router_dtype", lambda v: v in (None, "fp32", "float32"), "the router runs in fp32", f)
    _require(cfg, "use_qk_norm", lambda v: v in (None, True), "LLaDA2's own code (one published version whatever this says) normalises q and k", f)
    _require(cfg, "use_rmsnorm", lambda v: v in (None, True), "only RMSNorm is converted", f)
    _require(cfg, "use_sliding_window", lambda v: not v, "sliding-window attention is not part of the stock mapping", f)
    _require(cfg, "rope_scaling", lambda v: v is None or (isinstance(v, dict) and v.get("rope_type", v.get("type")) == "default"), "scaled RoPE is not converted", f)
    _require(cfg, "num_experts", lambda v: isinstance(v, int) and v > 0, "a dense LLaDA2 is not the MoE this conversion maps", f)
    _require(cfg, "num_shared_experts", lambda v: isinstance(v, int) and v >= 1, "Glm4Moe always adds a shared expert", f)
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                           "num_experts", "moe_intermediate_size", "num_experts_per_tok") if cfg.get(k) is None]  # fmt: skip
    if missing:
        raise UnsupportedCheckpoint(
            f"llada2 config lacks {missing}: not a LLaDA2 MoE config.json (the hub's sets them all); use the checkpoint's own config.json"
        )
    n_group = cfg.get("n_group") or 1
    _require(cfg, "n_group", lambda v: cfg["num_experts"] % (v or 1) == 0, f"{cfg['num_experts']} experts do not split into equal groups", f)
    shared = cfg["moe_intermediate_size"] * cfg["num_shared_experts"]
    _require(cfg, "moe_shared_expert_intermediate_size", lambda v: v in (None, shared),
             f"the shared expert is moe_intermediate_size x num_shared_experts = {shared} wide in the model's own code", f)  # fmt: skip
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    factor = cfg.get("partial_rotary_factor", 0.5)  # LLaDA2MoeConfig's default
    _require(cfg, "rotary_dim", lambda v: v in (None, int(head_dim * factor)), f"the rotary part is head_dim x partial_rotary_factor = {int(head_dim * factor)}", f)
    k = cfg["num_experts_per_tok"]
    return Glm4MoeConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=heads, num_key_value_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=head_dim, hidden_act="silu", max_position_embeddings=cfg.get("max_position_embeddings", 16384),
        initializer_range=cfg.get("initializer_range", 0.02), rms_norm_eps=cfg.get("rms_norm_eps", 1e-5),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)), attention_bias=False,
        attention_dropout=cfg.get("attention_dropout", 0.0),
        rope_parameters={"rope_type": "default", "rope_theta": cfg.get("rope_theta", 10000.0), "partial_rotary_factor": factor},
        moe_intermediate_size=cfg["moe_intermediate_size"], num_experts_per_tok=k, n_shared_experts=cfg["num_shared_experts"],
        n_routed_experts=cfg["num_experts"], routed_scaling_factor=cfg.get("routed_scaling_factor", 1.0), n_group=n_group,
        topk_group=cfg.get("topk_group") or 1, first_k_dense_replace=cfg.get("first_k_dense_replace", 0),
        norm_topk_prob=k > 1,  # the remote code renormalises whenever k > 1, whatever the field says
        use_qk_norm=True,
        bos_token_id=cfg.get("bos_token_id"), eos_token_id=cfg.get("eos_token_id"), pad_token_id=cfg.get("pad_token_id"),
    )  # fmt: skip


_TOP = {"model.word_embeddings.weight": "model.embed_tokens.weight", "model.norm.weight": "model.norm.weight", "lm_head.weight": "lm_head.weight"}
# Per-layer names that only change (the rest are the same in both layouts).
_LAYER = {"attention.dense.weight": "self_attn.o_proj.weight", "attention.query_layernorm.weight": "self_attn.q_norm.weight",
          "attention.key_layernorm.weight": "self_attn.k_norm.weight", "mlp.gate.expert_bias": "mlp.gate.e_score_correction_bias"}  # fmt: skip
_SAME = re.compile(r"^(input_layernorm|post_attention_layernorm|mlp\.(gate|up|down)_proj|mlp\.shared_experts\.(gate|up|down)_proj|mlp\.gate)\.weight$")
_LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_EXPERT = re.compile(r"^mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$")


def llada2_to_stock(weights: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """LLaDA2 hub tensors under Glm4MoeForCausalLM's names and shapes (an unknown name is an error)."""
    heads, kv, hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    out: dict[str, torch.Tensor] = {}
    experts: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    for name, t in weights.items():
        if name in _TOP:
            out[_TOP[name]] = t
            continue
        m = _LAYER_NAME.match(name)
        rest = m.group(2) if m else ""
        pre = f"model.layers.{m.group(1)}." if m else ""
        if rest == "attention.query_key_value.weight":
            q, k, v = t.split([heads * hd, kv * hd, kv * hd], dim=0)  # heads laid out [q heads | k heads | v heads]
            out.update({pre + "self_attn.q_proj.weight": q, pre + "self_attn.k_proj.weight": k, pre + "self_attn.v_proj.weight": v})
        elif rest in _LAYER:
            out[pre + _LAYER[rest]] = t
        elif _SAME.match(rest):
            out[name] = t
        elif e := _EXPERT.match(rest):
            experts.setdefault((int(m.group(1)), e.group(2)), {})[int(e.group(1))] = t
        else:
            raise UnsupportedCheckpoint(
                f"llada2 tensor {name!r} has no Glm4Moe counterpart (a bias or a layer the conversion does not know): this is a "
                "LLaDA2 variant unmask does not convert (it refuses rather than drop a tensor); use LLaDA2.0/2.1-mini's layout"
            )
    for layer in sorted({i for i, _ in experts}):
        stacked = {}
        for proj in ("gate", "up", "down"):
            got = experts.get((layer, proj), {})
            if sorted(got) != list(range(config.n_routed_experts)):
                n = config.n_routed_experts
                missing, extra = sorted(set(range(n)) - set(got)), sorted(set(got) - set(range(n)))
                raise UnsupportedCheckpoint(
                    f"llada2 layer {layer}: {proj}_proj of {len(got)} experts, config.json num_experts={n} (missing {missing[:8]}, "
                    f"beyond it {extra[:8]}): the weights and config.json disagree (an incomplete download, or another "
                    "checkpoint's config.json); fetch every safetensors file of the checkpoint or correct num_experts"
                )
            stacked[proj] = torch.stack([got[i] for i in range(config.n_routed_experts)])  # [E, I, H] or [E, H, I]
        out[f"model.layers.{layer}.mlp.experts.gate_up_proj"] = torch.cat([stacked["gate"], stacked["up"]], dim=1)  # [E, 2I, H]
        out[f"model.layers.{layer}.mlp.experts.down_proj"] = stacked["down"]  # [E, H, I]
    return out


def llada2_to_hub(weights: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The inverse of `llada2_to_stock`: Glm4Moe tensors back under LLaDA2's names (for `unmask export`)."""
    back_top = {v: k for k, v in _TOP.items()}
    back_layer = {v: k for k, v in _LAYER.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in weights.items():
        if name in back_top:
            out[back_top[name]] = t
            continue
        m = _LAYER_NAME.match(name)
        if not m:
            raise UnsupportedCheckpoint(f"tensor {name!r} has no LLaDA2 counterpart: export writes back only what was converted from LLaDA2's layout")
        pre, rest = f"model.layers.{m.group(1)}.", m.group(2)
        if rest in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"):
            qkv.setdefault(pre, {})[rest[10]] = t
        elif rest in back_layer:
            out[pre + back_layer[rest]] = t
        elif rest == "mlp.experts.gate_up_proj":
            gate, up = t.chunk(2, dim=1)
            for e in range(t.shape[0]):
                out[f"{pre}mlp.experts.{e}.gate_proj.weight"], out[f"{pre}mlp.experts.{e}.up_proj.weight"] = gate[e], up[e]
        elif rest == "mlp.experts.down_proj":
            for e in range(t.shape[0]):
                out[f"{pre}mlp.experts.{e}.down_proj.weight"] = t[e]
        elif _SAME.match(rest) or _EXPERT.match(rest):  # transformers saves Glm4Moe's experts one by one, as LLaDA2 names them
            out[name] = t
        else:
            raise UnsupportedCheckpoint(f"tensor {name!r} has no LLaDA2 counterpart: export writes back only what was converted from LLaDA2's layout")
    for pre, parts in qkv.items():
        out[pre + "attention.query_key_value.weight"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out
