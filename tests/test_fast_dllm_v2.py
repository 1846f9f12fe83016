"""Fast-dLLM v2 (`Fast_dLLM_QwenForCausalLM`) in its hub layout: Qwen2ForCausalLM, block-causal, shifted logits.

The checkpoint is tiny and random but laid out as Efficient-Large-Model/Fast_dLLM_v2_7B is, from its
public files: config.json (model_type `Fast_dLLM_Qwen`, auto_map to configuration.py / modeling.py,
`bd_size: 32`, the misspelt `conplemenrary_mask`, `layer_types`, eos = pad 151645 in the config,
vocab 152064, no mask_token_id), Qwen2 tensor names, and a tokenizer with the real specials
(`<|endoftext|>` 151643 is its pad token, `<|im_end|>` 151645 its eos, `|<MASK>|` 151665 an added
special token nobody names as the mask; 151666 tokens). Its own generate() decodes blocks of 32
on a block-causal mask, reads the logit of position p from the hidden state at p-1, and takes a
block's first token from the last (clean) hidden state of the block before: unmask's sampler,
TraceRL replay and SFT must all see that same context, which the tests below check token by token.
The comparison against Fast-dLLM v2's own modeling.py runs outside the repository (closing note).
"""

import json

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from algorithms import trace_logprobs
from algorithms.packing import pack_noisy
from rollout.attention import additive_mask
from rollout.convert import hub_family
from rollout.engine import SamplingParams, generate
from rollout.models import load_model

from .test_hub_checkpoints import CHARS

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
PAD, EOS, MASK, N_TOKENS, VOCAB, BLOCK = 151643, 151645, 151665, 151666, 152064, 32
SPECIALS = {"<|endoftext|>": PAD, "<|im_start|>": 151644, "<|im_end|>": EOS, "|<MASK>|": MASK}
# The same layout with the ids packed after the characters and the vocabulary padded past the tokenizer
# as the hub's is (152064 > 151666): decoding and training on 152k logits per position is minutes on a
# shared CPU, and nothing these tests check depends on where the ids sit (the loader finds them by name).
COMPACT = {"<|endoftext|>": 40, "<|im_start|>": 41, "<|im_end|>": 42, "|<MASK>|": 43}
C_PAD, C_EOS, C_MASK, C_TOKENS, C_VOCAB = 40, 42, 43, 44, 64


def fast_dllm_tokenizer(specials: dict[str, int] = SPECIALS) -> PreTrainedTokenizerFast:
    """Characters, then the Qwen2.5 specials at their ids and |<MASK>| added last, unnamed as a mask (as on the hub)."""
    by_id = {i: t for t, i in specials.items()}
    n = max(specials.values()) + 1
    vocab = {c: i for i, c in enumerate(CHARS)} | {by_id.get(i, f"<unused{i}>"): i for i in range(len(CHARS), n)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.add_special_tokens(list(specials))
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["|<MASK>|"])  # fmt: skip


def fast_dllm_v2_checkpoint(path, seed=5, compact=False, **over) -> Qwen2ForCausalLM:
    """A tiny Fast_dLLM_v2_7B-layout checkpoint (`compact`: its ids packed, COMPACT); returns the stock
    Qwen2 model its weights came from."""
    torch.manual_seed(seed)
    vocab, pad, eos = (C_VOCAB, C_PAD, C_EOS) if compact else (VOCAB, PAD, EOS)
    ref = Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False, **SMALL)).eval()
    config = {
        "architectures": ["Fast_dLLM_QwenForCausalLM"], "model_type": "Fast_dLLM_Qwen",
        "auto_map": {"AutoConfig": "configuration.Fast_dLLM_QwenConfig", "AutoModel": "modeling.Fast_dLLM_QwenModel",
                     "AutoModelForCausalLM": "modeling.Fast_dLLM_QwenForCausalLM"},
        "attention_dropout": 0.0, "bd_size": BLOCK, "bos_token_id": pad, "conplemenrary_mask": True, "eos_token_id": eos, "hidden_act": "silu",
        "initializer_range": 0.02, "layer_types": ["full_attention"] * SMALL["num_hidden_layers"], "max_position_embeddings": 32768,
        "max_window_layers": 28, "pad_token_id": eos, "rms_norm_eps": 1e-6, "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": None,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.53.1", "use_cache": True, "use_sliding_window": False,
        "vocab_size": vocab, **SMALL, **over,
    }  # fmt: skip
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path / "model.safetensors"))
    fast_dllm_tokenizer(COMPACT if compact else SPECIALS).save_pretrained(path)
    return ref


