"""The vLLM engine for AR baselines, against a fake `vllm` module (no GPU here), and engine selection."""

import json
import sys
import types
from dataclasses import dataclass, field

import pytest
import torch
from typer.testing import CliRunner

from rewards import solve_arithmetic
from rl.cli import app
from rl.evaluate import load_policy, resolve_engine
from rollout import build_char_tokenizer
from rollout.autoregressive import ARModel, VLLMModel


@dataclass
class Logprob:  # vllm.logprobs.Logprob
    logprob: float
    rank: int = 1


@dataclass
class CompletionOutput:  # vllm.outputs.CompletionOutput
    index: int
    text: str
    token_ids: list
    cumulative_logprob: float | None
    logprobs: list | None
    finish_reason: str | None = None


@dataclass
class RequestOutput:  # vllm.outputs.RequestOutput
    request_id: str
    prompt_token_ids: list
    outputs: list
    finished: bool = True


@dataclass
class FakeSamplingParams:
    n: int = 1
    temperature: float = 1.0
    max_tokens: int | None = 16
    logprobs: int | None = None
    seed: int | None = None


@dataclass
class FakeLLM:
    """Records how it was built and called; `answer(prompt_ids, params)` scripts each completion."""

    kwargs: dict
    calls: list = field(default_factory=list)
    answer: object = None
    eos_id: int = 1

    def generate(self, prompts, sampling_params, use_tqdm=True):
        self.calls.append((prompts, sampling_params, use_tqdm))
        out = []
        for i, (p, sp) in enumerate(zip(prompts, sampling_params)):
            ids = list(self.answer(p["prompt_token_ids"], sp)) + [self.eos_id]
            finish = "stop" if len(ids) <= sp.max_tokens else "length"
            ids = ids[: sp.max_tokens]
            lps = [{t: Logprob(-0.25 * (k + 1)), 99: Logprob(-9.0, rank=2)} for k, t in enumerate(ids)]
            out.append(RequestOutput(str(i), p["prompt_token_ids"], [CompletionOutput(0, "", ids, sum(x[t].logprob for x, t in zip(lps, ids)), lps, finish)]))
        return out


@pytest.fixture
def fake_vllm(monkeypatch):
    """A `vllm` module with LLM and SamplingParams; `mod.llms` holds every engine built."""
    mod = types.ModuleType("vllm")
    mod.llms = []
    mod.SamplingParams = FakeSamplingParams

    def LLM(**kwargs):
        llm = FakeLLM(kwargs)
        mod.llms.append(llm)
        return llm

    mod.LLM = LLM
    monkeypatch.setitem(sys.modules, "vllm", mod)
    return mod


def test_vllm_model_generate_returns_trajectories(fake_vllm, ar_ckpt):
    m = VLLMModel.load(ar_ckpt, dtype=torch.bfloat16)
    llm = fake_vllm.llms[0]
    assert llm.kwargs["model"] == str(ar_ckpt) and llm.kwargs["dtype"] is torch.bfloat16
    assert llm.kwargs["logprobs_mode"] == "processed_logprobs"  # log-probs of the tempered distribution
    tok = m.tokenizer
    llm.answer = lambda ids, sp: tok(solve_arithmetic(tok.decode(ids)), add_special_tokens=False)["input_ids"]
    prompts = [tok("047+385=")["input_ids"], tok("12+34=")["input_ids"]]
    rows = [{"answer": "0432"}, {"answer": "046"}]
    trajs = m.generate(prompts, max_new_tokens=4, temperature=0.7, generator=torch.Generator().manual_seed(3), columns=rows)

    sent, params, use_tqdm = llm.calls[0]
    assert sent == [{"prompt_token_ids": prompts[0]}, {"prompt_token_ids": prompts[1]}] and use_tqdm is False  # ids in, no re-tokenising
    assert [(p.temperature, p.max_tokens, p.logprobs, p.n) for p in params] == [(0.7, 4, 0, 1)] * 2
    seeds = [p.seed for p in params]
    assert seeds == torch.randint(2**31, (2,), generator=torch.Generator().manual_seed(3)).tolist() and seeds[0] != seeds[1]

    a, b = trajs
    assert a.prompt_ids == prompts[0] and a.completion_ids == tok("0432", add_special_tokens=False)["input_ids"]  # 4 tokens: EOS cut by the budget
    assert a.finish_reason == "length" and a.text == "0432" and a.nfe == 4 and a.step_map == [0, 1, 2, 3] and a.block_size == 1
    assert a.logprobs == [-0.25, -0.5, -0.75, -1.0]  # the sampled tokens' entries, not the other candidates'
    assert b.completion_ids[-1] == m.eos_id and b.finish_reason == "eos" and b.text == "046" and b.nfe == 4
    assert (a.group, b.group, b.columns, a.temperature) == (0, 1, {"answer": "046"}, 0.7)


