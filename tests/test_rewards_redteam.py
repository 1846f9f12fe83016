"""Red team, round 2 (issue 29): hostile completions against every path from a completion to a verdict.

Each hostile program is wrong and scores 0 on both backends (bubblewrap and the rlimit fallback),
and a correct sample scored right after it, in the same batch on one worker (so on the same warm
sandbox where that one survived), scores 1.0. The classes: exceptions named by the program crossing
into the tests' control flow; float tolerance on integer answers; trusted-side parsing of what the
program printed; samples that make the code reward raise in a ``score`` batch; a sample carrying
something to the next one through its work directory; metadata changes to host files and /dev nodes.
"""

import functools
import json
import os
import tracemalloc

import pytest

import rewards.code as rcode
from rewards import code_reward, extract_code, sandbox_info, score
from rewards import sandbox as sb
from rewards.code import judge_failures, run_tests

from .test_rewards_sandbox import backend  # noqa: F401 - the parametrised backend fixture

DOUBLE = "def f(x):\n    return 2 * x"


def fenced(program):
    return f"```python\n{program}\n```"


def then_correct(backend, hostile, correct=DOUBLE, raw=False, **cols):  # noqa: F811
    """Score [hostile, correct] in one batch on one worker; returns the two scores."""
    wrap = (lambda p: p) if raw else fenced
    opts = {k: cols.pop(k) for k in ("timeout_s", "mode") if k in cols}
    got = code_reward(["q"] * 2, [wrap(hostile), wrap(correct)], backend=backend, num_workers=1,
                      **{k: [v] * 2 for k, v in cols.items()}, **opts)  # fmt: skip
    return got


# --- a. an exception the program names never crosses into the tests as itself ---------------------

STOP = "def f(x):\n    raise StopIteration"
# Tests whose control flow a StopIteration (or another exception the tests catch) would end early: each
# passed for the program above, or for one raising ValueError, when the judge re-raised what was named.
EARLY_END = {
    "all_map": (STOP, ["assert all(map(lambda x: f(x) == 2 * x, [1, 2, 3]))"]),
    "not_any_map": (STOP, ["assert not any(map(lambda x: f(x) != 2 * x, [1, 2, 3]))"]),
    "next_filter": (STOP, ["assert next(filter(lambda x: f(x) != 2 * x, [1, 2, 3]), None) is None"]),
    "zip_map": (STOP, ["assert all(a == b for a, b in zip(map(f, [1, 2, 3]), [2, 4, 6]))"]),
    "own_class_named_stopiteration": (
        "class StopIteration(Exception):\n    pass\n\ndef f(x):\n    raise StopIteration",
        ["assert all(map(lambda x: f(x) == 2 * x, [1, 2, 3]))"],
    ),
    "caught_by_the_test": (
        "def f(x):\n    raise ValueError('no')",
        ["try:\n    r = f(2)\nexcept Exception:\n    r = 4\nassert r == 4"],
    ),
    "caught_as_base_exception": (
        "def f(x):\n    raise ValueError('no')",
        ["try:\n    r = f(2)\nexcept BaseException:\n    r = 4\nassert r == 4"],
    ),
    "base_exception": ("def f(x):\n    raise GeneratorExit", ["assert all(map(lambda x: f(x) == 2 * x, [1, 2, 3]))"]),
}


@pytest.mark.parametrize("name", list(EARLY_END))
def test_an_exception_from_the_program_fails_the_test(backend, name):  # noqa: F811
    program, tests = EARLY_END[name]
    assert then_correct(backend, program, tests=tests) == [0.0, 1.0]
    passed, result = run_tests(fenced(program), tests, backend=backend)
    assert passed == [False] and "ProgramError: f() raised" in result.units[0].error


def test_humaneval_form_stop_iteration(backend):  # noqa: F811
    # The prompt is the prefix, the completion its body, and the test is check(candidate).
    prefix = 'def f(x):\n    """Return twice x."""\n'
    tests = "def check(candidate):\n    assert all(map(lambda x: candidate(x) == 2 * x, [1, 2, 3]))\n"
    got = then_correct(backend, "    raise StopIteration\n", "    return 2 * x\n", raw=True, tests=tests, entry_point="f",
                       prefix=prefix)  # fmt: skip
    assert got == [0.0, 1.0]


# --- b. integers compare exactly; a tolerance only where the expected value is a float --------------


def call_case(want, args=(1,)):
    return {"fn_name": "f", "inputs": [list(args)], "outputs": [want]}


