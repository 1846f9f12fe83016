"""The supervisor that runs inside the sandbox (stdlib only).

rewards/sandbox/launch.py compiles this file from its path and hands the code to
``python -I -S -B`` on stdin (behind a small bootstrap); the package never imports it,
and it imports nothing from the package. It reads a ``marshal``-encoded request from stdin (the
host wrote it, so it is trusted), locks its own process down (Landlock file-system
and network rules, capabilities dropped, no new privileges), then runs each unit
(one program) in a forked child that locks itself down further (rlimits, a seccomp
filter: no fork, exec, sockets or signals to other processes) before it runs the
untrusted code. The supervisor waits for each child with a wall-clock limit and
kills it when it runs over.

Results go to the host on a dedicated pipe (``result_fd``) that no child can
reach, as length-prefixed records so the host never parses anything the untrusted
code wrote except the bytes it asked for:

    S key=value ...\\n                        started (the protections applied)
    R unit status exit_code microseconds err_len out_len\\n<err bytes><out bytes>
    D\\n                                      done

A plain unit counts as finished only when its child reports so through a private
pipe, tagged with a random nonce; a program that exits early (``os._exit(0)``)
therefore fails it. That report comes from the program's own process, so a hostile
program can forge it: it decides only the status of scripts, stdin/stdout cases (whose
output the host judges) and tests run with ``judge="in_process"``. Tests with a judge
are decided by a separate judge process (see "judged tests" below), which the
program cannot reach.
"""

import marshal
import os
import resource
import select
import struct
import sys
import time

import _signal as signal  # the C module: `signal` imports enum, which costs milliseconds

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
PR_CAP_AMBIENT = 47
SECCOMP_MODE_FILTER = 2

_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        import ctypes

        _LIBC = ctypes.CDLL(None, use_errno=True)
        _LIBC.syscall.restype = ctypes.c_long
    return _LIBC


def _prctl(option, arg2=0, arg3=0, arg4=0, arg5=0):
    import ctypes

    libc = _libc()
    ul = ctypes.c_ulong
    return libc.prctl(ctypes.c_int(option), ul(arg2), ul(arg3), ul(arg4), ul(arg5))


# --- capabilities -----------------------------------------------------------------


def drop_capabilities():
    """Drop every capability (bounding, ambient, effective, permitted, inheritable).

    As root this turns uid 0 into an ordinary user as far as the kernel's privilege
    checks go: no reboot, module loading, raw I/O, or reading other users' files.
    Returns True when the process ends up with no capabilities.
    """
    import ctypes

    libc = _libc()
    _prctl(PR_CAP_AMBIENT, 4)  # PR_CAP_AMBIENT_CLEAR_ALL
    for cap in range(64):
        if _prctl(PR_CAPBSET_DROP, cap) != 0 and ctypes.get_errno() == 22:  # EINVAL: past the last cap
            break

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header = Header(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (Data * 2)()
    libc.capset(ctypes.byref(header), data)
    libc.capget(ctypes.byref(header), data)
    return all(d.effective == 0 and d.permitted == 0 for d in data)


# --- landlock ---------------------------------------------------------------------

_LL_READ = (1 << 0) | (1 << 2) | (1 << 3)  # execute, read file, read dir
_LL_FILE_RIGHTS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 14) | (1 << 15)  # rights valid on a file


def landlock(read_paths, write_paths):
    """Restrict file access to reading ``read_paths`` and full access to ``write_paths``.

    Also denies TCP bind/connect (ABI 4) and signals or abstract unix sockets to
    processes outside the sandbox (ABI 6) where the kernel supports them. Returns
    the Landlock ABI applied, or 0 when Landlock is unavailable.
    """
    import ctypes

    libc = _libc()
    abi = libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 1:
        return 0
    handled_fs = (1 << 13) - 1
    if abi >= 2:
        handled_fs |= 1 << 13  # refer
    if abi >= 3:
        handled_fs |= 1 << 14  # truncate
    if abi >= 5:
        handled_fs |= 1 << 15  # ioctl on devices

    class RulesetAttr(ctypes.Structure):
        _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    attr = RulesetAttr(handled_fs, 0, 0)
    size = 8
    if abi >= 4:
        attr.net = 3  # bind and connect TCP: handled, and no rule allows them
        size = 16
    if abi >= 6:
        attr.scoped = 3  # abstract unix sockets and signals stay inside the sandbox
        size = 24
    ruleset = libc.syscall(444, ctypes.byref(attr), size, 0)
    if ruleset < 0:
        return 0
    try:
        for paths, rights in ((read_paths, _LL_READ), (write_paths, handled_fs)):
            for path in paths:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue
                try:
                    allowed = rights & handled_fs
                    if not os.path.isdir(path):
                        allowed &= _LL_FILE_RIGHTS
                    rule = PathBeneath(allowed, fd)
                    if libc.syscall(445, ruleset, 1, ctypes.byref(rule), 0) != 0:
                        return 0
                finally:
                    os.close(fd)
        if _prctl(PR_SET_NO_NEW_PRIVS, 1) != 0:
            return 0
        if libc.syscall(446, ruleset, 0) != 0:
            return 0
    finally:
        os.close(ruleset)
    return abi


# --- seccomp ----------------------------------------------------------------------

