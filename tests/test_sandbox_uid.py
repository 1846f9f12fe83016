"""Programs run as an unprivileged uid and see only what they need (issue 29, round 2).

When the trainer runs as root (most containers, most GPU hosts), a sandboxed program used to run as
uid 0 with its capabilities dropped: the seccomp filter was the only thing between it and a chmod,
utime or setxattr on a root-owned host file or device node. Now the sandbox starts as uid 65534 on
both backends (with a staged copy of the interpreter where uid 65534 cannot read it), so the kernel
refuses those for want of ownership even with the filter off; and bubblewrap binds only the
interpreter and the system libraries.
"""

import os
import shutil
import stat
import sys
import tempfile

import pytest

from rewards import code_reward, sandbox_info
from rewards import sandbox as sb
from rewards.sandbox import interpreter as interp_mod

from .test_rewards_sandbox import backend  # noqa: F401 - the parametrised backend fixture

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="uid switching is what a root host does")


def run(backend, source, **config):  # noqa: F811
    """One script in a sandbox started for it, with `config` over the probed one (e.g. seccomp=False)."""
    cfg = dict(sb._backend_info(backend)["_config"], **config)
    result = sb._start(cfg, [sb.Program(source, kind="script", stdout="pass")], sb.Limits())
    assert result.units[0].status == "ok", result.units[0]
    return eval(result.stdout.decode())  # noqa: S307 - a literal printed by the test's own program


@root_only
def test_programs_run_as_uid_65534_on_a_root_host(backend):  # noqa: F811
    info = sandbox_info(backend)
    assert info["uid"] == 65534 and info["unprivileged_uid"] is True and info["weak"] is False
    ids = run(backend, "import os\nprint((os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups()))")
    assert ids == (65534, 65534, 65534, 65534, [])
    # Through the code reward and the warm sandbox too.
    test = "assert __import__('os').getuid() == 65534 and __import__('os').getgid() == 65534"
    assert code_reward(["q"], ["x = 1"], tests=[[test]], backend=backend, judge="in_process") == [1.0]


