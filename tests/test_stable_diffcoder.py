"""Stable-DiffCoder (ByteDance-Seed/Stable-DiffCoder-8B-Base/-Instruct) in its hub layout: LlamaForCausalLM, block-causal.

The checkpoint is tiny and random but laid out as the hub's (tests/test_hub_checkpoints.py,
`stable_diffcoder_checkpoint`): model_type `llama`, told apart from a plain Llama only by its architectures
and auto_map, attention_dropout 0.1, Seed-Coder's tokenizer with <[MASK_TOKEN]> at id 5. Its own
generate_block() decodes blocks of 4 counted from position 0, the first one shared with the prompt's tail,
each block's masked positions spread evenly over its steps (earlier steps take the remainder, an empty step
is skipped), the most confident first, and exactly gen_length tokens: the last block is cut at the budget.
The comparison with its own modeling_stable_diffcoder.py (transformers 5.3) runs outside the repository
(closing note): 500/500 greedy decodes token-identical (static and its dynamic-threshold mode), logits to 6e-7.
"""

import pytest
import torch

from algorithms import trace_logprobs
from rollout.checkpoint_checks import check_loadable
from rollout.convert import UnsupportedCheckpoint, hub_family, read_config
from rollout.engine import SamplingParams, generate, transfer_schedule
from rollout.models import checkpoint_family, load_model

from .test_hub_checkpoints import sdar_checkpoint, stable_diffcoder_checkpoint

COMPACT = 64  # a vocabulary past the tokenizer's 46 tokens: decoding on 155k logits per position is minutes here


def test_told_apart_from_a_plain_llama_by_architecture_or_auto_map(tmp_path):
    new = {"model_type": "llama", "architectures": ["StableDiffcoderForCausalLM"]}
    old = {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
           "auto_map": {"AutoModelForCausalLM": "modeling_seed_diffcoder.SeedDiffcoderForCausalLM"}}  # fmt: skip
    assert hub_family(new) == hub_family(old) == "stable_diffcoder"
    assert hub_family({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}) is None  # a plain Llama stays what it is
    stable_diffcoder_checkpoint(tmp_path / "old", version="4.48", vocab=COMPACT)
    lm = load_model(tmp_path / "old")
    assert checkpoint_family(tmp_path / "old") == "stable_diffcoder" and lm.traits.name == "stable_diffcoder"
    assert type(lm.model).__name__ == "LlamaForCausalLM" and lm.block_size == 4 and not lm.traits.shift_logits
    assert (lm.mask_id, lm.eos_id, lm.pad_id, lm.num_tokens) == (5, 2, 1, 46)  # 6 specials + 40 characters


def test_mask_found_by_its_spelling_when_the_tokenizer_does_not_name_it(tmp_path):
    stable_diffcoder_checkpoint(tmp_path / "hub", name_mask=False, vocab=COMPACT)
    assert load_model(tmp_path / "hub").mask_id == 5


def test_dropout_is_off_so_the_learner_replays_the_rollout(tmp_path):
    """Its config asks for attention dropout 0.1, which the stock class applies in train mode: the learner's
    log-probs would be a random draw. Converted, train-mode logits equal eval-mode ones."""
    stable_diffcoder_checkpoint(tmp_path / "hub", vocab=COMPACT)
    assert read_config(tmp_path / "hub")["attention_dropout"] == 0.1
    lm = load_model(tmp_path / "hub")
    assert lm.model.config.attention_dropout == 0.0
    ids, sel = torch.tensor([[7, 8, 9, 10, 11, 12, 13, 14, 15, 16]]), torch.arange(10)[None]
    with torch.no_grad():
        want = lm.sequence_logits(ids, sel)
        lm.model.train()
        got = lm.sequence_logits(ids, sel)
    assert torch.equal(got, want)


@pytest.mark.parametrize("over, field", [({"hidden_act": "gelu"}, "hidden_act"), ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
                                         ({"pretraining_tp": 2}, "pretraining_tp")])  # fmt: skip
def test_unconverted_flags_are_refused_by_name(tmp_path, over, field):
    stable_diffcoder_checkpoint(tmp_path / "hub", vocab=COMPACT, **over)
    with pytest.raises(UnsupportedCheckpoint, match=rf"{field}="):
        load_model(tmp_path / "hub")


def test_its_own_code_is_allowed_where_it_runs_on_transformers_5(tmp_path):
    """Its modeling file targets transformers 5.3 (LlamaForCausalLM plus a generate()): trust_remote_code is
    not refused for it, while SDAR's 4.52-era code still is."""
    stable_diffcoder_checkpoint(tmp_path / "sdc", vocab=COMPACT)
    check_loadable(tmp_path / "sdc", read_config(tmp_path / "sdc"), trust_remote_code=True)
    sdar_checkpoint(tmp_path / "sdar")
    with pytest.raises(ValueError, match="does not run on the installed transformers"):
        check_loadable(tmp_path / "sdar", read_config(tmp_path / "sdar"), trust_remote_code=True)


