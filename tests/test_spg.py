"""SPG (facebookresearch/SPG): the sandwiched bounds and weights by hand, its block masks, its
preset from a one-line config, a learner update on a full-attention model, and the refusal of a
block-causal one."""

import math

import pytest
import torch

from algorithms.spg import SpgOptions, spg_bounds, spg_loss, spg_masks, spg_weights
from rl.batch import learner_batch
from rl.config import ConfigError, load_config
from rl.learner import Learner
from rollout import SamplingParams, build_char_tokenizer
from rollout.models import build_tiny_lm
from rollout.worker import RolloutWorker

from .conftest import BASE_CKPT

LN = math.log


def _one_sample_two_passes():
    # One completion canvas of 3, two real tokens (c0, c1; c2 is after the EOS), two passes:
    # pass 0 masks c0, c1 with p = 0.5, 0.25 (n = 2, t = 2/2 = 1); pass 1 masks c1 with p = 0.5 (n = 1, t = 1/2).
    logp = torch.tensor([[[LN(0.5), LN(0.25), -7.0]], [[-9.0, LN(0.5), -7.0]]], dtype=torch.float64)  # [T=2, N=1, C=3]
    scored = torch.tensor([[[True, True, False]], [[False, True, False]]])
    real = torch.tensor([[True, True, False]])
    return logp, scored, real


# ELBO = 1/2 [ (ln .5 + ln .25) / 2 + ln .5 / 1 ] = 1/2 [ -1.0397208 - 0.6931472 ] = -0.8664340
ELBO = 0.5 * ((LN(0.5) + LN(0.25)) / 2 + LN(0.5))
# beta 1: a_c0 = 1/2 (0.5 / 1) = 0.25, a_c1 = 1/2 (0.25 / 1 + 0.5 / 0.5) = 0.625; EUBO = (ln .25 + ln .625) / 2 = -0.9281494
EUBO_1 = (LN(0.25) + LN(0.625)) / 2
# beta 2: a_c0 = 1/2 (0.25) = 0.125, a_c1 = 1/2 (0.0625 + 0.25 / 0.5) = 0.28125; EUBO = (ln .125 + ln .28125) / 2 / 2 = -0.8369883
EUBO_2 = (LN(0.125) + LN(0.28125)) / 4


@pytest.mark.parametrize(
    "bound, beta, negative",
    [("elbo", 1.0, ELBO), ("eubo", 1.0, EUBO_1), ("eubo", 2.0, EUBO_2), ("mix", 2.0, 0.5 * EUBO_2 + 0.5 * ELBO)],
)
def test_bounds_by_hand_elbo_for_positive_advantages_the_chosen_bound_for_the_rest(bound, beta, negative):
    logp, scored, real = _one_sample_two_passes()
    for positive, want in ((True, ELBO), (False, negative)):
        terms = spg_bounds(logp, scored, real, torch.tensor([positive]), bound, beta, 0.5)
        assert terms.sum().item() == pytest.approx(want, abs=1e-9)
        assert terms[0, 2].item() == 0.0  # the token after the EOS carries nothing
    # the ELBO's per-token terms: c0 = 1/2 (ln .5 / 2), c1 = 1/2 (ln .25 / 2 + ln .5)
    elbo = spg_bounds(logp, scored, real, torch.tensor([True]))
    assert elbo[0, :2].tolist() == pytest.approx([0.25 * LN(0.5), 0.5 * (LN(0.25) / 2 + LN(0.5))], abs=1e-9)


