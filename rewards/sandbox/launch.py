"""Starting one sandbox process and talking to it (the host side of rewards/sandbox/_sandbox_child.py).

- the command line: bubblewrap's (namespaces, read-only binds, a size-capped tmpfs) or the
  plain interpreter in a private temp dir (``_command``), always ``python -I -S -B`` running
  a bootstrap that reads the precompiled supervisor from stdin;
- the frames written to the supervisor: its settings (the protections to apply) and each
  sample's programs and judges (``_settings``, ``_sample_frames``);
- the result stream read back, parsed strictly (``_parse_records``);
- a sandbox for one sample, started, run and gone (``_start``, ``_communicate``); the warm
  ones that serve sample after sample are in rewards/sandbox/warm.py.
"""

from __future__ import annotations

import functools
import marshal
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .interpreter import Interpreter, host_python, interpreter_paths, read_paths, root_interpreter, system_paths
from .programs import Limits, Program, SandboxError, SandboxResult, UnitResult

_CHILD_PATH = Path(__file__).with_name("_sandbox_child.py")
# The supervisor arrives precompiled on stdin (compiling it in every sandbox would
# cost more than starting the interpreter), ahead of the request: a 10-digit length,
# the marshalled code object, then the request.
_BOOTSTRAP = (
    "import os, marshal\n"
    "def _read(n):\n"
    "    b = b''\n"
    "    while len(b) < n:\n"
    "        c = os.read(0, n - len(b))\n"
    "        if not c: raise SystemExit(3)\n"
    "        b += c\n"
    "    return b\n"
    "exec(marshal.loads(_read(int(_read(10)))))\n"
)
_CODE: bytes | None = None


def _supervisor_code() -> bytes:
    global _CODE
    if _CODE is None:
        code = compile(_CHILD_PATH.read_text(), str(_CHILD_PATH), "exec")
        _CODE = marshal.dumps(code)
    return _CODE
_STARTUP_GRACE_S = 3.0  # sandbox start-up on top of the run's own time limit
_RESULT_CAP = 64 << 20


def _python() -> str:
    return host_python()


def _interp(config: dict[str, Any]) -> Interpreter:
    """The interpreter the probe chose for this config (as it is, for the weak mode, when none)."""
    return config.get("interp") or root_interpreter()


@functools.lru_cache(maxsize=None)
def _bwrap_command(bwrap: str, tmpfs_bytes: int | None, interp: Interpreter) -> tuple[str, ...]:
    """bubblewrap's command line: only the interpreter and the system libraries, read-only (built once
    per backend setting: a cold sandbox per sample would otherwise stat the same paths every time)."""
    cmd = [
        bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--clearenv",
        "--cap-drop", "ALL", "--hostname", "sandbox",
        "--setenv", "LANG", "C.UTF-8", "--setenv", "HOME", "/tmp",
    ]  # fmt: skip
    # The writable tmpfs first, so an interpreter that lives under /tmp is bound on top of it.
    if tmpfs_bytes:
        cmd += ["--size", str(tmpfs_bytes)]
    cmd += ["--tmpfs", "/tmp"]
    bound: list[str] = []
    for p in system_paths():
        if os.path.islink(p):  # merged /usr (/lib -> usr/lib), /etc/localtime: the link, and what it names
            cmd += ["--symlink", os.readlink(p), p]
        real = os.path.realpath(p)
        if os.path.exists(real) and not any(real == q or real.startswith(q + os.sep) for q in bound):
            cmd += ["--ro-bind", real, real]
            bound.append(real)
    for host, inside in interpreter_paths(interp):
        cmd += ["--ro-bind", host, inside]
    # No /proc: Landlock would deny reading it anyway, and mounting it costs ~10% of a run.
    cmd += ["--dev", "/dev", "--remount-ro", "/", "--chdir", "/tmp"]
    return tuple(cmd)


def _parse_applied(line: str) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for token in line.split():
        key, _, value = token.partition("=")
        info[key] = int(value) if value.lstrip("-").isdigit() else value
    return info


def _as_bytes(data: bytes | str | None) -> bytes | None:
    if data is None or isinstance(data, bytes):
        return data
    return data.encode("utf-8", "surrogateescape")


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        proc.kill()
    except OSError:
        pass