# Syscalls refused to the untrusted program, by architecture: (audit arch, numbers).
# Value: errno to return. fork-like calls get EAGAIN (what a process limit gives),
# and so does clone, for threads too (a thread bomb would otherwise make thousands of
# host tasks where there is no pid namespace); clone3 gets ENOSYS so glibc falls back
# to clone. Python's threading then raises "RuntimeError: can't start new thread".
_EPERM, _EAGAIN, _EACCES, _ENOSYS, _EOPNOTSUPP = 1, 11, 13, 38, 95
_X86_64 = {
    "arch": 0xC000003E,
    "deny": {
        57: _EAGAIN, 58: _EAGAIN, 56: _EAGAIN,  # fork, vfork, clone (threads included)
        435: _ENOSYS,  # clone3
        59: _EPERM, 322: _EPERM,  # execve, execveat
        41: _EACCES,  # socket
        200: _EPERM, 424: _EPERM,  # tkill, pidfd_send_signal
        434: _EPERM, 438: _EPERM,  # pidfd_open, pidfd_getfd
        101: _EPERM, 310: _EPERM, 311: _EPERM, 312: _EPERM,  # ptrace, process_vm_readv/writev, kcmp
        440: _EPERM, 448: _EPERM, 279: _EPERM, 256: _EPERM,  # process_madvise, process_mrelease, move_pages, migrate_pages
        274: _EPERM,  # get_robust_list (another task's futex list)
        141: _EPERM, 251: _EPERM,  # setpriority, ioprio_set
        203: _EPERM, 144: _EPERM, 142: _EPERM, 314: _EPERM,  # sched_setaffinity/setscheduler/setparam/setattr
        112: _EPERM, 109: _EPERM,  # setsid, setpgid (stay in the group that gets killed)
        272: _EPERM, 308: _EPERM,  # unshare, setns
        165: _EPERM, 166: _EPERM, 155: _EPERM, 161: _EPERM,  # mount, umount2, pivot_root, chroot
        428: _EPERM, 429: _EPERM, 430: _EPERM, 431: _EPERM, 432: _EPERM, 442: _EPERM,  # new mount API
        321: _EPERM, 298: _EPERM, 323: _EPERM,  # bpf, perf_event_open, userfaultfd
        425: _EPERM, 426: _EPERM, 427: _EPERM,  # io_uring (its ops bypass seccomp)
        248: _EPERM, 249: _EPERM, 250: _EPERM,  # add_key, request_key, keyctl
        246: _EPERM, 320: _EPERM, 169: _EPERM,  # kexec_load, kexec_file_load, reboot
        175: _EPERM, 176: _EPERM, 313: _EPERM,  # init_module, delete_module, finit_module
        167: _EPERM, 168: _EPERM, 170: _EPERM, 171: _EPERM,  # swapon/off, sethostname, setdomainname
        172: _EPERM, 173: _EPERM, 135: _EPERM,  # iopl, ioperm, personality
        303: _EPERM, 304: _EPERM,  # name_to_handle_at, open_by_handle_at
        # SysV IPC and POSIX message queues: outlive the program where there is no ipc namespace
        29: _EPERM, 30: _EPERM, 31: _EPERM, 67: _EPERM,  # shmget, shmat, shmctl, shmdt
        64: _EPERM, 65: _EPERM, 66: _EPERM, 220: _EPERM,  # semget, semop, semctl, semtimedop
        68: _EPERM, 69: _EPERM, 70: _EPERM, 71: _EPERM,  # msgget, msgsnd, msgrcv, msgctl
        240: _EPERM, 241: _EPERM, 242: _EPERM, 243: _EPERM, 244: _EPERM, 245: _EPERM,  # mq_open .. mq_getsetattr
        319: _EPERM, 447: _EPERM,  # memfd_create, memfd_secret (shmem pages escape RLIMIT_AS)
        # File metadata, which Landlock does not cover: as uid 0 (even without capabilities, as the
        # owner) these would change host files and the bound /dev nodes, and the work directory a
        # later sample sees.
        90: _EPERM, 91: _EPERM, 268: _EPERM, 452: _EPERM,  # chmod, fchmod, fchmodat, fchmodat2
        92: _EPERM, 93: _EPERM, 94: _EPERM, 260: _EPERM,  # chown, fchown, lchown, fchownat
        132: _EPERM, 235: _EPERM, 261: _EPERM, 280: _EPERM,  # utime, utimes, futimesat, utimensat
        188: _EPERM, 189: _EPERM, 190: _EPERM, 463: _EPERM,  # setxattr, lsetxattr, fsetxattr, setxattrat
        197: _EPERM, 198: _EPERM, 199: _EPERM, 466: _EPERM,  # removexattr, lremovexattr, fremovexattr, removexattrat
    },
    # Without a size-capped file system (the rlimit backend): no new files, so that writing
    # stays within RLIMIT_FSIZE on the few files the program already has open.
    "create_deny": {
        85: _EACCES,  # creat
        83: _EACCES, 258: _EACCES, 133: _EACCES, 259: _EACCES,  # mkdir, mkdirat, mknod, mknodat
        86: _EACCES, 265: _EACCES, 88: _EACCES, 266: _EACCES,  # link, linkat, symlink, symlinkat
        437: _ENOSYS,  # openat2 (flags behind a pointer): glibc and Python fall back to openat
        285: _EOPNOTSUPP,  # fallocate: FALLOC_FL_KEEP_SIZE allocates past RLIMIT_FSIZE; posix_fallocate falls back to writes
    },
    "create_flags": ((2, 1), (257, 2)),  # open: flags in args[1]; openat: args[2]
    "self_only": (62, 234, 129, 297),  # kill, tgkill, rt_sigqueueinfo, rt_tgsigqueueinfo: arg0 must be our pid
    "self_or_zero": (302,),  # prlimit64: pid 0 (glibc's getrlimit/setrlimit) or ours
    "fcntl": 72,
    "ioctl": 16,
    "x32": True,
}
_AARCH64 = {
    "arch": 0xC00000B7,
    "deny": {
        220: _EAGAIN, 435: _ENOSYS,  # clone (threads included), clone3
        221: _EPERM, 281: _EPERM,
        198: _EACCES,
        130: _EPERM, 424: _EPERM,
        434: _EPERM, 438: _EPERM,
        117: _EPERM, 270: _EPERM, 271: _EPERM, 272: _EPERM,
        440: _EPERM, 448: _EPERM, 239: _EPERM, 238: _EPERM,
        100: _EPERM,
        140: _EPERM, 30: _EPERM,
        122: _EPERM, 119: _EPERM, 118: _EPERM, 274: _EPERM,
        157: _EPERM, 154: _EPERM,
        97: _EPERM, 268: _EPERM,
        40: _EPERM, 39: _EPERM, 41: _EPERM, 51: _EPERM,
        428: _EPERM, 429: _EPERM, 430: _EPERM, 431: _EPERM, 432: _EPERM, 442: _EPERM,
        280: _EPERM, 241: _EPERM, 282: _EPERM,
        425: _EPERM, 426: _EPERM, 427: _EPERM,
        217: _EPERM, 218: _EPERM, 219: _EPERM,
        104: _EPERM, 294: _EPERM, 142: _EPERM,
        105: _EPERM, 106: _EPERM, 273: _EPERM,
        224: _EPERM, 225: _EPERM, 161: _EPERM, 162: _EPERM, 92: _EPERM,
        264: _EPERM, 265: _EPERM,
        194: _EPERM, 196: _EPERM, 195: _EPERM, 197: _EPERM,
        190: _EPERM, 193: _EPERM, 191: _EPERM, 192: _EPERM,
        186: _EPERM, 189: _EPERM, 188: _EPERM, 187: _EPERM,
        180: _EPERM, 181: _EPERM, 182: _EPERM, 183: _EPERM, 184: _EPERM, 185: _EPERM,
        279: _EPERM, 447: _EPERM,
        52: _EPERM, 53: _EPERM, 452: _EPERM, 54: _EPERM, 55: _EPERM,  # fchmod, fchmodat, fchmodat2, fchownat, fchown
        88: _EPERM,  # utimensat
        5: _EPERM, 6: _EPERM, 7: _EPERM, 463: _EPERM, 14: _EPERM, 15: _EPERM, 16: _EPERM, 466: _EPERM,  # xattrs
    },
    "create_deny": {
        34: _EACCES, 33: _EACCES, 37: _EACCES, 36: _EACCES,  # mkdirat, mknodat, linkat, symlinkat
        437: _ENOSYS,  # openat2
        47: _EOPNOTSUPP,  # fallocate
    },
    "create_flags": ((56, 2),),  # openat
    "self_only": (129, 131, 138, 240),
    "self_or_zero": (261,),
    "fcntl": 25,
    "ioctl": 29,
    "x32": False,
}


def _seccomp_table():
    return {"x86_64": _X86_64, "aarch64": _AARCH64}.get(os.uname().machine)


# Request options the filter depends on, set by the supervisor from the host's request
# (main), for callers that do not pass them.
_SECCOMP_OPTIONS = {"no_file_create": False}
_O_CREAT, _O_TMPFILE = 0o100, 0o20000000  # same on x86_64 and aarch64 (__O_TMPFILE)
_F_SETOWN, _F_SETSIG, _F_SETOWN_EX = 8, 10, 15
_FIOSETOWN, _SIOCSPGRP = 0x8901, 0x8902
# Inode flags and fs attributes (chattr): metadata too.
_FS_IOC_SETFLAGS, _FS_IOC32_SETFLAGS, _FS_IOC_FSSETXATTR = 0x40086602, 0x40046602, 0x401C5820


