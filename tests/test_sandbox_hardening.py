"""The sandbox's limits hold without a pid or ipc namespace, as root, with seccomp (issue 13).

Hostile programs written for this project, one per class of harm the rlimit fallback used
to let through: SysV IPC left behind, thread bombs, signals through fcntl/ioctl, reaching
the parent through pidfds and friends, filling the host's disk with many capped files,
memory outside the address-space limit (memfd). Each fails inside the sandbox and the
host is checked afterwards. Every test runs with bubblewrap and with the forced fallback
(``backend="rlimit"``); a test whose protection is not active here is skipped, never run
unprotected. Then: the probe report says only what its probes saw, and the fallback is
refused where it would be weak unless ``UNMASK_SANDBOX_ALLOW_WEAK=1``.
"""

import ctypes
import importlib.util
import logging
import os
import re
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

from rewards import sandbox as sb
from rewards import sandbox_info

from .test_rewards_sandbox import _info, backend, require, reward, wait_no_leftovers, leftover_sandboxes  # noqa: F401

CHILD = Path(sb.__file__).with_name("_sandbox_child.py")


def run(backend, source, **limits):
    """Run ``source`` as a script with its stdout captured; return the one UnitResult."""
    program = sb.Program(source, kind="script", stdout="capture")
    result = sb.run_programs([program], limits=sb.Limits(**limits) if limits else None, backend=backend)
    return result.units[0]


def sandbox_tasks():
    """Threads of all processes of this test process's sandboxes (seen from the host)."""
    total = 0
    for pid in leftover_sandboxes():
        try:
            total += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            pass
    return total


class Sampler:
    """Call ``fn`` every few milliseconds in a thread while the block runs; keep the largest value."""

    def __init__(self, fn):
        self.fn, self.peak, self._stop = fn, 0, threading.Event()

    def __enter__(self):
        def loop():
            while not self._stop.is_set():
                self.peak = max(self.peak, self.fn())
                time.sleep(0.005)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.fn())


