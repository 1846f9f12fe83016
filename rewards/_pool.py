"""Worker processes that run reward code, so that a call that hangs can be killed.

One pool serves every reward that runs out of process: reward plugins (the user's
own code: trusted, but maybe buggy or slow) and math-verify checks
(rewards/math.py, whose sympy work can hang in C code). The workers are ordinary
processes, not sandboxes. They are fresh interpreters (forking a trainer that
holds CUDA or Ray threads is unsafe), started lazily, kept warm between calls and
shared by all callers; a call that runs past its time limit gets its worker
killed and replaced.

A function is sent by reference (pickled), so it must be importable: a
module-level function, a ``functools.partial`` of one, or an instance of an
importable class. A worker loads it (unpickles it, importing its module) once and
keeps it under the task's ``fn_key``; loading is limited by ``LOAD_TIMEOUT_S``,
not by the call's ``timeout_s``, so a function that needs heavy imports or
one-time set-up can do it at load time (from its module's import or an
``__setstate__``) without eating into its calls' limit.

Several threads may call :meth:`Pool.run` at once: each call takes its own
workers from the warm ones (starting more when none are free) and gives them
back when done, so rewards scored at the same time run at the same time. The
pool keeps every worker it has started (they are as many as the most that were
ever busy at once) until :func:`shutdown_workers`. A worker's stdout goes to its
stderr, so reward code that prints cannot corrupt the caller's stdout.
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
        if fn_bytes:  # the parent asks for a load (and waits for "loaded") only the first time
            try:
                for entry in reversed(path):
                    if entry not in sys.path:
                        sys.path.insert(0, entry)
                fns[key] = pickle.loads(fn_bytes)
            except BaseException as exc:
                conn.send(("load_error", index, f"{type(exc).__name__}: {exc}"))
                continue
            conn.send(("loaded", index))
        elif key not in fns:
            conn.send(("load_error", index, f"the function {key!r} was never loaded in this worker"))
            continue
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


def _worker_stdout() -> int:
    """Where a worker's stdout goes: this process's stderr (fd 2), or nowhere when that is closed."""
    try:
        os.fstat(2)
    except OSError:
        return subprocess.DEVNULL
    return 2


class _Worker:
    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        code = (
            f"import sys; sys.path[:0] = {sys.path!r}; "
            f"from {__name__} import _worker_main; _worker_main(int(sys.argv[1]))"
        )
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=_worker_stdout(),  # prints stay visible, but off the caller's stdout
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
    """Warm worker processes shared by all callers; :meth:`run` hands out calls and enforces time limits."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.idle: list[_Worker] = []  # warm workers no call is using
        self.busy = 0  # workers that calls in progress hold
        self.generation = 0  # bumped by shutdown(): workers held across it are stopped when given back
        self.lock = threading.Lock()  # guards idle, busy and generation; never held while a call runs

    @property
    def size(self) -> int:
        """Worker processes started and not stopped (idle or in use)."""
        with self.lock:
            return len(self.idle) + self.busy

    def shutdown(self) -> None:
        """Stop the idle workers now; those in use stop when their call returns."""
        with self.lock:
            idle, self.idle = self.idle, []
            self.generation += 1
        for w in idle:
            w.stop()

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
        if num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, got {num_workers}")
        tasks = list(tasks)
        if not tasks:
            return []
        want = min(num_workers, len(tasks))
        with self.lock:
            generation = self.generation
            workers = [self.idle.pop() for _ in range(min(want, len(self.idle)))]
            self.busy += want
        try:
            while len(workers) < want:  # grow lazily; warm ones are reused
                workers.append(_Worker())
            outcomes = _run(workers, tasks, timeout_s, stop)
        except BaseException:
            # The workers' state is unknown (a task may be in flight): start afresh next time.
            for w in workers:
                w.stop(kill=True)
            with self.lock:
                self.busy -= want
            raise
        with self.lock:
            self.busy -= want
            if generation == self.generation:
                self.idle.extend(workers)
                workers = []
        for w in workers:  # shut down while this call ran
            w.stop()
        return outcomes


def _replace(workers: list[_Worker], k: int) -> None:
    workers[k].stop(kill=True)
    workers[k] = _Worker()


def _run(workers: list[_Worker], tasks: list[Task], timeout_s: float, stop: Callable | None) -> list[Outcome]:
    """Run ``tasks`` on ``workers`` (this call's own); a worker that dies or times out is replaced in the list."""
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
        for k, w in enumerate(workers):
            if w.ready and w.task is None and pending:
                index = pending.popleft()
                t = tasks[index]
                loaded = t.fn_key in w.loaded
                try:
                    w.conn.send(("call", index, t.fn_key, b"" if loaded else t.fn_bytes, [] if loaded else path,
                                 (t.prompts, t.completions, t.columns)))  # fmt: skip
                except (OSError, ValueError):  # died while idle: retry on a fresh worker
                    pending.appendleft(index)
                    _replace(workers, k)
                    continue
                except Exception as exc:  # the arguments cannot be pickled
                    finish(index, Outcome("error", message=f"{type(exc).__name__}: cannot send the call: {exc}"))
                    continue
                w.task = index
                w.started = time.monotonic()
                # A loaded function's clock starts now; a load gets LOAD_TIMEOUT_S, then the call's
                # clock starts at "loaded". Queueing and a worker's startup never count against a call.
                w.deadline = w.started + (timeout_s if loaded else LOAD_TIMEOUT_S)
        deadlines = [w.deadline for w in workers if w.task is not None]
        if not any(w.ready for w in workers):
            deadlines.append(startup_deadline)
        wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        by_conn = {w.conn: k for k, w in enumerate(workers)}
        for conn in wait(list(by_conn), wait_s):
            k = by_conn[conn]
            w = workers[k]
            try:
                msg = conn.recv()
            except (EOFError, OSError):  # the worker died (OOM kill, segfault)
                if not w.ready:
                    raise RuntimeError(f"reward worker exited with code {w.proc.poll()} while starting") from None
                if w.task is not None:
                    finish(w.task, Outcome("crash", message=f"the worker process died (exit code {w.proc.poll()})",
                                           seconds=time.monotonic() - w.started))  # fmt: skip
                _replace(workers, k)
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
        for k, w in enumerate(workers):
            if w.task is not None and now >= w.deadline:
                loading = tasks[w.task].fn_key not in w.loaded
                what = f"loading the function took over {LOAD_TIMEOUT_S:.0f}s" if loading else f"timed out after {timeout_s:g}s"
                finish(w.task, Outcome("load_error" if loading else "timeout", message=what, seconds=now - w.started))
                _replace(workers, k)
        if not any(w.ready for w in workers) and now >= startup_deadline:
            raise RuntimeError(f"reward workers did not start within {LOAD_TIMEOUT_S:.0f}s")
    return [o if o is not None else Outcome("cancelled") for o in outcomes]


_POOL: Pool | None = None
_POOL_LOCK = threading.Lock()


def pool() -> Pool:
    """The process's shared pool."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid():  # a forked child must not drive its parent's workers
            _POOL = Pool()
        return _POOL


def shutdown_workers() -> None:
    """Stop the warm reward worker processes, plugins' and math-verify's (they restart on the next call)."""
    with _POOL_LOCK:
        p = _POOL
    if p is not None and p.pid == os.getpid():
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
