"""Run untrusted Python programs (model-written code) in a sandboxed process.

Each call starts one sandbox: ``python -I -S -B`` running a small supervisor
(rewards/_sandbox_child.py) that runs each program ("unit": a test, a stdin/stdout
case, a script) in a forked child and kills it when it runs past its time limit.
The layers, from the outside in:

- **bubblewrap** (``bwrap``), where it works: new user, pid, network, ipc, uts,
  cgroup and mount namespaces; the file system is the interpreter and ``/usr``
  mounted read-only plus a size-capped tmpfs at ``/tmp`` (the working directory,
  the only writable place); an empty environment; all capabilities dropped; the
  whole sandbox dies with its parent. Probed once per process; where user
  namespaces are disabled (many containers and GPU hosts) the sandbox falls back
  to the layers below alone, which still hold on their own.
- **without bubblewrap**: the program runs in its own session in a fresh temp dir,
  with an empty environment; when this process is root and the interpreter can be
  read by ``nobody``, it runs as uid/gid 65534.
- **always** (where the kernel supports them): Landlock (read-only access to the
  interpreter and system libraries, full access only to the working directory, no
  TCP, no signals out of the sandbox), every capability dropped, no new
  privileges, and a seccomp filter on the program's process: no fork/clone of new
  processes (a fork bomb gets EAGAIN), no exec, no sockets, no signals to other
  processes, no ptrace/mount/namespaces/bpf/io_uring/keyrings.
- **rlimits** per program: CPU seconds, address space, file size, open files,
  stack, no core dumps (and processes, as uid 65534 where seccomp is unavailable); a wall-clock limit per program and
  one for the whole run, after which the process group (and the namespace) is
  killed. Output is read back up to a cap; a program that prints more is stopped.

:func:`sandbox_info` reports which of these are active on this machine. The
backend is chosen with ``backend=`` or the ``UNMASK_SANDBOX`` environment variable
(``auto``, ``bwrap`` or ``rlimit``; ``auto`` uses bubblewrap where it works).

Not covered: the program may use all the CPU time and memory its limits allow,
and reward hacking through the tests themselves (an object whose ``__eq__`` is
always true, reading the assert it is tested with) is out of scope of any sandbox.
"""

from __future__ import annotations

import functools
import logging
import marshal
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

NOBODY = 65534
BACKENDS = ("bwrap", "rlimit")
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


class SandboxError(RuntimeError):
    """The sandbox itself could not run (not a failure of the program inside it)."""


@dataclass(frozen=True)
class Limits:
    """Resource limits for one sandbox run.

    ``timeout_s`` bounds the whole run (all its programs); ``unit_timeout_s``
    bounds each program (default: ``timeout_s``). CPU time per program is limited
    to its wall-clock limit plus one second.
    """

    timeout_s: float = 10.0
    unit_timeout_s: float | None = None
    memory_mb: int = 1024  # address space per program (RLIMIT_AS)
    file_size_mb: int = 16  # largest file a program may write, captured output included
    open_files: int = 64
    processes: int = 64  # RLIMIT_NPROC, only where seccomp is unavailable and the program runs as uid 65534
    output_bytes: int = 1 << 20  # stdout and stderr read back per run (each)
    tmpfs_mb: int = 64  # size of the writable /tmp under bubblewrap

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        if self.unit_timeout_s is not None and self.unit_timeout_s <= 0:
            raise ValueError(f"unit_timeout_s must be positive, got {self.unit_timeout_s}")


@dataclass
class Program:
    """One program to run in the sandbox.

    ``kind``: ``"test"`` passes only if the program runs to its end (a
    ``SystemExit`` fails it); ``"io"`` and ``"script"`` also pass on ``exit(0)``.
    ``stdout``: ``"capture"`` (returned in :attr:`UnitResult.output`, at most
    ``output_limit`` bytes), ``"discard"``, or ``"pass"`` (to the run's stdout).
    """

    source: str
    stdin: bytes | str | None = None
    kind: str = "test"
    stdout: str = "discard"
    output_limit: int = 1 << 20
    timeout_s: float | None = None


