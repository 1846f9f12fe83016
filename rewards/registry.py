"""Finding reward functions by name and scoring a batch with several of them.

A reward function has the TRL signature
``fn(prompts, completions, **columns) -> list[float | None]``. A spec names one:
a built-in (``"math"``), an import path (``"my_pkg.rewards:fn"``), or an entry
point in the ``unmask.rewards`` group, so plugins need no change to this package.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import math
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

RewardFn = Callable[..., list]
ENTRY_POINT_GROUP = "unmask.rewards"

_BUILTINS: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator that registers a function as the built-in reward ``name``.

    >>> @register_reward("always_one")
    ... def always_one(prompts, completions, **columns):
    ...     return [1.0] * len(completions)
    >>> get_reward("always_one")(["p"], ["c"])
    [1.0]
    """

    def decorator(fn: RewardFn) -> RewardFn:
        old = _BUILTINS.get(name)
        # Re-registering the same function (a module reload, a re-run doctest) is fine;
        # two different functions under one name is a plugin clash.
        if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"reward {name!r} is already registered to {_BUILTINS[name]!r}")
        _BUILTINS[name] = fn
        return fn

    return decorator


def _load_builtins() -> None:
    # Imported here, not at module top, because these modules import this one to
    # register themselves.
    from . import math as _math  # noqa: F401
    from . import tasks as _tasks  # noqa: F401


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _from_import_path(spec: str) -> RewardFn:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"reward spec {spec!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"cannot import module {module_name!r} for reward {spec!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):  # "module:Class.method" is allowed
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r} (reward {spec!r})") from None
    return obj


def get_reward(spec: str | RewardFn) -> RewardFn:
    """Return the reward function named by ``spec``.

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
        return spec
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
    return fn


def reward_name(fn: RewardFn | str) -> str:
    """Return a readable name for a reward spec or function (used as the metrics key)."""
    if isinstance(fn, str):
        return fn
    if isinstance(fn, functools.partial):
        return reward_name(fn.func)
    return getattr(fn, "__name__", None) or type(fn).__name__


def _validate(name: str, out: Any, n: int) -> list[float | None]:
    if not isinstance(out, (list, tuple)):
        raise TypeError(f"reward {name!r} returned {type(out).__name__}, expected a list of {n} floats or None")
    if len(out) != n:
        raise ValueError(f"reward {name!r} returned {len(out)} values for {n} completions")
    values: list[float | None] = []
    for i, value in enumerate(out):
        if value is None:
            values.append(None)
            continue
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"reward {name!r} returned {out[i]!r} at index {i}, expected a float or None") from None
        # NaN/inf would poison every advantage in the group; failing loudly beats
        # a silently diverging run.
        if not math.isfinite(value):
            raise ValueError(f"reward {name!r} returned non-finite value {value} at index {i}")
        values.append(value)
    return values


def score(
    reward_fns: Sequence[RewardFn | str],
    weights: Sequence[float] | None,
    prompts: list,
    completions: list,
    columns: dict[str, list] | None = None,
    fail_fast: bool = False,
) -> tuple[list[float | None], dict[str, list[float | None]], dict[str, str]]:
    """Score a batch with several reward functions and combine them with weights.

    Returns ``(total, per_fn, errors)``. A function that raises (or returns a
    malformed list) gives None for every sample and its message goes in
    ``errors[name]``; with ``fail_fast=True`` it raises instead, naming the
    function. ``total[i]`` is the weighted sum over the functions that scored
    sample i, and None only when none of them did. Names are the spec strings or
    function names, suffixed ``#2``, ``#3`` when repeated.

    >>> total, per_fn, errors = score(["arithmetic", "arithmetic_format"], [1.0, 0.5],
    ...                               ["047+385=", "047+385="], ["0432", "0431"])
    >>> total, errors
    ([1.5, 0.5], {})
    """
    weights = [1.0] * len(reward_fns) if weights is None else list(weights)
    if len(weights) != len(reward_fns):
        raise ValueError(f"got {len(weights)} weights for {len(reward_fns)} reward functions")
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts for {len(completions)} completions")
    columns = dict(columns or {})
    n = len(completions)

    per_fn: dict[str, list[float | None]] = {}
    errors: dict[str, str] = {}
    for spec, weight in zip(reward_fns, weights):
        base = reward_name(spec)
        name, k = base, 1
        while name in per_fn:
            k += 1
            name = f"{base}#{k}"
        try:
            fn = get_reward(spec)
            per_fn[name] = _validate(name, fn(prompts, completions, **columns), n)
        except Exception as exc:
            if fail_fast:
                raise RuntimeError(f"reward {name!r} failed: {type(exc).__name__}: {exc}") from exc
            per_fn[name] = [None] * n
            errors[name] = f"{type(exc).__name__}: {exc}"

    total: list[float | None] = []
    for i in range(n):
        parts = [w * values[i] for w, values in zip(weights, per_fn.values()) if values[i] is not None]
        total.append(sum(parts) if parts else None)
    return total, per_fn, errors
