"""A reward plugin to copy: partial credit per correct answer digit.

Any function with the TRL signature `fn(prompts, completions, **columns) -> list[float | None]`
is a reward. Dataset columns (here `answer`) arrive as keyword lists; return None for a sample
the reward does not apply to. Point a config at it by import path:

    rewards:
      - {name: arithmetic}
      - {name: "examples.reward_plugin:digit_match", weight: 0.5}
"""


def digit_match(prompts, completions, answer=None, **columns):
    """Fraction of answer digits in the right place.

    >>> digit_match(["047+385="], ["0431"], answer=["0432"])
    [0.75]
    """
    if answer is None:
        return [None] * len(completions)
    return [sum(a == b for a, b in zip(c.strip(), ans)) / len(ans) if ans else None for c, ans in zip(completions, answer)]
