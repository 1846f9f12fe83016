"""Finding reward functions by name and scoring a batch with several of them.

A reward function has the TRL signature
``fn(prompts, completions, **columns) -> list[float | None]``. A spec names one:
a built-in (``"math"``), an import path (``"my_pkg.rewards:fn"``), or an entry
point in the ``unmask.rewards`` group, so plugins need no change to this package.

:func:`score` runs several rewards on a batch at once and keeps failures per
sample: built-ins run in this process (they bound their own work), plugins in
worker processes that can be killed when a call hangs, and a batch call that
fails is retried one sample at a time. A reward may also return a
:class:`~rewards.steps.StepReward` (one value per chunk of the completion);
:class:`ScoreResult` carries those separately for the trainer.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from ._pool import Outcome
from ._text import as_text
from .base import (  # noqa: F401 - register_reward, in_process and RewardFn are this module's API too
    _BUILTINS,
    IN_PROCESS_ATTR,
    SANDBOX_ATTR,
    SANDBOX_KEYWORD,
    RewardFn,
    bound_keywords,
    has_mark,
    in_process,
    register_reward,
    uses_sandbox,
)
from .steps import StepReward, merge_steps

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "unmask.rewards"


def _load_builtins() -> None:
    # Imported on first use, not at module top: the reward modules register themselves (through
    # rewards/base.py) when imported, and math-verify, reasoning-gym and the sandbox are not
    # needed to import this module.
    from . import code as _code  # noqa: F401
    from . import gym as _gym  # noqa: F401 (reasoning-gym itself is imported on first use)
    from . import math as _math  # noqa: F401
    from . import tasks as _tasks  # noqa: F401


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def import_user_module(name: str):
    """Import a user's module by dotted name, as `python -m` would from the current directory.

    The `unmask` console script runs with its own directory first on sys.path, not the
    directory it was started from, so a plugin or data generator that lives in the user's
    project (``examples.reward_plugin``) would not import; the current directory is tried last.
    """
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        if exc.name != name.split(".")[0] or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)
        return importlib.import_module(name)


def _from_import_path(spec: str) -> RewardFn:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"reward spec {spec!r} must look like 'package.module:function'")
    try:
        module = import_user_module(module_name)
    except ImportError as exc:
        raise ImportError(f"cannot import module {module_name!r} for reward {spec!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):  # "module:Class.method" is allowed
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r} (reward {spec!r})") from None
    return obj


def get_reward(spec: str | RewardFn, **kwargs: Any) -> RewardFn:
    """Return the reward function named by ``spec``, with ``kwargs`` (its keyword options) bound.

    Resolution order: ``"module:function"`` import path, built-in name, entry point
    in the ``unmask.rewards`` group. A callable is returned unchanged. An unknown
    name raises ValueError listing what is available and the closest match.

    >>> get_reward("arithmetic")(["047+385="], ["0432"])
    [1.0]
    >>> get_reward("arithmetc")
    Traceback (most recent call last):
    ...
    ValueError: unknown reward 'arithmetc'; did you mean 'arithmetic'? ...
    """
    if callable(spec):
        return functools.partial(spec, **kwargs) if kwargs else spec
    if not isinstance(spec, str) or not spec.strip():
        raise TypeError(f"reward spec must be a name, 'module:function' or a callable, got {spec!r}")
    spec = spec.strip()
    if ":" in spec:
        fn = _from_import_path(spec)
    else:
        _load_builtins()
        eps = _entry_points()
        if spec in _BUILTINS:
            fn = _BUILTINS[spec]
        elif spec in eps:
            fn = eps[spec].load()
        else:
            known = sorted(_BUILTINS) + sorted(set(eps) - set(_BUILTINS))
            close = difflib.get_close_matches(spec, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            if "." in spec:
                hint += "plugins are named 'package.module:function' (with a colon). "
            raise ValueError(
                f"unknown reward {spec!r}; {hint}built-in rewards: {', '.join(sorted(_BUILTINS))}"
                + (f"; entry points ({ENTRY_POINT_GROUP}): {', '.join(sorted(eps))}" if eps else "")
            )
    if not callable(fn):
        raise TypeError(f"reward {spec!r} resolved to {fn!r}, which is not callable")
    return functools.partial(fn, **kwargs) if kwargs else fn


def reward_name(fn: RewardFn | str) -> str:
    """Return a readable name for a reward spec or function (used as the metrics key)."""
    if isinstance(fn, str):
        return fn
    if isinstance(fn, functools.partial):
        return reward_name(fn.func)
    return getattr(fn, "__name__", None) or type(fn).__name__



# --- scoring ---------------------------------------------------------------------------


def _is_in_process(fn: Any) -> bool:
    return has_mark(fn, IN_PROCESS_ATTR)


def with_sandbox(fn: RewardFn, sandbox: str | None) -> RewardFn:
    """``fn`` with the code-sandbox backend ``sandbox`` bound, where it runs code in the sandbox.

    Only a reward marked :func:`~rewards.base.uses_sandbox` (the built-in ``code``, or a
    ``functools.partial`` of it) gets it, and only when its own ``backend`` is not already
    set (a reward's explicit option wins); any other reward, or ``sandbox=None``, comes back
    unchanged. This is how the trainer's ``scoring.sandbox`` reaches the sandbox: as an
    argument, not through the environment.

    >>> with_sandbox(get_reward("code"), "rlimit").keywords
    {'backend': 'rlimit'}
    >>> with_sandbox(get_reward("code", backend="bwrap"), "rlimit").keywords
    {'backend': 'bwrap'}
    """
    if sandbox is None or not has_mark(fn, SANDBOX_ATTR) or bound_keywords(fn).get(SANDBOX_KEYWORD) is not None:
        return fn
    return functools.partial(fn, **{SANDBOX_KEYWORD: sandbox})


@dataclass
class SampleFailure:
    """Why a reward gave no value for sample ``index`` (``-1``: the batch call as a whole).

    ``kind``: ``error`` (it raised), ``timeout``, ``crash`` (its worker process
    died), ``invalid`` (it returned something that is not a reward), ``cancelled``
    (not retried because the retries before it all failed).
    """

    index: int
    kind: str
    message: str


class ScoreResult(tuple):
    """What :func:`score` returns: unpacks as ``(total, per_fn, errors)``, with more as attributes.

    - ``total[i]``: weighted sum of the rewards that scored sample i (a step
      reward counts as the sum of its values); None when none did.
    - ``per_fn[name][i]``: each reward's unweighted scalar value (or None).
    - ``errors[name]``: a one-line summary for each reward that failed on any sample.
    - ``outcome[i]``: the part of ``total[i]`` from scalar (outcome) rewards, weighted;
      the trainer places it on the last trace step. None where ``total[i]`` is.
    - ``steps[i]``: the weighted step rewards of sample i merged into one
      :class:`~rewards.steps.StepReward` (values at the same chunk end added), or
      None; ``total[i] == outcome[i] + sum(steps[i].values)``.
    - ``per_fn_steps[name][i]``: the unweighted StepReward a reward returned for
      sample i (only rewards that returned at least one appear).
    - ``failures[name]``: a :class:`SampleFailure` per failed sample (and one for a
      failed batch call); ``num_failed[name]``: samples with no value because of a failure.
    - ``seconds[name]``: wall-clock time spent on each reward.
    """

    total: list[float | None]
    per_fn: dict[str, list[float | None]]
    errors: dict[str, str]

    def __new__(cls, total: list, per_fn: dict, errors: dict, **extra: Any) -> ScoreResult:
        obj = super().__new__(cls, (total, per_fn, errors))
        obj.__dict__.update(extra)
        return obj

    def __reduce__(self):  # picklable (e.g. through Ray) despite the 3-argument __new__
        return (_rebuild_score_result, (tuple(self), dict(self.__dict__)))

    total = property(lambda self: self[0])  # type: ignore[assignment]
    per_fn = property(lambda self: self[1])  # type: ignore[assignment]
    errors = property(lambda self: self[2])  # type: ignore[assignment]


def _rebuild_score_result(items: tuple, extra: dict) -> ScoreResult:
    return ScoreResult(*items, **extra)


def _check_value(name: str, value: Any, text_len: int) -> float | StepReward | None:
    """Validate one sample's reward; raises TypeError/ValueError with a message naming the reward."""
    if value is None:
        return None
    if isinstance(value, StepReward):
        if value.ends[-1] > text_len:
            raise ValueError(
                f"reward {name!r} returned a StepReward ending at {value.ends[-1]} for a completion of {text_len} characters"
            )
        return value
    if isinstance(value, (list, tuple, dict)):
        raise TypeError(
            f"reward {name!r} returned {type(value).__name__} {value!r:.80} for one sample; "
            "use rewards.StepReward (e.g. StepReward.from_text) for one value per step"
        )
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"reward {name!r} returned {value!r:.80}, expected a float, None or a StepReward") from None
    # NaN/inf would poison every advantage in the group.
    if not math.isfinite(value):
        raise ValueError(f"reward {name!r} returned non-finite value {value}")
    return value


