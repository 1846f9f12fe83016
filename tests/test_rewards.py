"""Tests for the rewards package: exact verifiers, math-verify scoring, registry and score()."""

import importlib
import importlib.metadata
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import rewards
import rewards.math as rmath
import rewards.registry as registry
from rewards import (
    arithmetic_format_reward,
    arithmetic_reward,
    boxed_format_reward,
    get_reward,
    math_reward,
    register_reward,
    score,
    solve_arithmetic,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def plugin(monkeypatch):
    """The example plugin module, importable as tests.reward_plugin_example however pytest was started."""
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("tests.reward_plugin_example")


# --- arithmetic ---------------------------------------------------------------


def test_solve_arithmetic():
    assert solve_arithmetic("047+385=") == "0432"
    assert solve_arithmetic("999+001=") == "1000"
    assert solve_arithmetic("0+0=") == "00"
    assert solve_arithmetic("Add.\n12+34=") == "046"  # instructions before the problem
    assert solve_arithmetic("47+385=") is None  # operands of different widths
    assert solve_arithmetic("047-385=") is None
    assert solve_arithmetic("") is None


def test_arithmetic_reward_from_prompt():
    prompts = ["047+385="] * 5 + ["not a problem"]
    completions = ["0432", " 0432\n", "432", "0433", "", "0432"]
    assert arithmetic_reward(prompts, completions) == [1.0, 1.0, 0.0, 0.0, 0.0, None]


def test_arithmetic_reward_answer_column_wins_and_falls_back():
    prompts = ["047+385=", "047+385=", "garbage"]
    # The column is the ground truth even where it disagrees with the prompt;
    # a None entry falls back to solving the prompt.
    assert arithmetic_reward(prompts, ["0432", "0432", "7"], answer=["0999", None, "7"]) == [0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="answer"):
        arithmetic_reward(prompts, ["1", "2", "3"], answer=["1"])


def test_arithmetic_reward_conversational():
    prompts = [[{"role": "user", "content": "047+385="}]]
    completions = [[{"role": "assistant", "content": "0432"}]]
    assert arithmetic_reward(prompts, completions) == [1.0]


def test_arithmetic_format_reward():
    prompts = ["047+385="] * 5 + ["??", "??"]
    completions = ["9999", " 0000 ", "432", "04a2", "04321", "123", "123"]
    answer = [None] * 5 + ["456", None]
    assert arithmetic_format_reward(prompts, completions, answer=answer) == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0, None]


# --- countdown and sudoku -------------------------------------------------------


def test_countdown_reward():
    from rewards import countdown_reward

    prompt = "Using the numbers [19, 36, 55, 7], create an equation that equals 65."
    completions = [
        "<think>try things</think><answer>55 + 36 - 19 - 7</answer>",  # 65, every number once
        "<answer>55 + 36 - 19 - 7 = 65</answer>",  # a trailing "= target" is fine
        "<answer>55 + 7 + 3</answer>",  # 3 is not given, 19 and 36 unused
        "<answer>55 + 36 - 19 - 7 + 0</answer>",  # an extra number
        "<answer>__import__('os').system('true')</answer>",  # not arithmetic: never evaluated
        "<answer>(55 - 36) / (7 - 7) + 19</answer>",  # division by zero
        "55 + 36 - 19 - 7",  # no tags: the last line
    ]
    assert countdown_reward([prompt] * 7, completions) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    # Columns win over the prompt; no problem at all gives None.
    assert countdown_reward(["x", "x"], ["<answer>2 * 3</answer>"] * 2, nums=[[2, 3], None], target=[6, None]) == [1.0, None]
    # Exact rational arithmetic: 1/3 * 3 is 1, not 0.999...
    assert countdown_reward(["x"], ["<answer>1 / 3 * 3</answer>"], nums=[[1, 3, 3]], target=[1]) == [1.0]


