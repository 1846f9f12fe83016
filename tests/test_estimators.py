"""Likelihood estimators: one interface, per-sample masks, and checks each paper's formula can fail."""

import pytest
import torch

from algorithms.estimators import ESTIMATORS, count_forward_passes, elbo_schedule, get_estimator, sample_generators
from rollout import SamplingParams, Trajectory, generate
from rollout.models import build_tiny_lm

from .conftest import tiny_lm

RANDOM = ["one_step", "coupled", "mc_elbo", "block_random"]
FAMILIES = ["block", "llada", "dream"]
TEXTS = ["047+385=", "12+34=", "5+6="]  # prompt lengths 8, 6, 4: full and partial first blocks
OPTS = {"mc_elbo": {"n": 2}}  # keep the tests' forward count small


def _lm(tokenizer, family, seed=0):
    if family == "block":
        return tiny_lm(tokenizer, seed=seed)
    lm = build_tiny_lm(tokenizer, family=family, hidden_size=64, num_layers=2, intermediate_size=128, seed=seed)
    lm.model.double()
    return lm


@pytest.fixture(scope="module")
def setups(tokenizer):
    """family -> (policy, the same architecture with other weights, rollout trajectories)."""
    out = {}
    for family in FAMILIES:
        lm = _lm(tokenizer, family)
        kw = dict(max_new_tokens=8, temperature=0.7, stop_at_eos=False)
        if family != "block":
            kw.update(max_new_tokens=6, block_length=3, kv_cache=False)
        trajs = generate(lm, [tokenizer(t)["input_ids"] for t in TEXTS], SamplingParams(**kw), torch.Generator().manual_seed(0))
        out[family] = (lm, _lm(tokenizer, family, seed=1), trajs)
    return out


def spy(lm, monkeypatch):
    """Record (input_ids, select) of every forward pass of `lm` (the learner's forward_logprobs)."""
    calls = []
    real = lm.forward_logprobs

    def forward_logprobs(input_ids, position_ids, allowed, select, rows, *args, **kwargs):
        calls.append((input_ids.clone(), select.clone()))
        return real(input_ids, position_ids, allowed, select, rows, *args, **kwargs)

    monkeypatch.setattr(lm, "forward_logprobs", forward_logprobs)
    return calls


@pytest.mark.parametrize("family", FAMILIES)
def test_trace_estimator_equals_the_rollouts_own_logprobs(setups, family, monkeypatch):
    lm, _, trajs = setups[family]
    calls = spy(lm, monkeypatch)
    logp, mask, entropy = ESTIMATORS["trace"](lm, trajs, None, shrink=1, with_entropy=True)
    assert len(calls) == count_forward_passes("trace", trajs, shrink=1)
    for i, t in enumerate(trajs):
        assert mask[i].sum() == len(t.completion_ids)
        assert torch.allclose(logp[i, : len(t.logprobs)], torch.tensor(t.logprobs, dtype=logp.dtype), atol=1e-9)
    assert (entropy[mask] >= 0).all()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", RANDOM)
def test_masks_depend_on_seed_and_sample_only(setups, family, name, monkeypatch):
    """Same seed: the same forward inputs under other weights (old/ref/current agree); another
    seed: other masks; the pass count is what count_forward_passes reports."""
    lm, other, trajs = setups[family]
    opts = OPTS.get(name, {})
    est = get_estimator(name)
    calls, other_calls = spy(lm, monkeypatch), spy(other, monkeypatch)
    logp, mask = est(lm, trajs, torch.Generator().manual_seed(5), **opts)
    assert len(calls) == count_forward_passes(name, trajs, **opts)
    assert logp.requires_grad and logp.shape == mask.shape == (3, max(len(t.completion_ids) for t in trajs))
    assert (logp[~mask] == 0).all() and torch.isfinite(logp).all()
    est(other, trajs, None, seed=5, **opts)  # seed given directly == generator's initial seed
    assert all(torch.equal(a[0], b[0]) for a, b in zip(calls, other_calls))
    before = len(calls)
    est(lm, trajs, torch.Generator().manual_seed(6), **opts)
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(calls[:before], calls[before:]))


