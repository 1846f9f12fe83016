"""Compiled decoding (`rollout.compile`): the same trajectories as eager decoding, and a weight
sync reaches the compiled graph (parameters are its inputs, not baked-in constants) without a
recompilation."""

import pickle

import pytest
import torch

from rollout import SamplingParams
from rollout.weights import snapshot
from rollout.worker import RolloutWorker

from .conftest import BASE_CKPT


def _prompts(worker):
    tok = worker.lm.tokenizer
    return [tok(p)["input_ids"] for p in ("12+34=", "5+678=", "90+1=")]


def _same(a, b):
    for x, y in zip(a, b):
        assert x.completion_ids == y.completion_ids and x.step_map == y.step_map
        torch.testing.assert_close(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=2e-5, rtol=0)


@pytest.mark.slow  # torch.compile on the CPU: ~1 min of compiling
def test_compiled_worker_decodes_like_eager_before_and_after_a_weight_sync():
    torch._dynamo.reset()
    eager, compiled = RolloutWorker(str(BASE_CKPT)), RolloutWorker(str(BASE_CKPT), compile=True)
    prompts = _prompts(eager)
    params = [SamplingParams(max_new_tokens=12, temperature=0.0, strategy=s) for s in ("static", "threshold")]
    for p in params:
        _same(compiled.generate(prompts, p, 0), eager.generate(prompts, p, 0))
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs >= 2  # it really compiled: the prompt's prefill (empty cache) and the block steps

    # New weights, as the trainer sends them (a received snapshot, adopted as the parameters);
    # a small change, so that the decodes keep their shapes and only the weights differ.
    torch.manual_seed(0)
    new = {k: v + 2e-3 * torch.randn_like(v) if v.is_floating_point() else v for k, v in eager.lm.model.state_dict().items()}
    old = eager.generate(prompts, params[0], 0)
    for w in (eager, compiled):
        w.load_weights(pickle.loads(pickle.dumps(snapshot(new), protocol=5)))
    for p in params:
        _same(compiled.generate(prompts, p, 0), eager.generate(prompts, p, 0))
    moved = max(abs(a - b) for x, y in zip(old, eager.generate(prompts, params[0], 0)) for a, b in zip(x.logprobs, y.logprobs))
    assert moved > 1e-4  # the new weights changed the log-probs, and the compiled graph follows them
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # the same shapes: the sync did not recompile
    _same(compiled.generate(prompts[:2], params[1], 0), eager.generate(prompts[:2], params[1], 0))  # another batch size
