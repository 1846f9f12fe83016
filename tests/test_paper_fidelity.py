"""Each algorithm as its paper writes it: one hand-worked example per defect of issue 14.

The numbers are the issue's, computed by hand in the comments.
"""

import dataclasses
import math
import warnings

import pytest
import torch

from algorithms.advantages import group_advantages
from algorithms.estimators import ESTIMATORS, loss_mask
from algorithms.losses import LossTotals, k3_kl, policy_loss, sequence_policy_loss
from algorithms.trace import trace_pass_index, trace_step_index
from algorithms.value import trace_gae, tracerl_gae
from rl.config import AlgorithmConfig, RunConfig, load_config
from rl.batch import learner_batch
from rl.learner import Learner, estimator_options
from rollout import Trajectory
from rollout.models import build_tiny_lm

from .conftest import BASE_CKPT, ROOT, tiny_lm

FAMILIES = ["block", "llada", "dream"]


def run_cfg(**algo) -> RunConfig:
    # one pass per batch unless a test asks for more (the presets' passes, d1's 12, are tested in test_presets.py)
    return RunConfig.model_validate(
        {"data": {"sources": [{"path": "arithmetic"}]}, "model": {"path": str(BASE_CKPT)}, "algorithm": {"lr": 1e-3, "minibatches": 1, "epochs": 1, **algo}, "wandb": {"mode": "disabled"}}
    )


# -- 1. value GAE walks the merged training steps -----------------------------------------------
def test_gae_with_shrinkage_discounts_merged_steps_not_raw_ones():
    # prompt 4, block 4, step_map [0, 1, 2, 3], s = 2: groups {0, 1} and {2, 3} are the two MDP steps.
    # reward 1 on the last step, values 0, gamma 0.5, lambda 1:
    #   step 2: R = 1, A = 1;   step 1: A = 0 + 0.5 * 0 - 0 + 0.5 * 1 = 0.5   -> [0.5, 0.5, 1, 1]
    merged = trace_step_index([0, 1, 2, 3], prompt_len=4, block_size=4, shrink=2)
    assert merged == [0, 0, 1, 1]
    steps = torch.tensor([merged])
    values = torch.zeros(1, 4, dtype=torch.float64)
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    for gae in (tracerl_gae, trace_gae):
        adv, ret = gae(rewards, values, steps, gamma=0.5, lam=1.0)
        assert adv[0].tolist() == pytest.approx([0.5, 0.5, 1.0, 1.0]), gae.__name__
        assert ret[0].tolist() == pytest.approx([0.5, 0.5, 1.0, 1.0]), gae.__name__
    # walking the raw steps instead (the defect): 1, 0.5, 0.25, 0.125 from the end
    adv_raw, _ = trace_gae(rewards, values, torch.tensor([[0, 1, 2, 3]]), gamma=0.5, lam=1.0)
    assert adv_raw[0].tolist() == pytest.approx([0.125, 0.25, 0.5, 1.0])


def test_merged_steps_walk_blocks_in_decoding_order():
    # block 2, prompt 0: blocks {c0, c1} (steps 0, 1) and {c2, c3} (steps 2, 3); s = 2 gives one
    # group per block, two MDP steps in order; s = 1 gives four.
    assert trace_step_index([1, 0, 3, 2], 0, 2, 2) == [0, 0, 1, 1]
    assert trace_step_index([1, 0, 3, 2], 0, 2, 1) == [1, 0, 3, 2]


