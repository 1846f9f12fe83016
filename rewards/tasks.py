"""Exact verifiers for the synthetic tasks used to train and test on CPU.

Arithmetic task: a prompt ``"047+385="`` has two operands zero-padded to the same
width ``w``; the target completion is the sum zero-padded to ``w + 1`` digits
(``"0432"``), so every answer has a fixed length and the format is learnable.
"""

from __future__ import annotations

import re
from typing import Any

from ._text import as_text, column
from .registry import register_reward

# The problem is the last "a+b=" at the end of the prompt, so a prompt may carry
# an instruction or few-shot examples before it. ASCII digits only: str.isdigit
# would also accept characters like "²" that int() cannot read as the task means.
_PROBLEM = re.compile(r"([0-9]+)\+([0-9]+)=\s*$")
_DIGITS = re.compile(r"[0-9]+")


def _parse(prompt: Any) -> tuple[int, int, int] | None:
    """Return (a, b, width) of an arithmetic prompt, or None if it is not one."""
    match = _PROBLEM.search(as_text(prompt))
    if match is None:
        return None
    a, b = match.groups()
    if len(a) != len(b):  # the task pads both operands to one width
        return None
    return int(a), int(b), len(a)


def solve_arithmetic(prompt: str) -> str | None:
    """Return the expected completion of an arithmetic prompt, or None if unparseable.

    >>> solve_arithmetic("047+385=")
    '0432'
    >>> solve_arithmetic("99+01=")
    '100'
    >>> solve_arithmetic("what is 2+2?") is None
    True
    """
    parsed = _parse(prompt)
    if parsed is None:
        return None
    a, b, width = parsed
    return str(a + b).zfill(width + 1)


@register_reward("arithmetic")
def arithmetic_reward(prompts: list, completions: list, answer: list | None = None, **columns: Any) -> list[float | None]:
    """Score arithmetic completions: 1.0 iff the stripped completion equals the answer exactly.

    ``answer`` is the dataset column of ground-truth strings; where it is absent
    (or an entry is None) the answer is computed from the prompt. A sample whose
    answer is unknown and whose prompt cannot be parsed scores None.

    >>> arithmetic_reward(["047+385=", "047+385=", "hello"], ["0432", "432", "1"])
    [1.0, 0.0, None]
    >>> arithmetic_reward(["x"], [" 0432\\n"], answer=["0432"])
    [1.0]
    """
    answers = column(answer, len(completions), "answer")
    rewards: list[float | None] = []
    for prompt, completion, gold in zip(prompts, completions, answers):
        if gold is None:
            gold = solve_arithmetic(as_text(prompt))
        if gold is None:
            rewards.append(None)
            continue
        rewards.append(1.0 if as_text(completion).strip() == str(gold).strip() else 0.0)
    return rewards


@register_reward("arithmetic_format")
def arithmetic_format_reward(
    prompts: list, completions: list, answer: list | None = None, **columns: Any
) -> list[float | None]:
    """Score the answer format: 1.0 iff the stripped completion is exactly ``w + 1`` ASCII digits.

    ``w`` is the operand width read from the prompt (or, if the prompt cannot be
    parsed, ``len(answer) - 1``); when neither is known the sample scores None.

    >>> arithmetic_format_reward(["047+385=", "047+385=", "047+385="], ["9999", "432", "04a2"])
    [1.0, 0.0, 0.0]
    """
    answers = column(answer, len(completions), "answer")
    rewards: list[float | None] = []
    for prompt, completion, gold in zip(prompts, completions, answers):
        parsed = _parse(prompt)
        if parsed is not None:
            length = parsed[2] + 1
        elif gold is not None:
            length = len(str(gold).strip())
        else:
            rewards.append(None)
            continue
        text = as_text(completion).strip()
        rewards.append(1.0 if len(text) == length and _DIGITS.fullmatch(text) else 0.0)
    return rewards
