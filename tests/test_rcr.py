"""MDPO's Running Confidence Remasking (rollout.engine's rcr_generate): hand-checked steps, the authors' tokens, refusals."""

import math

import pytest
import torch
from typer.testing import CliRunner

from rl.cli import app
from rl.config import ConfigError, load_config
from rollout import build_char_tokenizer
from rollout.engine import generate
from rollout.models import build_tiny_lm
from rollout.engine import linear_schedule
from rollout.sampling import SamplingParams, parse_strategy

from .conftest import ROOT

TOK = build_char_tokenizer()


def test_linear_schedule_is_maskgit_linear_with_its_float_floor():
    # N - floor(N (1 - (t+1)/S)) committed after step t: the remainder spreads out, S > N leaves empty steps,
    # and 5 * (1 - 4/5) = 0.99999... floors to 0, so MDPO's schedule commits 2 tokens at step 3 of 5.
    assert linear_schedule(5, 2) == [3, 2]
    assert linear_schedule(6, 4) == [2, 1, 2, 1]
    assert linear_schedule(2, 4) == [1, 0, 1, 0]
    assert linear_schedule(4, 3) == [2, 1, 1]
    assert linear_schedule(5, 5) == [1, 1, 1, 2, 0]
    with pytest.raises(ValueError, match="steps >= 1"):
        linear_schedule(4, 0)


def _stub_lm(table):
    """A tiny LLaDA whose logits are fixed per number of masked completion positions: table[m][j] =
    (token char, probability) at completion column j. Only that token and 'z' get probability."""
    lm = build_tiny_lm(TOK, family="llada")
    other = TOK.convert_tokens_to_ids("z")

    def forward_logits(ids, pos, mask, select, cache=None, rows=None):
        gen = 1  # one-token prompts
        m = int((ids[0, gen:] == TOK.mask_token_id).sum())
        logits = torch.full((*select.shape, len(TOK)), float("-inf"))
        for r in range(select.shape[0]):
            for s, col in enumerate(select[r].tolist()):
                char, q = table[m][col - gen]
                logits[r, s, TOK.convert_tokens_to_ids(char)] = math.log(q)
                logits[r, s, other] = math.log(1 - q)
        return logits

    lm.forward_logits = forward_logits
    return lm


# Completion of 4 in one block, 3 steps: linear_schedule(4, 3) == [2, 1, 1].
TABLE = {
    4: [("a", 0.9), ("b", 0.55), ("c", 0.6), ("d", 0.8)],
    2: [("a", 0.9), ("e", 0.95), ("f", 0.99), ("d", 0.8)],
    1: [("a", 0.9), ("e", 0.6), ("f", 0.99), ("g", 0.7)],
}


def test_hand_checked_rcr_remasks_the_least_confident_and_a_committed_token_changes():
    lm = _stub_lm(TABLE)
    prompt = [TOK.convert_tokens_to_ids("1")]
    base = SamplingParams(temperature=0.0, max_new_tokens=4, steps_per_block=3, kv_cache=False)
    # Step 0 fills a b c d (running .9 .55 .6 .8) and re-masks the 2 lowest (b, c); step 1 fills e (.95) f (.99)
    # and re-masks the lowest running confidence, d (.8) committed at step 0; step 2 predicts g there.
    t = generate(lm, [prompt], SamplingParams(**{**base.__dict__, "strategy": "rcr"}))[0]
    assert TOK.convert_ids_to_tokens(t.completion_ids) == ["a", "e", "f", "g"]
    assert t.step_map == [0, 1, 1, 2]  # each token's last commit
    assert t.logprobs == pytest.approx([math.log(0.9), math.log(0.95), math.log(0.99), math.log(0.7)], abs=1e-6)
    assert (t.nfe, t.remasked, t.finish_reason, t.block_size) == (3, True, "length", None)
    # Static decoding with the same schedule keeps d once committed: the re-mask is what changed it.
    s = generate(lm, [prompt], SamplingParams(**{**base.__dict__, "strategy": "static"}))[0]
    assert TOK.convert_ids_to_tokens(s.completion_ids) == ["a", "e", "f", "d"] and not s.remasked


