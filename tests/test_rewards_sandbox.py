"""Hostile programs in the code sandbox: each is contained, scores 0, and leaves the test process unharmed.

Every test runs with bubblewrap (skipped where it cannot start) and with the
forced fallback (``backend="rlimit"``: no namespaces). Tests whose protection is
not active on this machine are skipped, never run unprotected.
"""

import os
import pwd
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from rewards import code_reward, sandbox_info
from rewards import sandbox as sb
from rewards.code import run_tests

BACKENDS = ["bwrap", "rlimit"]


def _info(backend):
    try:
        return sandbox_info(backend)
    except sb.SandboxError as exc:
        pytest.skip(f"{backend} sandbox unavailable here: {exc}")


@pytest.fixture(params=BACKENDS)
def backend(request):
    _info(request.param)
    return request.param


def require(backend, key):
    info = _info(backend)
    if not info[key]:
        pytest.skip(f"{key} is not active for the {backend} sandbox on this machine")


def fenced(program):
    return f"```python\n{program}\n```"


def reward(backend, program, tests=("assert True",), **kw):
    """Score ``program`` as a completion with trivial tests: 1.0 means the hostile part did no harm to it."""
    completion = f"```python\n{program}\n```"
    return code_reward(["q"], [completion], tests=[list(tests)], backend=backend, **kw)[0]


def leftover_sandboxes():
    """Processes still running a sandbox of this test process (their command line carries its tag)."""
    tag = f"unmask-sandbox:{os.getpid()}".encode()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if tag in cmd.split(b"\0"):
            found.append(int(pid))
    return found


def test_leftover_scan_sees_a_running_sandbox(backend):
    # The leftover checks below would pass vacuously if the scan could not see a sandbox.
    seen = []
    t = threading.Thread(target=lambda: sb.run_python("import time\ntime.sleep(1.5)", backend=backend))
    t.start()
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        seen = leftover_sandboxes()
        time.sleep(0.05)
    t.join()
    assert seen
    assert wait_no_leftovers() == []


def wait_no_leftovers(timeout=5.0):
    """Tagged processes left once the warm sandboxes are stopped (a sample's own leave none:
    tests/test_rewards_forgery.py checks a warm sandbox's process tree after hostile samples)."""
    sb.shutdown_servers()
    deadline = time.monotonic() + timeout
    while leftover_sandboxes() and time.monotonic() < deadline:
        time.sleep(0.05)
    return leftover_sandboxes()


# --- the protections report ----------------------------------------------------------------


def test_sandbox_info_reports_protections(backend):
    info = sandbox_info(backend)
    assert info["backend"] == backend
    for key in ("seccomp", "landlock_abi", "capabilities_dropped", "network_blocked", "host_writes_blocked",
                "fork_blocked", "signals_to_host_blocked", "rlimits", "unprivileged_uid", "python"):  # fmt: skip
        assert key in info
    if backend == "bwrap":
        assert "network" in info["namespaces"] and "pid" in info["namespaces"]
    assert {"cpu", "address_space", "file_size"} <= set(info["rlimits"])


def test_auto_falls_back_when_user_namespaces_are_disabled(shared_tmp, monkeypatch):
    # A bwrap that fails the way it does where unprivileged user namespaces are off.
    fake = shared_tmp / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)  # uid 65534 starts it where the tests run as root
    monkeypatch.setattr(sb.shutil, "which", lambda name: str(fake) if name == "bwrap" else None)
    monkeypatch.delenv("UNMASK_SANDBOX", raising=False)
    sb.clear_probe_cache()
    try:
        info = sandbox_info()
        assert info["backend"] == "rlimit"
        assert "No permissions to create new namespace" in info["fallback_reason"]
        assert reward(None, "x = 1") == 1.0
        with pytest.raises(sb.SandboxError, match="namespace"):
            sandbox_info("bwrap")
    finally:
        sb.clear_probe_cache()


def test_old_bubblewrap_without_size_option_still_works(shared_tmp, monkeypatch):
    real = sb.shutil.which("bwrap")
    if real is None:
        pytest.skip("bubblewrap is not installed")
    _info("bwrap")
    fake = shared_tmp / "bwrap"  # bubblewrap < 0.8 has no --size for its tmpfs
    fake.write_text(
        "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = --size ] && { echo 'bwrap: Unknown option --size' >&2; exit 1; }; done\n"
        f"exec {real} \"$@\"\n"
    )
    fake.chmod(0o755)  # uid 65534 starts it where the tests run as root
    monkeypatch.setattr(sb.shutil, "which", lambda name: str(fake) if name == "bwrap" else None)
    sb.clear_probe_cache()
    try:
        info = sandbox_info("bwrap")
        assert info["backend"] == "bwrap" and "size-capped" not in info["filesystem"]
        assert reward("bwrap", "x = 1") == 1.0
    finally:
        sb.clear_probe_cache()