def _check_batch(name: str, out: Any, n: int) -> list:
    if not isinstance(out, (list, tuple)):
        raise TypeError(f"reward {name!r} returned {type(out).__name__}, expected a list of {n} values")
    if len(out) != n:
        raise ValueError(f"reward {name!r} returned {len(out)} values for {n} completions")
    return list(out)


def _call(fn: RewardFn, prompts: list, completions: list, columns: dict) -> Outcome:
    start = time.monotonic()
    try:
        return Outcome("ok", fn(prompts, completions, **columns), seconds=time.monotonic() - start)
    except Exception as exc:
        return Outcome("error", message=f"{type(exc).__name__}: {exc}", seconds=time.monotonic() - start)


def _run_threads(
    calls: list[Callable[[], Outcome]], timeout_s: float | None, num_workers: int, stop: Callable | None = None
) -> list[Outcome]:
    """Run calls on daemon threads, ``num_workers`` at a time, each limited to ``timeout_s``.

    A call past its limit is abandoned (a thread cannot be killed: it runs on in the
    background) and reported as a timeout. ``stop(outcomes)`` cancels the rest.
    """
    outcomes: list[Outcome | None] = [None] * len(calls)
    cond = threading.Condition()
    active: dict[int, float] = {}  # index -> start
    pending = list(range(len(calls)))[::-1]

    def runner(i: int) -> None:
        result = calls[i]()
        with cond:
            if outcomes[i] is None:
                outcomes[i] = result
            cond.notify_all()

    with cond:
        while pending or active:
            while pending and len(active) < num_workers:
                i = pending.pop()
                active[i] = time.monotonic()
                threading.Thread(target=runner, args=(i,), daemon=True, name=f"reward-call-{i}").start()
            now = time.monotonic()
            for i, started in list(active.items()):
                if outcomes[i] is not None:
                    del active[i]
                elif timeout_s is not None and now - started >= timeout_s:
                    outcomes[i] = Outcome("timeout", message=f"timed out after {timeout_s:g}s (the call runs on in a thread)",
                                          seconds=now - started)  # fmt: skip
                    del active[i]
            if stop is not None and pending and stop(outcomes):
                for i in pending:
                    outcomes[i] = Outcome("cancelled", message="not run: the calls before it failed")
                pending.clear()
            if active and not any(outcomes[i] is not None for i in active):
                waits = [started + timeout_s - now for started in active.values()] if timeout_s is not None else []
                cond.wait(max(0.0, min(waits)) if waits else None)
    return [o if o is not None else Outcome("cancelled") for o in outcomes]