def test_learner_gae_uses_merged_steps():
    """The same example through the learner: zero-initialised head (values 0), raw reward 1,
    gamma 0.5, s = 2: returns [0.5, 0.5, 1, 1], so returns/mean = 0.75 and the first value loss
    0.5 * mean(G^2) = 0.5 * (0.25 + 0.25 + 1 + 1) / 4 = 0.3125 (raw steps: 0.46875, 0.1669)."""
    learner = Learner(run_cfg(shrink=2, value={"enabled": True, "gamma": 0.5, "lam": 1.0, "reward": "raw"}))
    tok = learner.lm.tokenizer
    prompt = tok("12+3")["input_ids"]  # 4 tokens: the completion is exactly block 1
    assert len(prompt) == 4 and learner.lm.block_size == 4
    t = Trajectory(prompt, tok("0015")["input_ids"], [0, 1, 2, 3], [0.0] * 4, 4, 1.0, 4, "length")
    m = learner.update(learner_batch(learner.cfg.algorithm, [t], [0.0], rewards=[1.0]))
    assert m["returns/mean"] == pytest.approx(0.75)
    assert m["loss/value"] == pytest.approx(0.3125)


# -- 2. no loss past the first EOS --------------------------------------------------------------
def _family_lm(tokenizer, family):
    if family == "block":
        return tiny_lm(tokenizer)
    lm = build_tiny_lm(tokenizer, family=family, hidden_size=64, num_layers=2, intermediate_size=128, seed=0)
    lm.model.double()
    return lm


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_estimator_stops_the_loss_at_the_first_eos(tokenizer, family, name, monkeypatch):
    lm = _family_lm(tokenizer, family)
    eos = lm.eos_id
    prompt = tokenizer("12+34=")["input_ids"]  # 6 tokens: block 1 holds c0, c1; block 2 c2..c5
    digit = tokenizer("4")["input_ids"][0]
    completion = [digit, digit, eos, eos, digit, eos]  # answer, first EOS, filler
    # c3 (filler) is decoded at step 2, before the first EOS (step 3): it is context for the EOS
    step_map = [1, 0, 3, 2, 5, 4]
    unit = ESTIMATORS[name]
    if unit.rollout_sampling.get("block_length") == 1:
        step_map = [0, 1, 2, 3, 4, 5]  # JustGRPO trains on left-to-right decoding only (it refuses any other order)
    if unit.step_batch is not None:
        # MDPO scores rows of (sample, decoding step) built from recorded step predictions, every predicted
        # position (filler included) as its authors' code does: tests/test_mdpo.py checks those rows.
        pytest.skip(f"{name} scores step rows, not trajectories")
    if unit.tree_batch is not None:  # d-TreeRPO scores tree-edge rows: tests/test_d_tree_rpo.py checks their EOS rule
        pytest.skip(f"{name} scores tree-edge rows, not trajectories")
    t = Trajectory(prompt, completion, step_map, [0.0] * 6, lm.block_size, 0.7, 6, "eos")
    calls = []
    real = lm.forward_logprobs

    def forward_logprobs(ids, pos, allowed, select, rows, *args, **kwargs):
        calls.append((ids.clone(), select.clone()))
        return real(ids, pos, allowed, select, rows, *args, **kwargs)

    monkeypatch.setattr(lm, "forward_logprobs", forward_logprobs)
    if not set(unit.attention) & {lm.traits.attention.value}:
        pytest.skip(f"{name} refuses {family}'s attention")
    opts = {"n": 2} if name == "mc_elbo" else {}  # an option the estimator does not take is an error
    if "canvas" in {f.name for f in dataclasses.fields(unit.options)}:
        # ESPO and CJ-GRPO score the whole canvas, filler included, as their authors' code does (their
        # `canvas: true` preset, tested in tests/test_espo.py / test_cj_grpo.py); `canvas: false` keeps the rule.
        opts["canvas"] = False
    if unit.estimate_takes_advantages:
        opts["advantages"] = torch.tensor([1.0])
    logp, mask, entropy = unit(lm, [t], None, seed=0, with_entropy=True, **opts)
    assert not mask[0, 3:].any() and (entropy[0, 3:] == 0).all()  # nothing after the first EOS
    if name == "block_random":
        assert mask[0, :3].any()  # the masked tokens up to the EOS
    else:
        assert mask[0].tolist() == [True, True, True, False, False, False]  # the first EOS keeps its loss
    if name != "trace":
        assert (logp[~mask] == 0).all()
    if name == "trace":
        # the filler stays as context: the pass that scores the EOS sees c3 clean
        k = trace_pass_index(step_map, len(prompt), lm.block_size, 1)[2]
        ids, select = calls[k]
        assert ids[0, select[0, 3]] == eos and ids[0, select[0, 2]] == lm.mask_id


