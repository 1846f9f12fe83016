"""Real checkpoints in their hub layout (SDAR/TraDo, Dream, LLaDA) load onto the stock classes exactly.

Each test checkpoint is tiny and random but laid out as the hub repositories are, from their facts:
config.json fields (model_type, architectures, auto_map, vocab sizes, special ids, no block_size for
SDAR), tensor names (Qwen3 / Qwen2 / LLaDA's `model.transformer.blocks.N...`), and tokenizers whose
special tokens sit at the real ids with the real padded range past the tokenizer. No family's
modeling code is used or copied: the reference logits come from the stock class the weights were
made with, so a renaming or config-mapping mistake shows as a difference.
"""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import (LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM)  # fmt: skip

from rollout.convert import UnsupportedCheckpoint, hub_family, load_hub_checkpoint
from rollout.engine import SamplingParams, generate
from rollout.models import load_model

from .conftest import ROOT
from .test_dream_tokenizer import write_dream_tokenizer

CHARS = "0123456789+=? abcdefghijklmnopqrstuvwxyz"
SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}

# family -> (tokenizer length, config vocab size, special tokens {text: id}, eos text, mask text)
FACTS = {
    "sdar": (151670, 151936, {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|MASK|>": 151669}, "<|endoftext|>", "<|MASK|>"),
    "dream": (151667, 152064, {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|beginoftext|>": 151665, "<|mask|>": 151666},
              "<|endoftext|>", "<|mask|>"),
    "llada": (126349, 126464, {"<|startoftext|>": 126080, "<|endoftext|>": 126081, "<|mdm_mask|>": 126336, "<|eot_id|>": 126348},
              "<|endoftext|>", "<|mdm_mask|>"),
    # LLaDA2.0/2.1-mini: eos = pad 156892 and mask 156895 as its own generate() uses them (tests/test_moe_family.py)
    "llada2": (156896, 157184, {"<|endoftext|>": 156892, "<|mask|>": 156895}, "<|endoftext|>", "<|mask|>"),
}  # fmt: skip


def hub_tokenizer(family: str, name_mask: bool = True) -> PreTrainedTokenizerFast:
    """A character tokenizer with the family's length and its special tokens at their real ids."""
    n, _, specials, eos, mask = FACTS[family]
    vocab = {c: i for i, c in enumerate(CHARS)}
    by_id = {i: t for t, i in specials.items()}
    for i in range(len(CHARS), n):
        vocab[by_id.get(i, f"<unused{i}>")] = i
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.add_special_tokens(list(specials))
    kwargs = {"mask_token": mask} if name_mask else {}  # SDAR's files disagree on the mask's name: found by id then
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, pad_token=eos, **kwargs)


def _save(path, config: dict, tensors: dict, tok):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    if tok is not None:
        tok.save_pretrained(path)


def sdar_checkpoint(path, **over):
    """SDAR/TraDo: Qwen3 tensors; config as on the hub (no block_size, no mask_token_id)."""
    torch.manual_seed(0)
    ref = Qwen3ForCausalLM(Qwen3Config(vocab_size=151936, head_dim=8, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False, **SMALL))
    config = {
        "architectures": ["SDARForCausalLM"], "model_type": "sdar",
        "auto_map": {"AutoConfig": "configuration_sdar.SDARConfig", "AutoModel": "modeling_sdar.SDARModel", "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM"},
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151643, "head_dim": 8, "hidden_act": "silu",
        "initializer_range": 0.02, "max_position_embeddings": 32768, "max_window_layers": 2, "rms_norm_eps": 1e-6, "rope_scaling": None,
        "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "float32", "transformers_version": "4.52.4",
        "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
        # SDAR-4B-Chat's training switches (its own code reads them; the conversion has no use for them):
        "attn_implementation": "flex_attention", "debug": False, "ep_size": 1, "fuse_cross_entropy": True, "micro_forward": False,
        "skip_checkpoint": False, "use_deepep": False, **SMALL, **over,
    }  # fmt: skip
    _save(path, config, ref.state_dict(), hub_tokenizer("sdar", name_mask=False))
    return ref


def dream_checkpoint(path, **over):
    """Dream: Qwen2 tensors (q/k/v biases), model_type spelled 'Dream', auto_map AutoModel only, and its own
    tokenizer class's files (vocab.json, merges.txt, tokenizer_config.json naming DreamTokenizer)."""
    torch.manual_seed(1)
    ref = Qwen2ForCausalLM(Qwen2Config(vocab_size=152064, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False, **SMALL))
    config = {
        "architectures": ["DreamModel"], "model_type": "Dream",
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151643, "pad_token_id": 151643, "mask_token_id": 151666,
        "hidden_act": "silu", "initializer_range": 0.02, "max_position_embeddings": 131072, "max_window_layers": 2, "rms_norm_eps": 1e-6,
        "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "float32",
        "use_cache": True, "use_sliding_window": False, "vocab_size": 152064, **SMALL, **over,
    }  # fmt: skip
    _save(path, config, ref.state_dict(), None)
    write_dream_tokenizer(path)  # as published: tokenizer_class DreamTokenizer, auto_map to tokenization_dream.py
    return ref


LLADA_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ff_norm", "self_attn.q_proj": "q_proj", "self_attn.k_proj": "k_proj",
               "self_attn.v_proj": "v_proj", "self_attn.o_proj": "attn_out", "mlp.gate_proj": "ff_proj", "mlp.up_proj": "up_proj",
               "mlp.down_proj": "ff_out"}  # fmt: skip


def _llada_name(k: str) -> str:
    top = {"model.embed_tokens.weight": "model.transformer.wte.weight", "model.norm.weight": "model.transformer.ln_f.weight",
           "lm_head.weight": "model.transformer.ff_out.weight"}  # fmt: skip
    if k in top:
        return top[k]
    _, _, n, rest = k.split(".", 3)
    return f"model.transformer.blocks.{n}.{LLADA_NAMES[rest.removesuffix('.weight')]}.weight"


def llada_checkpoint(path, **over):
    """LLaDA: Llama math under OLMo-style names (model.transformer.blocks.N.att/ff ...) and config fields."""
    torch.manual_seed(2)
    heads = SMALL["num_attention_heads"]
    ref = LlamaForCausalLM(LlamaConfig(vocab_size=126464, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=heads,
                                       num_key_value_heads=heads, rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=4096,
                                       tie_word_embeddings=False))  # fmt: skip
    config = {
        "architectures": ["LLaDAModelLM"], "model_type": "llada",
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM", "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "attention_dropout": 0.0, "attention_layer_norm": False,
        "attention_layer_norm_with_affine": True, "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": 32,
        "embedding_dropout": 0.0, "embedding_size": 126464, "eos_token_id": 126081, "flash_attention": False, "include_bias": False,
        "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False,
        "layer_norm_type": "rms", "layer_norm_with_affine": True, "mask_token_id": 126336, "max_sequence_length": 4096, "mlp_hidden_size": 64,
        "mlp_ratio": 4, "multi_query_attention": None, "n_heads": heads, "n_kv_heads": heads, "n_layers": 2, "pad_token_id": 126081,
        "precision": "amp_bf16", "residual_dropout": 0.0, "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True, "rope_theta": 500000.0,
        "scale_logits": False, "use_cache": False, "vocab_size": 126464, "weight_tying": False, **over,
    }  # fmt: skip
    _save(path, config, {_llada_name(k): v for k, v in ref.state_dict().items()}, hub_tokenizer("llada"))
    return ref


# Stable-DiffCoder-8B-Instruct's tokenizer (Seed-Coder's): <[begin▁of▁sentence]> 0 (bos), <[end▁of▁sentence]> 2 (eos),
# <[MASK_TOKEN]> 5 (its generate_block's mask_id), vocabulary 155136; <[PAD▁TOKEN]> is its pad token (id 1 assumed here:
# the loader reads it by name). The specials sit below the characters, unlike the other families'.
SEED_CODER_SPECIALS = {"<[begin▁of▁sentence]>": 0, "<[PAD▁TOKEN]>": 1, "<[end▁of▁sentence]>": 2, "<[MASK_TOKEN]>": 5}
FACTS["stable_diffcoder"] = (155136, 155136, SEED_CODER_SPECIALS, "<[end▁of▁sentence]>", "<[MASK_TOKEN]>")


def seed_coder_tokenizer(name_mask: bool = True, n: int = 155136) -> PreTrainedTokenizerFast:
    """Characters after Seed-Coder's specials (ids 0-5), padded with unused tokens to `n`."""
    by_id = {i: t for t, i in SEED_CODER_SPECIALS.items()}
    vocab = {by_id.get(i, f"<unused{i}>"): i for i in range(6)} | {c: 6 + i for i, c in enumerate(CHARS)}
    vocab |= {f"<unused{i}>": i for i in range(6 + len(CHARS), n)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.add_special_tokens(list(SEED_CODER_SPECIALS))
    kwargs = {"mask_token": "<[MASK_TOKEN]>"} if name_mask else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<[begin▁of▁sentence]>", eos_token="<[end▁of▁sentence]>",
                                   pad_token="<[PAD▁TOKEN]>", **kwargs)  # fmt: skip


def stable_diffcoder_checkpoint(path, version: str = "5.3", name_mask: bool = True, vocab: int = 155136, **over):
    """Stable-DiffCoder-8B-Instruct: Llama tensors; config.json as on the hub, model_type `llama` with the
    auto_map to its own code. `version` "5.3": after its transformers-5.3 update (architectures
    StableDiffcoderForCausalLM, modeling_stable_diffcoder.py); "4.48": before it (architectures
    LlamaForCausalLM, auto_map to modeling_seed_diffcoder.SeedDiffcoderForCausalLM, pretraining_tp, head_dim).
    Both carry attention_dropout 0.1, resid_pdrop 0.1, layer_norm_eps null, rope_theta 5e5."""
    torch.manual_seed(3)
    heads = SMALL["num_attention_heads"]
    ref = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, rms_norm_eps=1e-6, rope_theta=500000.0, max_position_embeddings=8192,
                                       tie_word_embeddings=False, attention_bias=False, mlp_bias=False, **SMALL))  # fmt: skip
    config = {
        "attention_bias": False, "attention_dropout": 0.1, "bos_token_id": 0, "eos_token_id": 2, "hidden_act": "silu",
        "initializer_range": 0.009882118, "layer_norm_eps": None, "max_position_embeddings": 8192, "mlp_bias": False, "model_type": "llama",
        "resid_pdrop": 0.1, "rms_norm_eps": 1e-6, "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "use_cache": True, "vocab_size": vocab, **SMALL,
    }  # fmt: skip
    if version == "5.3":
        config |= {"architectures": ["StableDiffcoderForCausalLM"], "transformers_version": "5.3.0",
                   "auto_map": {"AutoModel": "modeling_stable_diffcoder.StableDiffcoderForCausalLM",
                                "AutoModelForCausalLM": "modeling_stable_diffcoder.StableDiffcoderForCausalLM"}}  # fmt: skip
    else:
        config |= {"architectures": ["LlamaForCausalLM"], "transformers_version": "4.48.2", "pretraining_tp": 1, "rope_scaling": None,
                   "head_dim": SMALL["hidden_size"] // heads, "auto_map": {"AutoModelForCausalLM": "modeling_seed_diffcoder.SeedDiffcoderForCausalLM"}}  # fmt: skip
    n_tokens = 155136 if vocab == 155136 else 6 + len(CHARS)  # a compact vocabulary: padded past the tokenizer
    _save(path, config | over, ref.state_dict(), seed_coder_tokenizer(name_mask, n_tokens))
    return ref


BUILDERS = {"sdar": sdar_checkpoint, "dream": dream_checkpoint, "llada": llada_checkpoint, "stable_diffcoder": stable_diffcoder_checkpoint}
FAMILY = {"sdar": "block", "dream": "dream", "llada": "llada", "stable_diffcoder": "stable_diffcoder"}
BLOCK = {"sdar": 4, "stable_diffcoder": 4}  # hub configs without a block field: their own decoders use blocks of 4


@pytest.mark.parametrize("name", list(BUILDERS))
def test_hub_layout_loads_onto_the_stock_class_with_identical_logits(tmp_path, name):
    ref = BUILDERS[name](tmp_path / name).eval()
    lm = load_model(tmp_path / name)  # no trust_remote_code: the family's own code is never run
    n_tok, vocab, specials, eos, mask = FACTS[name]
    assert lm.family.name == FAMILY[name] and lm.mask_id == specials[mask] and lm.eos_id == specials[eos]
    assert lm.num_tokens == n_tok and lm.model.config.vocab_size == vocab
    assert lm.block_size == BLOCK.get(name)  # SDAR's and Stable-DiffCoder's hub configs have none: their own decoders use 4
    ids = torch.tensor([[3, 7, 10, 11, 2, 5, 9, 1]])
    sel = torch.arange(ids.shape[1])[None]
    got = lm.sequence_logits(ids, sel)
    # The reference: the stock model the weights were made with, under the same attention pattern.
    pos = torch.arange(ids.shape[1])[None]
    allowed = lm.attention_allowed(pos, torch.ones_like(ids, dtype=torch.bool))
    from rollout.attention import additive_mask

    hidden = ref.model(input_ids=ids, position_ids=pos, attention_mask=additive_mask(allowed, torch.float32)).last_hidden_state
    want = ref.lm_head(hidden)
    if name == "dream":  # shifted heads: position p-1 predicts p
        want = torch.cat([want[:, :1], want[:, :-1]], 1)
    assert (got - want).abs().max().item() == 0.0


def test_padded_vocabulary_ids_are_never_sampled(tmp_path):
    sdar_checkpoint(tmp_path / "sdar")
    lm = load_model(tmp_path / "sdar")
    with torch.no_grad():  # real tokens get logit 0, padded rows (no token) huge ones: unexcluded, they would win
        lm.model.lm_head.weight[: lm.num_tokens] = 0.0
        lm.model.lm_head.weight[lm.num_tokens :] = 100.0 * torch.randn_like(lm.model.lm_head.weight[lm.num_tokens :])
    prompts = [lm.tokenizer("12+34=")["input_ids"]] * 4
    for t in generate(lm, prompts, SamplingParams(max_new_tokens=8, temperature=1.0), torch.Generator().manual_seed(0)):
        assert max(t.completion_ids) < lm.num_tokens and all(x != lm.mask_id for x in t.completion_ids)
        lm.tokenizer.decode(t.completion_ids)  # decodable
    lp = lm.sampling_logprobs(torch.randn(2, 3, lm.model.config.vocab_size), 1.0)
    assert torch.isinf(lp[..., lm.num_tokens :]).all() and torch.isinf(lp[..., lm.mask_id]).all()


@pytest.mark.parametrize("name, over, field", [
    ("sdar", {"hidden_act": "gelu"}, "hidden_act"), ("sdar", {"use_sliding_window": True}, "use_sliding_window"),
    ("sdar", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"), ("dream", {"num_experts": 8}, "num_experts"),
    ("llada", {"include_bias": True}, "include_bias"), ("llada", {"scale_logits": True}, "scale_logits"),
    ("llada", {"block_type": "sequential"}, "block_type"), ("llada", {"layer_norm_type": "default"}, "layer_norm_type"),
    ("llada", {"alibi": True}, "alibi"), ("llada", {"input_emb_norm": True}, "input_emb_norm"),
])  # fmt: skip
def test_unsupported_config_flags_are_refused_by_name(tmp_path, name, over, field):
    BUILDERS[name](tmp_path / name, **over)
    with pytest.raises(UnsupportedCheckpoint, match=rf"{field}="):
        load_model(tmp_path / name)


def test_family_from_model_type_or_architectures_in_any_case():
    assert hub_family({"model_type": "SDAR"}) == "block" and hub_family({"model_type": "dream"}) == "dream"
    assert hub_family({"model_type": "custom", "architectures": ["TraDoForCausalLM"]}) == "block"
    assert hub_family({"model_type": "llama"}) is None  # stock checkpoints load as they are


def test_convert_and_generate_commands(tmp_path):
    llada_checkpoint(tmp_path / "llada")
    res = subprocess.run([sys.executable, "-m", "rl.cli", "convert", str(tmp_path / "llada"), str(tmp_path / "out")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    from transformers import AutoModelForCausalLM

    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert type(converted).__name__ == "LlamaForCausalLM" and converted.config.mask_token_id == 126336
    _, direct = load_hub_checkpoint(tmp_path / "llada")
    for (k, a), (k2, b) in zip(sorted(converted.state_dict().items()), sorted(direct.state_dict().items())):
        assert k == k2 and torch.equal(a, b)
    again = load_model(tmp_path / "out")  # the converted copy keeps its family
    assert again.family.name == "llada" and again.mask_id == 126336
    res = subprocess.run([sys.executable, "-m", "rl.cli", "generate", str(tmp_path / "llada"), "12+34=", "--max-new-tokens", "4"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0 and "step map:" in res.stdout, res.stderr[-2000:]
    bad = tmp_path / "bad"
    llada_checkpoint(bad, include_qkv_bias=True)
    res = subprocess.run([sys.executable, "-m", "rl.cli", "convert", str(bad), str(tmp_path / "out2")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "include_qkv_bias=True" in res.stderr


@pytest.mark.parametrize("name", list(BUILDERS))
def test_rl_steps_weight_sync_and_resume_on_a_hub_checkpoint(tmp_path, name):
    from rl.config import RunConfig
    from rl.batch import learner_batch
    from rl.learner import Learner
    from rollout.worker import RolloutWorker

    BUILDERS[name](tmp_path / name)
    cfg = RunConfig.model_validate({"data": {"sources": [{"path": "arithmetic"}]}, "model": {"path": str(tmp_path / name)},
                                    "algorithm": {"lr": 1e-3, "minibatches": 1}, "wandb": {"mode": "disabled"}})  # fmt: skip
    learner, worker = Learner(cfg), RolloutWorker(str(tmp_path / name))
    tok = worker.lm.tokenizer
    prompts = [tok("12+34=")["input_ids"], tok("50+05=")["input_ids"]] * 4
    # Full attention: recompute decoding, whose log-probs are the policy's own (the prefix cache is approximate).
    params = SamplingParams(max_new_tokens=8, temperature=1.0, kv_cache=name in BLOCK)
    for step in range(2):
        trajs = worker.generate(prompts, params, seed=step, groups=[0, 1] * 4)
        assert all(max(t.completion_ids) < worker.lm.num_tokens for t in trajs)
        m = learner.update(learner_batch(learner.cfg.algorithm, trajs, [1.0, -1.0] * 4))
        assert m["logp_mismatch"] < 1e-4  # the learner replays exactly what the sampler saw
        worker.load_weights(learner.get_weights(), version=step + 1)
    learner.save(tmp_path / "ckpt")
    resumed = Learner(cfg)
    assert resumed.load(tmp_path / "ckpt") == 2
    for (k, a), (_, b) in zip(learner.lm.model.state_dict().items(), resumed.lm.model.state_dict().items()):
        assert torch.equal(a, b), k
    again = load_model(tmp_path / "ckpt" / "model")
    assert again.family.name == FAMILY[name] and again.mask_id == FACTS[name][2][FACTS[name][4]]
    assert again.block_size == BLOCK.get(name)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_export_writes_the_original_layout_back(tmp_path, name):
    from safetensors.torch import load_file

    from rollout.convert import export_original

    BUILDERS[name](tmp_path / "hub")
    (tmp_path / "hub" / "modeling_x.py").write_text("# the family's own code, copied along by --code-from\n")
    lm = load_model(tmp_path / "hub")
    with torch.no_grad():  # as if trained
        lm.model.model.norm.weight.add_(0.5)
    lm.save_pretrained(tmp_path / "trained")  # what unmask's checkpoints hold: the stock class
    assert export_original(tmp_path / "trained", tmp_path / "out", code_from=tmp_path / "hub") == FAMILY[name]
    assert json.loads((tmp_path / "out" / "config.json").read_text()) == json.loads((tmp_path / "hub" / "config.json").read_text())
    assert set(load_file(tmp_path / "out" / "model.safetensors")) == set(load_file(tmp_path / "hub" / "model.safetensors"))
    assert (tmp_path / "out" / "modeling_x.py").exists()
    ids = torch.tensor([[3, 7, 10, 11, 2, 5, 9, 1]])
    sel = torch.arange(8)[None]
    back = load_model(tmp_path / "out")
    assert (back.sequence_logits(ids, sel) - lm.sequence_logits(ids, sel)).abs().max().item() == 0.0
    with pytest.raises(UnsupportedCheckpoint, match="not converted from a hub-layout checkpoint"):
        export_original(ROOT / "examples" / "checkpoints" / "arith3-base", tmp_path / "nope")


def test_overlap_refuses_the_approximate_full_attention_cache(tmp_path):
    from rl.config import RunConfig
    from rl.trainer import Trainer

    llada_checkpoint(tmp_path / "llada")
    cfg = RunConfig.model_validate({"data": {"sources": [{"path": "arithmetic"}]}, "model": {"path": str(tmp_path / "llada")},
                                    "rollout": {"overlap": True}, "train": {"output_dir": str(tmp_path / "run")}, "wandb": {"mode": "disabled"}})  # fmt: skip
    with pytest.raises(ValueError, match="rollout.overlap with the llada family needs rollout.sampling.kv_cache: false"):
        Trainer(cfg)  # refused before any actor starts: the ratio would use approximate-cache log-probs


@pytest.mark.parametrize("name", ["sdar", "dream", "stable_diffcoder"])
def test_generate_command_on_every_family(tmp_path, name):
    """`unmask generate` on the hub layout (LLaDA is covered with convert above): ids decode, the step map replays."""
    BUILDERS[name](tmp_path / name)
    res = subprocess.run([sys.executable, "-m", "rl.cli", "generate", str(tmp_path / name), "12+34=", "--max-new-tokens", "8"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "step map:" in res.stdout


def test_hub_id_resolves_through_the_hub_cache(tmp_path, monkeypatch):
    """`model.path: OWNER/NAME` loads from the hub cache (offline here), laid out as huggingface_hub writes it."""
    commit = "0" * 40
    repo = tmp_path / "hub" / "models--Gen-Verse--TraDo-tiny"
    sdar_checkpoint(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    lm = load_model("Gen-Verse/TraDo-tiny")
    assert lm.family.name == "block" and lm.mask_id == 151669 and lm.block_size == 4
    with pytest.raises(FileNotFoundError, match="Gen-Verse/No-such: not a local directory, and the hub could not provide it"):
        load_model("Gen-Verse/No-such")
