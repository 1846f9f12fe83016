"""Real diffusion-LM checkpoints onto stock transformers classes, exactly or not at all.

SDAR and TraDo (model_type ``sdar``) are Qwen3 with a block-causal mask; Dream and DiffuCoder
(``Dream``) are Qwen2 with shifted logits; LLaDA (``llada``) is a Llama whose tensors and config
fields carry other names; LLaDA2.0/2.1 (``llada2_moe``) are Glm4Moe with a block-causal mask
(rollout/convert_llada2.py); SDAR-30B-A3B (``sdar_moe``) is Qwen3-MoE with a block-causal mask
(rollout/convert_sdar_moe.py); Stable-DiffCoder (``llama``, told apart from a plain Llama by its
architectures and auto_map) is LlamaForCausalLM itself with a block-causal mask. Their own modeling
code targets transformers 4.4x-4.52 (Stable-DiffCoder's: 5.3 and later); mapped onto
Qwen3ForCausalLM / Qwen2ForCausalLM / LlamaForCausalLM they run on the transformers this project
requires, under unmask's own masks and caches. A config flag the stock class cannot reproduce (a
bias, another activation or norm, scaled logits, ...) is refused with an error naming it: a
checkpoint is converted exactly or not at all.

`hub_family(config)` tells a hub-layout config apart; `load_hub_checkpoint(path)` builds the stock
model and loads the renamed weights strictly; `convert_checkpoint(src, dst)` writes that model as a
plain transformers checkpoint (`unmask convert`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from rollout.conversion_rules import UnsupportedCheckpoint  # noqa: F401  (raised here, imported from here by callers)
from rollout.conversion_rules import require as _require

SDAR_BLOCK_SIZE = 4  # SDAR's and TraDo's own decoders use blocks of 4 (their hub configs do not say)


# model_type (lower case) or architecture prefix -> unmask family of a hub-layout checkpoint.
HUB_MODEL_TYPES = {"sdar": "block", "dream": "dream", "llada": "llada", "llada2_moe": "llada2", "fast_dllm_qwen": "fast_dllm_v2",
                   "sdar_moe": "sdar_moe"}
_ARCH_PREFIXES = {"sdarmoe": "sdar_moe", "sdar": "block",  # sdarmoe before sdar
                  "trado": "block", "dream": "dream", "llada2": "llada2", "llada": "llada",  # llada2 before llada
                  "fast_dllm_qwen": "fast_dllm_v2", "stablediffcoder": "stable_diffcoder", "seeddiffcoder": "stable_diffcoder"}  # fmt: skip
FAST_DLLM_V2_BLOCK_SIZE = 32  # config.json `bd_size`; its generate() defaults to blocks of 32 too
# Stable-DiffCoder says model_type "llama": its auto_map (modeling_stable_diffcoder.StableDiffcoderForCausalLM; before
# its transformers-5.3 update, modeling_seed_diffcoder.SeedDiffcoderForCausalLM with architectures LlamaForCausalLM)
# is what tells it from a plain Llama.
_AUTO_MAP_FAMILIES = {"stable_diffcoder": "stable_diffcoder", "seed_diffcoder": "stable_diffcoder"}
STABLE_DIFFCODER_BLOCK_SIZE = 4  # its generate_block() default and model card; the config has no block field


def read_config(path: str | Path) -> dict[str, Any]:
    """config.json of a checkpoint directory ({} if there is none, e.g. a hub id)."""
    f = Path(path) / "config.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def hub_family(config: dict[str, Any]) -> str | None:
    """The family of a checkpoint in its original hub layout (SDAR/TraDo, Dream, LLaDA, LLaDA2), read
    case-insensitively from model_type, else from architectures; None for anything else.

    >>> hub_family({"model_type": "Dream"}), hub_family({"model_type": "x", "architectures": ["LLaDAModelLM"]}), hub_family({"model_type": "qwen3"})
    ('dream', 'llada', None)
    """
    mt = str(config.get("model_type", "")).lower()
    if mt in HUB_MODEL_TYPES:
        return HUB_MODEL_TYPES[mt]
    for arch in config.get("architectures") or []:
        for prefix, fam in _ARCH_PREFIXES.items():
            if str(arch).lower().startswith(prefix):
                return fam
    for target in (config.get("auto_map") or {}).values():
        module = str(target).split(".")[0].lower()  # "modeling_stable_diffcoder.StableDiffcoderForCausalLM"
        for key, fam in _AUTO_MAP_FAMILIES.items():
            if module.endswith(key):
                return fam
    return None


# --- config mapping ----------------------------------------------------------------------------

# Fields of the Qwen-style configs that carry over one to one.
_QWEN_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps", "tie_word_embeddings",
    "rope_theta", "rope_scaling", "attention_bias", "attention_dropout", "bos_token_id", "eos_token_id", "pad_token_id",
)  # fmt: skip


def _qwen_config(cfg: dict, family: str, config_cls):
    """The stock config of a Qwen-style (or Llama) config.json: the `_QWEN_FIELDS` carried over, the flags
    the stock class would not reproduce refused by name."""
    _require(cfg, "hidden_act", lambda v: v == "silu", "only the SiLU-gated MLP is converted", family)
    _require(cfg, "use_sliding_window", lambda v: not v, "sliding-window attention is not part of the stock mapping", family)
    _require(cfg, "rope_scaling", lambda v: v is None or (isinstance(v, dict) and v.get("rope_type", v.get("type")) == "default"), "scaled RoPE is not converted", family)
    for moe in ("num_experts", "num_local_experts", "moe_intermediate_size"):
        _require(cfg, moe, lambda v: not v, "mixture-of-experts checkpoints are not converted", family)
    fields = {k: cfg[k] for k in _QWEN_FIELDS if k in cfg and k != "rope_scaling"}
    if config_cls is Qwen2Config:  # Qwen2 (Dream) always has q/k/v biases and no such field
        _require(cfg, "attention_bias", lambda v: v is not False, "Qwen2 always has q/k/v biases", family)
        fields.pop("attention_bias", None)
    return config_cls(**fields)


def _llada_config(cfg: dict) -> LlamaConfig:
    f = "llada"
    archs = [str(a) for a in cfg.get("architectures") or []]
    if any("moe" in a.lower() for a in archs) or cfg.get("num_experts"):
        # LLaDA-MoE-7B-A1B says model_type llada, but is an OLMoE-like mixture of experts, not LLaDA's Llama.
        raise UnsupportedCheckpoint(
            f"architecture {', '.join(archs) or '(none)'} with model_type 'llada' is LLaDA-MoE, a mixture-of-experts model "
            f"(OLMoE-like: {cfg.get('num_experts')} experts), not LLaDA's Llama; unmask has no stock-class conversion for it"
        )
    missing = [k for k in ("d_model", "n_heads", "n_layers") if k not in cfg]
    if missing:
        raise UnsupportedCheckpoint(f"llada config lacks {missing}: not the LLaDA (OLMo-style) config.json this conversion maps")
    _require(cfg, "activation_type", lambda v: v in ("swiglu", "silu"), "only the SwiGLU MLP is converted", f)
    _require(cfg, "block_type", lambda v: v == "llama", "only LLaDA's llama block is converted", f)
    _require(cfg, "layer_norm_type", lambda v: v == "rms", "only RMSNorm is converted", f)
    _require(cfg, "include_bias", lambda v: not v, "linear biases have no place in LlamaForCausalLM's MLP", f)
    _require(cfg, "include_qkv_bias", lambda v: not v, "q/k/v biases are not converted", f)
    _require(cfg, "bias_for_layer_norm", lambda v: not v, "norm biases are not part of RMSNorm", f)
    _require(cfg, "alibi", lambda v: not v, "ALiBi is not RoPE", f)
    _require(cfg, "rope", lambda v: v, "a model without RoPE is not a Llama", f)
    _require(cfg, "scale_logits", lambda v: not v, "scaled logits change every probability", f)
    _require(cfg, "input_emb_norm", lambda v: not v, "an embedding norm is not part of Llama", f)
    _require(cfg, "attention_layer_norm", lambda v: not v, "q/k layer norms are not part of Llama", f)
    _require(cfg, "clip_qkv", lambda v: v is None, "q/k/v clipping is not part of Llama", f)
    _require(cfg, "multi_query_attention", lambda v: not v, "use n_kv_heads instead", f)
    _require(cfg, "rope_full_precision", lambda v: v in (True, None), "half-precision RoPE differs from Llama's", f)
    n_heads = cfg["n_heads"]
    inter = cfg.get("mlp_hidden_size") or cfg["mlp_ratio"] * cfg["d_model"]
    vocab = cfg.get("embedding_size") or cfg["vocab_size"]
    return LlamaConfig(
        vocab_size=vocab, hidden_size=cfg["d_model"], intermediate_size=inter, num_hidden_layers=cfg["n_layers"],
        num_attention_heads=n_heads, num_key_value_heads=cfg.get("n_kv_heads") or n_heads, hidden_act="silu",
        max_position_embeddings=cfg.get("max_sequence_length", 4096), rms_norm_eps=cfg.get("rms_norm_eps", 1e-5),
        rope_theta=cfg.get("rope_theta", 10000.0), tie_word_embeddings=bool(cfg.get("weight_tying", False)),
        attention_bias=False, mlp_bias=False, initializer_range=cfg.get("init_std", 0.02),
        bos_token_id=cfg.get("bos_token_id"), eos_token_id=cfg.get("eos_token_id"), pad_token_id=cfg.get("pad_token_id"),
    )  # fmt: skip


def _stable_diffcoder_config(cfg: dict) -> LlamaConfig:
    """Stable-DiffCoder's class is transformers' own LlamaForCausalLM plus a generate(): its forward is the
    stock one, its config.json a Llama config, mapped and checked as the Qwen-style ones are (plus `mlp_bias`).
    `attention_dropout` (0.1 in its config) is dropped to 0: the stock class applies it in train mode, so the
    learner's log-probs would be a random draw, never the rollout's (TRL's and verl's RL trainers turn
    dropout off too); eval-mode logits are unchanged. `resid_pdrop` and `layer_norm_eps` are read by neither class."""
    _require(cfg, "pretraining_tp", lambda v: v in (None, 1), "tensor-parallel slicing of the MLP is not part of the stock Llama", "stable_diffcoder")
    out = _qwen_config(cfg, "stable_diffcoder", LlamaConfig)
    out.mlp_bias = bool(cfg.get("mlp_bias", False))
    out.attention_dropout = 0.0
    return out


def stock_config(cfg: dict[str, Any]):
    """(family, the stock transformers config, the stock model class) of a hub-layout config."""
    family = hub_family(cfg)
    if family == "block":
        out, cls = _qwen_config(cfg, "sdar", Qwen3Config), Qwen3ForCausalLM
    elif family == "dream":
        out, cls = _qwen_config(cfg, "dream", Qwen2Config), Qwen2ForCausalLM
    elif family == "fast_dllm_v2":  # Qwen2.5 tensor for tensor; the mask token |<MASK>| (151665) is the tokenizer's, not the config's
        out, cls = _qwen_config(cfg, "fast_dllm_v2", Qwen2Config), Qwen2ForCausalLM
        out.block_size = cfg.get("bd_size") or FAST_DLLM_V2_BLOCK_SIZE
    elif family == "llada":
        out, cls = _llada_config(cfg), LlamaForCausalLM
    elif family == "stable_diffcoder":  # Llama tensor for tensor; the mask <[MASK_TOKEN]> (5) is the tokenizer's
        out, cls = _stable_diffcoder_config(cfg), LlamaForCausalLM
        out.block_size = STABLE_DIFFCODER_BLOCK_SIZE
    elif family == "llada2":
        from transformers import Glm4MoeForCausalLM

        from rollout.convert_llada2 import LLADA2_BLOCK_SIZE, LLADA2_MASK_ID, llada2_config

        out, cls = llada2_config(cfg), Glm4MoeForCausalLM
        out.block_size = cfg.get("block_size") or LLADA2_BLOCK_SIZE
        out.mask_token_id = cfg.get("mask_token_id", LLADA2_MASK_ID)  # the tokenizer's mask token wins where it names one
    elif family == "sdar_moe":  # Qwen3-MoE tensor for tensor, block-causal (rollout/convert_sdar_moe.py)
        from transformers import Qwen3MoeForCausalLM

        from rollout.convert_sdar_moe import sdar_moe_config

        out, cls = sdar_moe_config(cfg), Qwen3MoeForCausalLM
    else:
        raise UnsupportedCheckpoint(
            f"model_type {cfg.get('model_type')!r} is not a hub-layout diffusion checkpoint (sdar, sdar_moe, Dream, llada, llada2_moe, Fast_dLLM_Qwen, Stable-DiffCoder)"
        )
    for key in ("mask_token_id", "block_size"):
        if cfg.get(key) is not None:
            setattr(out, key, cfg[key])
    if family in ("block", "sdar_moe") and cfg.get("block_size") is None:
        out.block_size = SDAR_BLOCK_SIZE  # the hub configs carry none; model.block_size overrides
    out.unmask_family = family
    out.unmask_hub_config = dict(cfg)  # kept through training and saving, so `export_original` can write it back
    return family, out, cls


# --- tensor names -----------------------------------------------------------------------------

_LLADA_TOP = {"model.transformer.wte.weight": "model.embed_tokens.weight", "model.transformer.ln_f.weight": "model.norm.weight",
              "model.transformer.ff_out.weight": "lm_head.weight"}  # fmt: skip
_LLADA_BLOCK = {"attn_norm": "input_layernorm", "ff_norm": "post_attention_layernorm", "q_proj": "self_attn.q_proj",
                "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj", "attn_out": "self_attn.o_proj",
                "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "ff_out": "mlp.down_proj"}  # fmt: skip
_BLOCK_KEY = re.compile(r"^model\.transformer\.blocks\.(\d+)\.(\w+)\.weight$")
_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)\.weight$")


def _rename(name: str, top: dict[str, str], block: dict[str, str], key: re.Pattern, layer: str) -> str | None:
    """`name` through a whole-tensor table, else a per-layer one (`layer` formats index and new name); None if neither knows it."""
    if name in top:
        return top[name]
    m = key.match(name)
    return layer.format(m.group(1), block[m.group(2)]) if m and m.group(2) in block else None


def rename_llada(name: str) -> str:
    """A LLaDA tensor name as LlamaForCausalLM names it (an unknown name is an error).

    >>> rename_llada("model.transformer.blocks.3.attn_out.weight"), rename_llada("model.transformer.wte.weight")
    ('model.layers.3.self_attn.o_proj.weight', 'model.embed_tokens.weight')
    """
    out = _rename(name, _LLADA_TOP, _LLADA_BLOCK, _BLOCK_KEY, "model.layers.{}.{}.weight")
    if out is None:
        raise UnsupportedCheckpoint(f"llada tensor {name!r} has no Llama counterpart (a bias or a layer the conversion does not know)")
    return out


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory: model.safetensors, sharded safetensors (index), or pytorch_model*.bin."""
    from safetensors.torch import load_file

    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    if files:
        out = {}
        for f in files:
            out.update(load_file(str(f)))
        return out
    bins = sorted(path.glob("pytorch_model*.bin"))
    if not bins:
        raise FileNotFoundError(f"{path}: no *.safetensors or pytorch_model*.bin weights")
    out = {}
    for f in bins:
        out.update(torch.load(f, map_location="cpu", weights_only=True))
    return out


