"""The supervisor that runs inside the sandbox (stdlib only).

rewards/sandbox.py passes this file's source to ``python -I -S -B -c``; it is not
imported by the package. It reads a ``marshal``-encoded request from stdin (the
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

A unit counts as finished only when its child reports so through a private pipe,
tagged with a random nonce; a program that exits early (``os._exit(0)``) in the
middle of a test therefore fails it.
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
# clone3 gets ENOSYS so glibc falls back to clone, which is filtered on its flags.
_EPERM, _EAGAIN, _EACCES, _ENOSYS = 1, 11, 13, 38
_X86_64 = {
    "arch": 0xC000003E,
    "deny": {
        57: _EAGAIN, 58: _EAGAIN,  # fork, vfork
        435: _ENOSYS,  # clone3
        59: _EPERM, 322: _EPERM,  # execve, execveat
        41: _EACCES,  # socket
        200: _EPERM, 424: _EPERM,  # tkill, pidfd_send_signal
        101: _EPERM, 310: _EPERM, 311: _EPERM, 312: _EPERM,  # ptrace, process_vm_readv/writev, kcmp
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
    },
    "clone": 56,
    "self_only": (62, 234, 129, 297),  # kill, tgkill, rt_sigqueueinfo, rt_tgsigqueueinfo: arg0 must be our pid
    "x32": True,
}
_AARCH64 = {
    "arch": 0xC00000B7,
    "deny": {
        435: _ENOSYS,
        221: _EPERM, 281: _EPERM,
        198: _EACCES,
        130: _EPERM, 424: _EPERM,
        117: _EPERM, 270: _EPERM, 271: _EPERM, 272: _EPERM,
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
    },
    "clone": 220,
    "self_only": (129, 131, 138, 240),
    "x32": False,
}


def _seccomp_table():
    return {"x86_64": _X86_64, "aarch64": _AARCH64}.get(os.uname().machine)


def seccomp_program(pid):
    """Return the classic-BPF seccomp filter for this process (``pid``), or None."""
    table = _seccomp_table()
    if table is None:
        return None
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, ..., BPF_RET|K
    ALLOW, KILL = 0x7FFF0000, 0x80000000
    insns = []

    def op(code, k, jt=0, jf=0):
        insns.append(struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF))

    def errno(e):
        return 0x00050000 | e

    op(LD, 4)  # arch
    op(JEQ, table["arch"], 1, 0)
    op(RET, KILL)
    op(LD, 0)  # syscall number
    if table["x32"]:
        op(JGE, 0x40000000, 0, 1)
        op(RET, errno(_ENOSYS))
    for nr, e in sorted(table["deny"].items()):
        op(JEQ, nr, 0, 1)
        op(RET, errno(e))
    # clone: threads (CLONE_THREAD) are fine, new processes are not.
    op(JEQ, table["clone"], 0, 4)
    op(LD, 16)  # low word of args[0] (flags)
    op(JSET, 0x00010000, 0, 1)
    op(RET, ALLOW)
    op(RET, errno(_EAGAIN))
    # Signals only to ourselves: arg0 (a pid_t) must equal our pid.
    for nr in table["self_only"]:
        op(LD, 0)
        op(JEQ, nr, 0, 6)
        op(LD, 16)
        op(JEQ, pid, 0, 3)
        op(LD, 20)
        op(JEQ, 0, 0, 1)
        op(RET, ALLOW)
        op(RET, errno(_EPERM))
    op(RET, ALLOW)
    return b"".join(insns)


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


def _describe(exc):
    try:
        text = "%s: %s" % (type(exc).__name__, exc)
    except BaseException:
        text = type(exc).__name__
    tb, line = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "solution.py":
            line = tb.tb_lineno
        tb = tb.tb_next
    if line is not None:
        text += " (line %d)" % line
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
        stdin_fd, stdout_fd, stderr_fd = fds
        os.dup2(stdin_fd, 0)
        os.dup2(stdout_fd, 1)
        os.dup2(stderr_fd, 2)
        os.dup2(report_fd, 3)
        os.closerange(4, 65536)
        report_fd = 3
        for container in forget:  # the other units (their tests) and the request
            container.clear()
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
            program = seccomp_program(os.getpid())
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


def _run_unit(index, unit, timeout, limits, use_seccomp, devnull, forget):
    stdin_fd = devnull
    paths = []
    if unit.get("stdin") is not None:
        path = "stdin-%d" % index
        with open(path, "wb") as f:
            f.write(unit["stdin"])
        paths.append(path)
        stdin_fd = os.open(path, os.O_RDONLY)
    mode = unit.get("stdout", "discard")
    out_path = "out-%d" % index
    err_path = "err-%d" % index
    if mode == "pass":
        stdout_fd, stderr_fd = 1, 2
    else:
        stdout_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) if mode == "capture" else devnull
        stderr_fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        paths += [out_path, err_path] if mode == "capture" else [err_path]
    report_r, report_w = os.pipe()
    nonce = os.urandom(16).hex()
    unit = dict(unit, timeout=timeout)
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(unit, (stdin_fd, stdout_fd, stderr_fd), report_w, nonce, limits, use_seccomp, forget)
    os.close(report_w)
    for fd in (stdin_fd, stdout_fd, stderr_fd):
        if fd not in (devnull, 1, 2):
            os.close(fd)
    wait_status, timed_out = _wait(pid, timeout)
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


def _passed(kind, status, exit_code):
    if kind == "test":
        return status == "ok"
    return status == "ok" or (status == "exit" and exit_code == 0)


def _probe(use_seccomp):
    """Fork a child that installs the filter and tries what it forbids; return what held."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        result = []
        try:
            program = seccomp_program(os.getpid())
            ok = use_seccomp and program is not None and install_seccomp(program)
            result.append("seccomp=%d" % ok)
            if ok:
                try:
                    child = os.fork()
                    if child == 0:
                        os._exit(0)
                    result.append("fork_blocked=0")
                except OSError:
                    result.append("fork_blocked=1")
                import socket

                try:
                    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
                    result.append("socket_blocked=0")
                except OSError:
                    result.append("socket_blocked=1")
                try:
                    os.kill(os.getppid(), 0)
                    result.append("kill_blocked=0")
                except OSError:
                    result.append("kill_blocked=1")
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


