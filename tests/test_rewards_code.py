"""The code reward: extracting the program, assert tests, stdin/stdout and call cases, modes."""

import json

import pytest

from rewards import code_reward, extract_code, get_reward, sandbox_info, score
from rewards.code import outputs_match, run_tests


def fenced(code: str, lang: str = "python") -> str:
    return f"Here is my solution.\n```{lang}\n{code}\n```\nDone."


ADD = "def add(a, b):\n    return a + b"
ADD_WRONG = "def add(a, b):\n    return a - b"


def test_extract_code():
    assert extract_code(fenced("x = 1")) == "x = 1\n"
    two = "```python\nfirst\n```\ntext\n```python\nsecond\n```"
    assert extract_code(two) == "second\n"  # the last python block
    assert extract_code("```bash\nls\n```\n```\nplain\n```") == "plain\n"  # untagged block when no python one
    assert extract_code("```python3\ncut off at the length lim") == "cut off at the length lim"
    assert extract_code("print(1)") == "print(1)"
    assert extract_code("```bash\nls\n```") == "```bash\nls\n```"  # only non-python blocks: whole text


def test_outputs_match():
    assert outputs_match("1 2\n3\n", "1 2\n3")
    assert outputs_match("1 2   \r\n3\n\n\n", "1 2\n3")
    assert outputs_match("1\n2 3", "1 2\n3")  # token by token
    assert outputs_match("0.3333333", "0.333333333")
    assert not outputs_match("0.33", "0.333333333")
    assert not outputs_match("3.0", "3")  # integers compare exactly
    assert not outputs_match("1 2", "1 2 3")
    assert not outputs_match("YES", "yes")


def test_assert_tests_all_and_fraction():
    tests = ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 0"]
    completions = [fenced(ADD), fenced(ADD_WRONG), fenced("def add(a, b):\n    return 0"), "no code at all"]
    prompts = ["q"] * 4
    assert code_reward(prompts, completions, tests=[tests] * 4) == [1.0, 0.0, 0.0, 0.0]
    got = code_reward(prompts, completions, tests=[tests] * 4, mode="fraction")
    assert got == pytest.approx([1.0, 1 / 3, 2 / 3, 0.0])


def test_no_tests_scores_none_and_columns_are_checked():
    assert code_reward(["q"] * 2, [fenced(ADD)] * 2, tests=[None, ["assert add(1, 1) == 2"]]) == [None, 1.0]
    assert code_reward(["q"], [fenced(ADD)]) == [None]
    with pytest.raises(ValueError, match="tests"):
        code_reward(["q"] * 2, [fenced(ADD)] * 2, tests=[["assert True"]])
    with pytest.raises(ValueError, match="mode"):
        code_reward(["q"], [fenced(ADD)], tests=[["assert True"]], mode="most")


def test_stdin_stdout_cases():
    program = "n = int(input())\nprint(sum(map(int, input().split())) * n)"
    cases = {"inputs": ["2\n1 2 3\n", "1\n5\n", "0\n9\n"], "outputs": ["12\n", "5", "0"]}
    assert code_reward(["q"], [fenced(program)], inputs_outputs=[cases]) == [1.0]
    wrong = "n = int(input())\nprint(n)"
    assert code_reward(["q"], [fenced(wrong)], inputs_outputs=[cases], mode="fraction") == [pytest.approx(1 / 3)]
    # Other layouts: a JSON string, a list of dicts, a list of pairs, list-of-lines values.
    as_json = json.dumps(cases)
    as_dicts = [{"input": i, "output": o} for i, o in zip(cases["inputs"], cases["outputs"])]
    as_pairs = [[["2", "1 2 3"], ["12"]], ["1\n5", "5"]]
    got = code_reward(["q"] * 3, [fenced(program)] * 3, inputs_outputs=[as_json, as_dicts, as_pairs])
    assert got == [1.0, 1.0, 1.0]


def test_stdin_program_styles():
    # Competitive-programming idioms: sys.stdin.buffer, open(0), exit() (which -S would otherwise lack).
    cases = [["3 4\n", "7\n"]]
    styles = [
        "import sys\na, b = map(int, sys.stdin.buffer.read().split())\nprint(a + b)",
        "a, b = map(int, open(0).read().split())\nprint(a + b)\nexit()",
        "import sys\ninput = sys.stdin.readline\na, b = map(int, input().split())\nsys.stdout.write(str(a + b) + '\\n')\nsys.exit(0)",
        # Deep recursion needs no thread: the main thread's stack limit is large.
        "import sys\nsys.setrecursionlimit(10 ** 6)\nf = lambda n: n if n < 1 else f(n - 1)\nf(20000)\nprint(sum(map(int, input().split())))",
    ]
    assert code_reward(["q"] * len(styles), [fenced(s) for s in styles], inputs_outputs=[cases] * len(styles)) == [1.0] * len(styles)
    # Threads are refused inside the sandbox (a thread bomb would make host tasks): the threading idiom fails.
    threaded = "import threading\nr = []\nt = threading.Thread(target=lambda: r.append(sum(map(int, input().split()))))\nt.start(); t.join()\nprint(r[0])"
    assert code_reward(["q"], [fenced(threaded)], inputs_outputs=[cases]) == [0.0 if sandbox_info()["threads_blocked"] else 1.0]
    # A crash after printing the right answer, or a non-zero exit, fails the case.
    bad = ["print(7)\nraise SystemExit(2)", "print(7)\n1/0"]
    assert code_reward(["q"] * 2, [fenced(s) for s in bad], inputs_outputs=[cases] * 2) == [0.0, 0.0]