def test_a_sandbox_that_cannot_start_scores_none_not_zero(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise sb.SandboxError("the sandbox failed to start (exit code 1): out of memory")

    monkeypatch.setattr(sb, "run_programs", broken)
    assert code_reward(["q"] * 2, ["x = 1"] * 2, tests=[["assert True"]] * 2) == [None, None]
    assert "out of memory" in caplog.text


def test_environment_variable_selects_the_backend(monkeypatch):
    monkeypatch.setenv("UNMASK_SANDBOX", "rlimit")
    assert sandbox_info()["backend"] == "rlimit"
    assert sb.run_python("print(1)").backend == "rlimit"
    monkeypatch.setenv("UNMASK_SANDBOX", "docker")
    with pytest.raises(ValueError, match="docker"):
        sandbox_info()


def test_ordinary_program_runs(backend):
    r = sb.run_python("import sys, math\nprint(math.isqrt(int(sys.stdin.read())))", stdin="1000000", backend=backend)
    assert r.passed and r.stdout == b"1000\n" and r.returncode == 0


# --- hostile programs --------------------------------------------------------------------


def test_infinite_loop_is_killed(backend):
    assert reward(backend, "while True:\n    pass", timeout_s=1.0) == 0.0
    r = sb.run_python("while True: pass", limits=sb.Limits(timeout_s=1.0), backend=backend)
    assert r.units[0].status == "timeout" and r.returncode is None
    # A loop is killed at its own test's limit, so the tests after it still run, each in full
    # (a loop that kept running would leave them "skipped": the sample's time would be gone).
    tests = ["while True: pass", "assert f() == 1", "assert f() + 1 == 2", "while True: pass", "assert f() == 1"]
    passed, result = run_tests(
        "def f():\n    return 1", tests, limits=sb.Limits(timeout_s=4.0, unit_timeout_s=0.5), backend=backend
    )
    assert [u.status for u in result.units] == ["timeout", "ok", "ok", "timeout", "ok"]
    assert passed == [False, True, True, False, True]
    assert result.units[0].error == result.units[3].error == "ran past 0.5s"
    # In a batch, the looping sample scores 0 and the samples beside it score as they should.
    completions = [fenced("while True:\n    pass"), fenced("def f():\n    return 1"), fenced("def f():\n    return 2")]
    got = code_reward(["q"] * 3, completions, tests=[["assert f() == 1"]] * 3, timeout_s=1.0, backend=backend, num_workers=2)
    assert got == [0.0, 1.0, 0.0]
    assert wait_no_leftovers() == []


def test_sleeping_program_with_ignored_signals_is_killed(backend):
    program = "import signal, time\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGXCPU):\n    signal.signal(s, signal.SIG_IGN)\ntime.sleep(600)"
    assert reward(backend, program, timeout_s=1.0) == 0.0
    assert wait_no_leftovers() == []


def test_fork_bomb_is_contained(backend):
    require(backend, "fork_blocked")
    program = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    assert reward(backend, program, timeout_s=1.0) == 0.0
    assert wait_no_leftovers() == []  # forked children carry the tag too: none left behind
    assert subprocess.run(["true"]).returncode == 0  # and this process can still start one
    assert reward(backend, "import subprocess\nsubprocess.run(['true'])") == 0.0  # nor may it start programs


def test_ten_gigabyte_allocation_fails_inside(backend):
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert reward(backend, "x = bytearray(10 * 1024 ** 3)") == 0.0
    assert reward(backend, "x = [0] * (10 ** 10)") == 0.0
    r = sb.run_python("x = bytearray(10 * 1024 ** 3)", backend=backend)
    assert "MemoryError" in r.units[0].error
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 100 * 1024  # KiB


def test_writing_outside_its_temp_dir_fails(backend, tmp_path):
    require(backend, "host_writes_blocked")
    target = tmp_path / "pwned.txt"
    shared_tmp = Path(tempfile.gettempdir()) / f"unmask-pwned-{os.getpid()}.txt"
    for path in (target, shared_tmp, Path.cwd() / "pwned.txt", Path(sys.prefix) / "pwned.txt"):
        program = f"with open({str(path)!r}, 'w') as f:\n    f.write('pwned')"
        score = reward(backend, program)
        assert not path.exists()  # nothing reached the host
        if not (backend == "bwrap" and path.parent == Path("/tmp")):  # bwrap's /tmp is the sandbox's own tmpfs
            assert score == 0.0
    # Its own temp dir (the working directory) is writable under bubblewrap (a size-capped tmpfs); the
    # rlimit backend has no such cap, so there the program may not create files at all (by design).
    scratch = "with open('scratch.txt', 'w') as f:\n    f.write('ok')\nassert open('scratch.txt').read() == 'ok'"
    assert reward(backend, scratch) == (0.0 if _info(backend)["file_create_blocked"] else 1.0)


def test_network_socket_fails(backend):
    require(backend, "network_blocked")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    try:
        program = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'leak')"
        assert reward(backend, program) == 0.0
        assert reward(backend, "import socket\nsocket.socket(socket.AF_INET6, socket.SOCK_DGRAM)") == 0.0
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()


