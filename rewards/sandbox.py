"""Run untrusted Python programs (model-written code) in a sandboxed process.

A sandbox is ``python -I -S -B`` running a small supervisor
(rewards/_sandbox_child.py) that runs each program ("unit": a test, a stdin/stdout
case, a script) in a forked child and kills it when it runs past its time limit.
By default a sandbox stays warm and runs one sample (one :func:`run_programs` call)
after another (see "warm sandboxes" below); ``warm=False`` starts one per call.
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
  read by ``nobody``, it runs as uid/gid 65534. There is no size-capped file system
  here, so the program may not create files at all (seccomp: O_CREAT/O_TMPFILE,
  mkdir, mknod, link, symlink get EACCES, fallocate EOPNOTSUPP): what it writes goes
  to the files it already has open (its captured output), each capped by RLIMIT_FSIZE.
  This backend is refused (:class:`SandboxError`, saying how to fix it) where it
  would be weak: the programs would run as uid 0 (uid 65534 cannot read the
  interpreter) without Landlock, neither bubblewrap nor Landlock works, or there is
  no seccomp; ``UNMASK_SANDBOX_ALLOW_WEAK=1`` runs it anyway, with a warning that
  names what is missing (``sandbox_info()["weak"]``).
- **always** (where the kernel supports them): Landlock (read-only access to the
  interpreter and system libraries, full access only to the working directory, no
  TCP, no signals out of the sandbox), every capability dropped, no new
  privileges, and a seccomp filter on the program's process: no fork/clone of new
  processes or threads (a fork or thread bomb gets EAGAIN, so it makes no host tasks
  even without a pid namespace), no exec, no sockets, no SysV IPC or POSIX message
  queues, no memfd; no signals to other processes by any route (kill and friends
  only to itself; fcntl F_SETOWN/F_SETSIG/F_SETOWN_EX, ioctl FIOSETOWN/SIOCSPGRP,
  pidfds refused), nothing that reads or changes another process (ptrace,
  process_vm_*, process_madvise, prlimit, priority, scheduler, affinity); no
  mount/namespaces/bpf/io_uring/keyrings; no file metadata changes (chmod, chown,
  utime, xattrs, inode flags), which Landlock does not cover.
- **a fresh directory per sample**: each sample runs in a directory made for it inside
  the work directory, removed after it with everything it left there.
- **rlimits** per program: CPU seconds, address space, file size, open files,
  stack, no core dumps (and processes, as uid 65534 where seccomp is unavailable); a wall-clock limit per program and
  one for the whole run, after which the process group (and the namespace) is
  killed. Output is read back up to a cap; a program that prints more is stopped.

:func:`sandbox_info` reports which of these are active on this machine, each from an
attempt its probe made inside the sandbox under the program's filter. The
backend is chosen with ``backend=`` or the ``UNMASK_SANDBOX`` environment variable
(``auto``, ``bwrap`` or ``rlimit``; ``auto`` uses bubblewrap where it works).

Verdicts: a program with a :class:`Judge` (what the code reward builds for assert
tests) never decides its own verdict. Its process is forked from a zygote that was
forked before the supervisor read the tests, runs the solution and then only answers
calls from a judge process, in plain data; the judge runs the tests and reports on a
pipe only it holds. The result stream to the host is parsed strictly (one start
record, one record per unit in order, the end record last); anything else is a
:class:`SandboxError`, never a partial read.

Not covered: the program may use all the CPU time and memory its limits allow.
"""

from __future__ import annotations

import atexit
import functools
import logging
import marshal
import os
import select
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
    file_size_mb: int = 16  # largest file a program may write, captured output included (rlimit: no new files)
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
class Judge:
    """Tests run apart from the program they test (see :class:`Program`).

    ``code``: the test code, run in a judge process with ``prefix`` (trusted setup,
    e.g. a HumanEval prompt's helpers) executed first. Each of ``names`` (the free
    names of the tests) that neither the prefix nor the builtins define, and each
    key of ``aliases`` (``{"candidate": "f", "f": "f"}``), is bound to a proxy that
    calls the program's function of that name with plain-data arguments and returns
    its plain-data result. The test passes when ``code`` runs to its end.
    """

    code: str
    prefix: str = ""
    names: tuple[str, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)


