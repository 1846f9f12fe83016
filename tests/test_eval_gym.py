"""gym:DATASET benchmarks: reasoning-gym problems scored by reasoning-gym's own scorers (the `gym` extra)."""

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rl.data import BenchmarkError, load_benchmark, parse_benchmark
from rl.cli import app
from rl.evaluate import read_completions, score_completions

DATASETS = ["basic_arithmetic", "countdown", "mini_sudoku", "gsm_symbolic"]


@pytest.fixture(scope="module")
def rg():
    return pytest.importorskip("reasoning_gym")


def _completions(path: Path, bench, answer) -> dict[str, list[str]]:
    """Write {id, completion} rows as `--completions` reads them, and read them back."""
    path.write_text("".join(json.dumps({"id": p["id"], "completion": answer(p)}) + "\n" for p in bench.problems))
    return read_completions(path)


@pytest.mark.parametrize("dataset", DATASETS)
def test_reference_answers_score_one_and_wrong_answers_zero(rg, dataset, tmp_path):
    b = load_benchmark(parse_benchmark(f"gym:{dataset},size=3,seed=1"))
    assert b.label == f"gym:{dataset}" and b.reward == "gym" and len(b.problems) == 3 and b.columns == ("entry",)
    p = b.problems[0]
    assert p["prompt"].startswith(p["entry"]["question"]) and "<answer>" in p["prompt"]
    assert p["entry"]["metadata"]["source_dataset"] == dataset
    cases = {
        "reference": lambda p: f"Let me think.\n<answer>{p['entry']['answer']}</answer>",
        "wrong": lambda p: "<answer>-123456789</answer>",
        "untagged": lambda p: p["entry"]["answer"],  # the answer must be inside the tags
        "empty": lambda p: "",
    }
    scores = {name: score_completions(b, _completions(tmp_path / f"{name}.jsonl", b, fn), score_timeout_s=120)[0] for name, fn in cases.items()}
    assert scores["reference"]["pass@1"] == 1.0 and scores["reference"]["avg@k"] == 1.0
    for name in ("wrong", "untagged", "empty"):
        assert scores[name]["pass@1"] == 0.0 and scores[name]["avg@k"] == 0.0, name


def test_partial_reward_is_reasoning_gyms_graded_score(rg):
    from rewards import get_reward

    b = load_benchmark("gym", "countdown", size=2, seed=1)
    entries = [p["entry"] for p in b.problems]
    wrong = ["<answer>1 + 1</answer>"] * 2  # a well-formed expression with the wrong numbers
    partial = get_reward("gym_partial")([p["prompt"] for p in b.problems], wrong, entry=entries)
    assert all(0.0 < s < 1.0 for s in partial)  # reasoning-gym's small credit for the format
    assert get_reward("gym")([p["prompt"] for p in b.problems], wrong, entry=entries) == [0.0, 0.0]


def test_same_seed_same_problems_and_config_options(rg):
    a = load_benchmark(parse_benchmark("gym:countdown,size=4,seed=7,min_numbers=3,max_numbers=3"))
    again = load_benchmark(parse_benchmark("gym:countdown,seed=7,min_numbers=3,max_numbers=3"), limit=4)  # size defaults to the limit
    assert [p["prompt"] for p in a.problems] == [p["prompt"] for p in again.problems]
    assert all(len(p["entry"]["metadata"]["numbers"]) == 3 for p in a.problems)
    assert a.source.startswith("gym:countdown(max_numbers=3, min_numbers=3, seed=7, size=4; reasoning-gym ")
    other = load_benchmark(parse_benchmark("gym:countdown,size=4,seed=8"))
    assert [p["prompt"] for p in other.problems] != [p["prompt"] for p in a.problems]


def test_gym_errors_are_clear(rg):
    with pytest.raises(BenchmarkError, match=r"no dataset 'countdwn'; did you mean 'countdown'\?"):
        load_benchmark(parse_benchmark("gym:countdwn"))
    with pytest.raises(BenchmarkError, match=r"gym:countdown: .*'bogus'.*its config options: min_numbers"):
        load_benchmark(parse_benchmark("gym:countdown,bogus=1"))
    with pytest.raises(BenchmarkError, match=r"gym:countdown: invalid config"):
        load_benchmark(parse_benchmark("gym:countdown,min_numbers=5,max_numbers=2"))
    with pytest.raises(BenchmarkError, match=r"benchmark 'gym' needs a reasoning-gym dataset: gym:NAME"):
        load_benchmark(parse_benchmark("gym"))


def test_eval_command_scores_gym_completions(rg, tmp_path):
    b = load_benchmark(parse_benchmark("gym:basic_arithmetic,size=4"))
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"id": p["id"], "completion": f"<answer>{p['entry']['answer']}</answer>"}) + "\n" for p in b.problems))
    res = CliRunner().invoke(app, ["eval", "-b", "gym:basic_arithmetic,size=4", "--completions", str(good), "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    entry = json.loads((tmp_path / "out" / "results.json").read_text())["gym:basic_arithmetic"][str(good)]["completions"]
    assert entry["pass@1"] == 1.0 and entry["n"] == 4 and "reasoning-gym" in entry["settings"]["benchmark"]["source"]


def test_missing_reasoning_gym_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # import fails as if not installed
    with pytest.raises(BenchmarkError, match=r"needs reasoning-gym: pip install 'unmask\[gym\]'"):
        load_benchmark(parse_benchmark("gym:countdown,size=2"))
