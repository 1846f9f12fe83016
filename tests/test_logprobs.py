"""Chunked head log-probs equal the full log-softmax path, and the learner's LM head sees only
the rows that carry loss."""

import pytest
import torch
import torch.nn.functional as F

import rollout.models
from algorithms.estimators import ESTIMATORS, loss_mask
from rl.config import RunConfig
from rl.batch import learner_batch
from rl.learner import Learner
from rollout import SamplingParams
from rollout.logprobs import ROW_BLOCK, head_logprobs
from rollout.models import build_tiny_lm
from rollout.worker import RolloutWorker

from .conftest import BASE_CKPT

V, H, NUM_TOKENS, MASK = 1000, 32, 950, 7  # 50 padded ids past the "tokenizer", as SDAR/Dream have


def full_path(hidden, weight, bias, targets, temperature, dtype=None):
    """Today's path: full logits through nn.Linear, then sampling_logprobs' exclusions and log-softmax."""
    logits = F.linear(hidden, weight, bias)
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits.clone()
    if temperature > 0:
        logits = logits / temperature
    logits[:, MASK] = float("-inf")
    logits[:, NUM_TOKENS:] = float("-inf")
    lp = torch.log_softmax(logits, -1)
    return lp.gather(-1, targets[:, None]).squeeze(-1), torch.special.entr(lp.detach().exp()).sum(-1)