@dataclass
class UnitResult:
    """What happened to one program.

    ``status``: ``ok`` (ran to its end), ``exit`` (``SystemExit``; see
    ``exit_code``), ``error`` (an exception; see ``error``), ``timeout``,
    ``died`` (killed by a signal or exited without finishing, e.g. ``os._exit``),
    ``output_limit`` (printed more than allowed), ``skipped`` (not run: the run's
    time was up or an earlier program failed with ``stop_on_failure``).
    """

    status: str
    exit_code: int = -1
    time_s: float = 0.0
    error: str = ""
    output: bytes = b""
    kind: str = "test"

    @property
    def passed(self) -> bool:
        if self.kind == "test":
            return self.status == "ok"
        return self.status == "ok" or (self.status == "exit" and self.exit_code == 0)


@dataclass
class SandboxResult:
    """The outcome of one sandbox run."""

    units: list[UnitResult]
    stdout: bytes = b""
    stderr: bytes = b""
    timed_out: bool = False  # the whole run was killed at its time limit
    output_truncated: bool = False  # stdout/stderr passed the cap; the run was stopped
    duration_s: float = 0.0
    backend: str = ""
    protections: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.units) and all(u.passed for u in self.units)

    @property
    def returncode(self) -> int | None:
        """Exit code of a single-program run (negative: killed by that signal; None: not finished)."""
        if len(self.units) != 1:
            raise ValueError("returncode is defined for single-program runs")
        u = self.units[0]
        return None if u.status in ("timeout", "skipped") else u.exit_code


# --- backend discovery ----------------------------------------------------------------

_PROBE_LOCK = threading.Lock()
_PROBES: dict[tuple, dict[str, Any]] = {}


@functools.lru_cache(maxsize=None)
def _python() -> str:
    return os.path.realpath(sys.executable)


@functools.lru_cache(maxsize=None)
def _host_read_paths() -> tuple[str, ...]:
    """Paths the interpreter needs to read (the interpreter, its stdlib, system libraries)."""
    paths = []
    exe = _python()
    prefixes = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}
    for p in sorted(prefixes):
        paths.append(p)
    if not any(exe.startswith(p + os.sep) for p in prefixes):
        paths.append(os.path.dirname(exe))
    for p in ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/etc/ld.so.cache", "/etc/localtime"):
        if os.path.lexists(p):
            paths.append(os.path.realpath(p))
    out: list[str] = []
    for p in sorted(set(paths), key=len):
        if not any(p == q or p.startswith(q.rstrip(os.sep) + os.sep) for q in out):
            out.append(p)
    return tuple(out)


def _bwrap_command(bwrap: str, tmpfs_bytes: int | None) -> list[str]:
    cmd = [
        bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--clearenv",
        "--cap-drop", "ALL", "--hostname", "sandbox",
        "--setenv", "LANG", "C.UTF-8", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
    ]  # fmt: skip
    # The writable tmpfs first, so an interpreter that lives under /tmp is bound on top of it.
    if tmpfs_bytes:
        cmd += ["--size", str(tmpfs_bytes)]
    cmd += ["--tmpfs", "/tmp"]
    bound: list[str] = []
    for top in ("/bin", "/lib", "/lib64", "/lib32", "/sbin"):
        if os.path.islink(top):  # merged /usr: recreate the symlink
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
            bound.append(top)
    for p in _host_read_paths():
        if p in bound or not os.path.exists(p):
            continue
        cmd += ["--ro-bind", p, p]
    # No /proc: Landlock would deny reading it anyway, and mounting it costs ~10% of a run.
    cmd += ["--dev", "/dev", "--remount-ro", "/", "--chdir", "/tmp"]
    return cmd


def _nobody_can_run_python() -> bool:
    if os.geteuid() != 0:
        return False
    try:
        out = subprocess.run(
            [_python(), "-I", "-S", "-B", "-c", "import ctypes, resource, select, struct"],
            user=NOBODY, group=NOBODY, extra_groups=[], env={}, cwd="/",
            capture_output=True, timeout=30,
        )  # fmt: skip
        return out.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _parse_applied(line: str) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for token in line.split():
        key, _, value = token.partition("=")
        info[key] = int(value) if value.lstrip("-").isdigit() else value
    return info


