"""Code rewards: run the completion's Python program against tests in the sandbox.

Columns (the dataset's fields; each one entry per completion, None where absent):

- ``tests``: assert-style tests. Either a list of snippets, each one test
  (MBPP ``test_list``: ``["assert f(1) == 2", ...]``), or one string of test code:
  if it defines ``check`` and ``entry_point`` is given, the single test is
  ``check(<entry_point>)`` (HumanEval); if it defines ``test_*`` functions, each
  is a test (pytest style); otherwise the whole string is one test. A JSON string
  holding a list is read as the list.
- ``inputs_outputs``: stdin/stdout cases. ``{"inputs": [...], "outputs": [...]}``
  (APPS/TACO; may be a JSON string; with ``"fn_name"`` the cases are calls
  instead: each input is the argument list, the output the return value, and a
  LeetCode-style ``class Solution`` method is found too), a list of
  ``{"input": ..., "output": ...}`` dicts, or a list of ``(input, output)`` pairs.
  Outputs match when equal line by line ignoring trailing whitespace, or token by
  token with a 1e-6 tolerance where the expected token is a non-integer number.
- ``entry_point``: the function under test; tests may call it ``candidate``.
- ``prefix``: code placed before the solution (imports, setup code, or a
  HumanEval prompt whose body the completion continues).

The program is the last fenced ```python block of the completion (else the last
untagged fenced block, else the whole text). Each test runs in fresh processes
forked inside one sandbox per sample (see rewards/sandbox/). With the default
``judge="isolated"``, assert tests run in a judge process with the prefix, and the
names they take from the solution are proxies that call the program's process,
which runs the prefix and the solution and only answers those calls in plain data:
no program can forge a pass (README, "A wrong program cannot forge a pass").
``judge="in_process"`` appends the tests to the program instead (tests that pass
objects to the solution need it; a hostile program can forge those). stdin/stdout
and ``fn_name`` cases are judged here, in the trainer, on what the program printed.
The reward is 1.0 if every test passes and 0.0 otherwise (``mode="all"``, which stops at the first failure), or the fraction passed
(``mode="fraction"``); None when the sample has no tests.
"""

from __future__ import annotations

import ast
import builtins
import json
import logging
import math
import os
import re
import secrets
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from . import sandbox
from ._text import as_text, column, parse_python
from .base import in_process, register_reward, uses_sandbox

logger = logging.getLogger(__name__)