def head_inputs(n, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    # scale like a trained head: logits of a few units, |logp| around log V
    hidden = torch.randn(n, H, generator=g).to(dtype).requires_grad_()
    weight = (0.3 * torch.randn(V, H, generator=g)).to(dtype).requires_grad_()
    bias = (0.1 * torch.randn(V, generator=g)).to(dtype).requires_grad_()
    targets = torch.randint(0, NUM_TOKENS, (n,), generator=g)
    targets[targets == MASK] = MASK + 1
    return hidden, weight, bias, targets


def grads(fn, inputs, upstream):
    hidden, weight, bias, targets = inputs
    logp, entropy = fn()
    got = torch.autograd.grad((logp * upstream).sum(), [hidden, weight, bias])
    return logp.detach(), entropy, got


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_chunked_logprobs_entropy_and_gradients_equal_the_full_log_softmax_fp32(temperature):
    n = ROW_BLOCK + 9  # two row blocks, the second padded
    inputs = head_inputs(n)
    h, w, b, t = inputs
    up = torch.randn(n, generator=torch.Generator().manual_seed(1))
    want_lp, want_ent, want_g = grads(lambda: full_path(h, w, b, t, temperature), inputs, up)
    # chunk 96: ten chunks, the mask id inside the first, the last one cut at num_tokens
    got_lp, got_ent, got_g = grads(lambda: head_logprobs(h, w, b, t, temperature, NUM_TOKENS, MASK, True, chunk=96), inputs, up)
    assert want_lp.abs().min() > 3  # a real softmax over ~1000 ids, not a degenerate one
    assert (got_lp - want_lp).abs().max() <= 1e-6
    assert (got_ent - want_ent).abs().max() <= 1e-5 and not got_ent.requires_grad
    for got, want in zip(got_g, want_g):
        assert (got - want).abs().max() <= 1e-6 * max(1.0, want.abs().max().item())
    assert (got_g[1][NUM_TOKENS:] == 0).all() and (got_g[1][MASK] == 0).all()  # excluded ids: no gradient


def test_chunked_logprobs_upcast_bf16_inputs_as_the_full_path_does():
    """bf16 hidden and head (a bf16 model): the same bf16 logits, upcast before the softmax; and
    under CPU autocast an fp32 head runs in bf16 as nn.Linear would. Values match to 1e-6; the
    bf16 gradients are as close to the float64 truth as the full path's own."""
    n, temperature = 40, 0.7
    up = torch.randn(n, generator=torch.Generator().manual_seed(2))
    for dtype, autocast in ((torch.bfloat16, False), (torch.float32, True)):
        inputs = head_inputs(n, dtype)
        h, w, b, t = inputs
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            want_lp, _, want_g = grads(lambda: full_path(h, w, b, t, temperature), inputs, up)
            got_lp, _, got_g = grads(lambda: head_logprobs(h, w, b, t, temperature, NUM_TOKENS, MASK, chunk=128), inputs, up)
        assert got_lp.dtype == want_lp.dtype == torch.float32
        assert (got_lp - want_lp).abs().max() <= 1e-6, dtype
        # the truth: the same bf16-rounded operands, everything after in float64
        exact = [x.detach().to(torch.bfloat16).double().requires_grad_() for x in (h, w, b)]
        true_lp, _ = full_path(*exact, t, temperature)
        true_g = torch.autograd.grad((true_lp * up.double()).sum(), exact)
        for got, want, truth in zip(got_g, want_g, true_g):
            assert got.dtype == want.dtype
            err_got, err_want = (got.double() - truth).abs().max(), (want.double() - truth).abs().max()
            assert err_got <= 1.5 * err_want + 1e-6 * truth.abs().max(), (dtype, err_got, err_want)


def test_a_token_scores_the_same_whatever_shares_its_pass():
    """Batch composition must not change a token's numbers (ranks and micro-batches split batches)."""
    inputs = head_inputs(3 * ROW_BLOCK)
    h, w, b, t = (x.detach() for x in inputs)
    whole, _ = head_logprobs(h, w, b, t, 1.0, NUM_TOKENS, MASK)
    for lo, hi in ((0, 1), (5, 70), (64, 192), (100, 101)):
        part, _ = head_logprobs(h[lo:hi], w, b, t[lo:hi], 1.0, NUM_TOKENS, MASK)
        assert torch.equal(part, whole[lo:hi]), (lo, hi)


@pytest.mark.parametrize("family", ["block", "dream"])
def test_forward_logprobs_equals_forward_logits_at_the_rows(tokenizer, family):
    lm = build_tiny_lm(tokenizer, family=family, hidden_size=32, num_layers=1, intermediate_size=64)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(3, len(tokenizer), (2, 9), generator=g)
    pos = torch.arange(9).expand(2, 9)
    allowed = lm.attention_allowed(pos, torch.ones_like(x, dtype=torch.bool))
    select = torch.arange(3, 9).expand(2, 6)
    rows = torch.rand(2, 6, generator=g) < 0.5
    targets = torch.randint(3, len(tokenizer), (2, 6), generator=g)
    lp, ent = lm.forward_logprobs(x, pos, allowed, select, rows, targets, 0.8, with_entropy=True)
    full = lm.sampling_logprobs(lm.forward_logits(x, pos, allowed, select), 0.8)  # [2, 6, V]
    assert lp.shape == (int(rows.sum()),)
    assert torch.allclose(lp, full.gather(-1, targets[..., None]).squeeze(-1)[rows], atol=1e-6)
    assert torch.allclose(ent, torch.special.entr(full.exp()).sum(-1)[rows], atol=1e-5)
    assert torch.allclose(lm.forward_logits(x, pos, allowed, select, rows=rows), lm.forward_logits(x, pos, allowed, select)[rows], atol=1e-6)


@pytest.mark.parametrize("estimator", ["trace", "one_step", "coupled"])
def test_lm_head_rows_per_update_equal_the_loss_tokens(estimator, monkeypatch):
    """One update = the old estimate and the current one. Each computes LM-head rows only for
    the tokens its passes score: the loss tokens once (coupled: once in its complementary pair,
    once more in DiffuCoder's fully masked pass), not passes x completion length."""
    worker = RolloutWorker(str(BASE_CKPT))
    tok = worker.lm.tokenizer
    prompts = [tok("123+456=")["input_ids"], tok("507+045=")["input_ids"]] * 2
    # stop at EOS: the rest of the EOS block is filler that carries no loss
    trajs = worker.generate(prompts, SamplingParams(max_new_tokens=8, temperature=1.0), seed=0, groups=[0, 1] * 2)
    cfg = RunConfig.model_validate({
        "data": {"sources": [{"path": "arithmetic"}]}, "model": {"path": str(BASE_CKPT)},
        "algorithm": {"estimator": estimator, "beta": 0.0, "minibatches": 1, "epochs": 1}, "wandb": {"mode": "disabled"},
    })  # fmt: skip
    learner = Learner(cfg)
    rows, passes = [], []
    real_head, real_forward = rollout.models.head_logprobs, learner.lm.forward_logprobs
    monkeypatch.setattr(rollout.models, "head_logprobs", lambda hidden, *a, **k: rows.append(hidden.shape[0]) or real_head(hidden, *a, **k))
    monkeypatch.setattr(learner.lm, "forward_logprobs", lambda *a, **k: passes.append(a[3].shape) or real_forward(*a, **k))
    learner.update(learner_batch(learner.cfg.algorithm, trajs, [1.0, -1.0, 0.5, -0.5]))
    loss_tokens = int(loss_mask(trajs, learner.lm.eos_id).sum())
    completion_tokens = sum(len(t.completion_ids) for t in trajs)
    assert loss_tokens < completion_tokens  # the batch has filler, so the count can tell them apart
    scored_per_token = 2 if estimator == "coupled" and cfg.algorithm.coupled_full_mask_pass else 1
    # old + current estimate; coupled's backward per pass runs the current one twice (graph-free, then pass by pass)
    estimates = 3 if estimator == "coupled" else 2
    assert learner.recompute_per_pass == (estimator == "coupled")
    assert sum(rows) == estimates * scored_per_token * loss_tokens
    assert sum(rows) < sum(r * c for r, c in passes)  # what the full-width head computed before
    if estimator == "trace":
        assert len(passes) == 2 * 4  # 4 step groups per block, old + current


def test_estimators_score_only_their_rows_and_keep_their_values(tokenizer):
    """The row-restricted estimators give the full-head values at every loss token."""
    lm = build_tiny_lm(tokenizer, hidden_size=32, num_layers=1, intermediate_size=64)
    lm.model.double()
    from rollout import generate

    trajs = generate(lm, [tokenizer("12+34=")["input_ids"]] * 2, SamplingParams(max_new_tokens=8, temperature=0.7), torch.Generator().manual_seed(0))
    logp, mask = ESTIMATORS["trace"](lm, trajs, None)
    for i, t in enumerate(trajs):  # the rollout's own log-probs, computed from full logits
        assert torch.allclose(logp[i, : len(t.logprobs)][mask[i, : len(t.logprobs)]], torch.tensor(t.logprobs, dtype=logp.dtype)[mask[i, : len(t.logprobs)]], atol=1e-9)
    assert (logp[~mask] == 0).all()