def seccomp_program(pid, no_file_create=None):
    """Return the classic-BPF seccomp filter for this process (``pid``), or None.

    Besides the ``deny`` table: signals (kill, tgkill, rt_(tg)sigqueueinfo) only to
    ``pid`` itself; prlimit64 only on pid 0 or ``pid``; fcntl F_SETOWN/F_SETSIG/F_SETOWN_EX
    and ioctl FIOSETOWN/SIOCSPGRP (which would make the kernel signal another process)
    refused, every other command allowed; file metadata (chmod, chown, utime and the xattr calls,
    ioctl FS_IOC_SETFLAGS/FS_IOC_FSSETXATTR) refused. With ``no_file_create`` (default: the request's
    ``no_file_create``): open/openat with O_CREAT or O_TMPFILE get EACCES, and so do
    creat, mkdir, mknod, link and symlink (and their *at forms); openat2 gets ENOSYS,
    fallocate EOPNOTSUPP.
    """
    table = _seccomp_table()
    if table is None:
        return None
    if no_file_create is None:
        no_file_create = _SECCOMP_OPTIONS["no_file_create"]
    key = (id(table), bool(no_file_create))
    if key not in _FILTERS:  # built once per process (~0.1 ms), then only the pid is filled in
        _FILTERS[key] = _build_filter(table, bool(no_file_create))
    template, pid_slots = _FILTERS[key]
    program = bytearray(template)
    for slot in pid_slots:
        struct.pack_into("I", program, slot * 8 + 4, pid & 0xFFFFFFFF)
    return bytes(program)


_FILTERS = {}
_PID = object()  # where the filter compares with the process's own pid


def _build_filter(table, no_file_create):
    """The filter with its pid comparisons left at 0: (bytes, indices of those instructions)."""
    pid = _PID
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, ..., BPF_RET|K
    ALLOW, KILL = 0x7FFF0000, 0x80000000
    insns = []
    pid_slots = []

    def op(code, k, jt=0, jf=0):
        if k is _PID:
            pid_slots.append(len(insns))
            k = 0
        insns.append(struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF))

    def errno(e):
        return 0x00050000 | e

    def arg(i, high=False):  # offset of the low (or high) 32 bits of args[i] in seccomp_data
        return 16 + 8 * i + (4 if high else 0)

    def block(nr, body):
        """When the syscall is ``nr``, run ``body`` (which returns on every path); else skip it.

        The accumulator holds the syscall number outside the blocks, so they chain without
        reloading it, and the kernel can still tell that every other syscall is allowed
        whatever its arguments (its per-syscall allow cache).
        """
        op(JEQ, nr, 0, len(body))
        for ins in body:
            op(*ins)

    def refuse_values(nr, i, values, e):  # refuse when args[i] (32 bits: a cmd) is one of values
        k = len(values)
        body = [(LD, arg(i))] + [(JEQ, v, k - j, 0) for j, v in enumerate(values)]
        block(nr, body + [(RET, ALLOW), (RET, errno(e))])

    op(LD, 4)  # arch
    op(JEQ, table["arch"], 1, 0)
    op(RET, KILL)
    op(LD, 0)  # syscall number
    if table["x32"]:
        op(JGE, 0x40000000, 0, 1)
        op(RET, errno(_ENOSYS))
    # Signals only to ourselves: arg0 (a pid_t) must equal our pid.
    for nr in table["self_only"]:
        block(nr, [(LD, arg(0)), (JEQ, pid, 0, 3), (LD, arg(0, True)), (JEQ, 0, 0, 1), (RET, ALLOW), (RET, errno(_EPERM))])
    for nr in table["self_or_zero"]:
        block(nr, [(LD, arg(0)), (JEQ, 0, 1, 0), (JEQ, pid, 0, 3), (LD, arg(0, True)), (JEQ, 0, 0, 1),
                   (RET, ALLOW), (RET, errno(_EPERM))])  # fmt: skip
    refuse_values(table["fcntl"], 1, (_F_SETOWN, _F_SETSIG, _F_SETOWN_EX), _EPERM)
    refuse_values(table["ioctl"], 1, (_FIOSETOWN, _SIOCSPGRP, _FS_IOC_SETFLAGS, _FS_IOC32_SETFLAGS, _FS_IOC_FSSETXATTR), _EPERM)
    deny = dict(table["deny"])
    if no_file_create:
        for nr, i in table["create_flags"]:
            block(nr, [(LD, arg(i)), (JSET, _O_CREAT | _O_TMPFILE, 0, 1), (RET, errno(_EACCES)), (RET, ALLOW)])
        deny.update(table["create_deny"])
    for nr, e in sorted(deny.items()):
        op(JEQ, nr, 0, 1)
        op(RET, errno(e))
    op(RET, ALLOW)
    return b"".join(insns), tuple(pid_slots)


def _seccomp_options(request, use_seccomp):
    """Take the filter's options from the host's request (``no_file_create``) and prebuild it."""
    _SECCOMP_OPTIONS["no_file_create"] = bool(request.get("no_file_create"))
    if use_seccomp:
        seccomp_program(os.getpid())


_FPROG = None


def _fprog_type():
    global _FPROG
    if _FPROG is None:
        import ctypes

        class Fprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        _FPROG = Fprog
    return _FPROG