def test_schedule_is_its_generate_blocks():
    """Its _get_num_transfer_tokens: base = n // steps per step, the first n % steps steps one more, steps with
    nothing to commit skipped (no forward)."""
    assert transfer_schedule(3, 4) == [1, 1, 1]  # theirs [1, 1, 1, 0]: the empty step is skipped
    assert transfer_schedule(6, 4) == [2, 2, 1, 1] and transfer_schedule(4, 1) == [4] and transfer_schedule(1, 2) == [1]


def test_budget_is_exact_and_the_last_block_is_cut_there(tmp_path):
    """A prompt of 6 and 8 new tokens: blocks [4, 8), [8, 12), [12, 14) as in its generate_block (the first shares
    the prompt's block, the last is cut at the budget), not SDAR's rounding up to 16."""
    stable_diffcoder_checkpoint(tmp_path / "hub", vocab=COMPACT)
    lm = load_model(tmp_path / "hub")
    prompt = lm.tokenizer("12+34=")["input_ids"]
    for kv in (True, False):
        t = generate(lm, [prompt], SamplingParams(max_new_tokens=8, temperature=0.0, steps_per_block=4, kv_cache=kv, stop_at_eos=False),
                     torch.Generator().manual_seed(0))[0]  # fmt: skip
        assert len(t.completion_ids) == 8
        # one token per step: 2 steps for the first block's 2 masked positions, 4, then 2 for the cut block
        assert sorted(t.step_map) == list(range(8))
        assert set(t.step_map[:2]) == {0, 1} and set(t.step_map[2:6]) == {2, 3, 4, 5} and set(t.step_map[6:]) == {6, 7}
        # The cut block's tokens see the prompt and blocks before, never a column past the budget: they equal a
        # greedy prediction from a forward over the 14-token sequence alone.
        seq = torch.tensor([prompt + t.completion_ids])
        with torch.no_grad():
            logits = lm.sequence_logits(seq.masked_fill(torch.arange(14)[None] >= 12, lm.mask_id), torch.arange(12, 14)[None])
        first = int(torch.tensor(t.step_map[6:]).argmin())  # committed at the block's first step
        assert logits[0, first].argmax().item() == t.completion_ids[6 + first]


def test_replay_equals_the_rollout_with_cut_blocks(tmp_path):
    """Prompts of 8 (block-aligned) and 6 (mid-block), batched, cached and recomputed, budgets ending mid-block:
    TraceRL's s=1 log-probs equal the rollout's, so the importance ratio starts at 1."""
    stable_diffcoder_checkpoint(tmp_path / "hub", vocab=COMPACT)
    lm = load_model(tmp_path / "hub")
    prompts = [lm.tokenizer("12+34=56")["input_ids"], lm.tokenizer("50+05=")["input_ids"]]
    for kv in (True, False):
        params = SamplingParams(max_new_tokens=10, temperature=1.0, steps_per_block=2, kv_cache=kv, stop_at_eos=False)
        trajs = generate(lm, prompts, params, torch.Generator().manual_seed(1))
        assert [len(t.completion_ids) for t in trajs] == [10, 10]
        with torch.no_grad():
            logp, mask, _ = trace_logprobs(lm, trajs, shrink=1)
        for i, t in enumerate(trajs):
            n = int(mask[i].sum())
            assert n == 10 and 5 not in t.completion_ids
            assert (logp[i, :n] - torch.tensor(t.logprobs[:n], dtype=logp.dtype)).abs().max().item() < 1e-5, kv


def test_eos_in_a_cut_block_ends_the_completion_at_the_budget(tmp_path):
    """A prompt of 6 and one new token: the only block is [4, 8), cut at 7. An eos there ends the decode with
    exactly that token, never the padding past the budget."""
    stable_diffcoder_checkpoint(tmp_path / "hub", vocab=COMPACT)
    lm = load_model(tmp_path / "hub")

    def eos_wins(_module, _inputs, out):  # the head always prefers eos
        out = out.clone()
        out[..., lm.eos_id] += 100.0
        return out

    lm.model.lm_head.register_forward_hook(eos_wins)
    prompt = lm.tokenizer("12+34=")["input_ids"]
    for kv in (True, False):
        t = generate(lm, [prompt], SamplingParams(max_new_tokens=1, temperature=0.0, kv_cache=kv), torch.Generator().manual_seed(0))[0]
        assert t.completion_ids == [lm.eos_id] and len(t.step_map) == len(t.logprobs) == 1
