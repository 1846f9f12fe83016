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


def flaky_reward(prompts, completions, **columns):
    """A plugin with a data-dependent bug: raises on the completion "boom", else its length."""
    out = []
    for c in completions:
        if c == "boom":
            raise ValueError("cannot score 'boom'")
        out.append(float(len(c)))
    return out


HANG_S = 3600.0


def hanging_reward(prompts, completions, **columns):
    """Hangs on the completion "hang" (think: catastrophic regex backtracking), else its length."""
    for c in completions:
        if c == "hang":
            time.sleep(HANG_S)
    return [float(len(c)) for c in completions]


def always_hangs(prompts, completions, **columns):
    """Hangs on every call."""
    time.sleep(HANG_S)


def nan_reward(prompts, completions, **columns):
    """Returns NaN for the completion "nan" (a division by zero somewhere), else 1.0."""
    return [float("nan") if c == "nan" else 1.0 for c in completions]


def count_calls_reward(prompts, completions, counter_path=None, **columns):
    """Appends one line per call to the file in the ``counter_path`` column, raises on "boom"."""
    if counter_path:
        with open(counter_path[0], "a") as f:
            f.write(f"{len(completions)}\n")
    if "boom" in completions:
        raise RuntimeError("boom")
    return [1.0] * len(completions)


def paragraph_reward(prompts, completions, **columns):
    """A process reward: for each paragraph (chunks split at blank lines), 1.0 if it has an "=", else 0.0."""
    from rewards import StepReward, split_steps

    out = []
    for c in completions:
        ends = split_steps(c)
        if not ends:
            out.append(None)
            continue
        reward = StepReward.from_text(c, [0.0] * len(ends))
        out.append(StepReward.from_text(c, [1.0 if "=" in chunk else 0.0 for chunk in reward.chunks(c)]))
    return out


def crashing_reward(prompts, completions, **columns):
    """Kills its own process on the completion "crash" (think: a segfault in a C extension)."""
    import os

    if "crash" in completions:
        os._exit(3)
    return [1.0] * len(completions)


def chatty_check(pred, gold):
    """A math check that prints (as a debugging user's or a noisy library's would)."""
    print(f"chatty_check: {pred} vs {gold}")
    return pred == gold


def warnings_silenced_check(pred, gold):
    """True iff math-verify's "timeout is disabled" warnings are marked as already shown in this process."""
    import math_verify.grader
    import math_verify.parser

    return math_verify.grader.TIMEOUT_WARNING_SHOWN is True and math_verify.parser.TIMEOUT_WARNING_SHOWN is True


def crashing_check(pred, gold):
    """A math check that kills its process on the answer "crash" (sympy segfaulting)."""
    import os

    if pred == "crash":
        os._exit(3)
    return pred == gold
