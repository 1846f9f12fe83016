"""The interpreter a sandbox runs, the uid it runs as, and the host paths it may read.

Programs never run as root. When this process is root, every sandbox is started as uid/gid
65534 (``nobody``): the rlimit backend directly, bubblewrap as an unprivileged user whose
namespace maps only that uid. The kernel then refuses a mode, owner, time or extended-attribute
change of any host file or device node for want of ownership, whatever the seccomp filter
misses. uid 65534 must be able to read the interpreter; one under a private home (pyenv, conda,
a virtualenv in /root) is staged: its executable, libpython and standard library (no
site-packages, no test suite) are copied once into a root-owned, world-readable directory
(``/var/tmp/unmask-python-<key>``, or under ``$UNMASK_SANDBOX_STAGE_DIR``) and reused by every
later run on that machine. bubblewrap binds the copy at the interpreter's own path, so the
program sees the same ``sys.prefix``.

What a program may read is a short list (:func:`read_paths`): the interpreter's executable,
libpython and standard library, the system's shared libraries, the dynamic loader's cache and
the time zone data. bubblewrap binds only those, read-only; Landlock allows only those on
both backends.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass

NOBODY = 65534
STAGE_DIR_ENV = "UNMASK_SANDBOX_STAGE_DIR"
# Parts of the standard library no program needs: the installed packages (the sandbox runs -I -S),
# CPython's own test suite, GUI and packaging tools, and the static library for building extensions.
_NOT_STAGED = ("site-packages", "dist-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "config-*")
# System paths a program needs (the shared libraries its modules link; the loader's cache; zoneinfo).
_SYSTEM_PATHS = ("/lib", "/lib64", "/lib32", "/usr/lib", "/usr/lib64", "/usr/lib32",
                 "/etc/ld.so.cache", "/etc/localtime", "/usr/share/zoneinfo")  # fmt: skip


@functools.lru_cache(maxsize=None)
def host_python() -> str:
    """The real path of this process's interpreter."""
    return os.path.realpath(sys.executable)


@functools.lru_cache(maxsize=None)
def _prefix() -> str:
    return os.path.realpath(sys.base_prefix)


@functools.lru_cache(maxsize=None)
def _stdlib() -> str:
    """The standard library directory (``<prefix>/lib/pythonX.Y``)."""
    return os.path.realpath(sysconfig.get_paths(vars={"installed_base": sys.base_prefix, "base": sys.base_prefix})["stdlib"])


@functools.lru_cache(maxsize=None)
def _libpython(prefix: str) -> tuple[str, ...]:
    """The shared libpython files of an interpreter built with --enable-shared (none otherwise)."""
    return tuple(sorted(p for p in glob.glob(os.path.join(prefix, "lib", "libpython*.so*")) if os.path.isfile(p)))


@dataclass(frozen=True)
class Interpreter:
    """How a sandbox runs Python on this host.

    Fields:
        python: the executable's path as the sandbox sees it.
        uid: the uid the sandbox runs as (65534 when this process is root, else this process's).
        source: host directory holding the interpreter's files: the real prefix, or its staged copy.
        prefix: where the sandbox sees them (the real prefix under bubblewrap; ``source`` without it).
        env: extra environment as (name, value) pairs (the staged copy's library path, for the
            rlimit backend); a tuple, so the record is hashable (a warm sandbox's key, caches).
        staged: whether ``source`` is a staged copy.
    """

    python: str
    uid: int
    source: str
    prefix: str
    env: tuple[tuple[str, str], ...] = ()
    staged: bool = False