def test_canvas_filler_gets_no_weight():
    """The issue's 16-token LLaDA canvas: a correct 2-token answer + EOS + 13 filler (A = +1) and
    a wrong 10-token answer + EOS + 5 filler (A = -1). Counting every position put 18/32 = 56% of
    the token-mean weight on filler; now the loss is (-3 + 11) / 14 and filler gets no gradient."""
    eos, d = 1, 7
    right = Trajectory([5], [d, d, eos] + [eos] * 13, list(range(16)), [0.0] * 16, None, 1.0, 16, "eos")
    wrong = Trajectory([5], [d] * 10 + [eos] + [eos] * 5, list(range(16)), [0.0] * 16, None, 1.0, 16, "eos")
    mask = loss_mask([right, wrong], eos)
    assert mask.sum(1).tolist() == [3, 11]
    logp = torch.zeros(2, 16, dtype=torch.float64, requires_grad=True)
    loss, _ = policy_loss(logp, logp.detach(), torch.tensor([1.0, -1.0], dtype=torch.float64), mask)
    assert loss.item() == pytest.approx((-3 + 11) / 14)
    loss.backward()
    assert logp.grad[0, 2].item() == pytest.approx(-1 / 14)  # the first EOS keeps its loss
    assert (logp.grad[0, 3:] == 0).all() and (logp.grad[1, 11:] == 0).all()


# -- 3. GSPO with GSPO's defaults -------------------------------------------------------------------
def test_gspo_brings_its_own_clip_range_and_sequence_norm():
    g = AlgorithmConfig(loss="gspo")
    assert (g.eps_low, g.eps_high, g.loss_norm) == (3e-4, 4e-4, "sequence")
    assert (AlgorithmConfig().eps_low, AlgorithmConfig().loss_norm) == (0.2, "pass")  # trace's preset: dLLM-RL train/rl_llada.py:591
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = AlgorithmConfig(loss="gspo", eps_high=5e-4, loss_norm="pass")  # explicit, consistent values stay
    assert (kept.eps_low, kept.eps_high, kept.loss_norm) == (3e-4, 5e-4, "pass")
    with pytest.warns(UserWarning, match="almost never clips"):
        AlgorithmConfig(loss="gspo", eps_low=0.2, eps_high=0.2)
    with pytest.warns(UserWarning, match="weights each sequence by its length"):
        AlgorithmConfig(loss="gspo", loss_norm="token")
    with pytest.warns(UserWarning, match="did you mean loss: gspo"):
        AlgorithmConfig(eps_low=3e-4, eps_high=4e-4)


def test_gspo_gradient_on_log_s_and_its_clip():
    """Lengths 1 and 9, A = +1 and -1, at s = 1: d loss / d log s_i is -A_i |o_i| / 10 under the
    token norm ([-0.1, +0.9]) but -A_i / 2 under GSPO's sequence norm ([-0.5, +0.5])."""
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, 0], mask[1, :] = True, True
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    g = AlgorithmConfig(loss="gspo")
    for norm, want in (("token", [-0.1, 0.9]), (g.loss_norm, [-0.5, 0.5])):
        log_s = torch.zeros(2, dtype=torch.float64, requires_grad=True)  # every token of o_i moved by log s_i
        logp = torch.zeros(2, 9, dtype=torch.float64) + log_s[:, None]
        loss, _ = sequence_policy_loss(logp, torch.zeros(2, 9, dtype=torch.float64), adv, mask, g.eps_low, g.eps_high, norm=norm)
        loss.backward()
        assert log_s.grad.tolist() == pytest.approx(want), norm
    # a sequence ratio of 1.15 with A = +1: clipped at 1 + 4e-4 (no gradient), not at GRPO's 1.2
    one = torch.ones(1, 1, dtype=torch.bool)
    for (lo, hi), clipped in (((g.eps_low, g.eps_high), True), ((0.2, 0.2), False)):
        logp = torch.full((1, 1), math.log(1.15), dtype=torch.float64, requires_grad=True)
        loss, m = sequence_policy_loss(logp, torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, dtype=torch.float64), one, lo, hi)
        loss.backward()
        assert m["clipfrac"] == (1.0 if clipped else 0.0)
        assert loss.item() == pytest.approx(-(1 + hi) if clipped else -1.15)
        assert logp.grad.item() == pytest.approx(0.0 if clipped else -1.15)


