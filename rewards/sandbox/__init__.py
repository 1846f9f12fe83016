"""Run untrusted Python programs (model-written code) in a sandboxed process.

A sandbox is ``python -I -S -B`` running a small supervisor
(rewards/sandbox/_sandbox_child.py) that runs each program ("unit": a test, a stdin/stdout
case, a script) in a forked child and kills it when it runs past its time limit.
By default a sandbox stays warm and runs one sample (one :func:`run_programs` call)
after another (rewards/sandbox/warm.py); ``warm=False`` starts one per call.

The package, one job per module: this module chooses the backend, probes what it
protects (:func:`sandbox_info`) and runs programs (:func:`run_programs`);
``programs.py`` holds the records (:class:`Program`, :class:`Limits`,
:class:`SandboxResult`, ...); ``interpreter.py`` picks the uid and the interpreter a sandbox runs
(uid 65534 when this process is root, with a staged copy of the interpreter where that uid cannot
read it) and the host paths programs may read; ``launch.py`` starts one sandbox process and speaks its
protocol; ``warm.py`` keeps warm ones; ``_sandbox_child.py`` is the supervisor itself, a
standalone stdlib-only program compiled from its path and run in the sandbox (it imports
nothing from this package, and the package never imports it).

The layers, from the outside in:

- **bubblewrap** (``bwrap``), where it works: new user, pid, network, ipc, uts,
  cgroup and mount namespaces; the file system is the interpreter, its standard library
  and the system's shared libraries mounted read-only (nothing else of the host) plus a
  size-capped tmpfs at ``/tmp`` (the working directory,
  the only writable place); an empty environment; all capabilities dropped; the
  whole sandbox dies with its parent. Probed once per process; where user
  namespaces are disabled (many containers and GPU hosts) the sandbox falls back
  to the layers below alone, which still hold on their own.
- **without bubblewrap**: the program runs in its own session in a fresh temp dir,
  with an empty environment. There is no size-capped file system
  here, so the program may not create files at all (seccomp: O_CREAT/O_TMPFILE,
  mkdir, mknod, link, symlink get EACCES, fallocate EOPNOTSUPP): what it writes goes
  to the files it already has open (its captured output), each capped by RLIMIT_FSIZE.
  This backend is refused (:class:`SandboxError`, saying how to fix it) where it
  would be weak: neither bubblewrap nor Landlock works, or there is no seccomp; ``UNMASK_SANDBOX_ALLOW_WEAK=1`` runs it anyway, with a warning that
  names what is missing (``sandbox_info()["weak"]``).
- **never root**: when this process is root, both backends start the sandbox as uid/gid
  65534 (bubblewrap as an unprivileged user, its namespace mapping only that uid), so the
  kernel refuses a mode, owner, time or xattr change of any host file or device node whatever
  the filter below misses. Where uid 65534 can run neither the interpreter nor a staged copy,
  the backend is refused, saying how to fix it (or runs as root in the weak mode).
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
backend (``auto``, ``bwrap`` or ``rlimit``; ``auto`` uses bubblewrap where it works) is
an argument: ``backend=`` here, the code reward's ``backend``, ``rewards.score(...,
sandbox=)`` and the trainer's ``scoring.sandbox`` pass it down. Where none is given, the
``UNMASK_SANDBOX`` environment variable is the fallback for direct library use (unmask
itself never sets it), and ``auto`` the default.

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

import logging
import os
import shutil
import sys
import tempfile
import threading
from typing import Any

from .interpreter import NOBODY, STAGE_DIR_ENV, choose_interpreter, root_interpreter
from .launch import _python, _start
from .programs import Judge, Limits, Program, SandboxError, SandboxResult, UnitResult
from .warm import _run_warm, shutdown_servers

# Reached through the package by tests and benchmarks (the result-stream parser, the warm pool).
from .launch import _parse_applied, _parse_records  # noqa: F401  isort: skip
from .warm import _SERVERS, _SERVERS_LOCK, _servers  # noqa: F401  isort: skip

__all__ = [
    "ALLOW_WEAK_ENV", "BACKENDS", "Judge", "Limits", "Program", "SandboxError", "SandboxResult", "UnitResult",
    "clear_probe_cache", "run_programs", "run_python", "sandbox_info", "shutdown_servers",
]  # fmt: skip

logger = logging.getLogger(__name__)

BACKENDS = ("bwrap", "rlimit")


# --- backend discovery ----------------------------------------------------------------

_PROBE_LOCK = threading.Lock()
_PROBES: dict[tuple, dict[str, Any]] = {}


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


def _weak_reasons(info: dict[str, Any], bwrap_error: str | None, stage_error: str | None = None) -> tuple[list[str], list[str]]:
    """What a backend lacks to be safe here, and how to fix it (empty: nothing lacks).

    stage_error: why the programs cannot run as uid 65534 (this process is root and uid 65534
    can run neither the interpreter nor a staged copy of it); None when they do.
    """
    missing: list[str] = []
    fixes: list[str] = []
    if info["uid"] == 0:
        missing.append(
            f"the programs would run as root (uid 0): uid {NOBODY} cannot run {_python()} and no copy of it could "
            f"be staged ({stage_error or 'not tried'}), so a root-owned host file's mode, owner, times or extended "
            "attributes would be theirs to change wherever the seccomp filter misses a route"
        )
        fixes.append(
            f"make the interpreter readable by uid {NOBODY} (`chmod -R o+rX {os.path.realpath(sys.base_prefix)}` and "
            f"`chmod o+x` on each directory above it), or set {STAGE_DIR_ENV} to a directory every user can search "
            "where unmask may stage a copy of the interpreter"
        )
    if info["backend"] != "bwrap" and not info["landlock_abi"]:
        why_not_bwrap = _bwrap_unavailable(bwrap_error)
        if why_not_bwrap is not None:
            missing.append(
                f"neither bubblewrap ({why_not_bwrap}) nor Landlock is available, so nothing confines the programs' "
                f"file access beyond the permissions of their uid"
            )
            fixes.append("install bubblewrap and enable unprivileged user namespaces (sysctl "
                         "kernel.unprivileged_userns_clone=1; on Ubuntu also "
                         "kernel.apparmor_restrict_unprivileged_userns=0)")  # fmt: skip
            fixes.append("use a kernel with Landlock (Linux 5.13 or later with landlock in its lsm= list)")
        elif info["uid"] == 0:
            fixes.append("use the bubblewrap backend, which works here (UNMASK_SANDBOX=auto or bwrap)")
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
    program's filter, showed (see ``_probe`` in rewards/sandbox/_sandbox_child.py); nothing is
    assumed from the backend. The rlimit backend is refused (SandboxError) when it
    would be weak here, unless ``UNMASK_SANDBOX_ALLOW_WEAK=1`` (then a warning says
    what is missing). ``bwrap_error``: why bubblewrap could not start, when known.
    """
    info: dict[str, Any] = {"backend": backend, "python": _python()}
    config: dict[str, Any] = {"backend": backend, "landlock": _USE_LANDLOCK}
    stage_error = None
    try:  # as uid 65534 when this process is root (rewards/sandbox/interpreter.py)
        config["interp"] = choose_interpreter(backend == "bwrap")
    except OSError as exc:
        stage_error = str(exc)
        config["interp"] = root_interpreter()
    if config["interp"].staged:
        info["staged_interpreter"] = config["interp"].source
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
        info["filesystem"] = "read-only interpreter, standard library and system libraries only, tmpfs /tmp" + (
            " (size-capped)" if config["tmpfs_size"] else ""
        )
    else:
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
    missing, fixes = _weak_reasons(info, bwrap_error, stage_error)
    if missing:
        if not _allow_weak():
            raise SandboxError(
                f"refusing the {backend} sandbox, its protection would be weak here: " + "; ".join(missing)
                + ". To fix it: " + "; or ".join(fixes)
                + f". Or set {ALLOW_WEAK_ENV}=1 to run with these protections missing."
            )  # fmt: skip
        logger.warning("code sandbox running in WEAK mode (%s=1), protections missing: %s", ALLOW_WEAK_ENV, "; ".join(missing))
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
    that this process keeps for the next run (rewards/sandbox/warm.py; nothing of
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
