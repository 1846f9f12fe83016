"""Reward plugins used by tests/test_rewards.py (loaded by import path, like a user's plugin)."""

import time


def length_reward(prompts, completions, **columns):
    """Reward = completion length in characters (a deterministic toy plugin).

    >>> length_reward(["p", "p"], ["ab", ""])
    [2.0, 0.0]
    """
    return [float(len(c)) for c in completions]


def broken_reward(prompts, completions, **columns):
    """A plugin with a bug: always raises."""
    raise RuntimeError("plugin exploded")


def short_reward(prompts, completions, **columns):
    """A plugin with a bug: returns one value too few."""
    return [1.0] * (len(completions) - 1)


def slow_check(pred, gold):
    """Stand-in for a math-verify check that hangs on the answer "slow"."""
    if pred == "slow":
        time.sleep(60)
    return pred == gold


def raising_check(pred, gold):
    """Stand-in for a math-verify check that raises on the answer "boom"."""
    if pred == "boom":
        raise ValueError("sympy blew up")
    return pred == gold