_STATUSES = frozenset(("ok", "exit", "error", "timeout", "died", "output_limit", "skipped"))


def _parse_records(buf: bytes, units: list[UnitResult], kinds: list[str]) -> tuple[dict[str, Any] | None, bool]:
    """Parse the supervisor's result stream. Returns (start info or None, done).

    The stream is written only by the supervisor (no program holds its descriptor), in a
    fixed order: one ``S``, one ``R`` per unit in order, then ``D`` as the last bytes.
    Anything else is refused (:class:`SandboxError`), never read past; a stream cut
    short (the run was killed) just ends early.
    """

    def malformed(why: str) -> SandboxError:
        return SandboxError(f"the sandbox's result stream is malformed ({why}); no result is trusted")

    started, done, pos, expected = None, False, 0, 0
    while pos < len(buf):
        if done:
            raise malformed("data after the end record")
        nl = buf.find(b"\n", pos)
        if nl < 0:
            break
        line = buf[pos:nl].decode("ascii", "replace")
        if started is None:
            if not line.startswith("S "):
                raise malformed("no start record")
            started = _parse_applied(line[2:])
            pos = nl + 1
        elif line == "D":
            if expected != len(units):
                raise malformed(f"the end record after {expected} of {len(units)} results")
            done = True
            pos = nl + 1
        elif line.startswith("R "):
            parts = line.split()
            if len(parts) != 7 or not all(p.lstrip("-").isdigit() for p in parts[3:]) or not parts[1].isdigit():
                raise malformed(f"bad result header {line[:80]!r}")
            index, status, code, us, err_len, out_len = int(parts[1]), parts[2], int(parts[3]), int(parts[4]), int(parts[5]), int(parts[6])
            if index != expected or status not in _STATUSES or err_len < 0 or out_len < 0:
                raise malformed(f"unexpected result header {line[:80]!r}")
            end = nl + 1 + err_len + out_len
            if end > len(buf):
                break
            err = buf[nl + 1 : nl + 1 + err_len].decode("utf-8", "replace")
            out = buf[nl + 1 + err_len : end]
            units[index] = UnitResult(status, code, us / 1e6, err, out, kinds[index])
            expected += 1
            pos = end
        else:
            raise malformed(f"unknown record {line[:80]!r}")
    return started, done


_WORKDIR_PREFIX = "unmask-sandbox-"
_STALE_AFTER_S = 600.0  # a dead process's work dir is left this long (a /tmp shared across pid namespaces)
_SWEPT = False


def sweep_stale_workdirs(root: str | None = None, *, older_than_s: float = _STALE_AFTER_S) -> list[str]:
    """Remove the work dirs (``unmask-sandbox-PID-*`` under `root`, the temp dir by default) of processes that no
    longer exist; returns the removed paths.

    A process removes its own work dirs when it ends normally, but not when it is SIGKILLed: Ray kills rollout
    workers that way at shutdown, and a user kills runs with ``kill -9``, so each such run would leave a dir behind.
    A dir is removed only if its PID is not a live process *and* it has not changed for `older_than_s` seconds, so a
    sandbox of another pid namespace that shares this /tmp (its PID looks dead from here) is kept while it is in use.
    """
    root = root or tempfile.gettempdir()
    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not entry.name.startswith(_WORKDIR_PREFIX):
            continue
        pid_text = entry.name[len(_WORKDIR_PREFIX):].split("-", 1)[0]
        try:
            if not pid_text.isdigit() or not entry.is_dir(follow_symlinks=False):
                continue
            if now - entry.stat(follow_symlinks=False).st_mtime < older_than_s:
                continue
            os.kill(int(pid_text), 0)
            continue  # alive
        except ProcessLookupError:
            pass
        except OSError:  # PermissionError: alive, another user's; anything else: leave it
            continue
        shutil.rmtree(entry.path, ignore_errors=True)  # rmtree does not follow symlinks inside
        removed.append(entry.path)
    return removed


