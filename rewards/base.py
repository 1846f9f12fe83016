"""What a reward function is to the registry and the scorer: a name among the built-ins, and marks.

The reward modules (rewards/code.py, gym.py, math.py, tasks.py) import this module to register
and mark their functions; rewards/registry.py imports it to find them by name and to read the
marks when it scores. Neither side imports the other through it, so the imports in rewards/
run one way: registry -> reward modules -> base.

- :func:`register_reward`: a built-in name (``get_reward("math")``);
- :func:`in_process`: safe to call on the whole batch in the scoring process;
- :func:`uses_sandbox`: runs programs in the code sandbox, whose backend it takes as its
  ``backend`` keyword (``rewards.score(..., sandbox=)`` binds the configured one).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

RewardFn = Callable[..., list]

_BUILTINS: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator that registers a function as the built-in reward ``name``.

    >>> from rewards import get_reward
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


IN_PROCESS_ATTR = "__unmask_in_process__"
SANDBOX_ATTR = "__unmask_uses_sandbox__"
SANDBOX_KEYWORD = "backend"


def in_process(fn: RewardFn) -> RewardFn:
    """Mark a reward as safe to call on the whole batch in the scoring process.

    Use it for rewards that bound their own time per sample and never hang (the
    built-ins: math checks run in killable workers, code in sandboxes) or that
    must stay in this process (a reward model on a GPU). Other rewards run in
    worker processes that :func:`~rewards.registry.score` can kill when a call runs too long.
    """
    setattr(fn, IN_PROCESS_ATTR, True)
    return fn


def uses_sandbox(fn: RewardFn) -> RewardFn:
    """Mark a reward that runs programs in the code sandbox and takes its backend as the
    ``backend`` keyword (``"auto"``, ``"bwrap"``, ``"rlimit"``; None: ``UNMASK_SANDBOX``, else
    auto). :func:`~rewards.registry.score` with ``sandbox=`` binds that choice to it."""
    setattr(fn, SANDBOX_ATTR, True)
    return fn


def has_mark(fn: Any, attr: str) -> bool:
    """Whether ``fn``, or a function it binds through ``functools.partial``, carries the mark ``attr``."""
    while isinstance(fn, functools.partial):
        if getattr(fn, attr, False):
            return True
        fn = fn.func
    return bool(getattr(fn, attr, False))


def bound_keywords(fn: Any) -> dict[str, Any]:
    """The keywords ``functools.partial`` layers bind to ``fn`` (the outermost wins, as in a call)."""
    out: dict[str, Any] = {}
    while isinstance(fn, functools.partial):
        out = {**fn.keywords, **out}
        fn = fn.func
    return out