def _ref_logits(ref, ids: torch.Tensor) -> torch.Tensor:
    """The stock model's logits [1, L, V] under block-causal attention (blocks of 32 from position 0)."""
    pos = torch.arange(ids.shape[1])[None]
    allowed = (pos[0, :, None] // BLOCK >= pos[0, None, :] // BLOCK)[None]
    return ref.lm_head(ref.model(input_ids=ids, position_ids=pos, attention_mask=additive_mask(allowed, ref.dtype)).last_hidden_state)


def test_fast_dllm_v2_loads_onto_qwen2_with_shifted_block_causal_logits(tmp_path):
    ref = fast_dllm_v2_checkpoint(tmp_path / "hub")
    lm = load_model(tmp_path / "hub")  # no remote code
    assert hub_family({"model_type": "x", "architectures": ["Fast_dLLM_QwenForCausalLM"]}) == "fast_dllm_v2"
    assert type(lm.model).__name__ == "Qwen2ForCausalLM" and lm.traits.name == "fast_dllm_v2"
    assert lm.traits.block_causal and lm.traits.shift_logits and lm.block_size == BLOCK
    assert (lm.mask_id, lm.eos_id, lm.pad_id, lm.num_tokens) == (MASK, EOS, PAD, N_TOKENS)  # the mask found by its spelling
    ids = torch.tensor([[3, 7, 10, 11, 2, 5, 9, 1] * 5])  # 40 tokens: two blocks
    got = lm.sequence_logits(ids, torch.arange(40)[None])
    with torch.no_grad():
        want = _ref_logits(ref, ids)
    # Shifted heads: the logit for position p is row p-1 (row 0 for position 0, as its generate()'s cat does).
    assert (got[:, 1:] - want[:, :-1]).abs().max().item() == 0.0 and torch.equal(got[:, 0], want[:, 0])
    # Position 32 opens block 1: it is read from row 31, which sees block 0 only.
    later = ids.clone()
    later[0, 33:] = 4
    assert (lm.sequence_logits(later, torch.tensor([[32]])) - got[:, 32:33]).abs().max().item() < 1e-6  # one head row: fp32 rounding
    earlier = ids.clone()
    earlier[0, 5] = 4
    assert (lm.sequence_logits(earlier, torch.tensor([[32]])) - got[:, 32:33]).abs().max().item() > 1e-3


def test_replay_scores_each_token_in_the_context_the_sampler_saw(tmp_path):
    """Prompts of 32 (the first token opens a block) and 29 (it shares the prompt's block), batched
    (left padding), cached and recomputed: TraceRL's s=1 log-probs equal the rollout's, block openers included."""
    ref = fast_dllm_v2_checkpoint(tmp_path / "hub", compact=True)
    lm = load_model(tmp_path / "hub")
    assert (lm.mask_id, lm.eos_id, lm.pad_id, lm.num_tokens) == (C_MASK, C_EOS, C_PAD, C_TOKENS)
    tok = lm.tokenizer
    prompts = [tok("12+34=" * 5 + "7+")["input_ids"], tok("50+05=" * 4 + "1+2=3")["input_ids"]]
    assert [len(p) for p in prompts] == [32, 29]
    for kv_cache in (True, False):
        params = SamplingParams(max_new_tokens=40, temperature=1.0, steps_per_block=4, kv_cache=kv_cache, stop_at_eos=False)
        trajs = generate(lm, prompts, params, torch.Generator().manual_seed(0))
        with torch.no_grad():
            logp, mask, _ = trace_logprobs(lm, trajs, shrink=1)
        for i, t in enumerate(trajs):
            assert t.block_size == BLOCK and C_MASK not in t.completion_ids and max(t.completion_ids) < C_TOKENS
            n = int(mask[i].sum())
            assert (logp[i, :n] - torch.tensor(t.logprobs[:n], dtype=logp.dtype)).abs().max().item() < 1e-5, kv_cache  # fp32 rounding
        # Hand check of the block openers: the 32-token prompt's first token (position 32) is sampled
        # from the prompt's last hidden state, which sees the prompt's block and nothing generated ...
        t = trajs[0]
        with torch.no_grad():
            row31 = _ref_logits(ref, torch.tensor([prompts[0]]))[0, 31]
            row63 = _ref_logits(ref, torch.tensor([prompts[0] + t.completion_ids[:32]]))[0, 63]
        assert abs(t.logprobs[0] - lm.sampling_logprobs(row31, 1.0)[t.completion_ids[0]].item()) < 1e-5
        # ... and position 64 (block 2) from position 63, with all of block 1 clean.
        assert abs(t.logprobs[32] - lm.sampling_logprobs(row63, 1.0)[t.completion_ids[32]].item()) < 1e-5
        assert t.step_map[32] > t.step_map[31]  # decoded in the next block, after block 1 was complete


def test_packing_reads_a_block_opener_from_the_clean_column_before_it():
    """[prompt | clean | noisy]: a masked token at a block start is predicted by the clean p-1 (what
    decoding had), never by the end of the previous noisy block; other tokens by the noisy p-1."""
    packed = pack_noisy([[1] * 6], [[2] * 6], [[True] * 6], 4, mask_id=9, pad_id=0, logit_shift=1)
    # total 12, noisy copy from position 4 at index 12: positions 6..11 -> indices 14..19; position 8 opens block 2
    assert packed.select[0].tolist() == [14, 15, 8, 17, 18, 19]  # 8 - 1 = 7: the clean copy of position 7
    plain = pack_noisy([[1] * 6], [[2] * 6], [[True] * 6], 4, mask_id=9, pad_id=0)
    assert plain.select[0].tolist() == [14, 15, 16, 17, 18, 19]  # aligned heads read the noisy token itself
    opener = pack_noisy([[1] * 8], [[2] * 3], [[True] * 3], 4, mask_id=9, pad_id=0, logit_shift=1)
    assert opener.select[0].tolist() == [8, 12, 13]  # the first token opens a block: the prompt's last token predicts it


@pytest.mark.slow
def test_a_tracerl_update_with_exact_replay(tmp_path):
    from rl.batch import learner_batch
    from rl.config import RunConfig
    from rl.learner import Learner
    from rollout.worker import RolloutWorker

    fast_dllm_v2_checkpoint(tmp_path / "hub", compact=True)
    cfg = RunConfig.model_validate({"data": {"sources": [{"path": "arithmetic"}]}, "model": {"path": str(tmp_path / "hub")},
                                    "algorithm": {"lr": 1e-3, "minibatches": 1}, "wandb": {"mode": "disabled"}})  # fmt: skip
    learner, worker = Learner(cfg), RolloutWorker(str(tmp_path / "hub"))
    tok = worker.lm.tokenizer
    prompts = [tok("12+34=")["input_ids"], tok("50+05=")["input_ids"]] * 2
    params = SamplingParams(max_new_tokens=8, temperature=1.0, steps_per_block=4, kv_cache=True)  # 4 steps per block of 32: 4 replayed passes
    trajs = worker.generate(prompts, params, seed=0, groups=[0, 1] * 2)
    before = {k: v.clone() for k, v in learner.lm.model.named_parameters()}
    m = learner.update(learner_batch(learner.cfg.algorithm, trajs, [1.0, 1.0, -1.0, -1.0]))  # both groups have a winner
    assert m["logp_mismatch"] < 1e-4  # the learner replays what the sampler saw
    assert all(not torch.equal(v, before[k]) for k, v in learner.lm.model.named_parameters() if "layers.1." in k)
    worker.load_weights(learner.get_weights(), version=1)
    again = worker.generate(prompts[:1], SamplingParams(max_new_tokens=4, temperature=0.0), seed=1)
    assert len(again[0].completion_ids) >= 1


def test_sft_then_save_reload_and_export(tmp_path):
    from algorithms.sft import sft_loss
    from rollout.convert import export_original

    fast_dllm_v2_checkpoint(tmp_path / "hub", compact=True)
    lm = load_model(tmp_path / "hub")
    opt = torch.optim.SGD(lm.model.parameters(), lr=0.1)
    loss, metrics = sft_loss(lm, [[1, 2, 3] * 3, [4] * 32], [[5] * 32, [6] * 32], torch.Generator().manual_seed(0))
    loss.backward()
    opt.step()  # as if trained
    assert torch.isfinite(loss) and metrics["loss/sft"] > 0
    lm.save_pretrained(tmp_path / "trained")
    again = load_model(tmp_path / "trained")  # the stock Qwen2 checkpoint keeps its family and block grid
    assert again.traits.name == "fast_dllm_v2" and again.block_size == BLOCK and (again.mask_id, again.eos_id) == (C_MASK, C_EOS)
    ids, sel = torch.tensor([[3, 7, 10, 11, 2, 5, 9, 1] * 5]), torch.arange(40)[None]
    assert (again.sequence_logits(ids, sel) - lm.sequence_logits(ids, sel)).abs().max().item() == 0.0
    assert export_original(tmp_path / "trained", tmp_path / "out") == "fast_dllm_v2"
    assert json.loads((tmp_path / "out" / "config.json").read_text()) == json.loads((tmp_path / "hub" / "config.json").read_text())
    back = load_model(tmp_path / "out")
    assert (back.sequence_logits(ids, sel) - again.sequence_logits(ids, sel)).abs().max().item() == 0.0