def main():
    raw = b""
    while True:
        chunk = os.read(0, 1 << 20)
        if not chunk:
            break
        raw += chunk
    request = marshal.loads(raw)
    del raw
    result_fd = request["result_fd"]
    start = time.monotonic()
    deadline = start + request["timeout"]
    if request.get("parent_death"):  # the host thread that started us went away: so do we
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    limits = request["limits"]
    _set_limit(resource.RLIMIT_CPU, int(request["timeout"]) + 5)
    _set_limit(resource.RLIMIT_CORE, 0)
    devnull = os.open(os.devnull, os.O_RDWR)
    applied = ["uid=%d" % os.getuid()]
    abi = landlock(request["read_paths"], request["write_paths"]) if request.get("landlock") else 0
    applied.append("landlock=%d" % abi)
    applied.append("caps_dropped=%d" % drop_capabilities())
    use_seccomp = bool(request.get("seccomp")) and _seccomp_table() is not None
    # Warm up once here, not in every forked child: the first compile() of a process
    # costs ~1.5 ms, and so does building the ctypes structure type.
    compile("pass", "solution.py", "exec")
    if use_seccomp:
        _fprog_type()
    if request.get("probe"):
        applied.append(_probe(use_seccomp))
        if request.get("probe_write"):
            try:
                with open(request["probe_write"], "w") as f:
                    f.write("x")
                os.unlink(request["probe_write"])
                applied.append("outside_write_blocked=0")
            except OSError:
                applied.append("outside_write_blocked=1")
    _write_all(result_fd, ("S " + " ".join(applied) + "\n").encode())
    units = request["units"]
    stop_on_failure = request.get("stop_on_failure", False)
    forget = [units, request]
    failed = False
    for index in range(len(units)):
        unit = units[index]
        remaining = deadline - time.monotonic()
        if failed or remaining <= 0.01:
            status, code, ms, err, out = "skipped", -1, 0.0, b"", b""
        else:
            timeout = min(unit.get("timeout", remaining), remaining)
            status, code, ms, err, out = _run_unit(index, unit, timeout, limits, use_seccomp, devnull, forget)
            if stop_on_failure and not _passed(unit.get("kind", "test"), status, code):
                failed = True
        units[index] = None  # free it
        header = "R %d %s %d %d %d %d\n" % (index, status, code, int(ms * 1e6), len(err), len(out))
        _write_all(result_fd, header.encode() + err + out)
    _write_all(result_fd, b"D\n")


if __name__ == "__main__":  # run by the sandbox's bootstrap; importing this file does nothing
    main()
    os._exit(0)  # skip interpreter teardown