@dataclass
class Program:
    """One program to run in the sandbox.

    ``kind``: ``"test"`` passes only if the program runs to its end (a
    ``SystemExit`` fails it); ``"io"`` and ``"script"`` also pass on ``exit(0)``.
    ``stdout``: ``"capture"`` (returned in :attr:`UnitResult.output`, at most
    ``output_limit`` bytes), ``"discard"``, or ``"pass"`` (to the run's stdout).
    ``judge`` (``kind="test"`` only): the tests, run in a separate judge process that
    decides the verdict; the program's process then only runs ``source`` and answers
    the judge's calls, and never sees the tests (see rewards/_sandbox_child.py).
    """

    source: str
    stdin: bytes | str | None = None
    kind: str = "test"
    stdout: str = "discard"
    output_limit: int = 1 << 20
    timeout_s: float | None = None
    judge: Judge | None = None

    def __post_init__(self) -> None:
        if self.judge is not None and (self.kind != "test" or self.stdin is not None or self.stdout != "discard"):
            raise ValueError("a judged program is a test (kind='test') with no stdin and discarded output")


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


ALLOW_WEAK_ENV = "UNMASK_SANDBOX_ALLOW_WEAK"
# Test hook: False makes the supervisor skip Landlock, to see what the probes and the weak
# mode do on a kernel without it.
_USE_LANDLOCK = True