@pytest.mark.parametrize(
    "want,hostile,correct",
    [
        (1000000007, "def f(x):\n    return 1000000000.0", "def f(x):\n    return 1000000007"),
        (10**18 + 1, "def f(x):\n    return float(10 ** 18)", "def f(x):\n    return 10 ** 18 + 1"),
        (1, "def f(x):\n    return True", "def f(x):\n    return 1"),
        (2.5, "def f(x):\n    return 3", "def f(x):\n    return 2.5000000001"),  # float: within 1e-6 passes
        ([3, 4], "def f(x):\n    return [3.0000001, 4]", "def f(x):\n    return (3, 4)"),
    ],
)
def test_call_results_compare_integers_exactly(backend, want, hostile, correct):  # noqa: F811
    assert then_correct(backend, hostile, correct, inputs_outputs=call_case(want)) == [0.0, 1.0]


def test_stdout_integers_compare_exactly(backend):  # noqa: F811
    cases = [["", "1000000007"]]
    assert then_correct(backend, "print(1000000000.0)", "print(1000000007)", inputs_outputs=cases) == [0.0, 1.0]
    assert then_correct(backend, "print(1e9)", "print(1000000007)", inputs_outputs=cases) == [0.0, 1.0]


def test_values_match_table():
    match = rcode._values_match
    assert not match(1000000000.0, 1000000007) and match(5.0, 5) and match(1000000007, 1000000007)
    assert not match(10**400, 2.5) and not match(2.5, 10**400)  # no OverflowError, just different
    assert match(0.30000000000000004, 0.3) and not match(0.31, 0.3)
    assert not match(True, 1) and not match(1, True) and match(False, False)


# --- c. bounded trusted-side parsing of what the program printed ------------------------------------

# The program finds its own result mark among its code's constants and prints what it likes after it.
FORGE_MARK = """
import sys
CONSTS = sys._getframe().f_code.co_consts
MARK = [c for c in CONSTS if isinstance(c, str) and '@@unmask-result-' in c][0].strip()
def f(x):
    return 0
sys.stdout.write('\\n' + MARK + BODY + '\\n')
sys.stdout.flush()
if MARK:  # (a bare raise here would let the compiler drop the unreachable driver, and its mark, from the code)
    raise SystemExit(0)
"""


def forged(body_expr):
    return "BODY = " + body_expr + "\n" + FORGE_MARK


@pytest.mark.parametrize(
    "name,program,want,reason",
    [
        ("int_401_digits", "def f(x):\n    return 10 ** 400", 2.5, None),  # parses; unequal, no OverflowError
        ("int_5000_digits", "import sys\nsys.set_int_max_str_digits(0)\ndef f(x):\n    return 10 ** 5000", 2.5,
         "result_too_large"),
        ("colliding_set", forged("'{' + ', '.join(str(k * ((1 << 61) - 1)) for k in range(1, 8000)) + '}'"),
         list(range(20000)), "result_unparsable"),
        ("half_mib_literal", forged("'[' + '0,' * (1 << 18) + '0]'"), [0], "result_too_large"),
        ("deep_nesting", forged("'[' * 100000 + ']' * 100000"), list(range(30000)), "result_unparsable"),
        ("not_json", forged("'__import__(\"os\")'"), 0, "result_unparsable"),
        ("no_result", "import os\ndef f(x):\n    print('no mark here')\n    raise SystemExit(0)", 0, "result_missing"),
    ],
)
def test_hostile_output_scores_zero_and_is_counted(backend, name, program, want, reason):  # noqa: F811
    before = judge_failures()
    assert then_correct(backend, program, "def f(x):\n    return " + repr(want), inputs_outputs=call_case(want)) == [0.0, 1.0]
    after = judge_failures()
    if reason is not None:
        assert after.get(reason, 0) == before.get(reason, 0) + 1, after
    assert sum(after.values()) == sum(before.values()) + (reason is not None)


def unit_with(output):
    return sb.UnitResult("exit", 0, 0.0, "", output, "io")