def _command(config: dict[str, Any], limits: Limits, tag: str) -> tuple[list[str], dict[str, Any], str, str | None]:
    """(command, Popen keywords, the work directory the programs see, the host temp dir to remove or None)."""
    interp = _interp(config)
    popen_kw: dict[str, Any] = {}
    if interp.uid != os.geteuid():  # root here: the sandbox starts as uid 65534 (rewards/sandbox/interpreter.py)
        popen_kw.update(user=interp.uid, group=interp.uid, extra_groups=[])
    if config["backend"] == "bwrap":
        cmd = list(_bwrap_command(config["bwrap"], (limits.tmpfs_mb << 20) if config.get("tmpfs_size") else None, interp))
        popen_kw["env"] = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        workdir, workdir_host = "/tmp", None
    else:
        global _SWEPT
        if not _SWEPT:  # once per process: the dirs SIGKILLed runs left (sweep_stale_workdirs)
            _SWEPT = True
            sweep_stale_workdirs()
        workdir_host = tempfile.mkdtemp(prefix=f"{_WORKDIR_PREFIX}{os.getpid()}-")
        workdir = workdir_host
        cmd = []
        popen_kw.update(env={"LANG": "C.UTF-8", "PATH": "/usr/bin:/bin", "HOME": workdir, **dict(interp.env)}, cwd=workdir)
        if interp.uid != os.geteuid():
            os.chown(workdir, interp.uid, interp.uid)
    # The tag names the process that started the sandbox (for ps, and for tests that look
    # for leftovers); the bootstrap ignores it.
    cmd += [interp.python, "-I", "-S", "-B", "-c", _BOOTSTRAP, f"{tag}:{os.getpid()}"]
    return cmd, popen_kw, workdir, workdir_host


def _settings(config: dict[str, Any], workdir: str, result_w: int, limits: Limits, *, probe: bool, serve: bool) -> bytes:
    """The supervisor's first frame: the protections to apply (the code it runs goes before it)."""
    backend = config["backend"]
    settings = {
        "result_fd": result_w,
        "timeout": float(limits.timeout_s),
        "serve": serve,
        "parent_death": backend != "bwrap",
        "landlock": config.get("landlock", True),
        "no_file_create": backend != "bwrap",  # no size-capped tmpfs: the program may not create files
        "seccomp": config.get("seccomp", True),  # False only in tests: to see the layers under the filter hold alone
        "read_paths": [*read_paths(_interp(config)), "/dev/urandom", "/dev/random", "/dev/zero"],
        "write_paths": [workdir, "/dev/null"],
        "probe": probe,
        "probe_write": config.get("probe_write") if probe else None,  # a host file outside the work dir (_probe)
    }
    code = _supervisor_code()
    first = marshal.dumps(settings)
    return b"%010d" % len(code) + code + b"%010d" % len(first) + first


def _sample_frames(programs: list[Program], limits: Limits, stop_on_failure: bool) -> bytes:
    """One sample: its programs, then its tests' judges. The supervisor makes the process the
    programs come from between reading the two (rewards/sandbox/_sandbox_child.py)."""
    unit_timeout = limits.unit_timeout_s or limits.timeout_s
    request = {
        "timeout": float(limits.timeout_s),
        "limits": {
            "memory_bytes": limits.memory_mb << 20,
            "file_bytes": limits.file_size_mb << 20,
            "open_files": limits.open_files,
            "processes": limits.processes,
        },
        "units": [
            {
                "source": p.source,
                "stdin": _as_bytes(p.stdin),
                "kind": p.kind,
                "stdout": p.stdout,
                "output_limit": min(p.output_limit, limits.file_size_mb << 20),
                "timeout": float(min(p.timeout_s or unit_timeout, unit_timeout)),
                "judged": p.judge is not None,
            }
            for p in programs
        ],
        "stop_on_failure": stop_on_failure,
    }
    judges = [None if p.judge is None else {"code": p.judge.code, "prefix": p.judge.prefix, "names": list(p.judge.names),
                                             "aliases": dict(p.judge.aliases)} for p in programs]  # fmt: skip
    first, second = marshal.dumps(request), marshal.dumps(judges)
    return b"%010d" % len(first) + first + b"%010d" % len(second) + second