def _probe(backend: str) -> dict[str, Any]:
    """Start a sandbox once and record what it could apply. Raises SandboxError if it cannot start."""
    info: dict[str, Any] = {"backend": backend, "python": _python()}
    config: dict[str, Any] = {"backend": backend}
    if backend == "bwrap":
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise SandboxError("bubblewrap (bwrap) is not installed")
        config["bwrap"] = bwrap
        size = 64 << 20
        for tmpfs in (size, None):  # bwrap < 0.8 has no --size
            config["tmpfs_size"] = tmpfs is not None
            try:
                applied = _start(config, [], Limits(timeout_s=20), probe=True).protections
                break
            except SandboxError as exc:
                if tmpfs is None or "--size" not in str(exc):
                    raise
        info["bwrap"] = bwrap
        info["namespaces"] = ["user", "pid", "network", "ipc", "uts", "cgroup", "mount"]
        info["filesystem"] = "read-only interpreter and /usr, tmpfs /tmp" + (" (size-capped)" if config["tmpfs_size"] else "")
    else:
        config["drop_uid"] = _nobody_can_run_python()
        applied = _start(config, [], Limits(timeout_s=20), probe=True).protections
        info["namespaces"] = []
        info["filesystem"] = "private temp dir" + (" (Landlock: only writable place)" if applied.get("landlock") else "")
    uid = applied.get("uid")
    seccomp = bool(applied.get("seccomp")) and bool(applied.get("fork_blocked"))
    info["uid"] = uid
    info["unprivileged_uid"] = uid != 0
    info["capabilities_dropped"] = bool(applied.get("caps_dropped"))
    info["landlock_abi"] = applied.get("landlock", 0)
    info["seccomp"] = seccomp
    # Without seccomp, RLIMIT_NPROC stops a fork bomb, but only under the dedicated uid 65534.
    info["fork_blocked"] = seccomp or uid == NOBODY
    info["network_blocked"] = backend == "bwrap" or bool(applied.get("socket_blocked"))
    info["signals_to_host_blocked"] = backend == "bwrap" or bool(applied.get("kill_blocked")) or uid == NOBODY
    info["host_writes_blocked"] = backend == "bwrap" or bool(applied.get("outside_write_blocked"))
    info["rlimits"] = ["cpu", "address_space", "file_size", "open_files", "stack", "core"] + (
        ["processes"] if (not seccomp and uid == NOBODY) else []
    )
    info["_config"] = config
    return info


def _resolve_backend(backend: str | None) -> str:
    backend = (backend or os.environ.get("UNMASK_SANDBOX") or "auto").strip().lower()
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"unknown sandbox backend {backend!r}; expected 'auto', 'bwrap' or 'rlimit'")
    return backend


def _backend_info(backend: str | None) -> dict[str, Any]:
    requested = _resolve_backend(backend)
    with _PROBE_LOCK:
        key = (requested, _python())
        if key in _PROBES:
            return _PROBES[key]
        if requested == "auto":
            try:
                info = _probe("bwrap")
            except SandboxError as exc:
                logger.warning("bubblewrap sandbox unavailable (%s); falling back to rlimits", exc)
                info = _probe("rlimit")
                info["fallback_reason"] = str(exc)
        else:
            info = _probe(requested)
        _PROBES[key] = info
        return info


def sandbox_info(backend: str | None = None) -> dict[str, Any]:
    """Report the sandbox's protections on this machine (probes once, then cached).

    Keys: ``backend`` (``"bwrap"`` or ``"rlimit"``), ``namespaces``,
    ``filesystem``, ``uid``, ``unprivileged_uid``, ``capabilities_dropped``,
    ``landlock_abi`` (0: unavailable), ``seccomp``, ``fork_blocked``,
    ``network_blocked``, ``signals_to_host_blocked``, ``host_writes_blocked``,
    ``rlimits``, ``python``, and ``fallback_reason`` when bubblewrap was wanted
    but could not start.
    """
    info = _backend_info(backend)
    return {k: v for k, v in info.items() if not k.startswith("_")}


def clear_probe_cache() -> None:
    """Forget the probed protections (for tests that change the environment)."""
    with _PROBE_LOCK:
        _PROBES.clear()


# --- running ---------------------------------------------------------------------------


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


