"""The decoders beyond static/threshold (adaptive, prophet, ascending steps) and the sampler's
host work: step maps that replay, step counts by each rule, no device reads inside a block."""

import math
import sys
from collections import Counter

import pytest
import torch

from rollout import SamplingParams, generate
from rollout.engine import ascending_schedule

from .conftest import tiny_lm
from .test_engine import prompts_of, replay_check

TEXTS = ["047+385=", "12+34=", "5+6="]  # 8 = 2 blocks; 6 and 4 leave a partial first block


def _run(lm, tokenizer, texts=TEXTS, **kw):
    params = SamplingParams(max_new_tokens=kw.pop("max_new_tokens", 12), temperature=0.0, stop_at_eos=False, **kw)
    return params, generate(lm, prompts_of(tokenizer, texts), params)


def _steps_per_block(t, bs=4):
    plen = len(t.prompt_ids)
    steps = {}
    for c, s in enumerate(t.step_map):
        steps.setdefault((plen + c) // bs, set()).add(s)
    return [len(v) for _, v in sorted(steps.items())]


@pytest.mark.parametrize(
    "kw",
    [
        {"strategy": "adaptive", "factor": 1.0},
        {"strategy": "adaptive", "factor": 3.0, "max_tokens_per_step": 2},
        {"strategy": "prophet", "prophet_gaps": (0.5, 0.3, 0.1)},
        {"strategy": "static", "schedule": "ascending"},
        {"strategy": "prophet", "schedule": "ascending"},
        {"strategy": "threshold", "threshold": 0.05, "max_tokens_per_step": 3},
        {"strategy": "bacd", "bacd_bounds": (0.05, 0.3)},
    ],
)
def test_every_decoder_replays_its_step_map(tokenizer, kw):
    lm = tiny_lm(tokenizer)
    params, trajs = _run(lm, tokenizer, **kw)
    for t in trajs:
        assert sorted(set(t.step_map)) == list(range(t.nfe))  # contiguous steps, one forward each
        replay_check(lm, t, params if kw["strategy"] == "static" else SamplingParams(strategy="threshold"))


def _crafted_confidences(lm, tokenizer, monkeypatch, conf):
    """Make every prediction at block position j (absolute position % block size) a fixed
    distribution: token str(j + 1) with probability conf[j], the rest split evenly between "7"
    and "8". The real forward still runs (the cache stays in step); only its logits are replaced."""
    bs, vocab = lm.block_size, lm.model.config.vocab_size
    table = torch.full((bs, vocab), -1e9, dtype=torch.float64)
    for j, c in enumerate(conf):
        table[j, tokenizer.convert_tokens_to_ids(str(j + 1))] = math.log(c)
        for other in "78":
            table[j, tokenizer.convert_tokens_to_ids(other)] = math.log((1 - c) / 2)
    forward = lm.forward_logits

    def crafted(ids, pos, allowed, select, cache=None, rows=None):
        out = forward(ids, pos, allowed, select, cache, rows)
        return table[pos.gather(1, select) % bs].to(out.dtype)

    monkeypatch.setattr(lm, "forward_logits", crafted)


# Confidences of block positions 0..3 (then by rank 0.99 > 0.9 > 0.7 > 0.4) and the relative step
# at which each position is committed, by hand from the rule "the largest n with
# (n + 1)(1 - c_n) < factor, at least one, at most the bound":
#  factor 1:   step 0: 2*.01=.02, 3*.1=.3 < 1, 4*.3=1.2 -> commit 2 (positions 1, 2)
#              step 1: (.7, .4): 2*.3=.6 < 1, 3*.6=1.8 -> 1 (position 3)
#              step 2: (.4): 2*.6=1.2 >= 1 -> none by the rule, one to make progress (position 0)
#  factor 2:   step 0: 4*.3=1.2 < 2, 5*.6=3 -> 3 (positions 1, 2, 3); step 1: 2*.6=1.2 < 2 -> position 0
#  factor 2, at most 2: step 0: 2 (positions 1, 2); step 1: (.7, .4): 3*.6=1.8 < 2 -> both (0, 3)
#  factor 1e9: all four at step 0
ADAPTIVE_CONF = (0.4, 0.99, 0.9, 0.7)
ADAPTIVE_STEPS = [
    ({"factor": 1.0}, [2, 0, 0, 1]),
    ({"factor": 2.0}, [1, 0, 0, 0]),
    ({"factor": 2.0, "max_tokens_per_step": 2}, [1, 0, 0, 1]),
    ({"factor": 1e9}, [0, 0, 0, 0]),
    ({"factor": 1e9, "max_tokens_per_step": 1}, [3, 0, 1, 2]),  # one per step, most confident first
]


@pytest.mark.parametrize("kw,block_steps", ADAPTIVE_STEPS)
def test_adaptive_step_sizes_follow_the_factor_rule_and_the_bound(tokenizer, monkeypatch, kw, block_steps):
    lm = tiny_lm(tokenizer)
    _crafted_confidences(lm, tokenizer, monkeypatch, ADAPTIVE_CONF)
    _, (t,) = _run(lm, tokenizer, ["047+385="], max_new_tokens=8, strategy="adaptive", **kw)  # 2 whole blocks
    per_block = max(block_steps) + 1
    assert t.step_map == block_steps + [s + per_block for s in block_steps]
    assert t.nfe == 2 * per_block
    assert t.completion_ids == tokenizer("12341234")["input_ids"]
    assert t.logprobs == pytest.approx([math.log(c) for c in ADAPTIVE_CONF] * 2, abs=1e-12)


def test_adaptive_extremes_on_a_real_model(tokenizer):
    lm = tiny_lm(tokenizer)
    _, slow = _run(lm, tokenizer, strategy="adaptive", factor=1e-9)  # no n passes: one token per step
    assert all(t.nfe == len(t.completion_ids) for t in slow)
    _, bounded = _run(lm, tokenizer, strategy="adaptive", factor=1e9, max_tokens_per_step=2)  # every n passes: the bound
    for t in bounded:
        counts = Counter(t.step_map)
        assert max(counts.values()) == 2 and all(v in (1, 2) for v in counts.values())
        assert _steps_per_block(t) == [(n + 1) // 2 for n in _masked_per_block(t)]


# TDAR's bounded adaptive confidence decoding, by hand: tau = clamp(best masked confidence) at a block's first step,
# then clamp(mean confidence of the block's commits so far); commit confidence >= tau, at least one (the best).
# Confidences (.4, .99, .92, .7) (none on a bound: exp(log .9) rounds below .9 in float32):
#  (0.6, 0.9):  tau .9 -> positions 1, 2; mean .955 -> .9: none, the best (3); mean .87: none, position 0 -> [2, 0, 0, 1]
#  (0.3, 0.5):  tau .5 -> 1, 2, 3; mean .87 -> .5: none, position 0                                       -> [1, 0, 0, 0]
#  (0.3, 0.95): tau .95 -> 1; mean .99 -> .95: none, 2; mean .955: none, 3; mean .87: none, 0            -> [3, 0, 1, 2]
#               (the second block starts afresh: the first block's history, mean .7525, would commit 1 and 2 at once)
#  (0.6, 0.9), ties (.7, .99, .7, .7): tau .9 -> 1; mean .99 -> .9: none, 0 (first of the ties); mean .845: none, 2;
#               mean .797: none, 3 (without the history, tau = clamp(max .7) = .7 would commit all three at once) -> [1, 0, 2, 3]
BACD_CONF = (0.4, 0.99, 0.92, 0.7)
BACD_STEPS = [
    ((0.6, 0.9), BACD_CONF, [2, 0, 0, 1]),
    ((0.3, 0.5), BACD_CONF, [1, 0, 0, 0]),
    ((0.3, 0.95), BACD_CONF, [3, 0, 1, 2]),
    ((0.6, 0.9), (0.7, 0.99, 0.7, 0.7), [1, 0, 2, 3]),
]


@pytest.mark.parametrize("bounds,conf,block_steps", BACD_STEPS)
def test_bacd_thresholds_follow_the_blocks_own_history(tokenizer, monkeypatch, bounds, conf, block_steps):
    lm = tiny_lm(tokenizer)
    _crafted_confidences(lm, tokenizer, monkeypatch, conf)
    for kv in (True, False):
        _, (t,) = _run(lm, tokenizer, ["047+385="], max_new_tokens=8, strategy="bacd", bacd_bounds=bounds, kv_cache=kv)  # 2 whole blocks
        per_block = max(block_steps) + 1
        assert t.step_map == block_steps + [s + per_block for s in block_steps]
        assert t.completion_ids == tokenizer("12341234")["input_ids"]


def test_bacd_spec_and_bounds():
    from rollout.sampling import parse_strategy

    assert parse_strategy("bacd", SamplingParams())[1].bacd_bounds == (0.6, 0.9)  # TDAR's defaults
    assert parse_strategy("bacd:0.5,0.95", SamplingParams())[1].bacd_bounds == (0.5, 0.95)
    with pytest.raises(ValueError, match="0 < lower <= upper <= 1"):
        parse_strategy("bacd:0.9,0.5", SamplingParams())


def _masked_per_block(t, bs=4):
    plen = len(t.prompt_ids)
    return list(Counter((plen + c) // bs for c in range(len(t.completion_ids))).values())


def test_prophet_commits_the_rest_of_a_block_once_the_gap_is_reached(tokenizer):
    lm = tiny_lm(tokenizer)
    _, static = _run(lm, tokenizer)
    _, never = _run(lm, tokenizer, strategy="prophet", prophet_gaps=(1e9, 1e9, 1e9))
    _, always = _run(lm, tokenizer, strategy="prophet", prophet_gaps=(0.0, 0.0, 0.0))
    for s, n, a in zip(static, never, always):
        assert (n.completion_ids, n.step_map, n.nfe) == (s.completion_ids, s.step_map, s.nfe)  # no early commit: static
        assert _steps_per_block(a) == [1] * len(_steps_per_block(a))  # early commit at the first step of every block
        assert a.nfe == len(_steps_per_block(a)) < s.nfe


def test_ascending_schedule_doubles_the_step_size():
    assert ascending_schedule(4) == [1, 2, 1] and ascending_schedule(7) == [1, 2, 4] and ascending_schedule(10) == [1, 2, 4, 3]
    assert ascending_schedule(1) == [1]


def test_ascending_static_decoding_commits_1_2_then_the_rest(tokenizer):
    lm = tiny_lm(tokenizer)
    _, trajs = _run(lm, tokenizer, texts=["047+385="], strategy="static", schedule="ascending")
    (t,) = trajs
    assert [t.step_map.count(s) for s in range(t.nfe)] == [1, 2, 1] * 3


def test_full_attention_decoders_replay(tokenizer):
    from rollout.models import build_tiny_lm

    lm = build_tiny_lm(tokenizer, family="llada", hidden_size=64, num_layers=2, intermediate_size=128)
    lm.model.double()
    for kw in ({"strategy": "prophet", "prophet_gaps": (0.0, 0.0, 0.0)}, {"strategy": "adaptive", "factor": 2.0, "max_tokens_per_step": 3}):
        _, trajs = _run(lm, tokenizer, max_new_tokens=8, **kw)
        for t in trajs:
            assert sorted(set(t.step_map)) == list(range(t.nfe)) and -1 not in t.step_map
        if kw["strategy"] == "prophet":  # one block (the canvas), committed at its first step
            assert all(t.nfe == 1 for t in trajs)


class _HeadRows:
    """Counts the hidden states that go through the LM head (one per predicted position)."""

    def __init__(self, lm):
        self.rows = 0
        self._hook = lm.model.lm_head.register_forward_pre_hook(self._count)

    def _count(self, _module, args):
        self.rows += args[0].reshape(-1, args[0].shape[-1]).shape[0]

    def close(self):
        self._hook.remove()


@pytest.mark.parametrize("family", ["block", "llada", "dream"])
@pytest.mark.parametrize(
    "kw",
    [{}, {"strategy": "threshold", "threshold": 0.3}, {"strategy": "adaptive", "factor": 2.0}, {"strategy": "prophet", "prophet_gaps": (0.5, 0.3, 0.1)},
     {"strategy": "static", "schedule": "ascending", "eos_guard": 0.5}],
)
def test_a_step_predicts_only_the_masked_positions_and_decodes_the_same(tokenizer, family, kw, monkeypatch):
    from rollout.engine import _Decoder
    from rollout.models import build_tiny_lm

    if family == "block":
        lm = tiny_lm(tokenizer)
    else:
        lm = build_tiny_lm(tokenizer, family=family, hidden_size=64, num_layers=2, intermediate_size=128)
        lm.model.double()
    extra = {} if family == "block" else {"block_length": 4}
    texts = TEXTS + ["1+2=", "123+4="]
    runs = {}
    for masked_only in (True, False):
        monkeypatch.setattr(_Decoder, "masked_logits", masked_only)
        head = _HeadRows(lm)
        _, trajs = _run(lm, tokenizer, texts, max_new_tokens=12, **extra, **kw)
        head.close()
        runs[masked_only] = (head.rows, trajs)
    (rows, fast), (all_rows, ref) = runs[True], runs[False]
    for a, b in zip(fast, ref):
        assert a.completion_ids == b.completion_ids and a.step_map == b.step_map and a.nfe == b.nfe
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-9)
    assert rows < all_rows


def test_static_head_rows_are_the_masked_counts(tokenizer):
    """One token per step, block 4: a block with c generated positions predicts c, c-1, ..., 1
    positions, against 4 at each of its c steps when every position is predicted."""
    from rollout.engine import _Decoder

    lm = tiny_lm(tokenizer)
    for text in ("047+385=", "12+34="):  # a prompt of whole blocks, and one ending inside a block
        head = _HeadRows(lm)
        _, (t,) = _run(lm, tokenizer, [text], max_new_tokens=12)
        head.close()
        plen = len(t.prompt_ids)
        counts = Counter((plen + i) // 4 for i in range(len(t.completion_ids))).values()
        assert head.rows == sum(c * (c + 1) // 2 for c in counts)
        try:
            _Decoder.masked_logits = False
            head = _HeadRows(lm)
            _run(lm, tokenizer, [text], max_new_tokens=12)
            head.close()
        finally:
            _Decoder.masked_logits = True
        assert head.rows == sum(4 * c for c in counts)


class _SyncCounter:
    """Counts calls that read a tensor on the host (item, tolist, cpu, bool, int, float, numpy,
    nonzero) made from the sampler's own code, by the function they are made from. On a GPU each
    is a device-to-host synchronisation; on CPU the same calls mark where one would be."""

    METHODS = ("item", "tolist", "cpu", "__bool__", "__int__", "__float__", "numpy", "nonzero")
    FILES = ("rollout/engine.py", "rollout/models.py", "rollout/cache.py")

    def __init__(self, monkeypatch):
        self.calls = Counter()
        for name in self.METHODS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, original))

    def _wrap(self, name, original):
        def wrapper(t, *a, **kw):
            frame = sys._getframe(1)
            if frame.f_code.co_filename.replace("\\", "/").endswith(self.FILES):
                self.calls[frame.f_code.co_name] += 1
            return original(t, *a, **kw)

        return wrapper


STEP_LOOP = ("_denoise_step", "_commit", "_sample", "_confidence", "forward", "sampling_logprobs", "_excluded", "forward_logits", "encode", "predicting_rows", "update", "crop")


def test_static_decoding_reads_nothing_inside_a_block_and_the_same_per_block_whatever_its_steps(tokenizer, monkeypatch):
    lm = tiny_lm(tokenizer)
    per_block = []
    for steps_per_block in (4, 2, 1):
        counter = _SyncCounter(monkeypatch)
        params = SamplingParams(max_new_tokens=16, temperature=1.0, steps_per_block=steps_per_block, stop_at_eos=False)
        generate(lm, prompts_of(tokenizer, TEXTS), params, torch.Generator().manual_seed(0))
        monkeypatch.undo()
        inside = {f: n for f, n in counter.calls.items() if f in STEP_LOOP}
        assert inside == {}, f"host reads inside the step loop: {inside}"
        assert counter.calls["_masked_left"] == 0  # static decoding knows its step count
        per_block.append(dict(counter.calls))
    # 4, 2 and 1 steps per block: the reads do not grow with the steps. What is left is host
    # bookkeeping once per block (the host-side row list and masked counts of 5 blocks) and the
    # copy of the records to the host when the decode ends.
    assert per_block[0] == per_block[1] == per_block[2]
    # run: which rows ended, per block (5 blocks), and the row selection when the short samples leave.
    assert 5 <= per_block[0]["run"] <= 3 * 5 and per_block[0]["_decode_block"] == 5, per_block[0]


def test_stop_at_eos_reads_the_device_once_per_block(tokenizer, monkeypatch):
    lm = tiny_lm(tokenizer)
    counter = _SyncCounter(monkeypatch)
    trajs = generate(lm, prompts_of(tokenizer, TEXTS), SamplingParams(max_new_tokens=16, temperature=1.0), torch.Generator().manual_seed(0))
    monkeypatch.undo()
    blocks = max(len(_steps_per_block(t)) for t in trajs)
    assert {f: n for f, n in counter.calls.items() if f in STEP_LOOP} == {}
    # Per block: which rows ended and the EOS read; plus a row selection when samples leave.
    assert 2 * blocks <= counter.calls["run"] <= 4 * blocks


def test_dynamic_decoding_reads_one_count_per_step(tokenizer, monkeypatch):
    lm = tiny_lm(tokenizer)
    counter = _SyncCounter(monkeypatch)
    trajs = generate(lm, prompts_of(tokenizer, TEXTS), SamplingParams(max_new_tokens=16, strategy="threshold", threshold=0.5, temperature=0.0, stop_at_eos=False))
    monkeypatch.undo()
    assert {f: n for f, n in counter.calls.items() if f in STEP_LOOP} == {}
    assert 0 < counter.calls["_masked_left"] <= max(t.nfe for t in trajs)


def _refill_prompts(tokenizer):
    # Skewed lengths: EOS comes early for some prompts (a biased head below), late for others.
    return prompts_of(tokenizer, ["047+385=", "12+34=", "5+6=", "999+001=", "3+4=", "100+200=", "7+8=", "55+55="])


@pytest.mark.parametrize("kv_cache", [True, False])
@pytest.mark.parametrize("strategy", ["static", "threshold"])
def test_refill_decodes_every_prompt_as_it_would_alone(tokenizer, kv_cache, strategy, monkeypatch):
    from rollout import engine

    lm = tiny_lm(tokenizer, seed=3)
    prompts = _refill_prompts(tokenizer)
    kw = dict(max_new_tokens=12, temperature=0.0, strategy=strategy, threshold=0.3, kv_cache=kv_cache)
    admitted, original = [], engine._BlockDecoder._refill

    def spy(self, *args):
        rows = original(self, *args)
        admitted.extend(rows)
        return rows

    monkeypatch.setattr(engine._BlockDecoder, "_refill", spy)
    refill = generate(lm, prompts, SamplingParams(**kw, max_batch=3))
    monkeypatch.undo()
    assert len(admitted) == len(prompts) - 3  # every waiting prompt took a finished sample's row
    for p, t in zip(prompts, refill):
        (alone,) = generate(lm, [p], SamplingParams(**kw))
        assert t.prompt_ids == p
        assert (t.completion_ids, t.step_map, t.nfe, t.finish_reason) == (alone.completion_ids, alone.step_map, alone.nfe, alone.finish_reason)
        assert t.logprobs == pytest.approx(alone.logprobs, abs=1e-9)
    assert [t.group for t in refill] == list(range(len(prompts)))


def test_refill_admits_waiting_prompts_when_rows_finish(tokenizer):
    # With EOS likely, samples finish at different blocks; max_batch=2 must still decode all 8,
    # and fewer rows at a time than prompts (a refilled row reuses the canvas columns' grid).
    lm = tiny_lm(tokenizer, seed=3)
    eos = lm.eos_id
    head = lm.model.lm_head
    bias = torch.zeros(head.out_features, dtype=head.weight.dtype)
    bias[eos] = 4.0
    lm.model.lm_head = torch.nn.Linear(head.in_features, head.out_features, bias=True, dtype=head.weight.dtype)
    lm.model.lm_head.weight, lm.model.lm_head.bias = head.weight, torch.nn.Parameter(bias)
    prompts = _refill_prompts(tokenizer)
    params = SamplingParams(max_new_tokens=16, temperature=0.0)
    batched = generate(lm, prompts, SamplingParams(max_new_tokens=16, temperature=0.0, max_batch=2))
    assert len({len(t.completion_ids) for t in batched}) > 1  # skewed lengths: rows really finished apart
    for p, t in zip(prompts, batched):
        (alone,) = generate(lm, [p], params)
        assert (t.completion_ids, t.step_map) == (alone.completion_ids, alone.step_map)


def test_converged_demo_pair_dynamic_decoding_matches_ar_accuracy_in_a_third_of_the_forwards():
    """The equal-budget pair behind benchmarks/rollout.py's speedup_vs_ar: greedy, on held-out
    demo math and code, threshold decoding of the 1600-step diffusion model is at least as
    accurate as the 1600-step AR model and takes under a third of its forwards per answer."""
    from rl.cli import _data_benchmarks
    from rl.evaluate import evaluate_benchmark, load_policy

    from .conftest import ROOT

    ckpt = ROOT / "examples" / "checkpoints"
    benches = _data_benchmarks(ROOT / "configs" / "sft_demo.yaml", 150, None)  # the 300 problems the benchmark scores
    diffusion, ar = load_policy(ckpt / "demo-base-1600"), load_policy(ckpt / "demo-ar-1600")

    def run(policy, params):
        ms = [evaluate_benchmark(policy, b, params)[0] for b in benches]
        return sum(m["pass@1"] for m in ms) / len(ms), sum(m["nfe"] for m in ms) / len(ms)

    acc_ar, nfe_ar = run(ar, SamplingParams(temperature=0.0))
    acc, nfe = run(diffusion, SamplingParams(temperature=0.0, strategy="threshold", threshold=0.9))
    assert acc_ar >= 0.85 and acc >= acc_ar, (acc, acc_ar)
    assert nfe < nfe_ar / 3, (nfe, nfe_ar)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cpu_generator_samples_a_model_on_the_gpu(tokenizer):
    # `unmask eval --device cuda --temperature 0.7` and `unmask generate` pass a CPU generator.
    lm = tiny_lm(tokenizer, double=False)
    lm.model.cuda()
    params = SamplingParams(max_new_tokens=8, temperature=1.0)
    a = generate(lm, prompts_of(tokenizer, TEXTS), params, torch.Generator().manual_seed(0))
    b = generate(lm, prompts_of(tokenizer, TEXTS), params, torch.Generator().manual_seed(0))
    assert [t.completion_ids for t in a] == [t.completion_ids for t in b]