def _start(config: dict[str, Any], programs: list[Program], limits: Limits, *,
           stop_on_failure: bool = False, probe: bool = False) -> SandboxResult:  # fmt: skip
    """One sandbox for one sample: started, run, gone."""
    backend = config["backend"]
    workdir_host = None
    result_r, result_w = os.pipe()
    try:
        cmd, popen_kw, workdir, workdir_host = _command(config, limits, "unmask-sandbox")
        payload = _settings(config, workdir, result_w, limits, probe=probe, serve=False) + _sample_frames(programs, limits, stop_on_failure)
        passthrough = any(p.stdout == "pass" for p in programs)
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE if passthrough else subprocess.DEVNULL,
                stderr=subprocess.PIPE, pass_fds=(result_w,), start_new_session=True, **popen_kw,
            )  # fmt: skip
        except OSError as exc:
            raise SandboxError(f"cannot start the sandbox: {exc}") from exc
        os.close(result_w)
        result_w = -1
        return _communicate(proc, payload, result_r, programs, limits, backend, start)
    finally:
        if result_w >= 0:
            os.close(result_w)
        os.close(result_r)
        if workdir_host is not None:
            shutil.rmtree(workdir_host, ignore_errors=True)


def _communicate(proc: subprocess.Popen, payload: bytes, result_r: int, programs: list[Program],
                 limits: Limits, backend: str, start: float) -> SandboxResult:  # fmt: skip
    kinds = [p.kind for p in programs]
    units = [UnitResult("skipped", kind=k) for k in kinds]
    bufs = {"stdout": bytearray(), "stderr": bytearray(), "result": bytearray()}
    caps = {"stdout": limits.output_bytes, "stderr": limits.output_bytes, "result": _RESULT_CAP}
    sel = selectors.DefaultSelector()
    assert proc.stdin is not None
    os.set_blocking(proc.stdin.fileno(), False)
    sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE, "stdin")
    if proc.stdout is not None:
        sel.register(proc.stdout.fileno(), selectors.EVENT_READ, "stdout")
    assert proc.stderr is not None
    sel.register(proc.stderr.fileno(), selectors.EVENT_READ, "stderr")
    sel.register(result_r, selectors.EVENT_READ, "result")
    view = memoryview(payload)
    deadline = start + limits.timeout_s + _STARTUP_GRACE_S
    timed_out = truncated = False
    try:
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in sel.select(remaining):
                name = key.data
                if name == "stdin":
                    try:
                        view = view[os.write(key.fd, view[:65536]):]
                    except BrokenPipeError:
                        view = view[:0]
                    if not view:
                        sel.unregister(key.fd)
                        proc.stdin.close()
                    continue
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fd)
                    continue
                buf = bufs[name]
                room = caps[name] - len(buf)
                buf += data[: max(room, 0)]
                if len(data) > room:
                    truncated = True
                    _kill(proc)
                    sel.unregister(key.fd)
            if truncated:
                break
    finally:
        sel.close()
        if timed_out or truncated:
            _kill(proc)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None and not f.closed:
                try:
                    f.close()
                except OSError:
                    pass
        if not (timed_out or truncated) and proc.poll() is None:
            # All pipes are at EOF, so the supervisor is exiting; give it a moment.
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _kill(proc)
        proc.wait()
        # The supervisor's children are killed with it (parent-death signal, pid namespace);
        # sweep the process group as well in case one is still being torn down.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    started, done = _parse_records(bytes(bufs["result"]), units, kinds)
    stderr = bytes(bufs["stderr"])
    if started is None:
        if timed_out:
            raise SandboxError(f"the sandbox did not start within {limits.timeout_s + _STARTUP_GRACE_S:.1f}s")
        message = stderr.decode("utf-8", "replace").strip()[-2000:]
        raise SandboxError(f"the sandbox failed to start (exit code {proc.returncode}): {message or 'no message'}")
    if not done:
        # Killed at the run's limit, or stopped for printing too much: whatever has no
        # record did not finish.
        status = "output_limit" if truncated else "timeout" if timed_out else "died"
        for i, u in enumerate(units):
            if u.status == "skipped":
                units[i] = UnitResult(status, -1, 0.0, "", b"", kinds[i])
                break
    return SandboxResult(
        units=units,
        stdout=bytes(bufs["stdout"]),
        stderr=stderr,
        timed_out=timed_out,
        output_truncated=truncated,
        duration_s=time.monotonic() - start,
        backend=backend,
        protections=started,
    )