def _runs_as_nobody(python: str, env: dict[str, str]) -> bool:
    try:
        out = subprocess.run(
            [python, "-I", "-S", "-B", "-c", "import ctypes, resource, select, struct, hashlib, math"],
            user=NOBODY, group=NOBODY, extra_groups=[], env=env, cwd="/", capture_output=True, timeout=30,
        )  # fmt: skip
        return out.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _untrusted(path: str) -> str | None:
    """Why the stage directory at `path` must not be used (None: it is ours and nobody else can
    change it). A name someone else made first is never used: its contents would run as the sandbox."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} exists and is not a directory"
    if st.st_uid != os.geteuid():
        return f"{path} exists but was not made by uid {os.geteuid()}"
    if st.st_mode & 0o022:
        return f"{path} exists but others can write it"
    return None


def _stage_key() -> str:
    exe = host_python()
    parts = [exe, sys.version]
    for p in [exe, *_libpython(_prefix())]:
        st = os.stat(p)
        parts += [p, str(st.st_size), str(st.st_mtime_ns)]
    return hashlib.blake2b("\0".join(parts).encode(), digest_size=8).hexdigest()


def stage_interpreter(root: str | None = None) -> str:
    """A world-readable copy of this interpreter's prefix (executable, libpython, standard library),
    made once under ``root`` and reused; returns its path. Raises OSError when it cannot be made."""
    prefix, exe, stdlib = _prefix(), host_python(), _stdlib()
    for path in (exe, stdlib):
        if os.path.commonpath([prefix, path]) != prefix:
            raise OSError(f"{path} is not under the interpreter's prefix {prefix}")
    root = root or os.environ.get(STAGE_DIR_ENV) or "/var/tmp"
    final = os.path.join(root, f"unmask-python-{_stage_key()}")
    if _untrusted(final) is None:
        return final
    tmp = tempfile.mkdtemp(prefix=".unmask-python-", dir=root)
    try:
        for path in (exe, *_libpython(prefix)):
            target = os.path.join(tmp, os.path.relpath(path, prefix))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.islink(path):  # libpython3.11.so -> libpython3.11.so.1.0
                os.symlink(os.readlink(path), target)
            else:
                shutil.copy2(path, target)
        # copy2 keeps the sources' mtimes, so the copied __pycache__ stays valid (no recompiling).
        shutil.copytree(stdlib, os.path.join(tmp, os.path.relpath(stdlib, prefix)), symlinks=True,
                        ignore=shutil.ignore_patterns(*_NOT_STAGED))  # fmt: skip
        for dirpath, dirnames, filenames in os.walk(tmp):
            os.chmod(dirpath, 0o755)
            for name in filenames:
                p = os.path.join(dirpath, name)
                if not os.path.islink(p):
                    os.chmod(p, 0o755 if os.stat(p).st_mode & stat.S_IXUSR else 0o644)
        try:
            os.rename(tmp, final)  # atomic: a complete copy appears at once, or another process's did first
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    why = _untrusted(final)
    if why is not None:
        raise OSError(why)
    return final


_INTERPRETERS: dict[bool, Interpreter] = {}


def choose_interpreter(bwrap: bool) -> Interpreter:
    """The interpreter a sandbox of that backend runs, as uid 65534 when this process is root
    (found once per process). Raises OSError, saying why, when this process is root and uid 65534
    can run neither the interpreter nor a staged copy of it."""
    if bwrap in _INTERPRETERS:
        return _INTERPRETERS[bwrap]
    exe, prefix = host_python(), _prefix()
    if os.geteuid() != 0:
        interp = Interpreter(exe, os.geteuid(), prefix, prefix)
    elif _runs_as_nobody(exe, {}):
        interp = Interpreter(exe, NOBODY, prefix, prefix)
    else:
        stage = stage_interpreter()
        rel = os.path.relpath(exe, prefix)
        env = (("LD_LIBRARY_PATH", os.path.join(stage, "lib")),) if _libpython(prefix) else ()
        if not _runs_as_nobody(os.path.join(stage, rel), dict(env)):
            raise OSError(f"uid {NOBODY} cannot run the staged copy {os.path.join(stage, rel)} (is {os.path.dirname(stage)} searchable by all?)")
        if bwrap:  # bound at the real prefix: the sandbox sees the real paths
            interp = Interpreter(exe, NOBODY, stage, prefix, staged=True)
        else:
            interp = Interpreter(os.path.join(stage, rel), NOBODY, stage, stage, env, staged=True)
    _INTERPRETERS[bwrap] = interp
    return interp


def root_interpreter() -> Interpreter:
    """The interpreter as it is, for the weak mode that runs programs as this process's uid."""
    return Interpreter(host_python(), os.geteuid(), _prefix(), _prefix())


@functools.lru_cache(maxsize=None)
def interpreter_paths(interp: Interpreter) -> tuple[tuple[str, str], ...]:
    """(host path, sandbox path) of each interpreter file or directory a program reads: the
    executable, the standard library and libpython, taken from ``interp.source``, seen under ``interp.prefix``."""
    prefix = _prefix()
    out = []
    for p in (host_python(), _stdlib(), *_libpython(prefix)):
        if os.path.commonpath([prefix, p]) == prefix:
            rel = os.path.relpath(p, prefix)
            out.append((os.path.join(interp.source, rel), os.path.join(interp.prefix, rel)))
        else:
            out.append((p, p))
    return tuple(out)


def system_paths() -> list[str]:
    """The system paths a program reads (shared libraries, loader cache, zoneinfo) that exist here."""
    return [p for p in _SYSTEM_PATHS if os.path.lexists(p)]


@functools.lru_cache(maxsize=None)
def read_paths(interp: Interpreter) -> tuple[str, ...]:
    """Everything a program may read, as the sandbox sees the paths (for Landlock)."""
    out = [inside for _, inside in interpreter_paths(interp)]
    for p in system_paths():
        real = os.path.realpath(p)
        out.append(real)
    seen: list[str] = []
    for p in sorted(set(out), key=len):
        if not any(p == q or p.startswith(q.rstrip(os.sep) + os.sep) for q in seen):
            seen.append(p)
    return tuple(seen)