def install_seccomp(program):
    import ctypes

    buf = ctypes.create_string_buffer(program, len(program))
    prog = _fprog_type()(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if _prctl(PR_SET_NO_NEW_PRIVS, 1) != 0:
        return False
    libc = _libc()
    return libc.prctl(ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(prog), 0, 0) == 0


# --- the child that runs one program ------------------------------------------------


class _Quitter:
    """``exit()``/``quit()``: normally added by ``site``, which ``-S`` skips."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return "Use %s() or Ctrl-D (i.e. EOF) to exit" % self.name

    def __call__(self, code=None):
        raise SystemExit(code)


def _describe(exc, filename="solution.py", source=None):
    """``Type: message (line N)``, N the last line of ``filename`` in the traceback (with its text from ``source``)."""
    try:
        message = str(exc)
        text = "%s: %s" % (type(exc).__name__, message) if message else type(exc).__name__
    except BaseException:
        text = type(exc).__name__
    tb, line = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    if line is not None:
        text += " (line %d)" % line
        lines = source.splitlines() if source else []
        if 0 < line <= len(lines):
            text += ": " + lines[line - 1].strip()[:300]
    return text[:2000]


def _set_limit(which, value, hard_extra=0):
    try:
        _, hard = resource.getrlimit(which)
        top = value + hard_extra
        if hard != resource.RLIM_INFINITY:
            value, top = min(value, hard), min(top, hard)
        resource.setrlimit(which, (value, top))
    except (ValueError, OSError):
        pass


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _child(unit, fds, report_fd, nonce, limits, use_seccomp, forget):
    """Runs in the forked child: never returns."""
    code = 1
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        _place_fds([*fds, report_fd])  # 0-2: stdin, stdout, stderr; 3: the report pipe
        report_fd = 3
        for container in forget:  # the other units (their tests) and the request
            container.clear()
        module = _enter_program(unit, limits, use_seccomp)
        source = unit["source"]
        unit.clear()
        status, err = "ok", ""
        code = 0
        try:
            exec(compile(source, "solution.py", "exec"), module.__dict__)
        except SystemExit as exc:
            status = "exit"
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code & 0xFF
            else:
                code = 1
                try:
                    sys.stderr.write(str(exc.code) + "\n")
                except BaseException:
                    pass
        except BaseException as exc:
            status, code, err = "error", 1, _describe(exc)
        try:
            sys.stdout.flush()
        except BaseException as exc:
            if status == "ok" or (status == "exit" and code == 0):
                status, code, err = "error", 1, "output: " + _describe(exc)
        try:
            sys.stderr.flush()
        except BaseException:
            pass
        message = "%s %s %d %s" % (nonce, status, code, err)
        os.write(report_fd, message.encode("utf-8", "backslashreplace")[:4000])
    except BaseException:
        code = 120
    os._exit(code)


def _wait(pid, timeout):
    """Wait for ``pid`` up to ``timeout`` seconds; kill it past that. Returns (status, timed_out)."""
    timed_out = False
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            if not poller.poll(max(0.0, timeout) * 1000):
                timed_out = True
                os.kill(pid, signal.SIGKILL)
        finally:
            os.close(pidfd)
    else:
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status, False
            if time.monotonic() >= deadline:
                timed_out = True
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
    _, status = os.waitpid(pid, 0)
    return status, timed_out


def _read_file(path, limit):
    """Return (at most ``limit`` bytes of the file, whether it was longer)."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError:
        return b"", False
    return data[:limit], len(data) > limit


def _run_unit(index, unit, timeout, zygote, devnull):
    stdin_fd = devnull
    paths = []
    if unit.get("stdin") is not None:
        path = "stdin-%d" % index
        _unlink(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        _write_all(fd, unit["stdin"])
        os.close(fd)
        paths.append(path)
        stdin_fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    mode = unit.get("stdout", "discard")
    out_path = "out-%d" % index
    err_path = "err-%d" % index
    if mode == "pass":
        stdout_fd, stderr_fd = 1, 2
    else:
        for path in (out_path, err_path):
            _unlink(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        stdout_fd = os.open(out_path, flags, 0o600) if mode == "capture" else devnull
        stderr_fd = os.open(err_path, flags, 0o600)
        paths += [out_path, err_path] if mode == "capture" else [err_path]
    report_r, report_w = os.pipe()
    nonce = os.urandom(16).hex()
    unit = dict(unit, timeout=timeout)
    start = time.monotonic()
    try:
        pid = zygote.spawn(index, timeout, "plain", nonce, [stdin_fd, stdout_fd, stderr_fd, report_w])
    finally:
        os.close(report_w)
        for fd in (stdin_fd, stdout_fd, stderr_fd):
            if fd not in (devnull, 1, 2):
                os.close(fd)
    wait_status = zygote.exit_status(timeout)
    timed_out = wait_status is None
    if timed_out:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        wait_status = zygote.exit_status()
    elapsed = time.monotonic() - start
    report = b""
    try:
        while len(report) < 65536:
            chunk = os.read(report_r, 65536)
            if not chunk:
                break
            report += chunk
    finally:
        os.close(report_r)
    status, exit_code, err = "died", -1, ""
    if os.WIFEXITED(wait_status):
        exit_code = os.WEXITSTATUS(wait_status)
    elif os.WIFSIGNALED(wait_status):
        exit_code = -os.WTERMSIG(wait_status)
    prefix = nonce.encode() + b" "
    if report.startswith(prefix):
        parts = report[len(prefix):].decode("utf-8", "replace").split(" ", 2)
        if len(parts) >= 2:
            status = parts[0] if parts[0] in ("ok", "exit", "error") else "died"
            err = parts[2] if len(parts) > 2 else ""
    if timed_out or exit_code == -signal.SIGXCPU:
        status, err = "timeout", "ran past %.3gs" % timeout
    elif status in ("ok", "exit") and exit_code < 0:
        status = "died"  # reported, then killed (for example by a signal it sent itself)
    elif status == "died":
        if exit_code == 121:
            err = "sandbox: seccomp filter could not be installed"
        elif exit_code < 0:
            err = "killed by signal %d" % -exit_code
        else:
            err = "exited with code %d before finishing" % exit_code
    out = b""
    if mode == "capture":
        out, too_long = _read_file(out_path, unit.get("output_limit", 1 << 20))
        if too_long and status in ("ok", "exit"):
            status, err = "output_limit", "output longer than %d bytes" % unit.get("output_limit", 1 << 20)
    if mode != "pass" and status != "ok" and not err.startswith("sandbox"):
        tail, _ = _read_file(err_path, 1 << 16)
        tail = tail[-1000:].decode("utf-8", "replace").strip()
        if tail and status != "timeout":
            err = (err + " | stderr: " + tail) if err else "stderr: " + tail
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass
    return status, exit_code, elapsed, err.encode("utf-8", "replace")[:4000], out


# --- judged tests: the verdict comes from a process the program cannot reach ------------
#
# A test unit with a judge runs in two processes. The program's process ("P") runs the
# solution and then only answers calls: the name of one of its functions and the
# arguments, as plain data. The judge ("J") runs the tests, with every name the tests
# take from the solution bound to a proxy that makes such a call, and decides. P gets
# no test code, no expected value and no descriptor that leads to the verdict: it is
# forked by a zygote ("Z") that was forked before the supervisor read the tests, and
# what it sends back is decoded into plain values (int, float, str, bytes, None, bool,
# list, tuple, dict, set, frozenset, complex) of exactly those types, so an object whose
# ``__eq__`` always answers True cannot cross, and nothing P does to its own interpreter
# reaches J. J's verdict goes to the supervisor on a pipe only J holds.

_FRAME_CAP = 16 << 20
_MAX_DEPTH = 200
_JSON = None


def _json():
    global _JSON
    if _JSON is None:
        import json

        _JSON = json
    return _JSON


def _iterable_as_list(value):
    """The values a call returns that tests treat as sequences (a generator, map, range...)."""
    name = type(value).__name__
    if name in ("generator", "map", "filter", "zip", "range", "reversed", "enumerate", "dict_keys", "dict_values",
                "dict_items", "list_iterator", "tuple_iterator", "itertools.chain"):  # fmt: skip
        return list(value)
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if callable(tolist) and type(value).__module__.startswith("numpy"):
        return tolist()
    raise TypeError("cannot send a %s between the tests and the program (plain data only)" % name)


def encode(value, depth=0, lenient=False):
    """Plain data as JSON-able lists: str, numbers, None and bools as themselves, containers tagged.

    ``lenient`` (the program's side) also turns iterators and numpy values into lists.
    """
    if depth > _MAX_DEPTH:
        raise ValueError("data nested too deeply")
    t = type(value)
    if value is None or t is bool or t is str or t is float:
        return value
    if t is int:
        return value if -(1 << 62) < value < (1 << 62) else ["I", "%x" % value]
    if t is list or t is tuple or t is set or t is frozenset:
        return [{list: "L", tuple: "T", set: "S", frozenset: "F"}[t]] + [encode(v, depth + 1, lenient) for v in value]
    if t is dict:
        return ["D"] + [[encode(k, depth + 1, lenient), encode(v, depth + 1, lenient)] for k, v in value.items()]
    if t is bytes:
        return ["B", value.hex()]
    if t is complex:
        return ["C", value.real, value.imag]
    if lenient:
        return encode(_iterable_as_list(value), depth, False)
    raise TypeError("cannot send a %s between the tests and the program (plain data only)" % t.__name__)


def decode(data, depth=0):
    """The inverse of :func:`encode`; anything else is refused (ValueError)."""
    if depth > _MAX_DEPTH:
        raise ValueError("data nested too deeply")
    t = type(data)
    if data is None or t is bool or t is int or t is float or t is str:
        return data
    if t is list and data and type(data[0]) is str:
        tag, rest = data[0], data[1:]
        if tag in ("L", "T", "S", "F"):
            items = [decode(v, depth + 1) for v in rest]
            return {"L": list, "T": tuple, "S": set, "F": frozenset}[tag](items)
        if tag == "D":
            out = {}
            for pair in rest:
                if type(pair) is not list or len(pair) != 2:
                    raise ValueError("malformed mapping")
                out[decode(pair[0], depth + 1)] = decode(pair[1], depth + 1)
            return out
        if tag == "I" and len(rest) == 1 and type(rest[0]) is str:
            return int(rest[0], 16)
        if tag == "B" and len(rest) == 1 and type(rest[0]) is str:
            return bytes.fromhex(rest[0])
        if tag == "C" and len(rest) == 2 and all(type(x) in (int, float) for x in rest):
            return complex(rest[0], rest[1])
    raise ValueError("not plain data")


def _send(fd, message):
    body = _json().dumps(message, separators=(",", ":")).encode("utf-8", "surrogatepass")
    _write_all(fd, struct.pack(">I", len(body)) + body)


def _read_exact(fd, n):
    out = b""
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            return None
        out += chunk
    return out


def _recv(fd):
    """One frame, parsed; None at end of stream. Raises ValueError on a malformed frame."""
    head = _read_exact(fd, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    if n > _FRAME_CAP:
        raise ValueError("a message of %d bytes (the cap is %d)" % (n, _FRAME_CAP))
    body = _read_exact(fd, n)
    if body is None:
        return None
    return _json().loads(body.decode("utf-8", "surrogatepass"))


def _enter_program(unit, limits, use_seccomp, no_file_create=None):
    """Lock this (forked) process down and make the __main__ module the program runs in."""
    # SIGXCPU at the soft limit, SIGKILL a second later for a program that ignores it.
    _set_limit(resource.RLIMIT_CPU, int(unit["timeout"]) + 1, hard_extra=1)
    _set_limit(resource.RLIMIT_AS, limits["memory_bytes"])
    _set_limit(resource.RLIMIT_FSIZE, limits["file_bytes"])
    _set_limit(resource.RLIMIT_NOFILE, limits["open_files"])
    _set_limit(resource.RLIMIT_CORE, 0)
    _set_limit(resource.RLIMIT_MEMLOCK, 0)
    _set_limit(resource.RLIMIT_STACK, min(limits["memory_bytes"] // 4, 256 << 20))
    if not use_seccomp and os.getuid() == 65534:
        # Without seccomp, the process limit is what stops a fork bomb. It counts every
        # process of the uid, so it only means something for the dedicated uid 65534.
        _set_limit(resource.RLIMIT_NPROC, limits["processes"])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write fails with EFBIG instead
    if use_seccomp:
        program = seccomp_program(os.getpid(), no_file_create=no_file_create)
        if program is None or not install_seccomp(program):
            os._exit(121)
    import builtins

    builtins.exit = _Quitter("exit")
    builtins.quit = _Quitter("quit")
    sys.stdin = open(0, "r", encoding="utf-8", errors="surrogateescape", closefd=False)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.argv = ["solution.py"]
    module = type(sys)("__main__")
    module.__dict__["__file__"] = "solution.py"
    module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = module
    return module


def _place_fds(sources):
    """Make fd i a copy of ``sources[i]`` and close every other descriptor."""
    import fcntl

    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 64 + i) for i, fd in enumerate(sources)]  # out of the targets' way first
    for target, fd in enumerate(high):
        os.dup2(fd, target)
    os.closerange(len(sources), 65536)


def _serve(unit, fds, limits, use_seccomp, no_file_create=None):
    """P: run the program, then answer calls until the judge is done. Never returns."""
    code = 1
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        devnull = os.open(os.devnull, os.O_RDWR)
        req_fd, resp_fd, err_fd = fds
        _place_fds([devnull, devnull, err_fd, req_fd, resp_fd])  # 0, 1: nothing; 2: the error file; 3, 4: the judge's calls
        module = _enter_program(unit, limits, use_seccomp, no_file_create)
        source = unit["source"]
        unit.clear()
        namespace = module.__dict__
        try:
            exec(compile(source, "solution.py", "exec"), namespace)
        except SystemExit as exc:
            _send(4, ["load_error", "the program called exit(%r) before the tests ran" % (exc.code,)])
            os._exit(0)
        except BaseException as exc:
            _send(4, ["load_error", _describe(exc)])
            os._exit(0)
        _send(4, ["ready"])
        while True:
            message = _recv(3)
            if message is None:
                break
            _, name, args, kwargs = message
            fn = namespace.get(name)
            try:
                if fn is None:
                    raise NameError("name %r is not defined by the program" % name)
                value = fn(*decode(args), **decode(kwargs))
                reply = ["ok", encode(value, lenient=True)]
            except SystemExit as exc:
                reply = ["raise", "SystemExit", "the program called exit(%r) inside %s()" % (exc.code, name)]
            except BaseException as exc:
                reply = ["raise", type(exc).__name__, _describe(exc)]
            try:
                sys.stdout.flush()
            except BaseException:
                pass
            _send(4, reply)
        code = 0
    except BaseException:
        code = 120
    os._exit(code)


class ProgramError(BaseException):
    """A call to the program failed: it raised, exited, or sent something that is not plain data.

    Never the exception the program named: a ``StopIteration`` re-raised in the tests would end an
    ``all(map(candidate, ...))`` early, an ``IndexError`` an old-style iteration, a ``KeyError`` a
    lookup with a default, and so on. A BaseException, so a test's ``except Exception`` does not
    swallow it; and the judge fails the test for it even where the tests catch it anyway
    (``_CALL_FAILURES``).
    """


# Every failed call to the program in this judge process (one test), in order: any one fails the test.
_CALL_FAILURES = []


def _call_failed(message):
    _CALL_FAILURES.append(message)
    return ProgramError(message)


class _Remote:
    """A name the tests take from the program: calling it calls the program's function."""

    __slots__ = ("_name", "_channel")

    def __init__(self, name, channel):
        self._name = name
        self._channel = channel

    def __call__(self, *args, **kwargs):
        req_w, resp_r = self._channel
        _send(req_w, ["call", self._name, encode(list(args)), encode(kwargs)])
        try:
            reply = _recv(resp_r)
        except ValueError as exc:
            raise _call_failed("the program sent something that is not plain data (%s)" % exc) from None
        if reply is None:
            raise _call_failed("the program exited while %s() was being tested" % self._name)
        if type(reply) is list and len(reply) == 2 and reply[0] == "ok":
            try:
                return decode(reply[1])
            except ValueError as exc:
                raise _call_failed("%s() returned something that is not plain data (%s)" % (self._name, exc)) from None
        if type(reply) is list and len(reply) == 3 and reply[0] == "raise" and type(reply[1]) is str and type(reply[2]) is str:
            # An error of this call, whatever the program named: never re-raised as that class.
            raise _call_failed("%s() raised %s" % (self._name, reply[2][:1000]))
        raise _call_failed("the program's reply to %s() is malformed" % self._name)

    def __repr__(self):
        return "<the program's %s>" % self._name


def _judge(spec, channel, verdict_w, limits, timeout):
    """J: run the tests against the program's functions; write the verdict. Never returns."""
    verdict = "error judge: did not finish"
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        _set_limit(resource.RLIMIT_CPU, int(timeout) + 1, hard_extra=1)
        _set_limit(resource.RLIMIT_AS, limits["memory_bytes"])
        _set_limit(resource.RLIMIT_CORE, 0)
        import builtins

        try:
            first = _recv(channel[1])
        except ValueError:
            first = None
        if first == ["ready"]:
            namespace = {"__name__": "__main__", "__builtins__": builtins}
            try:
                if spec.get("prefix"):
                    exec(compile(spec["prefix"], "prefix.py", "exec"), namespace)
            except BaseException as exc:
                verdict = "error judge: the tests' prefix does not run on its own (%s); use judge='in_process'" % _describe(exc, "prefix.py")
            else:
                for name in spec.get("names", ()):
                    if name not in namespace and not hasattr(builtins, name):
                        namespace[name] = _Remote(name, channel)
                for alias, target in spec.get("aliases", {}).items():
                    namespace[alias] = _Remote(target, channel)
                try:
                    exec(compile(spec["code"], "test.py", "exec"), namespace)
                    verdict = "ok"
                except BaseException as exc:
                    verdict = "error " + _describe(exc, "test.py", spec["code"])
                if verdict == "ok" and _CALL_FAILURES:  # the tests caught it: the test fails all the same
                    verdict = "error ProgramError: %s (caught by the tests)" % _CALL_FAILURES[0]
        elif type(first) is list and len(first) == 2 and first[0] == "load_error" and type(first[1]) is str:
            verdict = "error the program failed before the tests ran: " + first[1]
        else:
            verdict = "error the program exited before the tests ran"
    except BaseException as exc:
        verdict = "error judge: " + type(exc).__name__
    try:
        _write_all(verdict_w, verdict.encode("utf-8", "backslashreplace")[:4000])
    finally:
        os._exit(0)


_STATE = {"use_seccomp": False}  # set by main() before the clean zygote is forked


def _line(conn, buffer, timeout=None):
    """Read one ``int\n`` line from ``conn`` (with ``buffer``, the bytes already read). Returns (value, buffer);
    value None when ``timeout`` seconds pass first. Raises OSError at end of stream."""
    while b"\n" not in buffer:
        if timeout is not None:
            ready, _, _ = select.select([conn], [], [], max(0.0, timeout))
            if not ready:
                return None, buffer
        chunk = conn.recv(64)
        if not chunk:
            raise OSError("the zygote exited")
        buffer += chunk
    line, _, buffer = buffer.partition(b"\n")
    return int(line), buffer


def _clean_zygote(sock):
    """Z0: forked before any sample was read, so it never holds a program, a test or a stdin.
    Forks one sample zygote per request (the sample's socket arrives with it). Never returns."""
    import socket as _socket_module

    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)  # the request pipe: every sample still to come stays out of reach
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # sample zygotes are reaped by the kernel
        conn = _socket_module.socket(fileno=sock)
        while True:
            msg, fds, _, _ = _socket_module.recv_fds(conn, 256, 1)
            if not msg.startswith(b"fork ") or len(fds) != 1:
                break
            pid = os.fork()
            if pid == 0:
                conn.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # this one waits for its children
                try:
                    os.chdir(msg[5:].decode())  # the sample's own fresh directory
                except (OSError, ValueError):
                    os._exit(0)
                _sample_zygote(fds[0])
            os.close(fds[0])
            conn.sendall(b"%d\n" % pid)
    except BaseException:
        pass
    os._exit(0)


def _sample_zygote(sock):
    """Zs: read one sample's programs, then fork each unit's program process on request and
    report its pid and exit status. Never returns."""
    import socket as _socket_module

    try:
        conn = _socket_module.socket(fileno=sock)
        head = b""
        while len(head) < 10:
            chunk = conn.recv(10 - len(head))
            if not chunk:
                os._exit(0)
            head += chunk
        raw = b""
        while len(raw) < int(head):
            chunk = conn.recv(min(1 << 20, int(head) - len(raw)))
            if not chunk:
                os._exit(0)
            raw += chunk
        request = marshal.loads(raw)
        del raw
        units, limits, use_seccomp = request["units"], request["limits"], _STATE["use_seccomp"]
        while True:
            msg, fds, _, _ = _socket_module.recv_fds(conn, 256, 4)
            if not msg:
                break
            index, timeout, kind, nonce = msg.decode().split()
            unit = dict(units[int(index)], timeout=float(timeout))
            pid = os.fork()
            if pid == 0:
                conn.close()
                if kind == "judged":
                    _serve(unit, fds, limits, use_seccomp)
                _child(unit, fds[:3], fds[3], nonce, limits, use_seccomp, [units, request])
            for fd in fds:
                if fd > 2:
                    os.close(fd)
            conn.sendall(b"%d\n" % pid)
            _, status = os.waitpid(pid, 0)
            conn.sendall(b"%d\n" % status)
    except BaseException:
        pass
    os._exit(0)


class _CleanZygote:
    """The supervisor's handle on Z0."""

    def __init__(self, close_in_child):
        import socket as _socket_module

        self.socket = _socket_module
        ours, theirs = _socket_module.socketpair(_socket_module.AF_UNIX, _socket_module.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            ours.close()
            for fd in close_in_child:
                try:
                    os.close(fd)
                except OSError:
                    pass
            _clean_zygote(theirs.detach())
        theirs.close()
        self.pid, self.conn, self.buffer = pid, ours, b""

    def sample(self, request_bytes, directory):
        """A sample zygote holding ``request_bytes`` (one sample's marshalled programs), in ``directory``."""
        ours, theirs = self.socket.socketpair(self.socket.AF_UNIX, self.socket.SOCK_STREAM)
        try:
            self.socket.send_fds(self.conn, [b"fork " + directory.encode()], [theirs.fileno()])
        finally:
            theirs.close()
        pid, self.buffer = _line(self.conn, self.buffer)
        ours.sendall(b"%010d" % len(request_bytes) + request_bytes)
        return _Zygote(ours, pid)


class _Zygote:
    """The supervisor's handle on one sample's zygote (Zs)."""

    def __init__(self, conn, pid):
        import socket as _socket_module

        self.socket, self.conn, self.buffer, self.pid = _socket_module, conn, b"", pid

    def spawn(self, index, timeout, kind, nonce, fds):
        """Fork unit ``index``'s program process (``kind`` judged or plain) with ``fds``; its pid."""
        self.socket.send_fds(self.conn, [b"%d %r %s %s" % (index, timeout, kind.encode(), nonce.encode())], fds)
        pid, self.buffer = _line(self.conn, self.buffer)
        return pid

    def exit_status(self, timeout=None):
        """The wait status of the last spawned process; None if it is still running after ``timeout``."""
        status, self.buffer = _line(self.conn, self.buffer, timeout)
        return status

    def close(self):
        """End the sample: the zygote exits (it is Z0's child), and is gone when this returns."""
        try:
            pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            pidfd = None
        self.conn.close()
        if pidfd is not None:
            try:
                poller = select.poll()
                poller.register(pidfd, select.POLLIN)
                if not poller.poll(2000):
                    os.kill(self.pid, signal.SIGKILL)
                    poller.poll(2000)
            finally:
                os.close(pidfd)


def _run_judged(index, unit, spec, timeout, zygote, limits, close_in_judge=()):
    """Run one judged unit: P from the zygote, J forked here. Returns what _run_unit returns."""
    err_path = "err-%d" % index
    _unlink(err_path)
    err_fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    verdict_r, verdict_w = os.pipe()
    start = time.monotonic()
    try:
        program_pid = zygote.spawn(index, timeout, "judged", "-", [req_r, resp_w, err_fd])
    finally:
        for fd in (req_r, resp_w, err_fd):
            os.close(fd)
    judge_pid = os.fork()
    if judge_pid == 0:
        os.close(verdict_r)
        zygote.conn.close()
        for fd in close_in_judge:  # the result stream is the supervisor's alone
            os.close(fd)
        _judge(spec, (req_w, resp_r), verdict_w, limits, timeout)
    for fd in (req_w, resp_r, verdict_w):
        os.close(fd)
    wait_status, timed_out = _wait(judge_pid, max(0.0, timeout - (time.monotonic() - start)))
    elapsed = time.monotonic() - start
    verdict = b""
    while len(verdict) < 8192:
        chunk = os.read(verdict_r, 8192)
        if not chunk:
            break
        verdict += chunk
    os.close(verdict_r)
    try:
        os.kill(program_pid, signal.SIGKILL)
    except OSError:
        pass
    program_status = zygote.exit_status()
    text = verdict.decode("utf-8", "replace")
    if timed_out:
        status, code, err = "timeout", -1, "ran past %.3gs" % timeout
    elif not (os.WIFEXITED(wait_status) and os.WEXITSTATUS(wait_status) == 0) or not text:
        status, code, err = "died", -1, "the judge did not report"
    elif text == "ok":
        status, code, err = "ok", 0, ""
    else:
        status, code, err = "error", 1, text[6:] if text.startswith("error ") else text
    if status != "ok":
        if os.WIFSIGNALED(program_status) and os.WTERMSIG(program_status) == signal.SIGXCPU:
            status, err = "timeout", "ran past %.3gs" % timeout
        tail, _ = _read_file(err_path, 1 << 16)
        tail = tail[-1000:].decode("utf-8", "replace").strip()
        if tail and status != "timeout":
            err = (err + " | stderr: " + tail) if err else "stderr: " + tail
    _unlink(err_path)
    return status, code, elapsed, err.encode("utf-8", "replace")[:4000], b""


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _passed(kind, status, exit_code):
    if kind == "test":
        return status == "ok"
    return status == "ok" or (status == "exit" and exit_code == 0)


def _probe(use_seccomp, request=None):
    """Fork a child that installs the filter and tries what it forbids; return what held.

    Each key is 1 only when the attempt failed; an attempt that succeeds does no harm
    and is undone at once (a segment or file it made is removed, a signal is signal 0,
    a file opened for writing outside the work dir gets one byte only if it is the
    host's own probe file). Run whether or not the filter could be installed, so what
    is reported is what a program would meet.
    """
    request = request or {}
    no_file_create = bool(request.get("no_file_create"))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        result = []

        def attempt(key, fn, errnos=None):
            """Record ``key``=1 when ``fn`` fails (with one of ``errnos``, where given)."""
            try:
                fn()
                blocked = False
            except OSError as exc:
                blocked = errnos is None or exc.errno in errnos
            except RuntimeError:  # "can't start new thread"
                blocked = True
            except Exception:  # the attempt could not be made (an old Python): not shown to be blocked
                blocked = False
            result.append("%s=%d" % (key, blocked))
            return blocked

        def every(*fns):
            """One attempt made of several: it fails only when each of them does."""

            def run():
                for fn, errnos in fns:
                    try:
                        fn()
                    except OSError as exc:
                        if errnos is None or exc.errno in errnos:
                            continue
                    raise ValueError("not every attempt failed")
                raise OSError(1, "every attempt failed")

            return run

        def fork():
            child = os.fork()
            if child == 0:
                os._exit(0)
            os.waitpid(child, 0)

        def socket_():
            import socket

            socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()

        def thread():
            import _thread

            _thread.start_new_thread(lambda: None, ())

        def checked(value):
            if value == -1:
                import ctypes

                e = ctypes.get_errno()
                raise OSError(e, os.strerror(e))
            return value

        def sysv():
            import ctypes

            libc = _libc()
            made = 0
            for get, remove in (
                (lambda: libc.shmget(0, ctypes.c_size_t(4096), 0o1600), lambda i: libc.shmctl(i, 0, None)),
                (lambda: libc.msgget(0, 0o1600), lambda i: libc.msgctl(i, 0, None)),
                (lambda: libc.semget(0, 1, 0o1600), lambda i: libc.semctl(i, 0, 0)),
            ):  # IPC_PRIVATE, IPC_CREAT | 0600; IPC_RMID at once
                ident = get()
                if ident >= 0:
                    remove(ident)
                    made += 1
            if made:
                raise ValueError("made %d SysV IPC objects" % made)
            raise OSError(1, "refused")

        def fcntl_signals():
            import fcntl

            pr, pw = os.pipe()
            try:
                target = os.getppid()
                every(
                    (lambda: fcntl.fcntl(pr, _F_SETOWN, target), None),
                    (lambda: fcntl.fcntl(pr, _F_SETSIG, 10), None),
                    (lambda: fcntl.fcntl(pr, _F_SETOWN_EX, struct.pack("ii", 1, target)), None),  # F_OWNER_PID
                    # Pipes have no FIOSETOWN (ENOTTY): only the filter's EPERM shows it is refused.
                    (lambda: fcntl.ioctl(pr, _FIOSETOWN, struct.pack("i", target)), (1,)),
                )()
            finally:
                os.close(pr)
                os.close(pw)

        def pidfd():
            def open_parent():
                os.close(os.pidfd_open(os.getppid()))

            # pidfd_getfd on a bad pidfd: EBADF from the kernel, EPERM from the filter.
            every((open_parent, None), (lambda: checked(_libc().syscall(438, -1, 0, 0)), (1,)))()

        def prlimit():
            resource.prlimit(os.getppid(), resource.RLIMIT_NOFILE)

        def memfd():
            os.close(os.memfd_create("unmask-probe"))

        def create():
            name = "unmask-probe-%d" % os.getpid()

            def new_file():
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                os.unlink(name)

            def new_dir():
                os.mkdir(name + ".d")
                os.rmdir(name + ".d")

            def tmpfile():
                os.close(os.open(".", getattr(os, "O_TMPFILE", _O_TMPFILE | os.O_DIRECTORY) | os.O_WRONLY, 0o600))

            every((new_file, None), (new_dir, None), (tmpfile, None))()

        def outside_write():
            attempts = []
            stdlib_file = getattr(os, "__file__", None)  # on the host, read-only in the sandbox
            if stdlib_file and os.path.isfile(stdlib_file):
                # Opened for writing and closed untouched: proof enough that it could be changed.
                attempts.append((lambda: os.close(os.open(stdlib_file, os.O_WRONLY | os.O_APPEND)), None))
            target = request.get("probe_write")  # the host's own probe file, outside the work dir
            if target:

                def append():
                    fd = os.open(target, os.O_WRONLY | os.O_APPEND)
                    try:
                        os.write(fd, b"x")
                    finally:
                        os.close(fd)

                def make():
                    os.close(os.open(target + ".new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                    os.unlink(target + ".new")

                attempts += [(append, None), (make, None)]
            if not attempts:
                raise ValueError("nothing to try")
            every(*attempts)()

        def metadata():
            # Each a no-op if allowed (the work dir's own mode, times and owner; an xattr removed at
            # once); only the filter's EPERM counts as refused.
            st = os.stat(".")

            def xattr():
                os.setxattr(".", "user.unmask-probe", b"1")
                os.removexattr(".", "user.unmask-probe")

            every(
                (lambda: os.chmod(".", st.st_mode & 0o7777), (1,)),
                (lambda: os.utime(".", ns=(st.st_atime_ns, st.st_mtime_ns)), (1,)),
                (lambda: os.chown(".", -1, -1), (1,)),
                (xattr, (1,)),
            )()

        try:
            program = seccomp_program(os.getpid(), no_file_create=no_file_create)
            ok = bool(use_seccomp and program is not None and install_seccomp(program))
            result.append("seccomp=%d" % ok)
            attempt("fork_blocked", fork)
            attempt("socket_blocked", socket_)
            attempt("kill_blocked", lambda: os.kill(os.getppid(), 0))
            attempt("threads_blocked", thread)
            attempt("sysv_ipc_blocked", sysv)
            attempt("fcntl_signals_blocked", fcntl_signals)
            attempt("pidfd_blocked", pidfd)
            attempt("prlimit_blocked", prlimit)
            attempt("memfd_blocked", memfd)
            attempt("file_create_blocked", create)
            attempt("outside_write_blocked", outside_write)
            attempt("metadata_change_blocked", metadata)
        except BaseException as exc:
            result.append("error=%s" % type(exc).__name__)
        os.write(w, " ".join(result).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return data.decode()


def _read_stdin(n, allow_eof=False):
    """Exactly ``n`` bytes of stdin; None at a clean end of input when ``allow_eof``."""
    raw = b""
    while len(raw) < n:
        chunk = os.read(0, min(1 << 20, n - len(raw)))
        if not chunk:
            if allow_eof and not raw:
                return None
            raise SystemExit(3)
        raw += chunk
    return raw


def _wipe(path):
    """Remove everything under ``path`` (what a sample left in the work directory). True if it all went."""
    ok = True
    try:
        entries = list(os.scandir(path))
    except OSError:
        return False
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                os.chmod(entry.path, 0o700)  # a directory the program made unreadable
                ok = _wipe(entry.path) and ok
                os.rmdir(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            ok = False
    return ok


def _run_sample(request, judges, zygote, result_fd, devnull):
    """Run one sample's units in order, writing one R record each."""
    deadline = time.monotonic() + request["timeout"]
    limits = request["limits"]
    units = request["units"]
    stop_on_failure = request.get("stop_on_failure", False)
    failed = False
    for index in range(len(units)):
        unit = units[index]
        remaining = deadline - time.monotonic()
        if failed or remaining <= 0.01:
            status, code, ms, err, out = "skipped", -1, 0.0, b"", b""
        else:
            timeout = min(unit.get("timeout", remaining), remaining)
            try:
                if unit.get("judged"):
                    status, code, ms, err, out = _run_judged(index, unit, judges[index], timeout, zygote, limits, (result_fd,))
                else:
                    status, code, ms, err, out = _run_unit(index, unit, timeout, zygote, devnull)
            except OSError as exc:  # the sample broke its directory (removed it, filled it): it costs only itself
                status, code, ms, err, out = "error", 1, 0.0, ("sandbox: %s" % exc).encode()[:4000], b""
                failed = True
            if stop_on_failure and not _passed(unit.get("kind", "test"), status, code):
                failed = True
        units[index] = None  # free it
        header = "R %d %s %d %d %d %d\n" % (index, status, code, int(ms * 1e6), len(err), len(out))
        _write_all(result_fd, header.encode() + err + out)


def _dir_state(path):
    """What a sample must not change about the work directory: its mode, owner and extended attributes."""
    st = os.stat(path)
    try:
        names = sorted(os.listxattr(path))
    except OSError:
        names = []
    return (st.st_mode, st.st_uid, st.st_gid, names)


def _fresh_dir():
    """A new directory for one sample, in the work directory (the current one); its name."""
    name = "sample-" + os.urandom(8).hex()
    os.mkdir(name, 0o700)
    return name


def _read_frame(allow_eof=False):
    """One length-prefixed frame of stdin (10 ASCII digits, then the bytes); None at end of input."""
    head = _read_stdin(10, allow_eof=allow_eof)
    if head is None:
        return None
    return _read_stdin(int(head))


def main():
    # stdin: one frame of settings (the protections to apply), then per sample two frames: its
    # programs, and its tests' judges. Every process that runs a program descends from a
    # zygote forked before the first sample was read, through a zygote of its own sample made
    # before that sample's judges were read: no program's memory ever held a test, or anything
    # of another sample. With "serve" the supervisor stays for the next sample.
    config = marshal.loads(_read_frame())
    result_fd = config["result_fd"]
    if config.get("parent_death"):  # the host thread that started us went away: so do we
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if not config.get("serve"):
        _set_limit(resource.RLIMIT_CPU, int(config["timeout"]) + 5)
    _set_limit(resource.RLIMIT_CORE, 0)
    devnull = os.open(os.devnull, os.O_RDWR)
    applied = ["uid=%d" % os.getuid()]
    abi = landlock(config["read_paths"], config["write_paths"]) if config.get("landlock") else 0
    applied.append("landlock=%d" % abi)
    applied.append("caps_dropped=%d" % drop_capabilities())
    use_seccomp = bool(config.get("seccomp")) and _seccomp_table() is not None
    _STATE["use_seccomp"] = use_seccomp
    # Warm up once here, not in every forked child: the first compile() of a process
    # costs ~1.5 ms, and so does building the ctypes structure type.
    compile("pass", "solution.py", "exec")
    if use_seccomp:
        _fprog_type()
    _seccomp_options(config, use_seccomp)  # the file-creation rule; the filter built once, before any fork
    _json()  # imported once here, inherited by every judge and program process
    if config.get("probe"):
        applied.append(_probe(use_seccomp, config))
    started = ("S " + " ".join(applied) + "\n").encode()
    # Every sample runs in a directory of its own, made for it and removed after it (with whatever it
    # left in the work directory), so no sample sees another's files or their metadata; a work
    # directory whose own mode, owner or xattrs changed ends the sandbox (a fresh one serves next).
    base = os.getcwd()
    base_state = _dir_state(base)
    clean = _CleanZygote(close_in_child=(result_fd,))
    while True:
        raw = _read_frame(allow_eof=True)
        if raw is None:
            break
        directory = _fresh_dir()
        zygote = clean.sample(raw, directory)
        request = marshal.loads(raw)
        del raw
        judges = marshal.loads(_read_frame())
        _write_all(result_fd, started)
        os.chdir(directory)
        try:
            _run_sample(request, judges, zygote, result_fd, devnull)
        finally:
            os.chdir(base)
        zygote.close()
        clean_ok = _wipe(base)
        try:
            clean_ok = clean_ok and _dir_state(base) == base_state
        except OSError:
            clean_ok = False
        _write_all(result_fd, b"D\n")
        if not config.get("serve") or not clean_ok:
            break


if __name__ == "__main__":  # run by the sandbox's bootstrap; importing this file does nothing
    main()
    os._exit(0)  # skip interpreter teardown