# -- 4. d1 redraws the one-step masks at every inner iteration ------------------------------------
@pytest.mark.parametrize("redraw", [None, False])
def test_one_step_redraws_masks_every_epoch_like_d1(redraw):
    extra = {} if redraw is None else {"redraw_masks": redraw}
    learner = Learner(run_cfg(estimator="one_step", epochs=3, **extra))
    assert learner.cfg.algorithm.redraw_masks is (redraw is None)  # one_step's default is d1's
    tok = learner.lm.tokenizer
    trajs = [Trajectory(tok("12+34=")["input_ids"], tok("046")["input_ids"] + [learner.lm.eos_id], [0, 1, 2, 3], [0.0] * 4, 4, 1.0, 4, "eos")] * 2
    seeds = {True: [], False: []}  # grad enabled -> seeds of the calls
    real = learner._policy.estimate

    def spy(lm, batch, gen, **opts):
        seeds[torch.is_grad_enabled()].append(opts["seed"])
        return real(lm, batch, gen, **opts)

    learner._policy.estimate = spy
    learner.update(learner_batch(learner.cfg.algorithm, trajs, [1.0, -1.0]))
    old, current = seeds[False], seeds[True]
    assert len(current) == 3
    if redraw is None:
        # old log-probs for each epoch's masks, all before the first update; epoch e uses draw e
        assert old == current and len(set(current)) == 3
    else:
        assert old == current[:1] and len(set(current)) == 1
    # d1 and DiffuCoder both draw a mask seed per inner iteration (coupled_grpo.py:458); mc_elbo keeps one draw
    assert AlgorithmConfig(estimator="coupled").redraw_masks and AlgorithmConfig(estimator="one_step").redraw_masks
    assert not AlgorithmConfig(estimator="mc_elbo").redraw_masks


# -- 5. TraceRL's per-token value form -------------------------------------------------------------
def test_tracerl_value_form_by_hand():
    # gamma = lambda = 1, reward 1, token values [.2, .6 | .5, .9] over two steps.
    # step 2: A_j = r - V_j = 1 - .5, 1 - .9 = .5, .1;  A*_2 = .3, V*_2 = .7
    # step 1: A_j = 0 - V_j + V*_2 + A*_2 = -.2 + 1, -.6 + 1 = .8, .4;  R_j = 0 + R*_2 = 1
    steps = torch.tensor([[0, 0, 1, 1]])
    values = torch.tensor([[0.2, 0.6, 0.5, 0.9]], dtype=torch.float64)
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)  # the step's reward, on one token
    adv, ret = tracerl_gae(rewards, values, steps)
    assert adv[0].tolist() == pytest.approx([0.8, 0.4, 0.5, 0.1])
    assert ret[0].tolist() == pytest.approx([1.0, 1.0, 1.0, 1.0])  # the Monte Carlo return
    adv_step, ret_step = trace_gae(rewards, values, steps)  # the "step" form
    assert adv_step[0].tolist() == pytest.approx([0.6, 0.6, 0.3, 0.3])
    assert ret_step[0].tolist() == pytest.approx([1.0, 1.0, 1.0, 1.0])
    # gamma = 0.5, lambda = 0.5: V*_2 = .7, A*_2 = .3, R*_2 = 1
    # step 1: A_j = -V_j + .5 * .7 + .25 * .3 = -V_j + .425;  R_j = .5 * 1 = .5
    adv, ret = tracerl_gae(rewards, values, steps, gamma=0.5, lam=0.5)
    assert adv[0].tolist() == pytest.approx([0.225, -0.175, 0.5, 0.1])
    assert ret[0].tolist() == pytest.approx([0.5, 0.5, 1.0, 1.0])