def test_sudoku_reward():
    from rewards import sudoku_reward

    puzzle = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
    solution = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"
    broken = solution[:-2] + "97"  # the last row no longer holds every digit once
    givens_changed = "634578912" + solution[9:]  # a valid-looking first row that overwrites a given
    grid = "\n".join(" ".join(solution[r * 9 : (r + 1) * 9]) for r in range(9))
    completions = [f"Answer:\n{grid}", solution, broken, givens_changed, "no idea"]
    assert sudoku_reward(["Solve it."] * 5, completions, puzzle=[puzzle] * 5) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert sudoku_reward([f"Solve: {puzzle}"], [solution]) == [1.0]  # puzzle read from the prompt
    assert sudoku_reward(["no puzzle"], [solution]) == [None]


# --- math ---------------------------------------------------------------------

# What math-verify 0.9.0 actually returns for each (completion, ground truth).
MATH_CASES = [
    (r"The answer is \boxed{\frac{1}{2}}", "0.5", 1.0),
    (r"\boxed{0.5}", r"\frac{1}{2}", 1.0),
    (r"\boxed{50\%}", "0.5", 1.0),
    (r"\boxed{50\%}", "50%", 1.0),
    (r"\boxed{50\%}", r"50\%", 1.0),  # bare "50\%" parses as 50 unless wrapped; we wrap it
    (r"\boxed{0.5}", r"$50\%$", 1.0),
    (r"\boxed{\{1,2\}}", r"\{2,1\}", 1.0),
    (r"\boxed{\{1,2\}}", r"\{1,3\}", 0.0),
    (r"\boxed{[0,1)}", "[0,1)", 1.0),
    (r"\boxed{[0,1)}", "[0,1]", 0.0),
    (r"\boxed{3}", "4", 0.0),
    (r"\boxed{3}", r"\boxed{3}", 1.0),
    (r"\boxed{x=2}", "2", 1.0),
    (r"\boxed{1000}", "1,000", 1.0),
    (r"\boxed{\frac{\sqrt{2}}{2}}", r"$\sqrt{2}/2$", 1.0),
    (r"first \boxed{4} then \boxed{3}", "4", 0.0),  # only the last box counts
    (r"\boxed{\frac{1}{\boxed{2}}}", "2", 1.0),  # the last box is the inner one
    ("4", "4", 0.0),  # no box, no answer
    (r"\boxed{}", "4", 0.0),
    (r"\boxed{4", "4", 0.0),  # cut off before the box closed
]


def test_math_reward_cases():
    completions = [c for c, _, _ in MATH_CASES]
    answers = [g for _, g, _ in MATH_CASES]
    expected = [r for _, _, r in MATH_CASES]
    got = math_reward(["q"] * len(completions), completions, answer=answers)
    assert list(zip(completions, answers, got)) == list(zip(completions, answers, expected))


def test_math_reward_ground_truth_columns():
    completions = [r"\boxed{5}"] * 4
    answer = ["5", None, "", None]
    solution = [None, r"We find $x=5$, so \boxed{5}.", "6", None]
    # answer wins; an empty answer falls back to solution; no ground truth at all gives None.
    assert math_reward(["q"] * 4, completions, answer=answer, solution=solution) == [1.0, 1.0, 0.0, None]
    assert math_reward(["q"], [r"\boxed{5}"]) == [None]


def test_boxed_format_reward():
    completions = [r"\boxed{2}", r"x \boxed{\{1\}}", r"\boxed{ }", "2", r"\boxed{2"]
    assert boxed_format_reward(["q"] * 5, completions) == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_last_boxed_braces():
    assert rmath.last_boxed(r"\boxed{\frac{a}{b}} tail") == r"\frac{a}{b}"
    assert rmath.last_boxed(r"\boxed {\left\{ 1 \right\}}") == r"\left\{ 1 \right\}"
    assert rmath.last_boxed(r"\boxed{\}}") == r"\}"
    assert rmath.last_boxed("none") is None


@pytest.mark.parametrize("num_workers", [None, 0])
def test_math_reward_from_thread(num_workers):
    # math-verify's own signal.alarm timeouts would raise outside the main thread.
    out, errors = [], []

    def run():
        try:
            out.append(
                math_reward(["q"] * 2, [r"\boxed{\frac{1}{2}}", r"\boxed{3}"], answer=["0.5", "4"], num_workers=num_workers)
            )
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert not errors and out == [[1.0, 0.0]]