def test_vllm_model_without_logprobs_mode_and_unknown_finish(fake_vllm, ar_ckpt, monkeypatch):
    def old_llm(**kwargs):  # vLLM < 0.10.2 rejects the argument
        if "logprobs_mode" in kwargs:
            raise TypeError("EngineArgs.__init__() got an unexpected keyword argument 'logprobs_mode'")
        return FakeLLM(kwargs)

    monkeypatch.setattr(fake_vllm, "LLM", old_llm)
    m = VLLMModel.load(ar_ckpt)
    m.llm.answer = lambda ids, sp: [5]
    assert m.generate([[3, 4]], 8)[0].completion_ids == [5, m.eos_id]
    m.llm.generate = lambda prompts, params, use_tqdm: [RequestOutput("0", [3], [CompletionOutput(0, "", [5], None, [{5: Logprob(-1.0)}], "abort")])]
    with pytest.raises(RuntimeError, match="finish_reason='abort'"):
        m.generate([[3]], 8)


def test_engine_selection(fake_vllm, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_engine("auto") == "hf" and resolve_engine("hf") == "hf"  # vllm installed, no GPU
    with pytest.raises(ValueError, match="engine vllm needs a CUDA GPU"):
        resolve_engine("vllm")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_engine("auto") == "vllm" and resolve_engine("vllm", "cuda:0") == "vllm"
    assert resolve_engine("auto", "cpu") == "hf"  # --device cpu keeps the CPU engine
    with pytest.raises(ValueError, match="engine vllm needs a CUDA GPU"):
        resolve_engine("vllm", "cpu")
    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed
    assert resolve_engine("auto") == "hf"
    with pytest.raises(ValueError, match=r"engine vllm: .*pip install 'unmask\[gpu\]'"):
        resolve_engine("vllm")
    with pytest.raises(ValueError, match="unknown engine 'tgi'"):
        resolve_engine("tgi")


def test_load_policy_picks_the_engine(fake_vllm, ar_ckpt, monkeypatch):
    assert isinstance(load_policy(ar_ckpt), ARModel)  # the default stays transformers (training code calls this)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert isinstance(load_policy(ar_ckpt, engine="vllm"), VLLMModel) and isinstance(load_policy(ar_ckpt, engine="auto"), VLLMModel)
    assert isinstance(load_policy(ar_ckpt, engine="hf"), ARModel)


def test_eval_command_records_the_engine(fake_vllm, ar_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    tok = build_char_tokenizer()

    def LLM(**kwargs):  # an engine that solves the task: the whole path (ids -> vLLM -> text -> reward) is wired
        llm = FakeLLM(kwargs, answer=lambda ids, sp: tok(solve_arithmetic(tok.decode(ids)), add_special_tokens=False)["input_ids"])
        fake_vllm.llms.append(llm)
        return llm

    monkeypatch.setattr(fake_vllm, "LLM", LLM)
    out = tmp_path / "out"
    runner = CliRunner()
    res = runner.invoke(app, ["eval", str(ar_ckpt), "--limit", "6", "--engine", "vllm", "-o", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    entry = json.loads((out / "results.json").read_text())["arithmetic"][str(ar_ckpt)]["autoregressive"]
    assert entry["settings"]["decoding"]["engine"] == "vllm" and entry["kind"] == "autoregressive"
    assert entry["pass@1"] == 1.0 and entry["nfe"] == 5.0 and entry["truncated"] == 0.0  # 4 answer digits + EOS
    res = runner.invoke(app, ["eval", str(ar_ckpt), "--limit", "2", "--engine", "hf", "--device", "cpu", "-o", str(tmp_path / "hf")])
    assert res.exit_code == 0, res.output
    hf = json.loads((tmp_path / "hf" / "results.json").read_text())["arithmetic"][str(ar_ckpt)]["autoregressive"]
    assert hf["settings"]["decoding"]["engine"] == "hf"
    monkeypatch.setitem(sys.modules, "vllm", None)
    res = runner.invoke(app, ["eval", str(ar_ckpt), "--limit", "2", "--engine", "vllm"])
    assert res.exit_code == 2 and "engine vllm" in res.output and "pip install 'unmask[gpu]'" in res.output
    res = runner.invoke(app, ["eval", str(ar_ckpt), "--engine", "tgi"])
    assert res.exit_code == 2 and "--engine auto|hf|vllm" in res.output