def test_call_cases_with_fn_name_and_solution_class():
    spec = {"fn_name": "twice", "inputs": [[1], [[1, 2]], ["ab"]], "outputs": [[2], [[1, 2, 1, 2]], "abab"]}
    plain = "def twice(x):\n    print('debug output is fine')\n    return x * 2"
    leetcode = "class Solution:\n    def twice(self, x):\n        return x + x"
    wrong = "def twice(x):\n    return x"
    got = code_reward(["q"] * 3, [fenced(plain), fenced(leetcode), fenced(wrong)], inputs_outputs=[spec] * 3, mode="fraction")
    assert got == [1.0, 1.0, 0.0]


def test_humaneval_style_check_with_prefix_and_entry_point():
    prompt = 'def add(a, b):\n    """Add two numbers."""\n'
    body_only = "    return a + b\n"  # the completion continues the prompt
    check = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n"
    got = code_reward(
        ["q"] * 3, [body_only, fenced(ADD), "    return a * b\n"],
        tests=[check] * 3, entry_point=["add"] * 3, prefix=[prompt] * 3,
    )  # fmt: skip
    assert got == [1.0, 1.0, 0.0]


def test_pytest_style_functions_and_candidate_alias():
    tests = "def test_small():\n    assert candidate(1, 1) == 2\n\ndef test_negative():\n    assert add(-2, 1) == -1\n"
    half = "def add(a, b):\n    return abs(a + b)"
    assert code_reward(["q"] * 2, [fenced(ADD), fenced(half)], tests=[tests] * 2, entry_point=["add"] * 2, mode="fraction") == [1.0, 0.5]


def test_prefix_holds_imports_and_a_json_test_list():
    tests = json.dumps(["assert norm([3, 4]) == 5.0"])
    code = "def norm(v):\n    return math.sqrt(sum(x * x for x in v))"
    assert code_reward(["q"], [fenced(code)], tests=[tests], prefix=["import math"]) == [1.0]
    assert code_reward(["q"], [fenced(code)], tests=[tests]) == [0.0]  # no import: NameError


def test_exit_tricks_do_not_pass_tests():
    tests = [["assert f() == 1", "assert f() == 2"]]
    for cheat in [
        "import sys\nsys.exit(0)",  # a test must run to its end
        "import os\nos._exit(0)",  # exiting 0 before the test runs is not passing it
        "def f():\n    import os\n    os._exit(0)",
        "def f():\n    raise SystemExit(0)",
    ]:
        assert code_reward(["q"], [fenced(cheat)], tests=tests, mode="fraction") == [0.0], cheat


def test_each_test_runs_in_a_fresh_process():
    code = "state = []\ndef f():\n    state.append(1)\n    return len(state)"
    tests = [["assert f() == 1", "assert f() == 1", "assert f() == 1"]]
    assert code_reward(["q"], [fenced(code)], tests=tests) == [1.0]


def test_all_mode_stops_at_the_first_failure():
    tests = ["assert False", "import time\ntime.sleep(30)\nassert True"]
    passed, result = run_tests(fenced("x = 1"), tests, stop_on_failure=True)
    assert passed == [False, False]
    assert [u.status for u in result.units] == ["error", "skipped"]
    assert "AssertionError" in result.units[0].error


def test_per_test_timeout_in_fraction_mode():
    tests = ["assert True", "while True: pass", "assert 1 + 1 == 2"]
    got = code_reward(["q"], [fenced("x = 1")], tests=[tests], mode="fraction", timeout_s=10.0, test_timeout_s=0.5)
    assert got == [pytest.approx(2 / 3)]


def test_registered_and_usable_through_score():
    assert get_reward("code") is code_reward
    total, per_fn, errors = score(
        ["code"], None, ["q"] * 2, [fenced(ADD), fenced(ADD_WRONG)], columns={"tests": [["assert add(2, 2) == 4"]] * 2}
    )
    assert total == [1.0, 0.0] and errors == {}


def test_test_parsing_is_safe_from_many_scoring_threads_at_once():
    """code_reward parses each row's tests in its scoring threads; CPython < 3.11.9 kept the AST builder's
    depth in one global (gh-106905) and two parses at once raised SystemError (seen in CI on HumanEval)."""
    import gc
    import threading

    from rewards.code import free_names

    class Finalized:  # a finaliser run by the collector mid-parse is what lets another thread in
        def __del__(self):
            sum(range(50))

    tests = "def check(candidate):\n" + "".join(f"    assert candidate([{i}, [{i}, ({i},)]]) == helper({i})\n" for i in range(200))
    errors: list[BaseException] = []

    def parse_many():
        for _ in range(30):
            cycle = [Finalized() for _ in range(3)]
            cycle.append(cycle)
            try:
                assert free_names(tests + "check(f)\n") == ("f", "helper")
            except BaseException as e:  # noqa: BLE001 - collected and reported below
                errors.append(e)
                return

    thresholds = gc.get_threshold()
    gc.set_threshold(5, 1, 1)
    try:
        threads = [threading.Thread(target=parse_many) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        gc.set_threshold(*thresholds)
    assert not errors, errors[:1]