def load_child():
    spec = importlib.util.spec_from_file_location("unmask_sandbox_child", CHILD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines functions only: main() runs under __main__
    return module


# --- the seccomp tables against the kernel's syscall numbers --------------------------------

X86_64_HEADERS = ["/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "/usr/include/asm/unistd_64.h"]
GENERIC_HEADER = "/usr/include/asm-generic/unistd.h"  # aarch64 uses the generic table

COMMON_DENY = """clone clone3 execve execveat socket tkill pidfd_send_signal pidfd_open pidfd_getfd ptrace
process_vm_readv process_vm_writev kcmp process_madvise process_mrelease move_pages migrate_pages
get_robust_list setpriority ioprio_set sched_setaffinity sched_setscheduler sched_setparam sched_setattr
setsid setpgid unshare setns mount umount2 pivot_root chroot open_tree move_mount fsopen fsconfig fsmount
mount_setattr bpf perf_event_open userfaultfd io_uring_setup io_uring_enter io_uring_register add_key
request_key keyctl kexec_load kexec_file_load reboot init_module delete_module finit_module swapon swapoff
sethostname setdomainname personality name_to_handle_at open_by_handle_at shmget shmat shmctl shmdt semget
semop semctl semtimedop msgget msgsnd msgrcv msgctl mq_open mq_unlink mq_timedsend mq_timedreceive mq_notify
mq_getsetattr memfd_create memfd_secret
fchmod fchmodat fchmodat2 fchown fchownat utimensat setxattr lsetxattr fsetxattr setxattrat removexattr lremovexattr
fremovexattr removexattrat""".split()
# Syscalls newer than some distributions' headers; numbered alike on every architecture since Linux 5.1.
UNIFIED = {"fchmodat2": 452, "setxattrat": 463, "removexattrat": 466}
EXPECTED = {
    "x86_64": {
        "deny": COMMON_DENY + ["fork", "vfork", "iopl", "ioperm", "chmod", "chown", "lchown", "utime", "utimes", "futimesat"],
        "create_deny": "creat mkdir mkdirat mknod mknodat link linkat symlink symlinkat openat2 fallocate".split(),
        "create_flags": [("open", 1), ("openat", 2)],
        "self_only": "kill tgkill rt_sigqueueinfo rt_tgsigqueueinfo".split(),
        "self_or_zero": ["prlimit64"],
        "fcntl": "fcntl",
        "ioctl": "ioctl",
    },
    "aarch64": {
        "deny": COMMON_DENY,
        "create_deny": "mkdirat mknodat linkat symlinkat openat2 fallocate".split(),
        "create_flags": [("openat", 2)],
        "self_only": "kill tgkill rt_sigqueueinfo rt_tgsigqueueinfo".split(),
        "self_or_zero": ["prlimit64"],
        "fcntl": "fcntl",
        "ioctl": "ioctl",
    },
}


def syscall_numbers(path):
    numbers = {}
    for name, nr in re.findall(r"#define __NR(?:3264)?_(\w+)\s+(\d+)\b", Path(path).read_text()):
        numbers.setdefault(name, int(nr))
    return numbers


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_seccomp_tables_match_the_kernel_syscall_numbers(arch):
    # Every number in the filter's tables is the syscall the comment names, per the kernel's headers.
    headers = X86_64_HEADERS if arch == "x86_64" else [GENERIC_HEADER]
    header = next((h for h in headers if os.path.exists(h)), None)
    if header is None:
        pytest.skip(f"no kernel syscall header for {arch} here")
    nr = {**UNIFIED, **syscall_numbers(header)}
    table = {"x86_64": load_child()._X86_64, "aarch64": load_child()._AARCH64}[arch]
    want = EXPECTED[arch]
    assert sorted(table["deny"]) == sorted(nr[n] for n in want["deny"])
    assert sorted(table["create_deny"]) == sorted(nr[n] for n in want["create_deny"])
    assert list(table["create_flags"]) == [(nr[n], i) for n, i in want["create_flags"]]
    assert list(table["self_only"]) == [nr[n] for n in want["self_only"]]
    assert list(table["self_or_zero"]) == [nr[n] for n in want["self_or_zero"]]
    assert (table["fcntl"], table["ioctl"]) == (nr["fcntl"], nr["ioctl"])
    assert table["deny"][nr["clone"]] == 11  # EAGAIN, threads included
    assert table["deny"][nr["clone3"]] == 38  # ENOSYS: glibc falls back to clone
    assert table["create_deny"][nr["openat2"]] == 38  # ENOSYS: Python falls back to openat, which is inspected


# --- SysV IPC and POSIX message queues ------------------------------------------------------


def sysv_objects():
    found = set()
    for kind in ("shm", "msg", "sem"):
        try:
            lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            found.add((kind, int(fields[0]), int(fields[1])))  # key, id
    return found


def remove_sysv(key, before):
    """Remove what a failed test left: objects with ``key``, and new private segments whose creator is gone."""
    libc = ctypes.CDLL(None, use_errno=True)
    for get, remove in ((lambda: libc.shmget(key, 0, 0), lambda i: libc.shmctl(i, 0, None)),
                        (lambda: libc.msgget(key, 0), lambda i: libc.msgctl(i, 0, None)),
                        (lambda: libc.semget(key, 0, 0), lambda i: libc.semctl(i, 0, 0))):  # fmt: skip
        ident = get()
        if ident >= 0:
            remove(ident)
    try:
        lines = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except OSError:
        return
    for line in lines:
        fields = line.split()
        k, ident, cpid = int(fields[0]), int(fields[1]), int(fields[4])
        if k == 0 and ("shm", k, ident) not in before and not os.path.exists(f"/proc/{cpid}"):
            libc.shmctl(ident, 0, None)


SYSV_LEFT_BEHIND = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
KEY = {key}
made, errors = [], []
for name, call in [
    ("shm", lambda: libc.shmget(KEY, ctypes.c_size_t(1 << 20), 0o1666)),
    ("shm private", lambda: libc.shmget(0, ctypes.c_size_t(1 << 20), 0o1666)),
    ("msg", lambda: libc.msgget(KEY, 0o1666)),
    ("sem", lambda: libc.semget(KEY, 1, 0o1666)),
]:
    ident = call()
    if ident < 0:
        errors.append(ctypes.get_errno())
        continue
    made.append(name)
    if name.startswith("shm"):
        libc.shmat.restype = ctypes.c_void_p
        addr = libc.shmat(ident, None, 0)
        ctypes.memmove(addr, b"secret left for the next sample", 31)
mq_open = getattr(libc, "mq_open", None)
if mq_open is not None:
    if mq_open(b"/unmask-hostile-{key}", os.O_CREAT | os.O_RDWR, 0o666, None) >= 0:
        made.append("mq")
    else:
        errors.append(ctypes.get_errno())
print(made, errors)
if made:
    raise SystemExit("made " + ", ".join(made))
raise OSError(errors[0], "every IPC object was refused")
"""


def test_sysv_ipc_is_refused_and_nothing_outlives_the_program(backend):
    require(backend, "sysv_ipc_blocked")
    key = 0x5A000000 | (os.getpid() & 0xFFFFFF)
    before = sysv_objects()
    try:
        unit = run(backend, SYSV_LEFT_BEHIND.format(key=key))
        assert unit.status == "error" and "PermissionError" in unit.error, unit
        assert unit.output.startswith(b"[] [1, 1, 1, 1")  # EPERM for every one
        assert reward(backend, SYSV_LEFT_BEHIND.format(key=key)) == 0.0
        assert sysv_objects() - before == set()  # no segment, queue or semaphore set left on the host
        assert not any(k == key for _, k, _ in sysv_objects())
        if os.path.isdir("/dev/mqueue"):
            assert not (Path("/dev/mqueue") / f"unmask-hostile-{key}").exists()
    finally:
        remove_sysv(key, before)


# --- threads ------------------------------------------------------------------------------

THREAD_BOMB = """
import threading, time
n = 0
try:
    while True:
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
        n += 1
finally:
    print(n, flush=True)
"""


def test_thread_bomb_gets_no_thread_and_makes_no_host_tasks(backend):
    require(backend, "threads_blocked")
    own_threads = len(os.listdir("/proc/self/task"))
    with Sampler(sandbox_tasks) as tasks:
        unit = run(backend, THREAD_BOMB, timeout_s=5.0)
    assert unit.status == "error" and "RuntimeError" in unit.error and "can't start new thread" in unit.error, unit
    assert unit.output == b"0\n"  # not one thread started
    assert tasks.peak < 20  # the sandbox's own few processes, not thousands of threads
    assert reward(backend, THREAD_BOMB) == 0.0
    assert wait_no_leftovers() == []
    deadline = time.monotonic() + 5  # threads of this process that were ending when it started may be gone now
    while len(os.listdir("/proc/self/task")) > own_threads and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(os.listdir("/proc/self/task")) <= own_threads
    t = threading.Thread(target=lambda: None)  # and this process can still start threads
    t.start()
    t.join()


# --- signals by other routes than kill() ------------------------------------------------------


@pytest.fixture
def tripwire():
    """SIGUSR1, SIGUSR2 and SIGIO handlers in the test process that record any delivery."""
    fired = []
    old = {s: signal.signal(s, lambda signum, frame: fired.append(signum)) for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGIO)}
    try:
        yield fired
    finally:
        time.sleep(0.2)  # a signal sent at the very end still arrives before the handlers go
        for s, handler in old.items():
            signal.signal(s, handler)


def fcntl_programs(host, group):
    setup = "import fcntl, os, signal, struct\nr, w = os.pipe()\n"
    arm = "fcntl.fcntl(r, fcntl.F_SETFL, fcntl.fcntl(r, fcntl.F_GETFL) | os.O_ASYNC | os.O_NONBLOCK)\nos.write(w, b'x')\n"
    return {
        "F_SETOWN + F_SETSIG": setup + f"fcntl.fcntl(r, fcntl.F_SETOWN, {host})\nfcntl.fcntl(r, 10, signal.SIGUSR1)\n" + arm,
        "F_SETOWN (SIGIO)": setup + f"fcntl.fcntl(r, fcntl.F_SETOWN, {host})\n" + arm,
        "F_SETOWN to the group": setup + f"fcntl.fcntl(r, fcntl.F_SETOWN, -{group})\n" + arm,
        "F_SETOWN_EX": setup + f"fcntl.fcntl(r, 15, struct.pack('ii', 1, {host}))\nfcntl.fcntl(r, 10, signal.SIGUSR2)\n" + arm,
        "F_SETOWN to the parent": setup + "fcntl.fcntl(r, fcntl.F_SETOWN, os.getppid())\n" + arm,
        "F_SETSIG alone": setup + "fcntl.fcntl(r, 10, signal.SIGUSR1)\n",
        "ioctl FIOSETOWN": setup + f"fcntl.ioctl(r, 0x8901, struct.pack('i', {host}))\n" + arm,
        "ioctl SIOCSPGRP": setup + f"fcntl.ioctl(r, 0x8902, struct.pack('i', {host}))\n" + arm,
    }


def test_fcntl_and_ioctl_cannot_signal_the_host(backend, tripwire):
    require(backend, "signals_to_host_blocked")
    for name, program in fcntl_programs(os.getpid(), os.getpgrp()).items():
        unit = run(backend, program)
        assert unit.status == "error" and "PermissionError" in unit.error, (name, unit)
        assert reward(backend, program) == 0.0, name
    assert tripwire == []  # no signal reached this process


def test_ordinary_fcntl_and_self_signals_still_work(backend):
    program = (
        "import fcntl, os, signal, resource\n"
        "r, w = os.pipe()\n"
        "fcntl.fcntl(r, fcntl.F_SETFL, fcntl.fcntl(r, fcntl.F_GETFL) | os.O_NONBLOCK)\n"
        "fcntl.fcntl(r, fcntl.F_SETFD, fcntl.FD_CLOEXEC)\n"
        "assert fcntl.fcntl(r, fcntl.F_GETFD) & fcntl.FD_CLOEXEC\n"
        "fcntl.fcntl(r, fcntl.F_DUPFD_CLOEXEC, 10)\n"
        "got = []\n"
        "signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))\n"
        "os.kill(os.getpid(), signal.SIGUSR1)\n"
        "assert got == [signal.SIGUSR1]\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (soft - 1, hard))\n"
        "assert resource.prlimit(0, resource.RLIMIT_NOFILE)[0] == soft - 1\n"
        "assert resource.prlimit(os.getpid(), resource.RLIMIT_NOFILE)[0] == soft - 1\n"
        "print('fine')"
    )
    unit = run(backend, program)
    assert unit.status == "ok" and unit.output == b"fine\n", unit


# --- reaching another process: pidfd_getfd and friends ------------------------------------

PIDFD_GETFD = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
stolen, errors = [], set()
for target in (os.getppid(), 1):
    pidfd = libc.syscall(434, target, 0)  # pidfd_open
    if pidfd < 0:
        errors.add(ctypes.get_errno())
        continue
    for fd in range(64):  # copy the supervisor's descriptors, its result pipe among them
        got = libc.syscall(438, pidfd, fd, 0)  # pidfd_getfd
        if got >= 0:
            stolen.append(fd)
for guess in range(3, 16):  # a pidfd the program did not open itself
    if libc.syscall(438, guess, 3, 0) >= 0:
        stolen.append(guess)
    else:
        errors.add(ctypes.get_errno())
print(stolen, sorted(errors))
if stolen:
    raise SystemExit("stole %r" % stolen)
os.pidfd_open(os.getppid())
"""


def test_pidfd_getfd_on_the_parent_fails(backend):
    require(backend, "pidfd_blocked")
    unit = run(backend, PIDFD_GETFD)
    assert unit.status == "error" and "PermissionError" in unit.error, unit
    assert unit.output == b"[] [1]\n"  # EPERM from the filter, not EBADF from the kernel
    assert reward(backend, PIDFD_GETFD) == 0.0


OTHER_PROCESS = {
    "prlimit on the parent": "import os, resource\nresource.prlimit(os.getppid(), resource.RLIMIT_NOFILE, (1, 1))",
    "setpriority on the parent": "import os\nos.setpriority(os.PRIO_PROCESS, os.getppid(), 19)",
    "sched_setaffinity on the parent": "import os\nos.sched_setaffinity(os.getppid(), {0})",
    "sched_setscheduler on the parent": "import os\nos.sched_setscheduler(os.getppid(), os.SCHED_IDLE, os.sched_param(0))",
    "get_robust_list of the parent": (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "nr = {'x86_64': 274, 'aarch64': 100}[os.uname().machine]\n"
        "head, size = ctypes.c_void_p(), ctypes.c_size_t()\n"
        "if libc.syscall(nr, os.getppid(), ctypes.byref(head), ctypes.byref(size)) != 0:\n"
        "    raise OSError(ctypes.get_errno(), 'get_robust_list')"
    ),
    "process_madvise": (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "if libc.syscall(440, -1, None, 0, 0, 0) != 0:\n    raise OSError(ctypes.get_errno(), 'process_madvise')"
    ),
}


@pytest.mark.parametrize("name", sorted(OTHER_PROCESS))
def test_other_processes_cannot_be_changed(backend, name):
    require(backend, "prlimit_blocked")
    unit = run(backend, OTHER_PROCESS[name])
    assert unit.status == "error" and "PermissionError" in unit.error, unit


# --- disk: many files at the size limit -------------------------------------------------------

MANY_FILES = """
import os
total = 0
try:
    for i in range(40):
        with open('fill-%d' % i, 'wb') as f:
            f.write(b'x' * (16 << 20))
        total += 16 << 20
finally:
    for i in range(40):  # room again (under bubblewrap the full tmpfs holds the output too), to report
        try:
            os.unlink('fill-%d' % i)
        except OSError:
            pass
    print(total, flush=True)
"""


def disk_usage(root):
    used = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            try:
                used += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return used


def test_many_16_megabyte_files_do_not_fill_the_host_disk(backend, monkeypatch):
    require(backend, "writes_capped")
    info = _info(backend)
    # The rlimit backend's work dirs go under a directory of this test's own, to measure it.
    root = tempfile.mkdtemp(prefix=f"unmask-hardening-{os.getpid()}-")
    os.chmod(root, 0o755)
    monkeypatch.setattr(tempfile, "tempdir", root)
    limits = sb.Limits(file_size_mb=16, tmpfs_mb=64)
    try:
        with Sampler(lambda: disk_usage(root)) as usage:
            unit = sb.run_programs([sb.Program(MANY_FILES, kind="script", stdout="capture")], limits=limits,
                                   backend=backend).units[0]  # fmt: skip
        assert unit.status == "error", unit
        written = int(unit.output.split()[0])
        if info["file_create_blocked"]:
            assert "PermissionError" in unit.error and written == 0
            assert usage.peak < 1 << 20
        else:  # bubblewrap: the size-capped tmpfs is full at its size
            assert written <= limits.tmpfs_mb << 20
            assert usage.peak < 1 << 20  # and none of it is on the host's disk
        assert reward(backend, MANY_FILES) == 0.0
    finally:
        monkeypatch.undo()
        sb.shutil.rmtree(root, ignore_errors=True)


FALLOCATE = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
# FALLOC_FL_KEEP_SIZE reserves blocks without growing the file, past RLIMIT_FSIZE.
if libc.fallocate(2, 1, 0, 256 << 20) != 0:  # its stderr file
    e = ctypes.get_errno()
    print('fallocate', e)
else:
    print('fallocate 0')
try:
    os.posix_fallocate(2, 0, 64 << 20)  # glibc falls back to writing, which RLIMIT_FSIZE stops
    print('posix_fallocate 0')
except OSError as exc:
    print('posix_fallocate', exc.errno)
"""


def test_fallocate_cannot_reserve_past_the_file_size_limit(backend):
    require(backend, "writes_capped")
    unit = run(backend, FALLOCATE, file_size_mb=16)
    lines = dict(line.split() for line in unit.output.decode().splitlines())
    assert lines["fallocate"] != "0" and lines["posix_fallocate"] != "0", unit
    if _info(backend)["file_create_blocked"]:
        assert lines["fallocate"] == "95"  # EOPNOTSUPP from the filter


def test_file_creation_is_refused_on_the_rlimit_backend_only(backend):
    attempts = {
        "open w": "open('new.txt', 'w')",
        "open x": "open('new.txt', 'x')",
        "os.open O_CREAT": "import os\nos.open('new.txt', os.O_WRONLY | os.O_CREAT, 0o600)",
        "O_TMPFILE": "import os\nos.open('.', os.O_TMPFILE | os.O_WRONLY, 0o600)",
        "mkdir": "import os\nos.mkdir('d')",
        "mkfifo": "import os\nos.mkfifo('p')",
        "symlink": "import os\nos.symlink('/etc/passwd', 'l')",
        "hard link": "import os, glob\nos.link(sorted(glob.glob('*'))[0], 'h')",
        "tempfile": "import tempfile\ntempfile.TemporaryFile(dir='.')",
        "shared memory": "from multiprocessing import shared_memory\nshared_memory.SharedMemory(create=True, size=1 << 20)",
    }
    blocked = _info(backend)["file_create_blocked"]
    for name, program in attempts.items():
        unit = run(backend, program)
        if blocked:
            assert unit.status == "error" and ("PermissionError" in unit.error or "FileNotFoundError" in unit.error), (name, unit)
        elif name == "open w":
            assert unit.status == "ok", unit  # bubblewrap: the capped tmpfs is writable


# --- memory outside the address-space limit ------------------------------------------------------

MEMFD = """
import mmap, os
fd = os.memfd_create('hoard')
os.ftruncate(fd, 4 << 30)  # shmem pages: not counted by RLIMIT_AS until mapped
"""


def test_memfd_create_fails(backend):
    require(backend, "memfd_blocked")
    unit = run(backend, MEMFD)
    assert unit.status == "error" and "PermissionError" in unit.error, unit
    via_syscall = (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "nr = {'x86_64': 319, 'aarch64': 279}[os.uname().machine]\n"
        "if libc.syscall(nr, b'hoard', 0) < 0:\n    raise OSError(ctypes.get_errno(), 'memfd_create')"
    )
    unit = run(backend, via_syscall)
    assert unit.status == "error" and "PermissionError" in unit.error, unit
    assert reward(backend, MEMFD) == 0.0


# --- ordinary programs still work ------------------------------------------------------------

ORDINARY = """
import json, re, math, collections, itertools, functools, heapq, bisect, fractions, decimal, datetime
import os, sys
source = open(os.__file__).read()  # reading files is fine
assert 'def ' in source
with open(os.__file__, 'rb') as f:
    assert f.read(1)
data = json.loads(json.dumps({"a": [1, 2, 3]}))
heap = [5, 1, 4]
heapq.heapify(heap)
assert heap[0] == 1 and bisect.bisect([1, 2, 3], 2) == 2
assert re.findall(r'\\d+', 'a1b22') == ['1', '22']
assert fractions.Fraction(1, 3) + fractions.Fraction(1, 6) == fractions.Fraction(1, 2)
assert str(decimal.Decimal('0.1') + decimal.Decimal('0.2')) == '0.3'
assert functools.reduce(lambda a, b: a * b, range(1, 6)) == math.factorial(5)
assert list(itertools.accumulate([1, 2, 3])) == [1, 3, 6]
assert collections.Counter('abca')['a'] == 2
assert datetime.date(2024, 2, 29).isoformat() == '2024-02-29'
stdin = open(0).read()
print(data['a'], stdin.strip(), os.getpid() > 0)
sys.stdout.flush()
"""


def test_ordinary_programs_still_work(backend):
    r = sb.run_programs([sb.Program(ORDINARY, stdin="hello", kind="script", stdout="capture")], backend=backend)
    assert r.passed, r.units[0]
    assert r.units[0].output == b"[1, 2, 3] hello True\n"
    assert reward(backend, ORDINARY.replace("stdin = open(0).read()", "stdin = ''")) == 1.0


# --- the probe report -------------------------------------------------------------------------

NEW_KEYS = ("threads_blocked", "sysv_ipc_blocked", "fcntl_signals_blocked", "pidfd_blocked", "prlimit_blocked",
            "memfd_blocked", "file_create_blocked", "writes_capped", "weak")  # fmt: skip


def test_probe_report_on_this_machine(backend):
    info = sandbox_info(backend)
    for key in NEW_KEYS:
        assert key in info, key
    if not info["seccomp"]:
        pytest.skip("seccomp is not active here")
    for key in ("threads_blocked", "sysv_ipc_blocked", "fcntl_signals_blocked", "pidfd_blocked", "memfd_blocked",
                "kill_blocked", "signals_to_host_blocked", "network_blocked", "host_writes_blocked", "writes_capped"):  # fmt: skip
        assert info[key] is True, key
    assert info["file_create_blocked"] is (backend == "rlimit")
    assert info["weak"] is False
    # The probe's file outside the work dir is gone again.
    assert list(Path(tempfile.gettempdir()).glob(f"unmask-probe-{os.getpid()}-*")) == []


def fake_start(protections):
    def start(config, programs, limits, **kw):
        return sb.SandboxResult(units=[], protections=dict(protections), backend=config["backend"])

    return start


ALL_BLOCKED = {
    "uid": 65534, "landlock": 7, "caps_dropped": 1, "seccomp": 1, "fork_blocked": 1, "socket_blocked": 1,
    "kill_blocked": 1, "threads_blocked": 1, "sysv_ipc_blocked": 1, "fcntl_signals_blocked": 1,
    "pidfd_blocked": 1, "prlimit_blocked": 1, "memfd_blocked": 1, "file_create_blocked": 1,
    "outside_write_blocked": 1, "metadata_change_blocked": 1,
}  # fmt: skip


@pytest.mark.parametrize("which", ["bwrap", "rlimit"])
def test_probe_report_says_only_what_the_probes_saw(monkeypatch, which):
    monkeypatch.setattr(sb.shutil, "which", lambda name: "/bin/true")
    monkeypatch.setattr(sb, "_start", fake_start(ALL_BLOCKED))
    info = sb._probe(which)
    assert info["signals_to_host_blocked"] and info["host_writes_blocked"] and info["network_blocked"]
    assert info["metadata_change_blocked"]
    # Landlock does not cover metadata: host writes count as blocked only when the metadata probe was refused too.
    monkeypatch.setattr(sb, "_start", fake_start(dict(ALL_BLOCKED, metadata_change_blocked=0)))
    info = sb._probe(which)
    assert info["host_writes_blocked"] is False and info["metadata_change_blocked"] is False
    # One route left open is enough for signals to count as not blocked: kill() alone is not the test.
    for route in ("kill_blocked", "fcntl_signals_blocked", "pidfd_blocked"):
        monkeypatch.setattr(sb, "_start", fake_start(dict(ALL_BLOCKED, **{route: 0})))
        assert sb._probe(which)["signals_to_host_blocked"] is False, route
    # Nothing is assumed from the backend: probes that did not report are not blocked.
    monkeypatch.setattr(sb, "_start", fake_start({"uid": 65534, "landlock": 7, "seccomp": 1, "fork_blocked": 1}))
    info = sb._probe(which)
    for key in ("threads_blocked", "network_blocked", "sysv_ipc_blocked", "signals_to_host_blocked",
                "host_writes_blocked", "file_create_blocked", "memfd_blocked", "metadata_change_blocked"):  # fmt: skip
        assert info[key] is False, key


def test_the_supervisor_probe_tries_each_thing(tmp_path, monkeypatch):
    # Unfiltered, every attempt succeeds (and is undone), so nothing is reported blocked; under the
    # filter every one fails. The probe runs in a forked child of this process, here without Landlock.
    child = load_child()
    target = tmp_path / "outside"
    target.write_text("")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = sysv_objects()
    request = {"no_file_create": True, "probe_write": str(target)}
    off = sb._parse_applied(child._probe(False, request))
    assert off.pop("seccomp") == 0 and off and set(off.values()) == {0}, off
    on = sb._parse_applied(child._probe(True, request))
    assert on.pop("seccomp") == 1
    assert on.pop("outside_write_blocked") == 0  # only Landlock or a read-only mount stops that
    assert set(on.values()) == {1}, on
    assert sb._parse_applied(child._probe(True, {"no_file_create": False}))["file_create_blocked"] == 0
    assert list(work.iterdir()) == [] and sysv_objects() - before == set()


# --- weak mode: refused unless asked for -------------------------------------------------------


@pytest.fixture
def no_landlock(monkeypatch):
    """Make the supervisor skip Landlock, as on a kernel without it."""
    monkeypatch.setattr(sb, "_USE_LANDLOCK", False)
    monkeypatch.delenv(sb.ALLOW_WEAK_ENV, raising=False)
    sb.clear_probe_cache()
    yield monkeypatch
    sb.clear_probe_cache()


def test_rlimit_without_landlock_is_refused_unless_weak_mode_is_allowed(no_landlock, caplog):
    try:
        runs_as_root = sb.choose_interpreter(False).uid == 0
    except OSError:  # root, and uid 65534 can run neither the interpreter nor a staged copy
        runs_as_root = True
    if not runs_as_root and sb._bwrap_unavailable(None) is None:
        pytest.skip("uid 65534 runs the programs and bubblewrap works here: not weak by the rule")
    with pytest.raises(sb.SandboxError) as refused:
        sandbox_info("rlimit")
    message = str(refused.value)
    assert "UNMASK_SANDBOX_ALLOW_WEAK=1" in message and "Landlock" in message
    if runs_as_root:
        assert "uid 0" in message and "chmod -R o+rX" in message
    no_landlock.setenv(sb.ALLOW_WEAK_ENV, "1")
    with caplog.at_level(logging.WARNING, logger="rewards.sandbox"):
        info = sandbox_info("rlimit")
    assert info["weak"] is True and info["landlock_abi"] == 0 and info["weak_reasons"]
    assert any("WEAK" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    if runs_as_root:
        assert info["host_writes_blocked"] is False  # the probe really tried, and nothing stopped it
    assert reward("rlimit", "x = 1") == 1.0  # it runs, as asked
    assert info["fork_blocked"] and info["threads_blocked"] and info["signals_to_host_blocked"]  # seccomp still holds


def test_bubblewrap_without_landlock_is_not_weak(no_landlock):
    _info("bwrap")
    info = sandbox_info("bwrap")
    assert info["landlock_abi"] == 0 and info["weak"] is False
    assert info["host_writes_blocked"]  # the read-only mounts, as the probe saw
    assert reward("bwrap", "x = 1") == 1.0


def test_auto_fallback_without_bubblewrap_or_landlock_is_refused(no_landlock, shared_tmp):
    fake = shared_tmp / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)  # uid 65534 starts it where the tests run as root
    no_landlock.setattr(sb.shutil, "which", lambda name: str(fake) if name == "bwrap" else None)
    no_landlock.delenv("UNMASK_SANDBOX", raising=False)
    with pytest.raises(sb.SandboxError) as refused:
        sandbox_info()
    message = str(refused.value)
    assert "No permissions to create new namespace" in message and "install bubblewrap" in message
    assert "kernel with Landlock" in message and sb.ALLOW_WEAK_ENV in message
    no_landlock.setenv(sb.ALLOW_WEAK_ENV, "1")
    info = sandbox_info()
    assert info["backend"] == "rlimit" and info["weak"] is True