def test_environment_secrets_are_invisible(backend, monkeypatch):
    secret = "hunter2-" + os.urandom(4).hex()
    monkeypatch.setenv("UNMASK_TEST_SECRET", secret)
    # If the program could read the secret it would print it and pass the case.
    snoop = (
        "import os\n"
        "found = os.environ.get('UNMASK_TEST_SECRET', '')\n"
        "for pid in ['self', str(os.getppid()), " + repr(str(os.getpid())) + "]:\n"
        "    try:\n"
        "        data = open('/proc/%s/environ' % pid, 'rb').read().decode()\n"
        "    except Exception:\n"
        "        continue\n"
        "    if 'hunter2' in data:\n"
        "        found = data\n"
        "print(found)"
    )
    assert code_reward(["q"], [snoop], inputs_outputs=[[["", secret]]], backend=backend) == [0.0]
    r = sb.run_python(snoop + "\nimport os\nprint(sorted(os.environ))", backend=backend)
    assert secret.encode() not in r.stdout and b"UNMASK_TEST_SECRET" not in r.stdout


def test_deleting_files_in_the_home_directory_fails(backend, tmp_path):
    require(backend, "host_writes_blocked")
    homes = {pwd.getpwuid(os.getuid()).pw_dir, os.path.expanduser("~")}
    sentinels = []
    try:
        for home in homes:
            if not os.path.isdir(home) or not os.access(home, os.W_OK):
                continue
            path = Path(home) / f"unmask_sentinel_{os.getpid()}.txt"
            path.write_text("keep me")
            sentinels.append(path)
        if not sentinels:
            pytest.skip("no writable home directory to put a sentinel in")
        for path in sentinels:
            program = f"import os\nos.remove({str(path)!r})"
            assert reward(backend, program) == 0.0
            program = f"import os\nos.rename({str(path)!r}, {str(path) + '.moved'!r})"
            assert reward(backend, program) == 0.0
            program = f"open({str(path)!r}, 'w').close()"  # truncating is harming it too
            assert reward(backend, program) == 0.0
            assert path.read_text() == "keep me"
    finally:
        for path in sentinels:
            path.unlink(missing_ok=True)


def warm_server_pids(backend):
    """The supervisor pids of this process's idle warm sandboxes of ``backend``."""
    with sb._SERVERS_LOCK:
        return {s.proc.pid for key, idle in sb._servers()["idle"].items() if key[0] == backend for s in idle if s.alive()}


def test_killing_its_parent_fails(backend):
    require(backend, "signals_to_host_blocked")
    me = os.getpid()
    good = ("def f():\n    return 1", ["assert f() == 1"])
    assert reward(backend, *good) == 1.0
    servers = warm_server_pids(backend)
    assert servers
    for call in (
        "os.kill(os.getppid(), signal.SIGKILL)",  # the process it was forked from
        f"os.kill({me}, signal.SIGKILL)",  # the scorer (this test process), by pid
        "os.killpg(os.getpgid(0), signal.SIGKILL)",
        "os.kill(-1, signal.SIGKILL)",
    ):
        # The attempt itself is refused: the program sees PermissionError (the test checks that it did) ...
        probe = (
            "import os, signal\n"
            "def attempt():\n"
            "    try:\n"
            f"        {call}\n"
            "    except PermissionError:\n"
            "        return 'refused'\n"
            "    return 'sent'\n"
        )
        assert reward(backend, probe, tests=["assert attempt() == 'refused'"]) == 1.0, call
        # ... so a program that tries it at load time fails ...
        assert reward(backend, f"import os, signal\n{call}") == 0.0, call
        # ... and the scorer, and the warm sandbox it used, are alive and score the next sample.
        assert reward(backend, *good) == 1.0
        assert warm_server_pids(backend) == servers, call
    assert os.getpid() == me


