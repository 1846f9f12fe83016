r"""Math answers: the last ``\boxed{}`` of a completion, checked with math-verify.

math-verify bounds its own work with ``signal.alarm``, which only works in the
main thread of the main interpreter, while RL scoring runs in threads and Ray
actors. So ``parse``/``verify`` run here with their timeouts disabled, inside
worker processes this module owns; a check that runs past ``timeout_s`` is ended
by killing its worker (sympy can hang in C code, where no signal would help), and
the sample scores 0.0.

The workers are fresh interpreters (forking a process that holds CUDA or Ray
threads is unsafe), kept warm between calls and shared by all callers; calls from
several threads take turns.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

from ._text import as_text, column
from .registry import in_process, register_reward

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 120.0  # spawning + importing sympy; generous for loaded machines

_BOXED = re.compile(r"\\boxed\s*\{")
# Ground truth already inside math delimiters is parsed as written; an unescaped
# "$" counts, an escaped dollar sign ("\$5") does not.
_DELIMITED = re.compile(r"\\boxed|(?<!\\)\$|\\\(|\\\[")


def last_boxed(text: str) -> str | None:
    r"""Return the content of the last ``\boxed{...}`` in ``text``.

    Braces are matched with nesting; ``\{`` and ``\}`` are literal braces in LaTeX
    and do not count. Returns None when there is no box or the last one is never
    closed (a completion cut off at the length limit has no final answer).

    >>> last_boxed(r"first \boxed{1}, then \boxed{\frac{1}{2}}")
    '\\frac{1}{2}'
    >>> last_boxed(r"\boxed{\{1,2\}}")
    '\\{1,2\\}'
    >>> last_boxed(r"\boxed{3} no, \boxed{4") is None
    True
    """
    matches = list(_BOXED.finditer(text))
    if not matches:
        return None
    start = matches[-1].end()
    depth, i = 1, start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
        i += 1
    return None


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> list:
    from math_verify import parse

    gold = gold.strip()
    wrapped = "\\boxed{" + gold + "}"
    # math-verify only extracts LaTeX found between delimiters: a bare "\{2,1\}"
    # or "[0,1)" parses to nothing, and a bare "50\%" parses as 50.
    candidates = [gold, wrapped] if _DELIMITED.search(gold) else [wrapped, gold]
    for candidate in candidates:
        parsed = parse(candidate, parsing_timeout=None)
        if parsed:
            return parsed
    return []


def check_answer(pred: str, gold: str) -> bool:
    r"""Return whether the boxed answer ``pred`` (the box's content) matches ``gold``.

    ``gold`` may be bare (``0.5``), in ``$...$`` or in ``\boxed{}``. No time limit
    is applied here: call it through :func:`verify_answers` to get one.

    >>> check_answer(r"\frac{1}{2}", "0.5"), check_answer("3", "4")
    (True, False)
    """
    from math_verify import parse, verify

    gold_parsed = _parse_gold(gold)
    pred_parsed = parse("\\boxed{" + pred + "}", parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


# The check the workers run; a module-level name so tests can swap in a slow or
# failing one. It is sent to the workers by reference, so it must be importable.
_CHECK: Callable[[str, str], bool] = check_answer


def _worker_main(fd: int) -> None:
    """Entry point of a worker process: answer check requests on the socket ``fd``."""
    import math_verify.grader
    import math_verify.parser

    # The parent's wall-clock limit is the interruption logic math-verify's
    # "timeout is disabled" warnings ask for, so they would only be noise here.
    math_verify.grader.TIMEOUT_WARNING_SHOWN = True
    math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    # Ctrl-C reaches the whole process group; the parent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def exit_when_orphaned() -> None:
        # A check stuck in sympy never reads the closed socket, so watch the parent.
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=exit_when_orphaned, daemon=True).start()
    conn = Connection(fd)
    conn.send(("ready",))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        except Exception as exc:  # a check the worker cannot unpickle (not importable)
            conn.send(("bad", f"{type(exc).__name__}: {exc}"))
            continue
        if task is None:
            return
        index, check, pred, gold = task
        try:
            conn.send(("done", index, bool(check(pred, gold)), ""))
        except Exception as exc:
            conn.send(("done", index, False, f"{type(exc).__name__}: {exc}"))


class _Worker:
    # A plain subprocess rather than multiprocessing "spawn": spawn re-runs the
    # caller's __main__ script in the child, which breaks (or recurses) in scripts
    # without an `if __name__ == "__main__"` guard.
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
                stdout=subprocess.DEVNULL,  # a chatty check must not write into the caller's output
            )
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        self.ready = False
        self.task: tuple[int, float] | None = None  # (sample index, deadline)

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


class _Pool:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.workers: list[_Worker] = []
        self.lock = threading.Lock()

    def shutdown(self) -> None:
        while self.workers:
            self.workers.pop().stop()

    def run(self, check: Callable, pairs: Sequence[tuple[str, str]], timeout_s: float, num_workers: int) -> list[float]:
        try:
            return self._run(check, pairs, timeout_s, num_workers)
        except BaseException:
            # The workers' state is unknown (a task may be in flight): start afresh next time.
            for w in self.workers:
                w.stop(kill=True)
            self.workers.clear()
            raise

    def _run(self, check: Callable, pairs: Sequence[tuple[str, str]], timeout_s: float, num_workers: int) -> list[float]:
        while len(self.workers) > num_workers:
            self.workers.pop().stop()
        while len(self.workers) < min(num_workers, len(pairs)):  # grow lazily, keep warm ones
            self.workers.append(_Worker())

        results = [0.0] * len(pairs)
        pending = deque(range(len(pairs)))
        remaining = len(pairs)
        startup_deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while remaining:
            for k, w in enumerate(self.workers):
                if w.ready and w.task is None and pending:
                    index = pending.popleft()
                    try:
                        w.conn.send((index, check, *pairs[index]))
                    except (OSError, ValueError):  # died while idle: retry on a fresh worker
                        pending.appendleft(index)
                        w.stop(kill=True)
                        self.workers[k] = _Worker()
                        continue
                    # The clock starts at dispatch, so queueing behind other samples
                    # or a worker's startup never counts against a sample.
                    w.task = (index, time.monotonic() + timeout_s)

            deadlines = [w.task[1] for w in self.workers if w.task]
            if not any(w.ready for w in self.workers):
                deadlines.append(startup_deadline)
            wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            by_conn = {w.conn: k for k, w in enumerate(self.workers)}
            for conn in wait(list(by_conn), wait_s):
                k = by_conn[conn]
                w = self.workers[k]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):  # the worker died (OOM kill, segfault)
                    if not w.ready:
                        raise RuntimeError(f"math-verify worker exited with code {w.proc.poll()} while starting")
                    if w.task is not None:
                        logger.warning("math-verify worker died while checking sample %d; scoring it 0.0", w.task[0])
                        remaining -= 1
                    w.stop(kill=True)
                    self.workers[k] = _Worker()
                    continue
                if msg[0] == "ready":
                    w.ready = True
                elif msg[0] == "done":
                    _, index, ok, err = msg
                    if err:
                        logger.debug("math-verify raised on sample %d: %s", index, err)
                    results[index] = 1.0 if ok else 0.0
                    w.task = None
                    remaining -= 1
                else:
                    raise RuntimeError(f"math-verify worker could not load the check function: {msg[1]}")

            now = time.monotonic()
            for k, w in enumerate(self.workers):
                if w.task is not None and now >= w.task[1]:
                    logger.warning("math-verify check of sample %d ran past %.1fs; scoring it 0.0", w.task[0], timeout_s)
                    w.stop(kill=True)
                    self.workers[k] = _Worker()
                    remaining -= 1
            if not any(w.ready for w in self.workers) and now >= startup_deadline:
                raise RuntimeError(f"math-verify workers did not start within {STARTUP_TIMEOUT_S:.0f}s")
        return results


_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> _Pool:
    global _POOL
    with _POOL_LOCK:
        # A forked child inherits the object but must not drive its parent's workers.
        if _POOL is None or _POOL.pid != os.getpid():
            _POOL = _Pool()
        return _POOL


def shutdown_workers() -> None:
    """Stop the warm math-verify worker processes (they restart on the next call)."""
    with _POOL_LOCK:
        pool = _POOL
    if pool is not None and pool.pid == os.getpid():
        with pool.lock:
            pool.shutdown()


atexit.register(shutdown_workers)


def default_num_workers() -> int:
    """Number of worker processes used when the caller does not say."""
    return max(1, min(4, os.cpu_count() or 1))


def verify_answers(
    pairs: Sequence[tuple[str, str]], timeout_s: float = 5.0, num_workers: int | None = None
) -> list[float]:
    r"""Check (boxed answer, ground truth) pairs; 1.0 when they match, else 0.0.

    Each check runs in a worker process and is limited to ``timeout_s`` seconds of
    wall-clock time from when a worker picks it up; one that times out, raises or
    crashes its worker scores 0.0. ``num_workers=0`` checks in this process with
    no time limit (for debugging).

    >>> verify_answers([(r"\frac{1}{2}", "0.5"), ("3", "4")], num_workers=0)
    [1.0, 0.0]
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    if not pairs:
        return []
    check = _CHECK
    num_workers = default_num_workers() if num_workers is None else num_workers
    if num_workers <= 0:
        out = []
        for pred, gold in pairs:
            try:
                out.append(1.0 if check(pred, gold) else 0.0)
            except Exception:
                logger.debug("math-verify raised on %r vs %r", pred, gold, exc_info=True)
                out.append(0.0)
        return out
    pool = _pool()
    with pool.lock:
        return pool.run(check, list(pairs), timeout_s, num_workers)


def _present(value: Any) -> bool:
    return value is not None and str(value).strip() != ""


@register_reward("math")
@in_process
def math_reward(
    prompts: list,
    completions: list,
    answer: list | None = None,
    solution: list | None = None,
    *,
    timeout_s: float = 5.0,
    num_workers: int | None = None,
    **columns: Any,
) -> list[float | None]:
    r"""Score math completions by their last ``\boxed{}`` answer, checked with math-verify.

    The ground truth is the ``answer`` column, falling back to ``solution`` (which
    may be a full worked solution ending in a box). 1.0 when math-verify accepts
    the boxed answer; 0.0 when it does not, when there is no closed non-empty box,
    or when the check times out or fails; None when the ground truth is missing.
    Bind ``timeout_s``/``num_workers`` with functools.partial to change them.

    >>> math_reward(["q"] * 3, [r"so \boxed{\frac{1}{2}}", r"\boxed{3}", "4"],
    ...             answer=["0.5", "4", "4"], num_workers=0)
    [1.0, 0.0, 0.0]
    """
    n = len(completions)
    answers = column(answer, n, "answer")
    solutions = column(solution, n, "solution")
    rewards: list[float | None] = [None] * n
    todo: list[tuple[int, str, str]] = []
    for i, (completion, ans, sol) in enumerate(zip(completions, answers, solutions)):
        gold = ans if _present(ans) else sol
        if not _present(gold):
            continue
        pred = last_boxed(as_text(completion))
        if pred is None or not pred.strip():
            rewards[i] = 0.0
            continue
        todo.append((i, pred, str(gold)))
    scores = verify_answers([(p, g) for _, p, g in todo], timeout_s=timeout_s, num_workers=num_workers)
    for (i, _, _), value in zip(todo, scores):
        rewards[i] = value
    return rewards


@register_reward("boxed_format")
@in_process
def boxed_format_reward(prompts: list, completions: list, **columns: Any) -> list[float | None]:
    r"""Score the answer format: 1.0 iff the completion ends its answer in a closed, non-empty ``\boxed{}``.

    >>> boxed_format_reward(["q"] * 4, [r"\boxed{2}", r"\boxed{ }", "2", r"\boxed{2"])
    [1.0, 0.0, 0.0, 0.0]
    """
    rewards: list[float | None] = []
    for completion in completions:
        pred = last_boxed(as_text(completion))
        rewards.append(1.0 if pred is not None and pred.strip() else 0.0)
    return rewards