def stock_state_dict(family: str, weights: dict[str, torch.Tensor], config=None) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under the stock class's names (SDAR and Dream already use them);
    `config` is the stock config (LLaDA2's fused tensors split by its head counts)."""
    if family == "llada2":
        from rollout.convert_llada2 import llada2_to_stock

        return llada2_to_stock(weights, config)
    if family == "sdar_moe":
        from rollout.convert_sdar_moe import sdar_moe_to_stock

        return sdar_moe_to_stock(weights, config)
    if family != "llada":
        return dict(weights)
    return {rename_llada(k): v for k, v in weights.items()}


def load_hub_checkpoint(path: str | Path, dtype=torch.float32):
    """The stock transformers model of a hub-layout checkpoint, its weights loaded strictly
    (no missing or unexpected tensor), and its family."""
    cfg = read_config(path)
    family, config, cls = stock_config(cfg)
    with torch.device("meta"):  # no random init of weights that are about to be replaced
        model = cls(config)
    model.to_empty(device="cpu")
    # Buffers computed at construction (rotary inverse frequencies) are empty now: build them again.
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    state = stock_state_dict(family, read_weights(path), config)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # tied: the embedding is the head
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise UnsupportedCheckpoint(f"{path}: weights do not match the stock {cls.__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    return family, model.to(dtype).eval()


def convert_checkpoint(src: str | Path, dst: str | Path, dtype=torch.float32) -> str:
    """Write a hub-layout checkpoint as a plain transformers checkpoint of its stock class (with its
    tokenizer, family and block size), loadable with AutoModelForCausalLM. Returns the family."""
    from rollout.hub_tokenizer import load_tokenizer

    family, model = load_hub_checkpoint(src, dtype)
    model.save_pretrained(dst)
    load_tokenizer(src).save_pretrained(dst)
    return family


# --- back to the original layout ----------------------------------------------------------------

_LLADA_BACK = {v: k for k, v in _LLADA_TOP.items()}
_LLADA_BLOCK_BACK = {v: k for k, v in _LLADA_BLOCK.items()}


def original_name_llada(name: str) -> str:
    """The inverse of `rename_llada`.

    >>> original_name_llada("model.layers.3.mlp.gate_proj.weight")
    'model.transformer.blocks.3.ff_proj.weight'
    """
    out = _rename(name, _LLADA_BACK, _LLADA_BLOCK_BACK, _LAYER_KEY, "model.transformer.blocks.{}.{}.weight")
    if out is None:
        raise UnsupportedCheckpoint(f"tensor {name!r} has no LLaDA counterpart")
    return out


def export_original(src: str | Path, dst: str | Path, code_from: str | Path | None = None) -> str:
    """Write a checkpoint that unmask converted (and maybe trained) in its family's original hub
    layout: the original config.json (model_type, auto_map, field names), the original tensor names,
    the tokenizer, and, from `code_from` (the original checkpoint directory), its *.py modeling files,
    so SDAR's own code, JetEngine, SGLang or LMDeploy load it. Returns the family."""
    import shutil

    from safetensors.torch import save_file

    from rollout.hub_tokenizer import load_tokenizer

    src, dst = Path(src), Path(dst)
    cfg = read_config(src)
    hub = cfg.get("unmask_hub_config")
    if not hub:
        raise UnsupportedCheckpoint(f"{src}: not converted from a hub-layout checkpoint (its config has no unmask_hub_config); nothing to export to")
    family = hub_family(hub)
    weights = read_weights(src)
    if cfg.get("tie_word_embeddings"):
        weights.pop("lm_head.weight", None)
    if family == "llada":
        weights = {original_name_llada(k): v for k, v in weights.items()}
    elif family == "llada2":
        from rollout.convert_llada2 import llada2_to_hub

        weights = llada2_to_hub(weights, hub)
    elif family == "sdar_moe":
        from rollout.convert_sdar_moe import sdar_moe_to_hub

        weights = sdar_moe_to_hub(weights)
    dst.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(hub, indent=2))
    load_tokenizer(src).save_pretrained(dst)
    if code_from is not None:
        for f in Path(code_from).glob("*.py"):
            shutil.copy2(f, dst / f.name)
    return family