def test_a_samples_mask_does_not_depend_on_its_batch(setups):
    lm, _, trajs = setups["block"]
    for name in RANDOM:
        full, fmask = ESTIMATORS[name](lm, trajs, None, seed=3, **OPTS.get(name, {}))
        alone, amask = ESTIMATORS[name](lm, trajs[1:2], None, seed=3, **OPTS.get(name, {}))
        width = amask.shape[1]
        assert torch.equal(fmask[1, :width], amask[0]) and torch.allclose(full[1, :width], alone[0], atol=1e-9), name
    g = sample_generators([trajs[0], trajs[0]], 0)  # identical samples still get independent masks
    assert not torch.equal(torch.rand(8, generator=g[0]), torch.rand(8, generator=g[1]))


@pytest.mark.parametrize("family", FAMILIES)
def test_coupled_scores_every_token_exactly_once(setups, family, monkeypatch):
    lm, _, trajs = setups[family]
    calls = spy(lm, monkeypatch)
    ESTIMATORS["coupled"](lm, trajs, None, seed=1)
    (ids1, sel1), (ids2, sel2) = calls
    masked1 = ids1.gather(1, sel1) == lm.mask_id
    masked2 = ids2.gather(1, sel2) == lm.mask_id
    for i, t in enumerate(trajs):
        n = len(t.completion_ids)
        assert (masked1[i, :n] ^ masked2[i, :n]).all()  # complementary: each token masked in one pass


def test_coupled_and_block_random_on_block_size_one_equal_the_exact_likelihood(tokenizer):
    """With block size 1 a masked token's context is its clean prefix whatever else is masked,
    so the pass where it is masked gives its exact conditional: the TraceRL log-prob."""
    lm = tiny_lm(tokenizer, block_size=1)
    params = SamplingParams(max_new_tokens=5, stop_at_eos=False)
    trajs = generate(lm, [tokenizer("12+34=")["input_ids"]] * 2, params, torch.Generator().manual_seed(0))
    exact, _ = ESTIMATORS["trace"](lm, trajs)
    coupled, _ = ESTIMATORS["coupled"](lm, trajs, None, seed=0)
    assert torch.allclose(coupled, exact, atol=1e-9)
    weighted, _ = ESTIMATORS["coupled"](lm, trajs, None, seed=0, weighted=True)
    assert not torch.allclose(weighted, exact)  # DiffuCoder's 1/t, 1/(1-t) weights change it
    rand, rmask = ESTIMATORS["block_random"](lm, trajs, None, seed=0)
    assert rmask.all() and torch.allclose(rand, exact, atol=1e-9)  # one-token blocks: always masked


@pytest.mark.parametrize("family", FAMILIES)
def test_one_step_without_prompt_noise_is_the_exact_next_token_logprob(tokenizer, setups, family):
    lm = setups[family][0]
    prompt = tokenizer("12+34=")["input_ids"]
    token = tokenizer("7")["input_ids"][0]
    traj = Trajectory(prompt, [token], [0], [0.0], lm.block_size, temperature=0.7, nfe=1, finish_reason="length")
    logp, mask = ESTIMATORS["one_step"](lm, [traj], None, p_mask_prompt=0.0)
    x = torch.tensor([prompt + [lm.mask_id]])
    want = lm.sampling_logprobs(lm.sequence_logits(x, torch.tensor([[len(prompt)]])), 0.7)[0, 0, token]
    assert mask.all() and logp[0, 0].item() == pytest.approx(want.item(), abs=1e-9)


def test_one_step_masks_the_whole_completion_and_every_copy_of_a_prompt_token(setups, monkeypatch):
    lm, _, trajs = setups["block"]
    calls = spy(lm, monkeypatch)
    ESTIMATORS["one_step"](lm, trajs, None, seed=0, p_mask_prompt=0.6)
    ((ids, sel),) = calls
    assert (ids.gather(1, sel)[sel > 0] == lm.mask_id).all()
    masked_prompt = masked_copies = 0
    for i, t in enumerate(trajs):
        plen, total = len(t.prompt_ids), len(t.prompt_ids) + len(t.completion_ids)
        start = plen // lm.block_size * lm.block_size  # the noisy copy repeats prompt[start:plen]
        hit = ids[i, :plen] == lm.mask_id  # masked prompt tokens in the clean copy
        assert torch.equal(hit[start:], ids[i, total : total + plen - start] == lm.mask_id)
        assert (ids[i, plen:total] != lm.mask_id).all()  # the clean completion copy stays clean
        masked_prompt += int(hit.sum())
        masked_copies += int(hit[start:].sum())
    assert 0 < masked_prompt < sum(len(t.prompt_ids) for t in trajs) and masked_copies > 0


