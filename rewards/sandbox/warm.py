"""Warm sandboxes: one sandbox process that runs sample after sample.

Starting a sandbox (bubblewrap, an interpreter, Landlock, the filter) costs more than most
programs do. A warm sandbox ("server") is started once and runs one sample after another:
every sample gets processes forked from a zygote made before any sample was read (through a
zygote of its own), its work directory is emptied after it, and a server whose clean-up
fails exits instead of serving again. Servers are started from one long-lived thread, so the
parent-death signal (bubblewrap's --die-with-parent, the fallback's PR_SET_PDEATHSIG) is tied
to this process, not to whichever short-lived thread asked first.
"""

from __future__ import annotations

import atexit
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from typing import Any

from .launch import (
    _RESULT_CAP,
    _STARTUP_GRACE_S,
    _command,
    _kill,
    _parse_records,
    _python,
    _sample_frames,
    _settings,
)
from .programs import Limits, Program, SandboxError, SandboxResult, UnitResult


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
    """One warm sandbox: a supervisor that runs sample after sample (rewards/sandbox/_sandbox_child.py, serve)."""

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
    return (config["backend"], config.get("bwrap"), bool(config.get("tmpfs_size")), config.get("interp"),
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