def test_printing_100_megabytes_is_cut_off(backend):
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    program = "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(100):\n    sys.stdout.write(chunk)"
    limits = sb.Limits(output_bytes=1 << 20)
    r = sb.run_python(program, limits=limits, backend=backend)
    assert r.output_truncated and not r.passed
    assert r.units[0].status == "output_limit"  # stopped at the cap, not run to its end
    assert len(r.stdout) <= limits.output_bytes
    # As a stdin/stdout case the output goes to a capped file instead: 0, and nothing blows up.
    assert code_reward(["q"], [program], inputs_outputs=[[["", "x"]]], backend=backend) == [0.0]
    passed, result = run_tests(program, inputs_outputs=[["", "x"]], backend=backend)
    # Its writes stop at the file size limit (an error in the program); what is read back stops at the case's cap.
    assert passed == [False] and result.units[0].status == "error" and "File too large" in result.units[0].error
    assert len(result.units[0].output) <= 2 * len("x") + 4096
    # Inside an assert test the output is discarded.
    assert reward(backend, program) == 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 100 * 1024  # KiB
    assert wait_no_leftovers() == []


def test_filling_the_disk_stops_at_the_file_size_limit(backend):
    program = "with open('big', 'wb') as f:\n    for _ in range(64):\n        f.write(b'x' * (1 << 20))"
    r = sb.run_python(program, limits=sb.Limits(file_size_mb=4), backend=backend)
    # The rlimit backend refuses new files outright (no size-capped tmpfs there; by design).
    expected = "PermissionError" if _info(backend)["file_create_blocked"] else "File too large"
    assert not r.passed and expected in r.units[0].error
    # A file it already has open (its captured stdout) stops at the limit on both backends.
    program = "import os\nfor _ in range(64):\n    os.write(1, b'x' * (1 << 20))"
    r = sb.run_programs([sb.Program(program, kind="script", stdout="capture")], limits=sb.Limits(file_size_mb=4), backend=backend)
    assert not r.passed and "File too large" in r.units[0].error


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_work_dirs_of_killed_runs_are_swept(tmp_path):
    """A SIGKILLed run (Ray's shutdown, `kill -9`) cannot remove its rlimit work dirs: the next sandbox of any process
    removes those of dead processes, and keeps a live process's, a fresh one and anything not named like a work dir."""
    from rewards.sandbox import launch

    dead, old = _dead_pid(), time.time() - 3600
    made = {name: tmp_path / name for name in (f"unmask-sandbox-{dead}-a1", f"unmask-sandbox-{dead}-b2", f"unmask-sandbox-{dead}-new",
                                               f"unmask-sandbox-{os.getpid()}-live", "unmask-sandbox-x-odd", "unrelated-dir")}  # fmt: skip
    for name, path in made.items():
        (path / "sample-1").mkdir(parents=True)
        (path / "sample-1" / "out.txt").write_text("x")
        (path / "link").symlink_to(tmp_path / "unrelated-dir")  # rmtree must not follow it
        if not name.endswith("-new"):
            os.utime(path, (old, old))
    assert sorted(launch.sweep_stale_workdirs(str(tmp_path))) == sorted(str(made[f"unmask-sandbox-{dead}-{k}"]) for k in ("a1", "b2"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n in made if not n.endswith(("-a1", "-b2")))
    assert (tmp_path / "unrelated-dir" / "sample-1" / "out.txt").read_text() == "x"


def test_the_first_rlimit_sandbox_of_a_process_sweeps(shared_tmp, monkeypatch):
    from rewards.sandbox import launch

    tmp_path = shared_tmp  # the sandbox's uid must reach its work dir in it
    stale = tmp_path / f"unmask-sandbox-{_dead_pid()}-left"
    stale.mkdir()
    os.utime(stale, (time.time() - 3600,) * 2)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(launch, "_SWEPT", False)
    assert sb.run_python("print(1)", backend="rlimit").passed
    assert not stale.exists() and launch._SWEPT


def test_test_process_is_unharmed_after_everything():
    # The suite is still running, can start processes and threads, and left no temp dirs behind.
    assert subprocess.run([sys.executable, "-c", "pass"]).returncode == 0
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    sb.shutdown_servers()  # warm sandboxes keep their work dir while they live
    stale = list(Path(tempfile.gettempdir()).glob(f"unmask-sandbox-{os.getpid()}-*"))
    assert stale == []
    assert wait_no_leftovers() == []