ATTEMPTS = """
import os
def attempts(path, real):
    st = os.stat(path)
    tries = [
        ("chmod_same", lambda: os.chmod(path, st.st_mode & 0o7777)),
        ("utime_same", lambda: os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))),
    ]
    if real:  # the test's own file: real changes
        tries += [
            ("chmod_setuid", lambda: os.chmod(path, 0o4777)),
            ("utime", lambda: os.utime(path, (1, 1))),
            ("setxattr", lambda: os.setxattr(path, "user.unmask", b"1")),
        ]
    out = {}
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


def state(path):
    st = os.stat(path)
    try:
        xattrs = {k: os.getxattr(path, k) for k in os.listxattr(path)}
    except OSError:
        xattrs = None
    return (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, xattrs)


@root_only
def test_the_kernel_refuses_metadata_changes_with_the_filter_off(backend, tmp_path):  # noqa: F811
    # The seccomp filter refuses chmod/utime/xattrs (tests/test_rewards_redteam.py); here it is off,
    # and uid 65534 owning none of these files is what stops each attempt. /dev/null is the host's
    # own node (bubblewrap binds it); only no-op changes are tried on it, so a broken layer harms nothing.
    shared = tempfile.mkdtemp(dir="/var/tmp")  # a root-owned file uid 65534 can reach (tmp_path is private)
    try:
        os.chmod(shared, 0o755)
        own = os.path.join(shared, "host.txt")
        with open(own, "w") as f:
            f.write("keep")
        os.chmod(own, 0o644)
        paths = {"/dev/null": False}
        if backend == "rlimit":  # bubblewrap shows no host directory but what it binds read-only
            paths[own] = True
        before = {p: state(p) for p in paths}
        for path, real in paths.items():
            got = run(backend, ATTEMPTS + f"print(repr(attempts({path!r}, {real!r})))", seccomp=False)
            assert set(got.values()) == {"refused"}, (path, got)
        assert {p: state(p) for p in paths} == before
    finally:
        shutil.rmtree(shared)


def test_the_filter_refuses_metadata_changes_where_the_uid_would_allow_them(backend):  # noqa: F811
    # The program's own work directory belongs to its uid, so only the seccomp filter stands in the way
    # there: with it off the same attempts go through (which is what makes this test able to fail).
    probe = ATTEMPTS + "print(repr(attempts(os.getcwd(), True)))"
    assert set(run(backend, probe).values()) == {"refused"}
    off = run(backend, probe, seccomp=False)
    assert off["chmod_setuid"] == "done" and off["utime"] == "done", off


def test_bubblewrap_binds_only_the_interpreter_and_system_libraries():
    info = sandbox_info("bwrap")
    project = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    site = os.path.join(os.path.realpath(sys.base_prefix), "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}", "site-packages")
    hidden = ["/usr/bin", "/bin/sh", "/etc/passwd", "/home", "/usr/local/bin", "/var", project, site, sys.prefix + "/bin/pip"]
    home, prefix = os.path.expanduser("~"), os.path.realpath(sys.base_prefix)
    if os.path.isdir(home):  # what the home holds beside the interpreter (pyenv, conda) stays hidden
        hidden += [p for p in (os.path.join(home, e) for e in sorted(os.listdir(home))) if not prefix.startswith(p + os.sep)][:8]
    seen = run("bwrap", f"import os\nprint({{p: os.path.exists(p) for p in {hidden!r}}})")
    assert not any(seen.values()), seen
    # What programs do use still works: C extensions with system libraries, time zones, the stdlib.
    works = run("bwrap", "import ctypes, hashlib, json, math, sqlite3, zoneinfo, decimal, datetime\n"
                         "print(repr(str(datetime.datetime(2026, 7, 1, 12, tzinfo=zoneinfo.ZoneInfo('Europe/Paris')).utcoffset())))")  # fmt: skip
    assert works == "2:00:00"
    # Read-only: the interpreter's own files cannot be written.
    assert run("bwrap", "import os\ntry:\n    open(os.__file__, 'a')\n    print('written')\nexcept OSError as e:\n    print(e.errno)\n") in (13, 30)
    assert info["filesystem"].startswith("read-only interpreter, standard library and system libraries only")


def test_landlock_lets_rlimit_programs_read_only_what_they_need():
    project = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    got = run("rlimit", "import os\nout = {}\n"
                        f"for p in ['/etc/passwd', {project!r} + '/README.md', '/usr/bin/env']:\n"
                        "    try:\n        open(p, 'rb').read(1)\n        out[p] = 'read'\n"
                        "    except OSError as e:\n        out[p] = e.errno\nprint(out)")  # fmt: skip
    assert set(got.values()) <= {13, 2}, got  # EACCES (Landlock, or the uid), never read
    assert run("rlimit", "import hashlib, sqlite3, zoneinfo\nprint(repr(hashlib.sha256(b'a').hexdigest()[:8]))") == "ca978112"


@root_only
def test_a_staged_interpreter_is_made_once_root_owned_and_never_taken_from_someone_else(tmp_path):
    root = tmp_path / "stage"
    root.mkdir()
    root.chmod(0o755)
    first = interp_mod.stage_interpreter(str(root))
    st = os.stat(first)
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o755
    rel = os.path.relpath(interp_mod.host_python(), os.path.realpath(sys.base_prefix))
    assert os.access(os.path.join(first, rel), os.X_OK)
    stdlib = os.path.join(first, os.path.relpath(interp_mod._stdlib(), os.path.realpath(sys.base_prefix)))
    assert os.path.isfile(os.path.join(stdlib, "os.py")) and not os.path.exists(os.path.join(stdlib, "site-packages"))
    assert not os.path.exists(os.path.join(stdlib, "test"))
    # Every file readable by all, none writable by others.
    for dirpath, _, files in os.walk(first):
        for name in [".", *files]:
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            assert stat.S_ISLNK(mode) or (mode & 0o004 and not mode & 0o022), os.path.join(dirpath, name)
    assert interp_mod.stage_interpreter(str(root)) == first and os.stat(first).st_ino == st.st_ino  # reused
    # A directory at that name made by another uid (here 65534), or writable by others, is refused.
    shutil.rmtree(first)
    os.mkdir(first)
    with open(os.path.join(first, "planted"), "w"):  # not empty: renaming the copy over it fails
        pass
    os.chown(first, 65534, 65534)
    with pytest.raises(OSError, match="not made by uid 0"):
        interp_mod.stage_interpreter(str(root))
    os.chown(first, 0, 0)
    os.chmod(first, 0o777)
    with pytest.raises(OSError, match="others can write"):
        interp_mod.stage_interpreter(str(root))


@pytest.fixture
def no_unprivileged_uid(monkeypatch):
    """As on a root host where uid 65534 can run neither the interpreter nor a staged copy."""
    def cannot(bwrap):
        raise OSError("cannot stage here (test)")

    monkeypatch.setattr(sb, "choose_interpreter", cannot)
    monkeypatch.delenv(sb.ALLOW_WEAK_ENV, raising=False)
    sb.clear_probe_cache()
    sb.shutdown_servers()
    yield monkeypatch
    sb.clear_probe_cache()
    sb.shutdown_servers()


@root_only
@pytest.mark.parametrize("which", ["bwrap", "rlimit"])
def test_running_programs_as_root_is_refused_with_the_fix(no_unprivileged_uid, which):
    with pytest.raises(sb.SandboxError) as refused:
        sandbox_info(which)
    message = str(refused.value)
    assert f"refusing the {which} sandbox" in message and "uid 0" in message and "cannot stage here (test)" in message
    assert "chmod -R o+rX" in message and sb.STAGE_DIR_ENV in message and sb.ALLOW_WEAK_ENV in message
    no_unprivileged_uid.setenv(sb.ALLOW_WEAK_ENV, "1")
    info = sandbox_info(which)
    assert info["weak"] is True and info["uid"] == 0 and info["unprivileged_uid"] is False
    assert any("uid 0" in r for r in info["weak_reasons"])