def test_matches_mdpo_diffusion_generate_tokens_across_blocks():
    # Tokens of the authors' diffusion_generate(rcr=True, temperature=0, conf_alg="maskgit_plus", mode="linear",
    # gen_length=16, block_length=4, steps=16) on this model, each prompt alone (/tmp/rcr_ref/pin.py); in all
    # three an earlier block's token is re-masked. Decoded here as one left-padded batch.
    lm = build_tiny_lm(TOK, family="llada", seed=0)
    params = SamplingParams(strategy="rcr", temperature=0.0, max_new_tokens=16, block_length=4, steps_per_block=4, confidence="prob")
    got = [t.completion_ids for t in generate(lm, [TOK.encode(p) for p in ["12+3=", "7*8=", "99-41="]], params)]
    assert got == [
        [3, 3, 3, 3, 55, 3, 3, 3, 55, 55, 55, 55, 55, 64, 64, 64],
        [3, 3, 3, 3, 3, 55, 3, 3, 55, 64, 55, 55, 31, 64, 31, 64],
        [3, 3, 3, 3, 3, 3, 3, 55, 55, 55, 55, 55, 55, 64, 31, 64],
    ]


def test_sampling_rcr_is_seeded_and_records_the_last_commit():
    lm = build_tiny_lm(TOK, family="llada", seed=1)
    params = SamplingParams(strategy="rcr", temperature=1.0, top_k=5, max_new_tokens=8, block_length=4, steps_per_block=2)
    a = generate(lm, [TOK.encode("12+3=")], params, torch.Generator().manual_seed(0))[0]
    b = generate(lm, [TOK.encode("12+3=")], params, torch.Generator().manual_seed(0))[0]
    assert a.completion_ids == b.completion_ids and a.nfe == 4
    # block 1's first step may re-mask block 0's tokens, so block 0 can end with steps from 0 to 3
    assert set(a.step_map) <= {0, 1, 2, 3} and max(a.step_map) == 3 and all(lp <= 0 for lp in a.logprobs)


def test_refusals_name_the_family_and_the_unsupported_settings():
    block = build_tiny_lm(TOK, family="block")
    with pytest.raises(ValueError, match="family 'block' is block-causal.*full-attention LLaDA-style"):
        generate(block, [[3]], SamplingParams(strategy="rcr"))
    full = build_tiny_lm(TOK, family="llada")
    with pytest.raises(ValueError, match="does not support confidence='raw_prob', record_steps"):
        generate(full, [[3]], SamplingParams(strategy="rcr", confidence="raw_prob", record_steps=True))


def test_a_learner_batch_refuses_remasked_trajectories():
    """A direct caller (a script, another trainer) that rolls out with rcr cannot train on it: packing refuses."""
    from rl.batch import LearnerBatch

    lm = build_tiny_lm(TOK, family="llada")
    trajs = generate(lm, [TOK.encode("1+2=")] * 2, SamplingParams(strategy="rcr", max_new_tokens=4), torch.Generator().manual_seed(0))
    assert all(t.remasked for t in trajs)
    with pytest.raises(ValueError, match="re-masking .strategy 'rcr'. cannot be trained on"):
        LearnerBatch.pack(trajs, [1.0, -1.0])
    static = generate(lm, [TOK.encode("1+2=")] * 2, SamplingParams(max_new_tokens=4), torch.Generator().manual_seed(0))
    assert not any(t.remasked for t in static) and len(LearnerBatch.pack(static, [1.0, -1.0])) == 2


def test_parse_strategy_rcr():
    label, p = parse_strategy("rcr:8", SamplingParams(steps_per_block=2))
    assert (label, p.strategy, p.steps_per_block) == ("rcr:8", "rcr", 8)
    assert parse_strategy("rcr", SamplingParams(steps_per_block=2))[1].steps_per_block == 2
    with pytest.raises(ValueError, match="rcr"):
        parse_strategy("rcr:x", SamplingParams())


def test_rl_rollouts_refuse_rcr_and_evaluation_accepts_it():
    cfg = ROOT / "configs" / "quickstart_full.yaml"
    with pytest.raises(ConfigError, match="rollout.sampling.strategy: rcr re-masks committed tokens"):
        load_config(cfg, ["rollout.sampling.strategy=rcr"])
    assert load_config(cfg, ["eval.sampling.strategy=rcr"]).eval.sampling.strategy == "rcr"


def test_unmask_eval_strategy_rcr_end_to_end():
    ckpt = ROOT / "examples" / "checkpoints" / "arith3-full-base"  # a tiny full-attention (llada) checkpoint
    res = CliRunner().invoke(app, ["eval", str(ckpt), "--n", "2", "--strategy", "rcr:2"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "| rcr:2 |" in res.output and "2 problems" in res.output
