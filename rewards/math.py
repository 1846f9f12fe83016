r"""Math answers: the last ``\boxed{}`` of a completion, checked with math-verify.

math-verify bounds its own work with ``signal.alarm``, which only works in the
main thread of the main interpreter, while RL scoring runs in threads and Ray
actors. So ``parse``/``verify`` run here with their timeouts disabled, one check
per call in the reward worker processes (rewards/_pool.py, shared with reward
plugins); a check that runs past ``timeout_s`` is ended by killing its worker
(sympy can hang in C code, where no signal would help), and the sample scores 0.0.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from . import _pool
from ._text import as_text, column
from .base import in_process, register_reward

logger = logging.getLogger(__name__)

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


class _WorkerCheck:
    """``check`` as the reward worker pool calls it: ``fn([pred], [gold]) -> [matched]``.

    The pool sends it by reference and a worker loads it once (it stays loaded
    between calls); loading imports math-verify, so sympy's import counts against
    the pool's load limit rather than the first check's ``timeout_s``.
    """

    def __init__(self, check: Callable[[str, str], bool]) -> None:
        self.check = check

    def __setstate__(self, state: dict) -> None:  # runs in the worker, once, when the pool loads it
        import math_verify.grader
        import math_verify.parser

        # The pool's wall-clock limit is the interruption logic math-verify's
        # "timeout is disabled" warnings ask for, so they would only be noise here.
        math_verify.grader.TIMEOUT_WARNING_SHOWN = True
        math_verify.parser.TIMEOUT_WARNING_SHOWN = True
        self.__dict__.update(state)

    def __call__(self, preds: list[str], golds: list[str]) -> list[bool]:
        return [bool(self.check(pred, gold)) for pred, gold in zip(preds, golds)]


@functools.lru_cache(maxsize=8)
def _worker_check(check: Callable[[str, str], bool]) -> tuple[str, bytes]:
    """The pool's ``(fn_key, fn_bytes)`` for ``check``; the key changes when ``_CHECK`` is swapped."""
    if _pool.function_bytes(check) is None:
        raise ValueError(f"the math check {check!r} must be importable to run in a worker process")
    fn_bytes = _pool.function_bytes(_WorkerCheck(check))
    assert fn_bytes is not None
    return "rewards.math:" + hashlib.sha1(fn_bytes).hexdigest()[:16], fn_bytes


def shutdown_workers() -> None:
    """Stop the warm reward worker processes, math-verify's and plugins' (they restart on the next call)."""
    _pool.shutdown_workers()


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
    fn_key, fn_bytes = _worker_check(check)
    # One task per pair, so that each check has its own time limit; the check stays
    # loaded in the workers, so a task costs about one round trip (~0.1 ms).
    tasks = [_pool.Task(fn_key, fn_bytes, [pred], [gold], {}) for pred, gold in pairs]
    outcomes = _pool.pool().run(tasks, timeout_s, num_workers)
    results = []
    for i, o in enumerate(outcomes):
        if o.kind == "ok":
            results.append(1.0 if o.value[0] else 0.0)
            continue
        if o.kind == "load_error":
            raise RuntimeError(f"math-verify worker could not load the check function: {o.message}")
        if o.kind == "timeout":
            logger.warning("math-verify check of sample %d ran past %.1fs; scoring it 0.0", i, timeout_s)
        elif o.kind == "crash":
            logger.warning("math-verify worker died while checking sample %d; scoring it 0.0", i)
        else:
            logger.debug("math-verify raised on sample %d: %s", i, o.message)
        results.append(0.0)
    return results


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