def test_value_model_is_fed_the_group_zscored_reward():
    """Rewards [1, 0] in one group of 2: population z-scores +-1 (std 0.5), so with a zero head
    every return is +-1 and the first value loss is 0.5 * 1 = 0.5; raw rewards give 0.5 * 0.5."""
    cfg_default = run_cfg(value={"enabled": True})
    assert (cfg_default.algorithm.value.form, cfg_default.algorithm.value.reward) == ("tracerl", "zscore")
    for reward, want in (("zscore", 0.5), ("raw", 0.25)):
        learner = Learner(run_cfg(value={"enabled": True, "reward": reward}))
        tok = learner.lm.tokenizer
        trajs = [Trajectory(tok("12+34=")["input_ids"], tok(c)["input_ids"], [0, 1, 2], [0.0] * 3, 4, 1.0, 3, "length", group=0) for c in ("046", "047")]
        m = learner.update(learner_batch(learner.cfg.algorithm, trajs, [0.0, 0.0], rewards=[1.0, 0.0]))
        assert m["loss/value"] == pytest.approx(want, rel=1e-5), reward  # z = +-1 / (1 + 2e-6): the eps of the z-score


def test_tracerl_value_config_ships_lambda_one():
    cfg = load_config(ROOT / "configs" / "tracerl_value.yaml")
    assert (cfg.algorithm.value.gamma, cfg.algorithm.value.lam, cfg.algorithm.value.form) == (1.0, 1.0, "tracerl")


# -- 6. coupled-GRPO: DiffuCoder's weighted form from a config --------------------------------------
def test_coupled_config_reaches_diffucoders_weighted_form():
    algo = load_config(ROOT / "configs" / "coupled_grpo.yaml").algorithm
    opts = estimator_options(algo)
    assert {k: opts[k] for k in ("weighted", "full_mask_pass", "t_min", "t_max")} == {"weighted": True, "full_mask_pass": True, "t_min": 0.2, "t_max": 0.8}
    assert "t_min" not in estimator_options(AlgorithmConfig(estimator="mc_elbo"))  # mc_elbo's own t_min is another thing
    plain = estimator_options(AlgorithmConfig(estimator="coupled", coupled_weighted=False, coupled_full_mask_pass=False))
    assert not plain["weighted"] and not plain["full_mask_pass"]


# -- 7. log-ratio clamped to [-10, 10] before exp ----------------------------------------------------
def test_log_ratio_is_clamped_in_the_ratio_and_in_k3():
    # logp - old = 12, A = -1: the loss is max(r, clip r) = r = e^10 (not e^12 = 162755), gradient 0 (not ~1.6e5)
    logp = torch.full((1, 1), 12.0, dtype=torch.float64, requires_grad=True)
    one = torch.ones(1, 1, dtype=torch.bool)
    loss, _ = policy_loss(logp, torch.zeros(1, 1, dtype=torch.float64), torch.tensor([-1.0], dtype=torch.float64), one)
    assert loss.item() == pytest.approx(math.exp(10))
    loss.backward()
    assert logp.grad.item() == 0.0
    # k3 with ref - logp = 15: d clamped to 10, k3 = e^10 - 10 - 1
    assert k3_kl(torch.zeros(1), torch.full((1,), 15.0)).item() == pytest.approx(math.exp(10) - 11)
    assert k3_kl(torch.zeros(1), torch.full((1,), -15.0)).item() == pytest.approx(math.exp(-10) + 9)
    # GSPO's sequence ratio too: mean log-ratio 12 -> s = e^10
    _, m = sequence_policy_loss(torch.full((1, 2), 12.0), torch.zeros(1, 2), torch.ones(1), torch.ones(1, 2, dtype=torch.bool), 0.2, 0.2)
    assert m["ratio/mean"] == pytest.approx(math.exp(10))