def _parse_records(buf: bytes, units: list[UnitResult], kinds: list[str]) -> tuple[dict[str, Any] | None, bool]:
    """Parse the supervisor's result stream. Returns (start info or None, done)."""
    started, done, pos = None, False, 0
    while pos < len(buf):
        nl = buf.find(b"\n", pos)
        if nl < 0:
            break
        line = buf[pos:nl].decode("ascii", "replace")
        if line.startswith("S "):
            started = _parse_applied(line[2:])
            pos = nl + 1
        elif line == "D":
            done = True
            pos = nl + 1
        elif line.startswith("R "):
            parts = line.split()
            if len(parts) != 7:
                break
            index, status, code, us, err_len, out_len = int(parts[1]), parts[2], int(parts[3]), int(parts[4]), int(parts[5]), int(parts[6])
            end = nl + 1 + err_len + out_len
            if end > len(buf) or not 0 <= index < len(units):
                break
            err = buf[nl + 1 : nl + 1 + err_len].decode("utf-8", "replace")
            out = buf[nl + 1 + err_len : end]
            units[index] = UnitResult(status, code, us / 1e6, err, out, kinds[index])
            pos = end
        else:
            break
    return started, done


def _start(config: dict[str, Any], programs: list[Program], limits: Limits, *,
           stop_on_failure: bool = False, probe: bool = False) -> SandboxResult:  # fmt: skip
    backend = config["backend"]
    unit_timeout = limits.unit_timeout_s or limits.timeout_s
    workdir_host = None
    result_r, result_w = os.pipe()
    try:
        if backend == "bwrap":
            cmd = _bwrap_command(config["bwrap"], (limits.tmpfs_mb << 20) if config.get("tmpfs_size") else None)
            workdir = "/tmp"
            popen_kw: dict[str, Any] = {"env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}}
        else:
            workdir_host = tempfile.mkdtemp(prefix=f"unmask-sandbox-{os.getpid()}-")
            workdir = workdir_host
            cmd = []
            popen_kw = {"env": {"LANG": "C.UTF-8", "PATH": "/usr/bin:/bin", "HOME": workdir}, "cwd": workdir}
            if config.get("drop_uid"):
                os.chown(workdir, NOBODY, NOBODY)
                popen_kw.update(user=NOBODY, group=NOBODY, extra_groups=[])
        # The tag names the process that started the sandbox (for ps, and for tests that
        # look for leftovers); the bootstrap ignores it.
        cmd += [_python(), "-I", "-S", "-B", "-c", _BOOTSTRAP, f"unmask-sandbox:{os.getpid()}"]
        request = {
            "result_fd": result_w,
            "timeout": float(limits.timeout_s),
            "parent_death": backend != "bwrap",
            "landlock": True,
            "seccomp": True,
            "read_paths": [*_host_read_paths(), "/dev/urandom", "/dev/random", "/dev/zero"],
            "write_paths": [workdir, "/dev/null"],
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
                }
                for p in programs
            ],
            "stop_on_failure": stop_on_failure,
            "probe": probe,
            "probe_write": os.path.join(os.path.dirname(workdir_host), f"unmask-probe-{os.getpid()}-{time.monotonic_ns()}") if (probe and workdir_host) else None,
        }
        code = _supervisor_code()
        payload = b"%010d" % len(code) + code + marshal.dumps(request)
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


def run_programs(
    programs: list[Program],
    *,
    limits: Limits | None = None,
    stop_on_failure: bool = False,
    backend: str | None = None,
) -> SandboxResult:
    """Run ``programs`` one after another in one sandbox; one :class:`UnitResult` each.

    Each program gets a fresh process (forked from the sandbox's supervisor), so
    one program's state, crash or timeout does not affect the next. With
    ``stop_on_failure`` the rest are skipped after the first that fails. Raises
    :class:`SandboxError` only when the sandbox itself cannot run.
    """
    limits = limits or Limits()
    info = _backend_info(backend)
    return _start(info["_config"], list(programs), limits, stop_on_failure=stop_on_failure)


def run_python(
    source: str,
    stdin: bytes | str | None = None,
    *,
    limits: Limits | None = None,
    backend: str | None = None,
) -> SandboxResult:
    """Run one Python program in the sandbox; its stdout and stderr come back (capped).

    >>> r = run_python("print(int(input()) * 2)", stdin="21")
    >>> r.stdout, r.returncode, r.passed
    (b'42\\n', 0, True)
    """
    limits = limits or Limits()
    program = Program(source, stdin=stdin, kind="script", stdout="pass")
    return run_programs([program], limits=limits, backend=backend)