def _allow_weak() -> bool:
    return os.environ.get(ALLOW_WEAK_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _bwrap_unavailable(bwrap_error: str | None) -> str | None:
    """Why bubblewrap cannot be used here (None: it works), for the rlimit backend's weak-mode check."""
    if bwrap_error is not None:
        return bwrap_error
    cached = next((i for (b, *_), i in _PROBES.items() if b in ("auto", "bwrap") and i.get("backend") == "bwrap"), None)
    if cached is not None:
        return None
    try:
        _probe("bwrap")
        return None
    except SandboxError as exc:
        return str(exc)


def _weak_reasons(info: dict[str, Any], bwrap_error: str | None) -> tuple[list[str], list[str]]:
    """What the rlimit backend lacks to be safe here, and how to fix it (empty: nothing lacks)."""
    missing: list[str] = []
    fixes: list[str] = []
    if not info["landlock_abi"]:
        why_not_bwrap = _bwrap_unavailable(bwrap_error)
        chmod = (
            f"make the interpreter readable by uid {NOBODY} (`chmod -R o+rX {os.path.realpath(sys.base_prefix)}` and "
            f"`chmod o+x` on each directory above it) so that the programs run as uid {NOBODY}"
        )
        if info["uid"] == 0:
            missing.append(
                f"the programs would run as root (uid 0), because uid {NOBODY} cannot run {_python()}, and without "
                "Landlock every root-owned host file (the project, the virtualenv, the home directory) would be "
                "writable by them"
            )
        if why_not_bwrap is not None:
            missing.append(
                f"neither bubblewrap ({why_not_bwrap}) nor Landlock is available, so nothing confines the programs' "
                f"file access beyond the permissions of their uid"
            )
        if missing:
            if why_not_bwrap is not None:
                fixes.append("install bubblewrap and enable unprivileged user namespaces (sysctl "
                             "kernel.unprivileged_userns_clone=1; on Ubuntu also "
                             "kernel.apparmor_restrict_unprivileged_userns=0)")  # fmt: skip
                fixes.append("use a kernel with Landlock (Linux 5.13 or later with landlock in its lsm= list)")
                if info["uid"] == 0:  # helps, but without bubblewrap or Landlock it is not enough on its own
                    fixes.append(f"(together with one of those) {chmod}")
            else:
                fixes.append("use the bubblewrap backend, which works here (UNMASK_SANDBOX=auto or bwrap)")
                fixes.append(chmod)
                fixes.append("use a kernel with Landlock (Linux 5.13 or later with landlock in its lsm= list)")
    if not info["seccomp"]:
        missing.append(
            "no seccomp filter on this machine (x86_64 or aarch64 Linux only), so nothing stops forks, exec, "
            "sockets, threads, SysV IPC or signals to other processes"
        )
        fixes.append("run on x86_64 or aarch64, or use the bubblewrap backend")
    return missing, fixes


def _probe(backend: str, bwrap_error: str | None = None) -> dict[str, Any]:
    """Start a sandbox once and record what its probes found. Raises SandboxError if it cannot start.

    Every ``*_blocked`` key is what an attempt made inside the sandbox, under the
    program's filter, showed (see ``_probe`` in rewards/_sandbox_child.py); nothing is
    assumed from the backend. The rlimit backend is refused (SandboxError) when it
    would be weak here, unless ``UNMASK_SANDBOX_ALLOW_WEAK=1`` (then a warning says
    what is missing). ``bwrap_error``: why bubblewrap could not start, when known.
    """
    info: dict[str, Any] = {"backend": backend, "python": _python()}
    config: dict[str, Any] = {"backend": backend, "landlock": _USE_LANDLOCK}
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
        # A host file outside the work dir that any uid could write but for the sandbox.
        fd, target = tempfile.mkstemp(prefix=f"unmask-probe-{os.getpid()}-")
        os.close(fd)
        try:
            os.chmod(target, 0o666)
            config["probe_write"] = target
            applied = _start(config, [], Limits(timeout_s=20), probe=True).protections
        finally:
            config.pop("probe_write", None)
            for path in (target, target + ".new"):
                try:
                    os.unlink(path)
                except OSError:
                    pass
        info["namespaces"] = []
        info["filesystem"] = (
            "private temp dir"
            + (" (Landlock: only writable place)" if applied.get("landlock") else "")
            + ("; no new files (seccomp), writes capped per file" if applied.get("file_create_blocked") else "")
        )
    uid = applied.get("uid")
    seccomp = bool(applied.get("seccomp")) and bool(applied.get("fork_blocked"))

    def probed(key: str) -> bool:
        return bool(applied.get(key))

    info["uid"] = uid
    info["unprivileged_uid"] = uid != 0
    info["capabilities_dropped"] = probed("caps_dropped")
    info["landlock_abi"] = applied.get("landlock", 0)
    info["seccomp"] = seccomp
    # Without seccomp, RLIMIT_NPROC stops a fork bomb, but only under the dedicated uid 65534.
    info["fork_blocked"] = seccomp or uid == NOBODY
    info["threads_blocked"] = probed("threads_blocked")
    info["network_blocked"] = probed("socket_blocked")
    info["sysv_ipc_blocked"] = probed("sysv_ipc_blocked")
    info["kill_blocked"] = probed("kill_blocked")
    info["fcntl_signals_blocked"] = probed("fcntl_signals_blocked")
    info["pidfd_blocked"] = probed("pidfd_blocked")
    info["signals_to_host_blocked"] = info["kill_blocked"] and info["fcntl_signals_blocked"] and info["pidfd_blocked"]
    info["prlimit_blocked"] = probed("prlimit_blocked")
    info["memfd_blocked"] = probed("memfd_blocked")
    info["metadata_change_blocked"] = probed("metadata_change_blocked")
    # Writing covers metadata: Landlock does not, so a mode, owner, time or xattr change is refused by the filter.
    info["host_writes_blocked"] = probed("outside_write_blocked") and info["metadata_change_blocked"]
    info["file_create_blocked"] = probed("file_create_blocked")
    # Everything a program writes is bounded: a size-capped tmpfs, or no new files and RLIMIT_FSIZE.
    info["writes_capped"] = bool(config.get("tmpfs_size")) or info["file_create_blocked"]
    info["rlimits"] = ["cpu", "address_space", "file_size", "open_files", "stack", "core"] + (
        ["processes"] if (not seccomp and uid == NOBODY) else []
    )
    if "error" in applied:
        info["probe_error"] = applied["error"]
    info["weak"] = False
    if backend != "bwrap":
        missing, fixes = _weak_reasons(info, bwrap_error)
        if missing:
            if not _allow_weak():
                raise SandboxError(
                    "refusing the rlimit sandbox, its protection would be weak here: " + "; ".join(missing)
                    + ". To fix it: " + "; or ".join(fixes)
                    + f". Or set {ALLOW_WEAK_ENV}=1 to run with these protections missing."
                )  # fmt: skip
            logger.warning(
                "code sandbox running in WEAK mode (%s=1), protections missing: %s", ALLOW_WEAK_ENV, "; ".join(missing)
            )
            info["weak"] = True
            info["weak_reasons"] = missing
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
        key = (requested, _python(), _allow_weak(), _USE_LANDLOCK)
        if key in _PROBES:
            return _PROBES[key]
        if requested == "auto":
            try:
                info = _probe("bwrap")
            except SandboxError as exc:
                logger.warning("bubblewrap sandbox unavailable (%s); falling back to rlimits", exc)
                try:
                    info = _probe("rlimit", bwrap_error=str(exc))
                except SandboxError as weak:
                    raise SandboxError(f"bubblewrap sandbox unavailable ({exc}), and {weak}") from weak
                info["fallback_reason"] = str(exc)
        else:
            info = _probe(requested)
        _PROBES[key] = info
        return info


def sandbox_info(backend: str | None = None) -> dict[str, Any]:
    """Report the sandbox's protections on this machine (probes once, then cached).

    Every ``*_blocked`` key reports an attempt made in a probe run, inside the sandbox
    and under the program's seccomp filter: True only when that attempt failed.

    - ``backend`` (``"bwrap"`` or ``"rlimit"``), ``python``, ``namespaces``,
      ``filesystem``, ``uid``, ``unprivileged_uid``, ``capabilities_dropped``,
      ``landlock_abi`` (0: unavailable), ``seccomp`` (installed, and a fork failed
      under it), ``fork_blocked`` (seccomp, or RLIMIT_NPROC as uid 65534), ``rlimits``;
    - ``threads_blocked`` (a thread could not start), ``network_blocked`` (a socket
      could not be made), ``sysv_ipc_blocked`` (shmget, msgget, semget),
      ``kill_blocked`` (kill on the parent), ``fcntl_signals_blocked`` (fcntl
      F_SETOWN/F_SETSIG/F_SETOWN_EX on a pipe, ioctl FIOSETOWN), ``pidfd_blocked``
      (pidfd_open on the parent, pidfd_getfd), ``signals_to_host_blocked`` (all three
      of kill, fcntl and pidfd), ``prlimit_blocked`` (prlimit on the parent),
      ``memfd_blocked``, ``metadata_change_blocked`` (chmod, utime, chown and setxattr
      on the work directory, each refused by the filter: Landlock does not cover
      metadata), ``host_writes_blocked`` (opening an existing host file outside the
      sandbox for writing, and on the rlimit backend also writing and creating next to a
      world-writable file in the host's temp dir; and ``metadata_change_blocked``), ``file_create_blocked``
      (a new file, directory or O_TMPFILE in the work dir: on the rlimit backend,
      where there is no size-capped file system), ``writes_capped`` (everything a
      program writes is bounded);
    - ``weak``: True only on the rlimit backend run with ``UNMASK_SANDBOX_ALLOW_WEAK=1``
      where it would otherwise be refused (``weak_reasons`` says why);
      ``fallback_reason`` when bubblewrap was wanted but could not start;
      ``probe_error`` if the probe itself failed.
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


def _command(config: dict[str, Any], limits: Limits, tag: str) -> tuple[list[str], dict[str, Any], str, str | None]:
    """(command, Popen keywords, the work directory the programs see, the host temp dir to remove or None)."""
    if config["backend"] == "bwrap":
        cmd = _bwrap_command(config["bwrap"], (limits.tmpfs_mb << 20) if config.get("tmpfs_size") else None)
        popen_kw: dict[str, Any] = {"env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}}
        workdir, workdir_host = "/tmp", None
    else:
        workdir_host = tempfile.mkdtemp(prefix=f"unmask-sandbox-{os.getpid()}-")
        workdir = workdir_host
        cmd = []
        popen_kw = {"env": {"LANG": "C.UTF-8", "PATH": "/usr/bin:/bin", "HOME": workdir}, "cwd": workdir}
        if config.get("drop_uid"):
            os.chown(workdir, NOBODY, NOBODY)
            popen_kw.update(user=NOBODY, group=NOBODY, extra_groups=[])
    # The tag names the process that started the sandbox (for ps, and for tests that look
    # for leftovers); the bootstrap ignores it.
    cmd += [_python(), "-I", "-S", "-B", "-c", _BOOTSTRAP, f"{tag}:{os.getpid()}"]
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
        "seccomp": True,
        "read_paths": [*_host_read_paths(), "/dev/urandom", "/dev/random", "/dev/zero"],
        "write_paths": [workdir, "/dev/null"],
        "probe": probe,
        "probe_write": config.get("probe_write") if probe else None,  # a host file outside the work dir (_probe)
    }
    code = _supervisor_code()
    first = marshal.dumps(settings)
    return b"%010d" % len(code) + code + b"%010d" % len(first) + first


def _sample_frames(programs: list[Program], limits: Limits, stop_on_failure: bool) -> bytes:
    """One sample: its programs, then its tests' judges. The supervisor makes the process the
    programs come from between reading the two (rewards/_sandbox_child.py)."""
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


# --- warm sandboxes ------------------------------------------------------------------------
#
# Starting a sandbox (bubblewrap, an interpreter, Landlock, the filter) costs more than most
# programs do. A warm sandbox ("server") is started once and runs one sample after another:
# every sample gets processes forked from a zygote made before any sample was read (through a
# zygote of its own), its work directory is emptied after it, and a server whose clean-up
# fails exits instead of serving again. Servers are started from one long-lived thread, so the
# parent-death signal (bubblewrap's --die-with-parent, the fallback's PR_SET_PDEATHSIG) is tied
# to this process, not to whichever short-lived thread asked first.


class _Spawner:
    """Runs Popen calls on one daemon thread that lives as long as the process."""

    def __init__(self) -> None:
        import queue

        self.pid = os.getpid()
        self.queue: Any = queue.Queue()
        threading.Thread(target=self._loop, daemon=True, name="unmask-sandbox-spawner").start()

    def _loop(self) -> None:
        while True:
            fn, box, done = self.queue.get()
            try:
                box.append((True, fn()))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                box.append((False, exc))
            done.set()

    def call(self, fn: Any) -> Any:
        box: list = []
        done = threading.Event()
        self.queue.put((fn, box, done))
        done.wait()
        ok, value = box[0]
        if not ok:
            raise value
        return value


class _ServerGone(Exception):
    """A warm sandbox exited before it started the sample (it is replaced, the sample retried)."""


class _Server:
    """One warm sandbox: a supervisor that runs sample after sample (rewards/_sandbox_child.py, serve)."""

    def __init__(self, config: dict[str, Any], limits: Limits, spawner: _Spawner) -> None:
        self.backend = config["backend"]
        self.result_r, result_w = os.pipe()
        self.workdir_host: str | None = None
        self.healthy = True
        try:
            cmd, popen_kw, workdir, self.workdir_host = _command(config, limits, "unmask-sandbox")
            settings = _settings(config, workdir, result_w, limits, probe=False, serve=True)
            try:
                self.proc = spawner.call(lambda: subprocess.Popen(
                    cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    pass_fds=(result_w,), start_new_session=True, **popen_kw,
                ))  # fmt: skip
            except OSError as exc:
                raise SandboxError(f"cannot start the sandbox: {exc}") from exc
        except BaseException:
            os.close(self.result_r)
            if self.workdir_host:
                shutil.rmtree(self.workdir_host, ignore_errors=True)
            raise
        finally:
            os.close(result_w)
        assert self.proc.stdin is not None
        self.stdin = self.proc.stdin.fileno()
        os.set_blocking(self.stdin, False)
        self.pending = settings  # written with the first sample

    def alive(self) -> bool:
        return self.healthy and self.proc.poll() is None

    def run(self, programs: list[Program], limits: Limits, stop_on_failure: bool) -> SandboxResult:
        kinds = [p.kind for p in programs]
        units = [UnitResult("skipped", kind=k) for k in kinds]
        view = memoryview(self.pending + _sample_frames(programs, limits, stop_on_failure))
        self.pending = b""
        buf = bytearray()
        start = time.monotonic()
        deadline = start + limits.timeout_s + _STARTUP_GRACE_S
        timed_out = truncated = gone = done = False
        started = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            readable, writable, _ = select.select([self.result_r], [self.stdin] if view else [], [], remaining)
            if writable:
                try:
                    view = view[os.write(self.stdin, view[:65536]):]
                except (BrokenPipeError, BlockingIOError) as exc:
                    if isinstance(exc, BrokenPipeError):
                        gone = True
                        break
            if readable:
                data = os.read(self.result_r, 65536)
                if not data:
                    gone = True
                    break
                buf += data
                if len(buf) > _RESULT_CAP:
                    truncated = True
                    break
                if buf.endswith(b"D\n"):
                    started, done = _parse_records(bytes(buf), units, kinds)
                    if done:
                        break
        if not done:
            self.stop(kill=True)
            started, _ = _parse_records(bytes(buf), units, kinds)
            if started is None:
                if gone:
                    raise _ServerGone()
                raise SandboxError(f"the sandbox did not start within {limits.timeout_s + _STARTUP_GRACE_S:.1f}s")
            status = "output_limit" if truncated else "timeout" if timed_out else "died"
            for i, u in enumerate(units):
                if u.status == "skipped":
                    units[i] = UnitResult(status, -1, 0.0, "", b"", kinds[i])
                    break
        return SandboxResult(units=units, timed_out=timed_out, output_truncated=truncated, duration_s=time.monotonic() - start,
                             backend=self.backend, protections=started or {})  # fmt: skip

    def stop(self, kill: bool = False) -> None:
        self.healthy = False
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        if not kill:
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                kill = True
        if kill or self.proc.poll() is None:
            _kill(self.proc)
        self.proc.wait()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            os.close(self.result_r)
        except OSError:
            pass
        if self.workdir_host:
            shutil.rmtree(self.workdir_host, ignore_errors=True)


_SERVERS_LOCK = threading.Lock()
_SERVERS: dict[str, Any] = {"pid": None, "idle": {}, "spawner": None}
_MAX_IDLE = 32  # per kind of sandbox: enough for every scoring thread of a big machine


def _server_key(config: dict[str, Any], limits: Limits) -> tuple:
    return (config["backend"], config.get("bwrap"), bool(config.get("tmpfs_size")), bool(config.get("drop_uid")),
            config.get("landlock", True), limits.tmpfs_mb, _python())  # fmt: skip


def _servers() -> dict[str, Any]:
    if _SERVERS["pid"] != os.getpid():  # a forked child must not drive its parent's servers
        _SERVERS.update(pid=os.getpid(), idle={}, spawner=None)
    return _SERVERS


def _run_warm(config: dict[str, Any], programs: list[Program], limits: Limits, stop_on_failure: bool) -> SandboxResult:
    key = _server_key(config, limits)
    for attempt in range(2):
        server = None
        with _SERVERS_LOCK:
            state = _servers()
            idle = state["idle"].setdefault(key, [])
            while idle and server is None:
                candidate = idle.pop()
                if candidate.alive():
                    server = candidate
                else:
                    candidate.stop(kill=True)
            if state["spawner"] is None:
                state["spawner"] = _Spawner()
            spawner = state["spawner"]
        if server is None:
            server = _Server(config, limits, spawner)
        try:
            result = server.run(programs, limits, stop_on_failure)
        except _ServerGone:
            if attempt == 0:
                continue
            raise SandboxError("the sandbox exited before it started (twice)") from None
        except BaseException:
            server.stop(kill=True)
            raise
        if server.alive():
            with _SERVERS_LOCK:
                idle = _servers()["idle"].setdefault(key, [])
                if len(idle) < _MAX_IDLE:
                    idle.append(server)
                    server = None
        if server is not None:
            server.stop()
        return result
    raise AssertionError("unreachable")


def shutdown_servers() -> None:
    """Stop the warm sandboxes of this process (they start again when needed)."""
    with _SERVERS_LOCK:
        state = _servers()
        servers = [s for idle in state["idle"].values() for s in idle]
        state["idle"] = {}
    for s in servers:
        s.stop()


atexit.register(shutdown_servers)


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
    warm: bool | None = None,
) -> SandboxResult:
    """Run ``programs`` one after another in one sandbox; one :class:`UnitResult` each.

    Each program gets a fresh process (forked from a zygote of this run), so one
    program's state, crash or timeout does not affect the next. With
    ``stop_on_failure`` the rest are skipped after the first that fails. Raises
    :class:`SandboxError` only when the sandbox itself cannot run.

    ``warm`` (default: on, unless ``UNMASK_SANDBOX_WARM=0``): run in a warm sandbox
    that this process keeps for the next run (see "warm sandboxes" above; nothing of
    one run reaches the next). Programs with ``stdout="pass"`` always get a sandbox
    of their own.
    """
    limits = limits or Limits()
    info = _backend_info(backend)
    programs = list(programs)
    if warm is None:
        warm = os.environ.get("UNMASK_SANDBOX_WARM", "1").strip().lower() not in ("0", "false", "no", "off")
    if warm and not any(p.stdout == "pass" for p in programs):
        return _run_warm(info["_config"], programs, limits, stop_on_failure)
    return _start(info["_config"], programs, limits, stop_on_failure=stop_on_failure)


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