# -- 8. group z-score: population (TraceRL) or Bessel ----------------------------------------------
def test_group_zscore_population_or_bessel_std():
    r, g = torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.zeros(4, dtype=torch.long)
    # mean 0.5; squared deviations sum to 1: population std sqrt(1/4) = 0.5, sample std sqrt(1/3)
    assert group_advantages(r, g, std="population").tolist() == pytest.approx([1.0, -1.0, -1.0, 1.0], rel=1e-5)
    z = 0.5 / (1 / 3) ** 0.5  # 0.866
    assert group_advantages(r, g, std="sample").tolist() == pytest.approx([z, -z, -z, z], rel=1e-5)
    # the default follows each estimator's paper
    assert AlgorithmConfig().zscore_std == "population"  # trace: TraceRL
    assert AlgorithmConfig(estimator="one_step").zscore_std == "sample"  # d1 (TRL's GRPO)
    assert AlgorithmConfig(estimator="one_step", zscore_std="population").zscore_std == "population"


# -- 9. the per-pass mean (TraceRL's normalisation) --------------------------------------------------
def test_pass_norm_averages_within_each_trace_pass_then_over_passes():
    # one sample, steps [0, 0, 1], A = 1, ratios 1, 1, e^0.15 (unclipped at 0.2): terms -1, -1, -e^0.15
    passes = torch.tensor([trace_pass_index([0, 0, 1], prompt_len=0, block_size=None, shrink=1)])
    assert passes.tolist() == [[0, 0, 1]]
    logp = torch.tensor([[0.0, 0.0, 0.15]])
    old, adv, mask = torch.zeros(1, 3), torch.ones(1), torch.ones(1, 3, dtype=torch.bool)
    loss, m = policy_loss(logp, old, adv, mask, norm="pass", pass_index=passes)
    assert loss.item() == pytest.approx(((-1 - 1) / 2 - math.exp(0.15)) / 2)
    assert loss.item() == pytest.approx(-1.0809, abs=1e-4)
    for norm in ("token", "sequence"):
        assert policy_loss(logp, old, adv, mask, norm=norm)[0].item() == pytest.approx(-1.0539, abs=1e-4)


def test_pass_norm_pieces_sum_to_the_whole():
    logp = torch.tensor([[0.0, 0.1, 0.15, 0.0], [0.05, -0.1, 0.0, 0.0]])
    passes = torch.tensor([[0, 0, 1, 2], [0, 1, 1, -1]])
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    adv = torch.tensor([1.0, -0.5])
    whole, _ = policy_loss(logp, torch.zeros(2, 4), adv, mask, norm="pass", pass_index=passes)
    totals = LossTotals.of(mask, passes)
    assert totals.passes == 5  # (0,0) (0,1) (0,2) (1,0) (1,1)
    parts = sum(policy_loss(logp[i : i + 1], torch.zeros(1, 4), adv[i : i + 1], mask[i : i + 1], norm="pass", totals=totals, pass_index=passes[i : i + 1])[0] for i in range(2))
    assert parts.item() == pytest.approx(whole.item())


def test_pass_norm_runs_in_the_learner_and_needs_trace():
    learner = Learner(run_cfg(loss_norm="pass"))
    tok = learner.lm.tokenizer
    trajs = [Trajectory(tok("12+34=")["input_ids"], tok("046")["input_ids"] + [learner.lm.eos_id], [0, 0, 1, 2], [0.0] * 4, 4, 1.0, 3, "eos")] * 2
    m = learner.update(learner_batch(learner.cfg.algorithm, trajs, [1.0, -1.0]))
    assert math.isfinite(m["loss/policy"])
    with pytest.raises(ValueError, match="loss_norm: pass"):
        AlgorithmConfig(estimator="one_step", loss_norm="pass")