def test_trusted_parse_is_bounded_in_memory_and_refuses_before_building():
    # The judge itself, on output a program could print: a 1 MiB literal against a big expected list
    # (so the cap lets it through) costs a few MiB, not the ~500 MiB a Python-literal parse took.
    (case,) = rcode._io_cases(call_case(list(range(200000))), DOUBLE, "")
    body = ("[" + "0," * (1 << 19) + "0]").encode()
    assert len(body) > 1 << 20 and len(body) <= case.result_cap
    tracemalloc.start()
    try:
        assert rcode._judge(case, unit_with(b"\n" + case.mark.encode() + body + b"\n")) is False
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 48 << 20
    # A set literal of ints sharing one hash is not JSON: refused before a set is built.
    counts = judge_failures()
    colliding = "{" + ", ".join(str(k * ((1 << 61) - 1)) for k in range(1, 5000)) + "}"
    assert rcode._judge(case, unit_with(b"\n" + case.mark.encode() + colliding.encode())) is False
    assert judge_failures().get("result_unparsable", 0) == counts.get("result_unparsable", 0) + 1
    # Past the cap (set from the expected value), nothing is parsed at all.
    (small,) = rcode._io_cases(call_case(3), DOUBLE, "")
    assert rcode._judge(small, unit_with(b"\n" + small.mark.encode() + b"3" * 10000)) is False
    assert judge_failures()["result_too_large"] == counts.get("result_too_large", 0) + 1
    assert rcode._judge(small, unit_with(b"\n" + small.mark.encode() + b"3\n")) is True


def test_code_extraction_on_long_backtick_runs():
    # Same blocks as before on every shape (the old pattern, checked on 64k-backtick runs), in one pass.
    run = "`" * 65536
    assert extract_code(run) == run
    assert extract_code(run + "\n" + run) == ""  # an untagged block, empty: its body ends at the next fence
    assert extract_code(fenced(DOUBLE) + "\n" + run) == DOUBLE + "\n"  # a run after the program opens nothing
    assert rcode._fenced_blocks("````python\nz") == [("", "z")]
    assert rcode._fenced_blocks("a ```Py3 x\nq\n``` b ```\nr") == [("py3", "q\n"), ("", "r")]


def test_backtick_run_before_a_correct_program_still_scores(backend):  # noqa: F811
    completion = fenced(DOUBLE) + "\nand some backticks " + "`" * 65536
    assert code_reward(["q"], [completion], tests=[["assert f(2) == 4"]], backend=backend) == [1.0]


# --- d. samples that make the code reward raise do not stop the retry of the rest -------------------


def test_raising_samples_do_not_cost_the_batch_its_scores(backend):  # noqa: F811
    n_bad, n_good = 5, 3
    tests = [42] * n_bad + [["assert f(2) == 4"]] * n_good  # 42: not a test column, code_reward raises TypeError
    completions = [fenced(DOUBLE)] * (n_bad + n_good)
    res = score([functools.partial(code_reward, backend=backend, num_workers=1)], None,
                ["q"] * len(completions), completions, columns={"tests": tests})  # fmt: skip
    (name,) = res.per_fn
    assert res.per_fn[name] == [None] * n_bad + [1.0] * n_good
    assert [(f.index, f.kind) for f in res.failures[name]] == [(-1, "error")] + [(i, "error") for i in range(n_bad)]


def test_code_reward_in_score_retries_every_sample(backend, monkeypatch):  # noqa: F811
    # The built-in "code" reward through score(): in-process, so every sample is retried.
    monkeypatch.setenv("UNMASK_SANDBOX", backend)
    tests = [42] * 5 + [["assert f(2) == 4"], ["assert f(2) == 5"]]
    res = score(["code"], None, ["q"] * 7, [fenced(DOUBLE)] * 7, columns={"tests": tests})
    assert res.per_fn["code"] == [None] * 5 + [1.0, 0.0]
    assert res.num_failed == {"code": 5}


# --- e. nothing carries from one sample to the next on a warm sandbox -------------------------------

BREAK_DIR = """
import os
for d in ('.', '..'):
    for n in os.listdir(d):
        try:
            os.unlink(os.path.join(d, n))
        except OSError:
            pass
    for mode in (0o555, 0o000):
        try:
            os.chmod(d, mode)
        except OSError:
            pass
def f(x):
    return 0
"""

REMOVE_OWN_DIR = """
import os
here = os.getcwd()
for n in os.listdir('.'):
    os.unlink(n)
os.rmdir(here)
def f(x):
    return 0
"""


@pytest.mark.parametrize("program", [BREAK_DIR, REMOVE_OWN_DIR], ids=["empty_and_chmod", "remove_own_dir"])
def test_a_sample_that_breaks_its_directory_costs_only_itself(backend, program):  # noqa: F811
    tests = ["assert f(1) == 2", "assert f(2) == 4"]
    assert then_correct(backend, program, tests=tests) == [0.0, 1.0]