def test_math_timeout_kills_only_the_slow_sample(plugin, monkeypatch, caplog):
    import os

    import rewards._pool as rpool

    rmath.shutdown_workers()  # fresh workers see the sys.path that imports the plugin
    monkeypatch.setattr(rmath, "_CHECK", plugin.slow_check)
    math_reward(["q"], [r"\boxed{3}"], answer=["3"], num_workers=1)  # warm up one worker
    (slow_pid,) = [w.proc.pid for w in rpool.pool().idle]
    # One worker: the three checks queued behind the hung one each get their own limit, counted
    # from when a worker picks them up (the replacement worker's start-up and load do not count).
    completions = [r"\boxed{slow}", r"\boxed{3}", r"\boxed{4}", r"\boxed{5}"]
    with caplog.at_level("WARNING", logger="rewards.math"):
        got = math_reward(["q"] * 4, completions, answer=["slow", "3", "3", "5"], timeout_s=0.5, num_workers=1)
    # The hung check would be right if it finished; a timeout still scores 0.0.
    assert got == [0.0, 1.0, 0.0, 1.0]
    timeouts = [r.getMessage() for r in caplog.records if "ran past" in r.getMessage()]
    assert timeouts == ["math-verify check of sample 0 ran past 0.5s; scoring it 0.0"]  # that one alone
    # The worker running the hung check was killed (and reaped), and replaced by a new one.
    with pytest.raises(ProcessLookupError):
        os.kill(slow_pid, 0)
    (new_pid,) = [w.proc.pid for w in rpool.pool().idle]
    assert new_pid != slow_pid
    # The pool keeps working.
    assert math_reward(["q"], [r"\boxed{3}"], answer=["3"], num_workers=1) == [1.0]


def test_math_check_that_raises_scores_zero(plugin, monkeypatch):
    rmath.shutdown_workers()
    monkeypatch.setattr(rmath, "_CHECK", plugin.raising_check)
    got = math_reward(["q"] * 2, [r"\boxed{boom}", r"\boxed{3}"], answer=["boom", "3"], num_workers=1)
    assert got == [0.0, 1.0]
    assert rmath.verify_answers([("boom", "boom"), ("3", "3")], num_workers=0) == [0.0, 1.0]


# --- registry and score -------------------------------------------------------


def test_get_reward_builtins_and_import_path(plugin):
    assert get_reward("arithmetic") is arithmetic_reward
    assert get_reward("arithmetic_format") is arithmetic_format_reward
    assert get_reward("math") is math_reward
    assert get_reward("boxed_format") is boxed_format_reward
    fn = get_reward("tests.reward_plugin_example:length_reward")
    assert fn is plugin.length_reward
    assert fn(["p", "p"], ["abc", ""]) == [3.0, 0.0]
    with pytest.raises(ValueError, match="no attribute 'missing'"):
        get_reward("tests.reward_plugin_example:missing")
    with pytest.raises(ImportError, match="no_such_module_xyz"):
        get_reward("no_such_module_xyz:fn")


def test_get_reward_entry_point(plugin, monkeypatch):
    ep = importlib.metadata.EntryPoint(
        name="toy_length", value="tests.reward_plugin_example:length_reward", group="unmask.rewards"
    )
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep] if group == "unmask.rewards" else [])
    assert get_reward("toy_length") is plugin.length_reward
    with pytest.raises(ValueError, match="toy_length"):  # listed among what is available
        get_reward("nope")


def test_unknown_reward_suggests_closest():
    with pytest.raises(ValueError) as info:
        get_reward("arithmetc")
    message = str(info.value)
    assert "did you mean 'arithmetic'" in message
    for name in ("arithmetic", "arithmetic_format", "math", "boxed_format"):
        assert name in message
    with pytest.raises(ValueError, match="with a colon"):
        get_reward("tests.reward_plugin_example.length_reward")