def _slice(columns: dict[str, Any], i: int, n: int) -> dict[str, Any]:
    out = {}
    for key, values in columns.items():
        if isinstance(values, (list, tuple)) and len(values) == n:
            out[key] = [values[i]]
        else:
            out[key] = values
    return out


def _breaker(num_workers: int) -> Callable[[list], bool]:
    """Stop retrying once the first retries all failed: a reward that fails on every sample
    (or hangs on every sample) would otherwise cost n calls (or n timeouts)."""
    limit = max(4, num_workers)

    def stop(outcomes: list) -> bool:
        done = [o for o in outcomes if o is not None]
        return len(done) >= limit and not any(o.kind == "ok" for o in done)

    return stop


def default_num_workers() -> int:
    """Worker processes for reward plugins when the caller does not say."""
    return max(1, min(8, os.cpu_count() or 1))


class _Entry:
    def __init__(self, name: str, spec: Any, weight: float) -> None:
        self.name, self.spec, self.weight = name, spec, weight
        self.fn: RewardFn | None = None
        self.mode = "thread"  # "in_process" | "process" | "thread"
        self.fn_bytes: bytes | None = None
        self.batch: Outcome | None = None
        self.values: list = []
        self.failures: list[SampleFailure] = []
        self.seconds = 0.0