LEAVE_META = """
import os, time
def f(x):
    for d in ('.', '..'):
        for act in (lambda: os.setxattr(d, 'user.leak', b'42'), lambda: os.utime(d, (42, 42)),
                    lambda: os.chmod(d, 0o742), lambda: open(os.path.join(d, 'leak'), 'w').write('42')):
            try:
                act()
            except OSError:
                pass
    return 0
"""

READ_META = """
import os
def f(x):
    for d in ('.', '..'):
        try:
            return int(os.getxattr(d, 'user.leak'))
        except (OSError, ValueError):
            pass
        st = os.stat(d)
        if int(st.st_mtime) == 42 or int(st.st_atime) == 42:
            return 42
        if st.st_mode & 0o777 == 0o742:
            return 42
        try:
            return int(open(os.path.join(d, 'leak')).read())
        except (OSError, ValueError):
            pass
    return 0
"""


def test_work_directory_metadata_does_not_reach_the_next_sample(backend):  # noqa: F811
    # A writes 42 wherever it can (xattrs, times, mode, a file) on its directory and the one above;
    # B answers 42 only if it finds it; C is correct. One worker: the same warm sandbox, one after another.
    completions = [fenced(LEAVE_META), fenced(READ_META), fenced("def f(x):\n    return 42")]
    got = code_reward(["q"] * 3, completions, tests=[["assert f(1) == 42"]] * 3, backend=backend, num_workers=1)
    assert got == [0.0, 0.0, 1.0]


# --- f. no metadata change to host files or /dev nodes --------------------------------------------

META_ATTEMPTS = """
import os
def attempts(path, real):
    # On the test's own file real changes (setuid bits, times, owner, an xattr); on the host's /dev
    # nodes only changes to what they already are, so that a broken filter would still harm nothing.
    st = os.stat(path)
    out = {}
    tries = [
        ("chmod_same", lambda: os.chmod(path, st.st_mode & 0o7777)),
        ("fchmod_same", lambda: os.fchmod(os.open(path, os.O_RDONLY), st.st_mode & 0o7777)),
        ("utime_same", lambda: os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))),
        ("chown_noop", lambda: os.chown(path, -1, -1)),
    ]
    if real:
        tries += [
            ("chmod", lambda: os.chmod(path, 0o4777)),
            ("utime", lambda: os.utime(path, (1, 1))),
            ("chown", lambda: os.chown(path, 65534, 65534)),
            ("setxattr", lambda: os.setxattr(path, "user.unmask", b"1")),
        ]
    for name, act in tries:
        try:
            act()
            out[name] = "done"
        except PermissionError:
            out[name] = "refused"
        except OSError as exc:
            out[name] = "errno %d" % exc.errno
    return out
"""


def host_state(path):
    st = os.stat(path)
    try:
        xattrs = {k: os.getxattr(path, k) for k in os.listxattr(path)}
    except OSError:
        xattrs = None
    return (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, xattrs)


def test_metadata_of_host_files_and_dev_nodes_cannot_change(backend, shared_tmp):  # noqa: F811
    info = sandbox_info(backend)
    assert info["metadata_change_blocked"] and info["host_writes_blocked"]
    host_file = shared_tmp / "host.txt"  # where the sandbox's uid can reach it
    host_file.write_text("keep")
    host_file.chmod(0o644)
    paths = ["/dev/null", "/dev/zero", "/dev/urandom"]
    if backend == "rlimit":  # bubblewrap's file system shows no host temp dir at all
        paths.append(str(host_file))
    before = {p: host_state(p) for p in paths}
    for path in paths:
        real = path == str(host_file)
        r = sb.run_python(META_ATTEMPTS + f"print(repr(attempts({path!r}, {real!r})))", backend=backend)
        got = eval(r.stdout.decode())  # noqa: S307 - a dict of strings printed by the program
        assert set(got.values()) == {"refused"}, (path, got)
    assert {p: host_state(p) for p in paths} == before
    # And the correct sample after them all.
    assert code_reward(["q"], [fenced(DOUBLE)], tests=[["assert f(2) == 4"]], backend=backend) == [1.0]


def test_judge_failure_reasons_are_documented():
    doc = judge_failures.__doc__
    for reason in ("result_missing", "result_too_large", "result_unparsable", "compare_failed"):
        assert reason in doc
    assert json.loads(json.dumps(judge_failures())) == judge_failures()
