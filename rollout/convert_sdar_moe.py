"""SDAR-30B-A3B-Chat / -Sci (`SDARMoeForCausalLM`, model_type `sdar_moe`) onto transformers' Qwen3MoeForCausalLM.

SDAR-MoE's own modeling code is Qwen3-MoE (transformers 4.52) with SDAR's block-causal attention: the
same config fields, the same tensor names, the same math. Pre-norm RMSNorm blocks; attention with
per-head q/k RMSNorm before a full rotary embedding; layer i a mixture of experts when i is not in
`mlp_only_layers` and (i + 1) % `decoder_sparse_step` == 0, else a dense SwiGLU MLP of
`intermediate_size`; the router takes a softmax of the `mlp.gate` logits in fp32, keeps the top
`num_experts_per_tok`, renormalises them when `norm_topk_prob`, and there is no shared expert. What
differs is layout: the hub stores each expert's `mlp.experts.E.{gate,up,down}_proj.weight`, the stock
class stacks them into `mlp.experts.gate_up_proj` [E, 2I, H] (gate rows first) and
`mlp.experts.down_proj` [E, H, I]; `mlp.gate.weight` (an nn.Linear there, a router module here) keeps
its name.

The load-balancing loss: Qwen3MoeForCausalLM (and SDAR-MoE's own forward) add
`router_aux_loss_coef x` the Switch-Transformer balance loss only when called with labels and
`output_router_logits`. unmask never calls that forward to train: the learner scores tokens through
the backbone and the LM head (rollout.models.DiffusionLM), so RL has no auxiliary term, as the
families' own training runs have none (SDAR-30B-A3B's config ships `output_router_logits: false`). The
converted config says so (`output_router_logits=False` whatever the hub file says); the router still
trains under full fine-tuning through the routing weights of the experts it picked, and stays frozen
under LoRA (rollout/lora.py).

Flags the conversion cannot reproduce (another activation, sliding windows, scaled RoPE, a shared
expert, a router that is not a softmax top-k) are refused by name.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from rollout.conversion_rules import UnsupportedCheckpoint
from rollout.conversion_rules import require as _require

# SDARMoeConfig's defaults (configuration_sdar_moe.py): a field the hub config omits means these.
_DEFAULTS = {"max_position_embeddings": 32768, "initializer_range": 0.02, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
             "rope_theta": 10000.0, "attention_bias": False, "attention_dropout": 0.0, "decoder_sparse_step": 1,
             "moe_intermediate_size": 768, "num_experts_per_tok": 8, "num_experts": 128, "norm_topk_prob": False,
             "router_aux_loss_coef": 0.001, "num_key_value_heads": 4}  # fmt: skip
# Router / expert fields of other MoE configs that SDAR-MoE's code has no place for.
_FOREIGN_MOE = {"shared_expert_intermediate_size": "a shared expert (Qwen2-MoE style) is not part of SDAR-MoE or Qwen3-MoE",
                "n_shared_experts": "a shared expert is not part of SDAR-MoE or Qwen3-MoE",
                "num_shared_experts": "a shared expert is not part of SDAR-MoE or Qwen3-MoE",
                "scoring_func": "only softmax routing is converted", "score_function": "only softmax routing is converted",
                "n_group": "group-limited routing is not part of SDAR-MoE", "topk_group": "group-limited routing is not part of SDAR-MoE",
                "routed_scaling_factor": "scaled routing weights are not part of SDAR-MoE"}  # fmt: skip


def sdar_moe_config(cfg: dict[str, Any]):
    """The Qwen3MoeConfig computing what an SDAR-MoE hub config.json computes (or UnsupportedCheckpoint)."""
    from transformers import Qwen3MoeConfig

    f = "sdar_moe"
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads") if cfg.get(k) is None]
    if missing:
        raise UnsupportedCheckpoint(
            f"sdar_moe config lacks {missing}: not an SDAR-MoE config.json (the hub's sets them all); use the checkpoint's own config.json"
        )
    _require(cfg, "hidden_act", lambda v: v == "silu", "only the SiLU-gated MLP is converted", f)
    _require(cfg, "use_sliding_window", lambda v: not v, "sliding-window attention is not part of the stock mapping", f)
    _require(cfg, "rope_scaling", lambda v: v is None or (isinstance(v, dict) and v.get("rope_type", v.get("type")) == "default"), "scaled RoPE is not converted", f)
    for key, why in _FOREIGN_MOE.items():
        absent = (None, 0, "softmax") if key.startswith("scor") else (None, 0, False)  # values that mean "not there"
        _require(cfg, key, lambda v, absent=absent: v in absent, why, f)
    c = {**_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
    _require(cfg, "num_experts", lambda v: isinstance(v, int) and v > 0, "a dense SDAR is model_type sdar, not this MoE conversion", f)
    _require(cfg, "num_experts_per_tok", lambda v: isinstance(v, int) and 0 < v <= c["num_experts"], f"top-k must be 1..num_experts ({c['num_experts']})", f)
    _require(cfg, "decoder_sparse_step", lambda v: isinstance(v, int) and v >= 1, "the MoE layer frequency must be an integer >= 1", f)
    layers = c["num_hidden_layers"]
    _require(cfg, "mlp_only_layers", lambda v: isinstance(v, list) and all(isinstance(i, int) and 0 <= i < layers for i in v),
             f"mlp_only_layers must list layer indices 0..{layers - 1}", f)  # fmt: skip
    heads = c["num_attention_heads"]
    return Qwen3MoeConfig(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"], num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=c["num_key_value_heads"], head_dim=c.get("head_dim") or c["hidden_size"] // heads,
        hidden_act="silu", max_position_embeddings=c["max_position_embeddings"], initializer_range=c["initializer_range"],
        rms_norm_eps=c["rms_norm_eps"], tie_word_embeddings=bool(c["tie_word_embeddings"]), rope_theta=float(c["rope_theta"]),
        attention_bias=bool(c["attention_bias"]), attention_dropout=c["attention_dropout"], use_sliding_window=False,
        decoder_sparse_step=c["decoder_sparse_step"], moe_intermediate_size=c["moe_intermediate_size"],
        num_experts_per_tok=c["num_experts_per_tok"], num_experts=c["num_experts"], norm_topk_prob=bool(c["norm_topk_prob"]),
        mlp_only_layers=list(c.get("mlp_only_layers") or []),
        output_router_logits=False,  # no auxiliary balance loss in RL (module docstring)
        router_aux_loss_coef=c["router_aux_loss_coef"],
        bos_token_id=cfg.get("bos_token_id"), eos_token_id=cfg.get("eos_token_id"), pad_token_id=cfg.get("pad_token_id"),
    )  # fmt: skip


_EXPERT = re.compile(r"^(model\.layers\.(\d+)\.mlp\.experts)\.(\d+)\.(gate|up|down)_proj\.weight$")
_STACKED = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)$")


def sdar_moe_to_stock(weights: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """SDAR-MoE hub tensors under Qwen3MoeForCausalLM's names: each MoE layer's per-expert
    projections stacked (every expert 0..E-1 present, or UnsupportedCheckpoint); the rest unchanged."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
    for name, t in weights.items():
        m = _EXPERT.match(name)
        if m:
            experts.setdefault(m.group(1), {}).setdefault(m.group(4), {})[int(m.group(3))] = t
        else:
            out[name] = t
    n = config.num_experts
    for prefix, projs in experts.items():
        stacked = {}
        for proj in ("gate", "up", "down"):
            got = projs.get(proj, {})
            if sorted(got) != list(range(n)):
                missing, extra = sorted(set(range(n)) - set(got)), sorted(set(got) - set(range(n)))
                raise UnsupportedCheckpoint(
                    f"sdar_moe {prefix}: {proj}_proj of {len(got)} experts, config.json num_experts={n} (missing {missing[:8]}, "
                    f"beyond it {extra[:8]}): the weights and config.json disagree (an incomplete download, or another "
                    "checkpoint's config.json); fetch every safetensors file of the checkpoint or correct num_experts"
                )
            stacked[proj] = torch.stack([got[i] for i in range(n)])  # [E, I, H] or [E, H, I]
        out[prefix + ".gate_up_proj"] = torch.cat([stacked["gate"], stacked["up"]], dim=1)  # [E, 2I, H]: gate rows, then up
        out[prefix + ".down_proj"] = stacked["down"]  # [E, H, I]
    return out


def sdar_moe_to_hub(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `sdar_moe_to_stock` (for `unmask export`): stacked experts split back into
    `experts.E.{gate,up,down}_proj.weight`. transformers already saves Qwen3-MoE's experts one by one,
    under these names; those pass through unchanged."""
    out: dict[str, torch.Tensor] = {}
    for name, t in weights.items():
        m = _STACKED.match(name)
        if m is None:
            out[name] = t
        elif m.group(2) == "gate_up_proj":
            gate, up = t.chunk(2, dim=1)
            for e in range(t.shape[0]):
                out[f"{m.group(1)}.{e}.gate_proj.weight"], out[f"{m.group(1)}.{e}.up_proj.weight"] = gate[e], up[e]
        else:
            for e in range(t.shape[0]):
                out[f"{m.group(1)}.{e}.down_proj.weight"] = t[e]
    return out