def test_weights_and_loss_by_hand():
    # group 0: A = [0.5, -0.5], lengths [3, 1] (mean 2): omega = [0.5 * 3 / 2, -0.5 * 1 / 2]; group 1 alone: A 0.2, length 4
    omega = spg_weights(torch.tensor([0.5, 0.2, -0.5]), torch.tensor([0, 1, 0]), torch.tensor([3, 4, 1]))
    assert omega.tolist() == pytest.approx([0.75, 0.2, -0.25], abs=1e-6)
    # their micro-batch loss for group 0 with bounds S = [-2, -6]: -(0.5 * 3 * -2 + -0.5 * 1 * -6) / (3 + 1) = -(-3 + 3) / 4 = 0;
    # with S = [-2, -2]: -(-3 + 1) / 4 = 0.5, which is unmask's -(1/2) (0.75 * -2 + -0.25 * -2) = 0.5
    logp = torch.tensor([[-1.0, -1.0, 0.0], [-2.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    loss, _ = spg_loss(logp, None, torch.tensor([0.75, -0.25]), mask)
    assert loss.item() == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError, match="SPG has no KL term"):
        spg_loss(logp, None, torch.tensor([0.75, -0.25]), mask, beta=0.01)


def test_block_masks_follow_spgs_rules():
    o = SpgOptions(num_t=3, block_length=4, p_mask_prompt=0.0)
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        length = 1 + seed % 10  # real tokens of a 12-token canvas (3 blocks)
        for prompt, comp in spg_masks(5, length, 12, o, g):
            assert not any(prompt)  # p_mask_prompt 0: the context before the block stays clean
            first = comp.index(True)
            k = first // 4
            assert k <= (length - 1) // 4  # the picked block holds real tokens
            assert not any(comp[: k * 4])  # nothing before it is masked
            assert all(comp[(k + 1) * 4 :]) and all(comp[length:])  # every later position and the filler after the EOS
            assert any(comp[k * 4 : min((k + 1) * 4, length)])  # at least one real token of the block
    # A canvas with fewer blocks than passes (unmask's stops after the EOS block; the authors' never does):
    # the block permutation repeats, so 5 passes over 2 blocks pick each block, then again, each pass its own mask.
    masks = spg_masks(5, 8, 8, SpgOptions(num_t=5, block_length=4, p_mask_prompt=0.0), torch.Generator().manual_seed(0))
    blocks = [comp.index(True) // 4 for _, comp in masks]
    assert len(masks) == 5 and sorted(blocks[:2]) == [0, 1] and blocks[2:4] == blocks[:2] and blocks[4] == blocks[0]


def _config(tmp_path, algorithm: str, model: str = str(BASE_CKPT)):
    p = tmp_path / "run.yaml"
    p.write_text(f"data: {{sources: [{{path: arithmetic}}]}}\nmodel: {{path: {model}}}\nwandb: {{mode: disabled}}\nalgorithm: {{{algorithm}}}\n")
    return load_config(p)


def test_a_one_line_config_gets_spgs_preset_and_a_block_causal_model_is_refused(tmp_path):
    algo = _config(tmp_path, "estimator: spg").algorithm
    # facebookresearch/SPG: A = r - mean (spg_trainer.py:720), beta 0, a mask seed per iteration, p_mask_prompt 0.15
    assert (algo.advantage, algo.beta, algo.redraw_masks, algo.p_mask_prompt) == ("mean", 0.0, True, 0.15)
    assert algo.estimator_options() == {"p_mask_prompt": 0.15}
    unit = algo.estimator_unit()
    opts = unit.check_options({})  # the spg_mix runs' options
    assert (opts.num_t, opts.block_length, opts.bound, opts.eubo_beta, opts.mix_weight) == (2, 32, "mix", 1.5, 0.5)
    with pytest.raises(ConfigError, match="algorithm.beta: estimator 'spg' brings its own objective"):
        _config(tmp_path, "estimator: spg, beta: 0.01")
    with pytest.raises(ValueError, match=r"'spg' is defined for full attention only; model family 'block' has block_causal attention"):
        Learner(_config(tmp_path, "estimator: spg"))  # arith3-base is a block (SDAR-style) model


def test_a_learner_update_on_a_full_attention_model(tmp_path):
    lm = build_tiny_lm(build_char_tokenizer(), family="llada", hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    lm.save_pretrained(tmp_path / "llada")
    cfg = _config(tmp_path, "estimator: spg, lr: 1.0e-3, epochs: 1, options: {block_length: 2}", model=str(tmp_path / "llada"))
    learner = Learner(cfg)
    worker = RolloutWorker(str(tmp_path / "llada"))
    tok = worker.lm.tokenizer
    trajs = worker.generate([tok("12+3=")["input_ids"], tok("45+6=")["input_ids"]] * 2,
                            SamplingParams(max_new_tokens=6, temperature=1.0), seed=0, groups=[0, 1] * 2)  # fmt: skip
    adv = torch.tensor([0.5, -0.3, -0.5, 0.3])
    seen = []

    def spy(logp, old_logp, advantages, mask, *args, **kwargs):
        seen.append((old_logp, advantages))
        return spg_loss(logp, old_logp, advantages, mask, *args, **kwargs)

    learner.loss_fn = spy
    start = {k: v.clone() for k, v in learner.lm.model.named_parameters()}
    m = learner.update(learner_batch(cfg.algorithm, trajs, adv))
    assert seen and all(old is None for old, _ in seen)  # ratio-free: no old-policy pass
    lengths = torch.tensor([min(t.completion_ids.index(tok.eos_token_id) + 1 if tok.eos_token_id in t.completion_ids else 6, 6) for t in trajs])
    want = spg_weights(adv, torch.tensor([0, 1, 0, 1]), lengths)
    assert sorted(seen[-1][1].tolist()) == pytest.approx(sorted(want.tolist()), abs=1e-6)  # the minibatch is shuffled
    assert math.isfinite(m["loss/policy"])
    assert any(not torch.equal(p, start[n]) for n, p in learner.lm.model.named_parameters())