def test_elbo_quadrature_nodes_and_weights():
    nodes = elbo_schedule(3, True, torch.Generator())
    assert sum(w for _, w in nodes) == pytest.approx(1.0)
    # 3-point Gauss-Legendre on (0, 1): t = (1 -+ sqrt(3/5)) / 2 and 1/2, weights 5/18, 8/18, 5/18
    assert [t for t, _ in nodes] == pytest.approx([(1 - 0.6**0.5) / 2, 0.5, (1 + 0.6**0.5) / 2])
    assert [w for _, w in nodes] == pytest.approx([5 / 18, 8 / 18, 5 / 18])
    # integrates t^4 exactly (degree <= 5): 1/5
    assert sum(w * t**4 for t, w in nodes) == pytest.approx(0.2)


def test_mc_elbo_is_unbiased_for_the_exact_likelihood_at_block_size_one(tokenizer):
    """At block size 1 a masked token scores its exact conditional log p_c, so each token's term
    is log p_c * sum_k (w_k / t_k) 1[c masked in pass k], whose expectation over masks is
    log p_c * sum_k w_k = log p_c."""
    lm = tiny_lm(tokenizer, block_size=1)
    params = SamplingParams(max_new_tokens=3, stop_at_eos=False)
    (t,) = generate(lm, [tokenizer("5+6=")["input_ids"]], params, torch.Generator().manual_seed(0))
    exact, _ = ESTIMATORS["trace"](lm, [t])
    (t1, w1), (t2, w2) = elbo_schedule(2, True, torch.Generator())
    est, mask = ESTIMATORS["mc_elbo"](lm, [t] * 4, None, n=2, quadrature=True, seed=0)
    ratios = (est / exact).flatten().tolist()  # each one of 0, w1/t1, w2/t2, w1/t1 + w2/t2
    allowed = [0.0, w1 / t1, w2 / t2, w1 / t1 + w2 / t2]
    assert mask.all() and all(min(abs(r - a) for a in allowed) < 1e-9 for r in ratios)
    assert len({round(r, 6) for r in ratios}) >= 3
    copies = [t] * 128  # duplicates draw independent masks
    # relative std of the mean over copies ~ sqrt(Var / 128 / 3): ~4% (quadrature), ~6% (plain MC);
    # dropping the 1/t weight would land near 50%.
    with torch.no_grad():
        for opts, tol in (({"quadrature": True}, 0.15), ({"quadrature": False}, 0.2)):
            est, _ = ESTIMATORS["mc_elbo"](lm, copies, None, n=4, seed=1, **opts)
            assert est.sum(1).mean().item() == pytest.approx(exact.sum().item(), rel=tol), opts


def test_block_random_scores_at_least_one_token_per_block(setups):
    lm, _, trajs = setups["block"]
    logp, mask, entropy = ESTIMATORS["block_random"](lm, trajs, None, seed=0, with_entropy=True)
    for i, t in enumerate(trajs):
        blocks = {}
        for c in range(len(t.completion_ids)):
            blocks.setdefault((len(t.prompt_ids) + c) // lm.block_size, []).append(bool(mask[i, c]))
        assert all(any(v) for v in blocks.values())
    assert (logp[mask] < 0).all() and (entropy[~mask] == 0).all()


def test_count_forward_passes_by_name(setups):
    trajs = setups["block"][2]
    assert count_forward_passes("trace", trajs, shrink=2) == 2  # 4 steps per block, s = 2
    assert count_forward_passes("coupled", trajs, full_mask_pass=True) == 3
    assert count_forward_passes("mc_elbo", trajs, n=7) == 7
    with pytest.raises(ValueError, match="unknown estimator"):
        count_forward_passes("nope", trajs)
    with pytest.raises(ValueError, match="unknown estimator"):
        get_estimator("nope")
