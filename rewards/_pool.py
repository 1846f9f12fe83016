"""Worker processes that run reward plugins, so that one that hangs can be killed.

Plugins are the user's own code (trusted, but maybe buggy or slow), so the workers
are ordinary processes, not sandboxes. They are fresh interpreters (forking a
trainer that holds CUDA or Ray threads is unsafe), started lazily, kept warm
between calls and shared by all callers; a call that runs past its time limit
gets its worker killed and replaced. A function is sent by reference (pickled), so
it must be importable: a module-level function, a ``functools.partial`` of one,
or an instance of an importable class.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

logger = logging.getLogger(__name__)

LOAD_TIMEOUT_S = 120.0  # importing a plugin's module (it may import torch) is not the plugin's call


@dataclass
class Task:
    """One call ``fn(prompts, completions, **columns)``; ``fn_bytes`` is the pickled function."""

    fn_key: str
    fn_bytes: bytes
    prompts: list
    completions: list
    columns: dict[str, Any]


@dataclass
class Outcome:
    """``kind``: ``ok`` (``value`` is what the call returned), ``error`` (it raised),
    ``timeout``, ``crash`` (the worker died), ``load_error`` (the function could not
    be loaded in a worker), ``cancelled`` (not run)."""

    kind: str
    value: Any = None
    message: str = ""
    seconds: float = 0.0


def _worker_main(fd: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group; the parent decides
    parent = os.getppid()

    def exit_when_orphaned() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=exit_when_orphaned, daemon=True).start()
    conn = Connection(fd)
    conn.send(("ready",))
    fns: dict[str, Callable] = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        _, index, key, fn_bytes, path, args = msg
        if key not in fns:
            try:
                for entry in reversed(path):
                    if entry not in sys.path:
                        sys.path.insert(0, entry)
                fns[key] = pickle.loads(fn_bytes)
            except BaseException as exc:
                conn.send(("load_error", index, f"{type(exc).__name__}: {exc}"))
                continue
        conn.send(("loaded", index))
        prompts, completions, columns = args
        try:
            result = fns[key](prompts, completions, **columns)
            payload = ("done", index, True, result)
            try:
                conn.send(payload)
                continue
            except Exception as exc:  # the result cannot be pickled
                conn.send(("done", index, False, f"{type(exc).__name__}: cannot send the result back: {exc}"))
        except BaseException as exc:
            conn.send(("done", index, False, f"{type(exc).__name__}: {exc}"))


class _Worker:
    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        code = (
            f"import sys; sys.path[:0] = {sys.path!r}; "
            f"from {__name__} import _worker_main; _worker_main(int(sys.argv[1]))"
        )
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, str(theirs.fileno())], pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL
            )
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        self.ready = False
        self.loaded: set[str] = set()
        self.task: int | None = None
        self.deadline = 0.0
        self.started = 0.0

    def stop(self, kill: bool = False) -> None:
        if not kill:
            try:
                self.conn.send(None)
                self.proc.wait(1.0)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.conn.close()


class Pool:
    """A set of warm worker processes; :meth:`run` hands out calls and enforces time limits."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.workers: list[_Worker] = []
        self.lock = threading.Lock()

    def shutdown(self) -> None:
        while self.workers:
            self.workers.pop().stop()

    def run(
        self,
        tasks: Sequence[Task],
        timeout_s: float,
        num_workers: int,
        stop: Callable[[list[Outcome | None]], bool] | None = None,
    ) -> list[Outcome]:
        """Run ``tasks`` on up to ``num_workers`` workers, each limited to ``timeout_s`` once loaded.

        ``stop(outcomes)`` is asked after each finished task; when it says True the
        tasks not yet started are cancelled.
        """
        with self.lock:
            try:
                return self._run(list(tasks), timeout_s, num_workers, stop)
            except BaseException:
                for w in self.workers:
                    w.stop(kill=True)
                self.workers.clear()
                raise

    def _replace(self, k: int) -> None:
        self.workers[k].stop(kill=True)
        self.workers[k] = _Worker()

    def _run(self, tasks: list[Task], timeout_s: float, num_workers: int, stop: Callable | None) -> list[Outcome]:
        while len(self.workers) > num_workers:
            self.workers.pop().stop()
        while len(self.workers) < min(num_workers, len(tasks)):
            self.workers.append(_Worker())
        outcomes: list[Outcome | None] = [None] * len(tasks)
        pending = deque(range(len(tasks)))
        remaining = len(tasks)
        path = list(sys.path)
        startup_deadline = time.monotonic() + LOAD_TIMEOUT_S

        def finish(index: int, outcome: Outcome) -> None:
            nonlocal remaining
            outcomes[index] = outcome
            remaining -= 1
            if stop is not None and pending and stop(outcomes):
                while pending:
                    outcomes[pending.popleft()] = Outcome("cancelled", message="not run: the calls before it failed")
                    remaining -= 1

        while remaining:
            for k, w in enumerate(self.workers):
                if w.ready and w.task is None and pending:
                    index = pending.popleft()
                    t = tasks[index]
                    fn_bytes = b"" if t.fn_key in w.loaded else t.fn_bytes
                    try:
                        w.conn.send(("call", index, t.fn_key, fn_bytes, path, (t.prompts, t.completions, t.columns)))
                    except (OSError, ValueError):
                        pending.appendleft(index)
                        self._replace(k)
                        continue
                    except Exception as exc:  # the arguments cannot be pickled
                        finish(index, Outcome("error", message=f"{type(exc).__name__}: cannot send the call: {exc}"))
                        continue
                    w.task = index
                    w.started = time.monotonic()
                    w.deadline = w.started + LOAD_TIMEOUT_S  # until the function is loaded
            deadlines = [w.deadline for w in self.workers if w.task is not None]
            if not any(w.ready for w in self.workers):
                deadlines.append(startup_deadline)
            wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            by_conn = {w.conn: k for k, w in enumerate(self.workers)}
            for conn in wait(list(by_conn), wait_s):
                k = by_conn[conn]
                w = self.workers[k]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    if not w.ready:
                        raise RuntimeError(f"reward worker exited with code {w.proc.poll()} while starting") from None
                    if w.task is not None:
                        finish(w.task, Outcome("crash", message=f"the worker process died (exit code {w.proc.poll()})",
                                               seconds=time.monotonic() - w.started))  # fmt: skip
                    self._replace(k)
                    continue
                except Exception as exc:  # a result that cannot be unpickled here
                    if w.task is not None:
                        finish(w.task, Outcome("error", message=f"{type(exc).__name__}: cannot read the result: {exc}"))
                        w.task = None
                    continue
                kind = msg[0]
                if kind == "ready":
                    w.ready = True
                elif kind == "loaded":
                    w.loaded.add(tasks[msg[1]].fn_key)
                    w.deadline = time.monotonic() + timeout_s
                    w.started = time.monotonic()
                elif kind == "load_error":
                    finish(msg[1], Outcome("load_error", message=msg[2]))
                    w.task = None
                elif kind == "done":
                    _, index, ok, payload = msg
                    seconds = time.monotonic() - w.started
                    finish(index, Outcome("ok", payload, seconds=seconds) if ok else Outcome("error", message=payload, seconds=seconds))
                    w.task = None
            now = time.monotonic()
            for k, w in enumerate(self.workers):
                if w.task is not None and now >= w.deadline:
                    loading = tasks[w.task].fn_key not in w.loaded
                    what = f"loading the function took over {LOAD_TIMEOUT_S:.0f}s" if loading else f"timed out after {timeout_s:g}s"
                    finish(w.task, Outcome("load_error" if loading else "timeout", message=what, seconds=now - w.started))
                    self._replace(k)
            if not any(w.ready for w in self.workers) and now >= startup_deadline:
                raise RuntimeError(f"reward workers did not start within {LOAD_TIMEOUT_S:.0f}s")
        return [o if o is not None else Outcome("cancelled") for o in outcomes]


_POOL: Pool | None = None
_POOL_LOCK = threading.Lock()


def pool() -> Pool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid():  # a forked child must not drive its parent's workers
            _POOL = Pool()
        return _POOL


def shutdown_workers() -> None:
    """Stop the warm plugin worker processes (they restart on the next call)."""
    with _POOL_LOCK:
        p = _POOL
    if p is not None and p.pid == os.getpid():
        with p.lock:
            p.shutdown()


atexit.register(shutdown_workers)


def function_bytes(fn: Callable) -> bytes | None:
    """Pickle ``fn`` by reference for a worker; None when a worker could not load it."""
    target = getattr(fn, "func", fn)  # functools.partial
    if getattr(target, "__module__", None) == "__main__" or "<locals>" in getattr(target, "__qualname__", ""):
        return None
    try:
        return pickle.dumps(fn)
    except Exception:
        return None