def score(
    reward_fns: Sequence[RewardFn | str],
    weights: Sequence[float] | None,
    prompts: list,
    completions: list,
    columns: dict[str, list] | None = None,
    fail_fast: bool = False,
    *,
    timeout_s: float = 60.0,
    num_workers: int | None = None,
    sandbox: str | None = None,
) -> ScoreResult:
    """Score a batch with several reward functions, in parallel, and combine them with weights.

    Returns a :class:`ScoreResult`, which unpacks as ``(total, per_fn, errors)``.

    How each reward runs: built-ins (and rewards marked :func:`in_process`) are
    called on the whole batch in a thread of this process, since they bound their
    own work per sample. Any other reward (a plugin) is called on the whole batch
    in a worker process (see rewards/_pool.py), limited to ``timeout_s``; one that
    cannot be sent to a worker (a lambda, a closure, a function in ``__main__``)
    is called in a thread instead, where a call past its limit can only be
    abandoned. All rewards run at the same time.

    Failures stay per sample: when a batch call raises, times out, crashes its
    worker or returns a malformed list, the reward is called again once per
    sample (``num_workers`` at a time, each limited to ``timeout_s``), so only the
    samples that fail again get None. A value that is not a finite float, None or
    a :class:`StepReward` is None for that sample alone. Each failure is counted
    (``num_failed``), kept (``failures``), summarised in ``errors[name]`` and
    logged. If the first retries of a reward that runs in a worker or a thread all fail, the rest
    are not tried (an in-process reward, which bounds its own work, is retried on every sample).
    With ``fail_fast=True`` the first failure raises RuntimeError naming the reward.

    ``sandbox``: the code sandbox's backend (``"auto"``, ``"bwrap"``, ``"rlimit"``), handed to
    every reward that runs code in it and does not set its own (:func:`with_sandbox`); None
    leaves the choice to them (``UNMASK_SANDBOX``, else ``"auto"``).

    ``total[i]`` is the weighted sum over the rewards that scored sample i, and
    None only when none of them did. Names are the spec strings or function names,
    suffixed ``#2``, ``#3`` when repeated.

    >>> total, per_fn, errors = score(["arithmetic", "arithmetic_format"], [1.0, 0.5],
    ...                               ["047+385=", "047+385="], ["0432", "0431"])
    >>> total, errors
    ([1.5, 0.5], {})
    """
    from . import _pool

    weights = [1.0] * len(reward_fns) if weights is None else list(weights)
    if len(weights) != len(reward_fns):
        raise ValueError(f"got {len(weights)} weights for {len(reward_fns)} reward functions")
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts for {len(completions)} completions")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    columns = dict(columns or {})
    prompts, completions = list(prompts), list(completions)
    n = len(completions)
    workers = num_workers or default_num_workers()
    text_lens = [len(as_text(c)) for c in completions]

    entries: list[_Entry] = []
    for spec, weight in zip(reward_fns, weights):
        base = reward_name(spec)
        name, k = base, 1
        while any(e.name == name for e in entries):
            k += 1
            name = f"{base}#{k}"
        entry = _Entry(name, spec, float(weight))
        entries.append(entry)
        try:
            entry.fn = with_sandbox(get_reward(spec), sandbox)
        except Exception as exc:
            if fail_fast:
                raise RuntimeError(f"reward {name!r} failed: {type(exc).__name__}: {exc}") from exc
            entry.batch = Outcome("error", message=f"{type(exc).__name__}: {exc}")
            entry.values = [None] * n
            entry.failures.append(SampleFailure(-1, "error", entry.batch.message))
            continue
        if _is_in_process(entry.fn):
            entry.mode = "in_process"
        else:
            entry.fn_bytes = _pool.function_bytes(entry.fn)
            entry.mode = "process" if entry.fn_bytes is not None else "thread"

    # Phase 1: one batch call per reward, all at the same time.
    _batch_calls(entries, prompts, completions, columns, timeout_s, workers)

    # Phase 2: check each batch; retry a failed one per sample.
    for entry in entries:
        if entry.fn is None:
            continue
        try:
            raw = _batch_values(entry, n)
        except _BatchFailed as exc:
            if fail_fast:
                raise RuntimeError(f"reward {entry.name!r} failed: {exc}") from None
            entry.failures.append(SampleFailure(-1, exc.kind, str(exc)))
            start = time.monotonic()
            raw = _retry_per_sample(entry, prompts, completions, columns, timeout_s, workers)
            entry.seconds += time.monotonic() - start
        values: list = []
        for i, item in enumerate(raw):
            if isinstance(item, SampleFailure):
                entry.failures.append(item)
                values.append(None)
                continue
            try:
                values.append(_check_value(entry.name, item, text_lens[i]))
            except (TypeError, ValueError) as exc:
                if fail_fast:
                    raise RuntimeError(f"reward {entry.name!r} failed on sample {i}: {exc}") from None
                entry.failures.append(SampleFailure(i, "invalid", f"{type(exc).__name__}: {exc}"))
                values.append(None)
        entry.values = values

    return _combine(entries, n)