_FENCE_LANG = re.compile(r"[ \t]*([A-Za-z0-9_+.-]*)")
_PYTHON_TAGS = {"python", "py", "python3", "py3"}


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(tag, body) of each fenced block, in order: a ``` fence, a tag, the rest of that line, then the
    body up to the next ``` or the end of the text. One pass of ``str.find`` (linear: a regex search
    retried at every backtick of a long run was quadratic in it)."""
    blocks = []
    pos = 0
    while True:
        start = text.find("```", pos)
        if start < 0:
            break
        nl = text.find("\n", start + 3)
        if nl < 0:
            break
        lang = _FENCE_LANG.match(text, start + 3, nl).group(1).lower()
        end = text.find("```", nl + 1)
        if end < 0:
            blocks.append((lang, text[nl + 1 :]))
            break
        blocks.append((lang, text[nl + 1 : end]))
        pos = end + 3
    return blocks


def extract_code(text: str) -> str:
    """Return the program in a completion.

    The last fenced block tagged python (``python``, ``py``, ``python3``); else the
    last untagged fenced block; else the whole text. An unclosed final fence (a
    completion cut off at the length limit) runs to the end of the text.

    >>> extract_code("Try:\\n```python\\nprint(1)\\n```\\nor\\n```py\\nprint(2)\\n```")
    'print(2)\\n'
    >>> extract_code("x = 1")
    'x = 1'
    """
    blocks = _fenced_blocks(text)
    for lang, body in reversed(blocks):
        if lang in _PYTHON_TAGS:
            return body
    for lang, body in reversed(blocks):
        if not lang:
            return body
    return text


def _is_int_token(token: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", token) is not None


def outputs_match(actual: str, expected: str, rel_tol: float = 1e-6) -> bool:
    """Whether a program's stdout matches the expected output.

    Equal line by line after trailing whitespace and blank lines at the end are
    dropped; or equal token by token, where a token expected to be a non-integer
    number may differ by ``rel_tol`` (relative or absolute).

    >>> outputs_match("3 \\n4\\n\\n", "3\\n4"), outputs_match("0.3333333", "0.333333333"), outputs_match("3.0", "3")
    (True, True, False)
    """

    def lines(s: str) -> list[str]:
        out = [line.rstrip() for line in s.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
        while out and not out[-1]:
            out.pop()
        return out

    if lines(actual) == lines(expected):
        return True
    got, want = actual.split(), expected.split()
    if len(got) != len(want):
        return False
    for g, w in zip(got, want):
        if g == w:
            continue
        if _is_int_token(w):
            return False
        try:
            fg, fw = float(g), float(w)
        except ValueError:
            return False
        if not math.isclose(fg, fw, rel_tol=rel_tol, abs_tol=rel_tol):
            return False
    return True


def _values_match(got: Any, want: Any, rel_tol: float = 1e-6) -> bool:
    """Whether a call's result ``got`` (decoded from JSON) equals the expected ``want``.

    Integers compare exactly (a float result passes only when exactly equal: 5.0 for 5, never
    1000000000.0 for 1000000007); a relative/absolute tolerance of ``rel_tol`` applies only
    where the expected value is a float; bools match only bools; lists (and tuples) and dicts
    element by element; anything else by ==.
    """
    if isinstance(got, tuple):
        got = list(got)
    if isinstance(want, tuple):
        want = list(want)
    if isinstance(got, bool) or isinstance(want, bool):
        return type(got) is type(want) and got == want
    if type(want) is int:
        return type(got) in (int, float) and got == want  # int == float is exact in Python
    if type(want) is float:
        if type(got) not in (int, float):
            return False
        if got == want:
            return True
        try:
            return math.isclose(float(got), want, rel_tol=rel_tol, abs_tol=rel_tol)
        except OverflowError:  # an int too large for a float is not close to any float
            return False
    if isinstance(got, list) and isinstance(want, list):
        return len(got) == len(want) and all(_values_match(g, w, rel_tol) for g, w in zip(got, want))
    if isinstance(got, dict) and isinstance(want, dict):
        return got.keys() == want.keys() and all(_values_match(got[k], want[k], rel_tol) for k in got)
    try:
        return bool(got == want)
    except Exception:
        return False


# Why trusted-side judging of a sample's output failed, counted over this process's life (each such
# sample scores 0): see judge_failures().
_JUDGE_FAILURES: Counter = Counter()
_JUDGE_FAILURES_LOCK = threading.Lock()


def _count_failure(reason: str) -> None:
    with _JUDGE_FAILURES_LOCK:
        _JUDGE_FAILURES[reason] += 1


def judge_failures() -> dict[str, int]:
    """How often judging a program's output failed on the trusted side, by reason (the sample scored 0):
    ``result_missing`` (no result line), ``result_too_large`` (past the case's cap), ``result_unparsable``
    (not JSON, nested too deeply, an int with too many digits), ``compare_failed`` (the comparison raised)."""
    with _JUDGE_FAILURES_LOCK:
        return dict(_JUDGE_FAILURES)


# --- turning columns into tests ----------------------------------------------------------


@dataclass
class _Case:
    """One test of a sample: the program to run and how to judge its result."""

    program: sandbox.Program
    expected: str | None = None  # stdout cases
    call_expected: Any = None  # call cases (fn_name)
    mark: str | None = None  # call cases: the result follows the last mark
    result_cap: int = 0  # call cases: the most characters of result parsed here


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


JUDGES = ("isolated", "in_process")


def free_names(code: str) -> tuple[str, ...]:
    r"""Names ``code`` reads but never binds and the builtins do not define: what the tests take from the program.

    >>> free_names("def check(candidate):\n    assert candidate(1) == helper(2)\ncheck(f)\n")
    ('f', 'helper')
    """
    try:
        tree = parse_python(code)
    except SyntaxError:
        return ()
    loaded, bound = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return tuple(sorted(loaded - bound - set(dir(builtins))))


def _test_program(prefix: str, solution: str, entry_point: str | None, test: str, judge: str) -> sandbox.Program:
    """One test. Isolated (the default): the program's process runs prefix + solution and only answers calls;
    the test itself runs in the judge process. In process: the test is appended to the program (weaker)."""
    head = "\n".join(p for p in (prefix, solution) if p) + "\n"
    if judge == "in_process":
        alias = f"candidate = {entry_point}\n" if entry_point else ""
        return sandbox.Program(head + alias + test + "\n", kind="test")
    aliases = {"candidate": entry_point, entry_point: entry_point} if entry_point else {}
    return sandbox.Program(head, kind="test", judge=sandbox.Judge(test + "\n", prefix=prefix, names=free_names(test), aliases=aliases))


def _test_cases(tests: Any, solution: str, prefix: str, entry_point: str | None, judge: str = "isolated") -> list[_Case]:
    tests = _maybe_json(tests)
    if not isinstance(tests, (str, bytes, dict)) and hasattr(tests, "__iter__"):
        tests = list(tests)  # a numpy array or other sequence from a dataset
    if isinstance(tests, (list, tuple)):
        return [_Case(_test_program(prefix, solution, entry_point, str(t), judge)) for t in tests if str(t).strip()]
    if not isinstance(tests, str):
        raise TypeError(f"'tests' must be a string or a list of strings, got {type(tests).__name__}")
    if not tests.strip():
        return []
    names: list[str] = []
    try:
        tree = parse_python(tests)
        names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    except SyntaxError:
        pass
    body = tests + "\n"
    if entry_point and "check" in names:
        return [_Case(_test_program(prefix, solution, entry_point, body + f"check({entry_point})", judge))]
    test_fns = [n for n in names if n.startswith("test")]
    if test_fns:
        return [_Case(_test_program(prefix, solution, entry_point, body + f"{n}()", judge)) for n in test_fns]
    return [_Case(_test_program(prefix, solution, entry_point, tests, judge))]


def _text_of(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "\n".join(str(v) for v in value)
    return "" if value is None else str(value)


def _io_cases(spec: Any, solution: str, prefix: str) -> list[_Case]:
    spec = _maybe_json(spec)
    if not isinstance(spec, (str, bytes, dict)) and hasattr(spec, "__iter__"):
        spec = list(spec)
    program = "\n".join(p for p in (prefix, solution) if p) + "\n"
    fn_name = None
    if isinstance(spec, dict):
        inputs, outputs = spec.get("inputs") or [], spec.get("outputs") or []
        fn_name = spec.get("fn_name")
        if len(inputs) != len(outputs):
            raise ValueError(f"'inputs_outputs' has {len(inputs)} inputs and {len(outputs)} outputs")
        pairs = list(zip(inputs, outputs))
    elif isinstance(spec, (list, tuple)):
        pairs = []
        for case in spec:
            if isinstance(case, dict):
                pairs.append((case.get("input", ""), case.get("output", "")))
            elif isinstance(case, (list, tuple)) and len(case) == 2:
                pairs.append((case[0], case[1]))
            else:
                raise TypeError(f"cannot read stdin/stdout case {case!r}; expected {{'input', 'output'}} or a pair")
    else:
        raise TypeError(f"'inputs_outputs' must be a dict or a list, got {type(spec).__name__}")
    cases = []
    for given, want in pairs:
        if fn_name:
            args = given if isinstance(given, list) else [given]
            mark = "@@unmask-result-" + secrets.token_hex(8) + "@@"
            # The result comes back as JSON (what the expected values are written in): parsed here in
            # linear time and bounded memory, with no sets or non-str keys to hash (see _judge).
            driver = (
                f"__unmask_fn = globals().get({fn_name!r})\n"
                f"if __unmask_fn is None and 'Solution' in globals():\n"
                f"    __unmask_fn = getattr(Solution(), {fn_name!r})\n"
                f"__unmask_result = __unmask_fn(*{args!r})\n"
                f"import sys as __unmask_sys, json as __unmask_json\n"
                f"__unmask_sys.stdout.write('\\n' + {mark!r} + __unmask_json.dumps(__unmask_result) + '\\n')\n"
            )
            prog = sandbox.Program(program + driver, kind="io", stdout="capture")
            try:
                cap = 2 * len(json.dumps(want)) + 4096
            except (TypeError, ValueError):
                cap = 4096
            cases.append(_Case(prog, call_expected=want, mark=mark, result_cap=cap))
        else:
            want = _text_of(want)
            # Enough room for the expected output with generous whitespace differences.
            limit = 2 * len(want.encode("utf-8", "surrogateescape")) + 4096
            prog = sandbox.Program(program, stdin=_text_of(given), kind="io", stdout="capture", output_limit=limit)
            cases.append(_Case(prog, expected=want))
    return cases


def _judge(case: _Case, unit: sandbox.UnitResult) -> bool:
    if not unit.passed:
        return False
    if case.expected is not None:
        return outputs_match(unit.output.decode("utf-8", "replace"), case.expected)
    if case.mark is not None:
        # Untrusted text, parsed in the trainer: bounded in size (the case's cap, from the expected
        # value) before anything is built, then JSON (linear time, no hashing of program-chosen keys
        # but strings, whose hashes are salted; ints past 4300 digits refused); any failure is this
        # sample's 0, counted by reason.
        text = unit.output.decode("utf-8", "replace")
        pos = text.rfind(case.mark)
        if pos < 0:
            _count_failure("result_missing")
            return False
        raw = text[pos + len(case.mark) :].strip()
        if len(raw) > case.result_cap:
            _count_failure("result_too_large")
            return False
        try:
            got = json.loads(raw)
        except (ValueError, RecursionError, MemoryError):
            _count_failure("result_unparsable")
            return False
        want = case.call_expected
        try:
            return _values_match(got, want) or (isinstance(want, list) and len(want) == 1 and _values_match(got, want[0]))
        except (RecursionError, MemoryError, ValueError, TypeError, OverflowError):
            _count_failure("compare_failed")
            return False
    return True


def run_tests(
    completion: str,
    tests: Any = None,
    inputs_outputs: Any = None,
    entry_point: str | None = None,
    prefix: str | None = None,
    *,
    stop_on_failure: bool = False,
    limits: sandbox.Limits | None = None,
    backend: str | None = None,
    judge: str = "isolated",
) -> tuple[list[bool], sandbox.SandboxResult | None]:
    """Run one completion's tests in one sandbox; returns (pass/fail per test, the sandbox result).

    Tests that were skipped (``stop_on_failure``, or the sample ran out of time)
    count as failed. No tests at all gives ``([], None)``.
    """
    solution = extract_code(as_text(completion))
    cases: list[_Case] = []
    if tests is not None:
        cases += _test_cases(tests, solution, prefix or "", entry_point, judge)
    if inputs_outputs is not None:
        cases += _io_cases(inputs_outputs, solution, prefix or "")
    if not cases:
        return [], None
    if not solution.strip():
        return [False] * len(cases), None
    result = sandbox.run_programs(
        [c.program for c in cases], limits=limits, stop_on_failure=stop_on_failure, backend=backend
    )
    return [_judge(c, u) for c, u in zip(cases, result.units)], result


def default_num_workers() -> int:
    """Sandboxes run at once when the caller does not say: one per core."""
    return max(1, os.cpu_count() or 1)


@register_reward("code")
@in_process
@uses_sandbox
def code_reward(
    prompts: list,
    completions: list,
    tests: Sequence | None = None,
    inputs_outputs: Sequence | None = None,
    entry_point: Sequence | None = None,
    prefix: Sequence | None = None,
    *,
    mode: str = "all",
    timeout_s: float = 10.0,
    test_timeout_s: float | None = None,
    memory_mb: int = 1024,
    num_workers: int | None = None,
    backend: str | None = None,
    judge: str = "isolated",
    **columns: Any,
) -> list[float | None]:
    """Score Python completions by running them against their tests in the sandbox.

    ``mode``: ``"all"`` (1.0 if every test passes, else 0.0) or ``"fraction"``
    (the fraction passed). ``timeout_s`` bounds each sample (all its tests),
    ``test_timeout_s`` each test (default: ``timeout_s``); ``memory_mb`` is the
    address-space limit per test. Samples run in ``num_workers`` sandboxes at once
    (default: one per core). A sample without tests scores None, and so does one
    whose sandbox could not start (logged). ``judge``: ``"isolated"`` (assert tests
    run apart from the program, which cannot forge a pass) or ``"in_process"``
    (appended to the program; for tests that pass objects). ``backend``: the sandbox
    (``"auto"``, ``"bwrap"``, ``"rlimit"``; None: the ``UNMASK_SANDBOX`` environment variable,
    else auto); ``rewards.score(..., sandbox=)`` and the trainer's ``scoring.sandbox`` set it
    where it is not set here. Bind the keyword options with functools.partial to change them.

    >>> code_reward(["q"] * 2, ["```python\\ndef f(x):\\n    return 2 * x\\n```", "def f(x): return x"],
    ...             tests=[["assert f(2) == 4", "assert f(0) == 0"]] * 2)
    [1.0, 0.0]
    """
    if mode not in ("all", "fraction"):
        raise ValueError(f"mode must be 'all' or 'fraction', got {mode!r}")
    if judge not in JUDGES:
        raise ValueError(f"judge must be one of {JUDGES}, got {judge!r}")
    n = len(completions)
    tests_col = column(tests, n, "tests")
    io_col = column(inputs_outputs, n, "inputs_outputs")
    entry_col = column(entry_point, n, "entry_point")
    prefix_col = column(prefix, n, "prefix")
    limits = sandbox.Limits(timeout_s=timeout_s, unit_timeout_s=test_timeout_s, memory_mb=memory_mb)

    def score_one(i: int) -> float | None:
        if tests_col[i] is None and io_col[i] is None:
            return None
        try:
            passed, _ = run_tests(
                completions[i], tests_col[i], io_col[i], entry_col[i], prefix_col[i],
                stop_on_failure=(mode == "all"), limits=limits, backend=backend, judge=judge,
            )  # fmt: skip
        except sandbox.SandboxError as exc:
            logger.warning("code reward: sandbox failed on sample %d: %s", i, exc)
            return None
        if not passed:
            return None
        if mode == "all":
            return 1.0 if all(passed) else 0.0
        return sum(passed) / len(passed)

    workers = min(num_workers or default_num_workers(), max(n, 1))
    if workers <= 1 or n <= 1:
        return [score_one(i) for i in range(n)]
    # Threads, not processes: each sample's work happens in its sandbox process, and a
    # thread only waits on its pipes (without the GIL).
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="code-reward") as pool:
        return list(pool.map(score_one, range(n)))