def test_register_reward_rejects_a_clash():
    def math(prompts, completions, **columns):
        return [0.0] * len(completions)

    with pytest.raises(ValueError, match="already registered"):
        register_reward("math")(math)
    assert get_reward("math") is math_reward


def test_score_weights_and_none_handling():
    prompts = ["047+385=", "047+385=", "junk"]
    completions = ["0432", "0431", "0432"]
    total, per_fn, errors = score(["arithmetic", "arithmetic_format"], [1.0, 0.5], prompts, completions)
    assert per_fn == {"arithmetic": [1.0, 0.0, None], "arithmetic_format": [1.0, 1.0, None]}
    assert total == [1.5, 0.5, None]  # all components None -> None
    assert errors == {}


def test_score_raising_plugin_is_recorded(plugin):
    prompts, completions = ["047+385=", "047+385="], ["0432", "12"]
    total, per_fn, errors = score(
        [plugin.broken_reward, "arithmetic", "arithmetic"], [2.0, 1.0, 1.0], prompts, completions
    )
    assert per_fn["broken_reward"] == [None, None]
    assert errors == {"broken_reward": "RuntimeError: plugin exploded"}
    assert per_fn["arithmetic"] == per_fn["arithmetic#2"] == [1.0, 0.0]
    assert total == [2.0, 0.0]  # the failed component is left out, not counted as 0 * weight


def test_score_fail_fast_names_the_function(plugin):
    with pytest.raises(RuntimeError, match="broken_reward.*plugin exploded"):
        score([plugin.broken_reward], None, ["p"], ["c"], fail_fast=True)


def test_score_wrong_length_names_the_function(plugin):
    spec = "tests.reward_plugin_example:short_reward"
    total, per_fn, errors = score([spec], None, ["p", "p"], ["a", "b"])
    assert total == [None, None]
    assert "short_reward" in errors[spec] and "1 values for 2 completions" in errors[spec]
    with pytest.raises(RuntimeError, match="short_reward"):
        score([spec], None, ["p", "p"], ["a", "b"], fail_fast=True)


def test_score_passes_columns():
    total, _, _ = score(["arithmetic"], [1.0], ["x", "y"], ["12", "13"], columns={"answer": ["12", "99"]})
    assert total == [1.0, 0.0]


def test_package_is_a_leaf():
    code = "import rewards, sys; print(sorted(m for m in ('torch', 'ray', 'transformers', 'sympy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # sympy too: it loads only when a math answer is checked
    assert set(rewards.__all__) == {
        "arithmetic_reward", "arithmetic_format_reward", "math_reward", "boxed_format_reward",
        "code_reward", "extract_code", "sandbox_info", "StepReward", "split_steps",
        "countdown_reward", "sudoku_reward",
        "get_reward", "register_reward", "in_process", "score", "ScoreResult", "SampleFailure",
        "solve_arithmetic",
    }


def test_example_plugin_loads_by_import_path_and_combines_with_weights():
    from rewards import get_reward, score

    fn = get_reward("examples.reward_plugin:digit_match")
    total, per_fn, errors = score(["arithmetic", fn], [1.0, 0.5], ["047+385="] * 2, ["0432", "0431"], {"answer": ["0432", "0432"]})
    assert errors == {} and total == [1.5, 0.375]


def test_a_plugin_in_the_current_directory_imports_from_the_console_script(tmp_path, monkeypatch):
    # The `unmask` console script has its bin directory first on sys.path, not the directory it
    # was started from; `examples.reward_plugin:digit_match` must still resolve from there.
    import sys

    from rewards.registry import get_reward

    (tmp_path / "my_plugins_for_test").mkdir()
    (tmp_path / "my_plugins_for_test" / "__init__.py").write_text("def exact(prompts, completions, **kw):\n    return [float(c == 'ok') for c in completions]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    fn = get_reward("my_plugins_for_test:exact")
    assert fn(["p", "p"], ["ok", "no"]) == [1.0, 0.0]
    with pytest.raises(ImportError, match="no_such_module_here"):
        get_reward("no_such_module_here:f")