class _BatchFailed(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _batch_calls(entries: list[_Entry], prompts: list, completions: list, columns: dict, timeout_s: float,
                 workers: int) -> None:  # fmt: skip
    from . import _pool

    threads: list[threading.Thread] = []
    thread_entries = [e for e in entries if e.fn is not None and e.mode in ("in_process", "thread")]
    process_entries = [e for e in entries if e.fn is not None and e.mode == "process"]

    def run_process_entries() -> None:
        tasks = [_pool.Task(e.name, e.fn_bytes, prompts, completions, columns) for e in process_entries]  # type: ignore[arg-type]
        start = time.monotonic()
        try:
            outcomes = _pool.pool().run(tasks, timeout_s, min(workers, len(tasks)))
        except Exception as exc:  # the workers themselves failed to start
            logger.warning("reward worker processes failed (%s); calling plugins in threads instead", exc)
            outcomes = [Outcome("load_error", message=str(exc))] * len(tasks)
        for e, o in zip(process_entries, outcomes):
            e.batch = o
            e.seconds = time.monotonic() - start

    if process_entries:
        t = threading.Thread(target=run_process_entries, daemon=True, name="reward-pool")
        t.start()
        threads.append(t)
    in_thread = [
        (lambda e=e: _call(e.fn, prompts, completions, columns)) for e in thread_entries  # type: ignore[misc]
    ]
    limits = [None if e.mode == "in_process" else timeout_s for e in thread_entries]
    # One thread per reward (they run at the same time); in-process rewards have no limit here.
    results: dict[int, Outcome] = {}

    def run_one(j: int) -> None:
        results[j] = _run_threads([in_thread[j]], limits[j], 1)[0]

    for j in range(len(thread_entries)):
        t = threading.Thread(target=run_one, args=(j,), daemon=True, name=f"reward-{thread_entries[j].name}")
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    for j, e in enumerate(thread_entries):
        e.batch = results[j]
        e.seconds = results[j].seconds
    # A plugin a worker could not load (not importable there) falls back to a thread.
    for e in process_entries:
        if e.batch is not None and e.batch.kind == "load_error":
            logger.warning("reward %s could not be loaded in a worker process (%s); calling it in a thread", e.name, e.batch.message)
            e.mode = "thread"
            e.batch = _run_threads([lambda e=e: _call(e.fn, prompts, completions, columns)], timeout_s, 1)[0]
            e.seconds += e.batch.seconds


def _batch_values(entry: _Entry, n: int) -> list:
    o = entry.batch
    assert o is not None
    if o.kind != "ok":
        raise _BatchFailed(o.kind, o.message)
    try:
        return _check_batch(entry.name, o.value, n)
    except (TypeError, ValueError) as exc:
        raise _BatchFailed("invalid", f"{type(exc).__name__}: {exc}") from None


def _retry_per_sample(entry: _Entry, prompts: list, completions: list, columns: dict, timeout_s: float,
                      workers: int) -> list:  # fmt: skip
    """Call the reward once per sample; returns the value or a SampleFailure for each."""
    from . import _pool

    n = len(completions)
    calls = [([prompts[i]], [completions[i]], _slice(columns, i, n)) for i in range(n)]
    # In-process rewards bound their own work per sample, so retrying every sample costs about one
    # batch call: no breaker there, or a few samples that raise at the front would cost the rest
    # of the batch its scores.
    stop = _breaker(workers) if entry.mode != "in_process" else None
    outcomes: list[Outcome] = []
    if entry.mode == "process":
        tasks = [_pool.Task(entry.name, entry.fn_bytes, p, c, cols) for p, c, cols in calls]  # type: ignore[arg-type]
        try:
            outcomes = _pool.pool().run(tasks, timeout_s, workers, stop=stop)
        except Exception as exc:
            logger.warning("reward worker processes failed (%s); retrying %s in threads", exc, entry.name)
            entry.mode = "thread"
    if entry.mode != "process":
        limit = None if entry.mode == "in_process" else timeout_s
        outcomes = _run_threads(
            [lambda a=a: _call(entry.fn, *a) for a in calls], limit, workers, stop=stop  # type: ignore[misc]
        )
    out: list = []
    for i, o in enumerate(outcomes):
        if o.kind != "ok":
            out.append(SampleFailure(i, o.kind, o.message))
            continue
        try:
            out.append(_check_batch(entry.name, o.value, 1)[0])
        except (TypeError, ValueError) as exc:
            out.append(SampleFailure(i, "invalid", f"{type(exc).__name__}: {exc}"))
    return out


def _summary(entry: _Entry, n: int) -> str:
    batch = [f for f in entry.failures if f.index < 0]
    samples = [f for f in entry.failures if f.index >= 0]
    if not samples:
        return batch[0].message if batch else ""
    first = samples[0]
    tried = [f for f in samples if f.kind != "cancelled"]
    if batch and len(samples) == n and all(f.message == batch[0].message for f in tried):
        return batch[0].message  # a reward that fails the same way everywhere: one message says it all
    text = f"{len(samples)} of {n} samples failed (sample {first.index}: {first.message})"
    if batch:
        text = f"batch call: {batch[0].message}; retried per sample: {text}"
    return text


def _combine(entries: list[_Entry], n: int) -> ScoreResult:
    per_fn: dict[str, list[float | None]] = {}
    per_fn_steps: dict[str, list[StepReward | None]] = {}
    errors: dict[str, str] = {}
    failures: dict[str, list[SampleFailure]] = {}
    num_failed: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for e in entries:
        per_fn[e.name] = [v.total if isinstance(v, StepReward) else v for v in e.values]
        if any(isinstance(v, StepReward) for v in e.values):
            per_fn_steps[e.name] = [v if isinstance(v, StepReward) else None for v in e.values]
        seconds[e.name] = e.seconds
        if e.failures:
            failures[e.name] = e.failures
            failed = {f.index for f in e.failures if f.index >= 0}
            num_failed[e.name] = n if (e.fn is None) else len(failed)
            errors[e.name] = _summary(e, n)
            logger.warning("reward %s failed on %d of %d samples: %s", e.name, num_failed[e.name], n, errors[e.name])
            for f in e.failures[:20]:
                logger.debug("reward %s, sample %d: %s: %s", e.name, f.index, f.kind, f.message)

    total: list[float | None] = []
    outcome: list[float | None] = []
    steps: list[StepReward | None] = []
    for i in range(n):
        scalar_parts, step_parts, scored = [], [], False
        for e in entries:
            v = e.values[i]
            if v is None:
                continue
            scored = True
            if isinstance(v, StepReward):
                step_parts.append(v.scaled(e.weight))
            else:
                scalar_parts.append(e.weight * v)
        merged = merge_steps(step_parts)
        steps.append(merged)
        if not scored:
            total.append(None)
            outcome.append(None)
            continue
        out = math.fsum(scalar_parts)
        outcome.append(out)
        total.append(out + (merged.total if merged is not None else 0.0))
    return ScoreResult(
        total, per_fn, errors,
        outcome=outcome, steps=steps, per_fn_steps=per_fn_steps,
        failures=failures, num_failed=num_failed, seconds=seconds,
    )  # fmt: skip
