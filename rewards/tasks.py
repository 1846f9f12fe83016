"""Exact verifiers for the synthetic tasks used to train and test on CPU.

Arithmetic task: a prompt ``"047+385="`` has two operands zero-padded to the same
width ``w``; the target completion is the sum zero-padded to ``w + 1`` digits
(``"0432"``), so every answer has a fixed length and the format is learnable.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ._text import as_text, column, parse_python
from .base import in_process, register_reward

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
@in_process
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
@in_process
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


# --- countdown ------------------------------------------------------------------------
# Prompt (TinyZero style): "Using the numbers [19, 36, 55, 7], create an equation that
# equals 65." Columns `nums` and `target` win over the prompt. The answer is the last
# <answer>...</answer> of the completion (else its last non-empty line): an expression
# using each number exactly once with + - * / and parentheses.

_COUNTDOWN_PROMPT = re.compile(r"numbers?\s*\[([-\d,\s]+)\].*?equals?\s*(-?\d+)", re.S | re.I)
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S)
_EXPR_CHARS = re.compile(r"[\d+\-*/().\s]+")


def _countdown_problem(prompt: Any, nums: Any, target: Any) -> tuple[list[int], int] | None:
    if nums is not None and target is not None:
        return [int(x) for x in nums], int(target)
    match = _COUNTDOWN_PROMPT.search(as_text(prompt))
    if match is None:
        return None
    return [int(x) for x in match.group(1).replace(",", " ").split()], int(match.group(2))


def _countdown_answer(text: str) -> str | None:
    tags = _ANSWER_TAG.findall(text)
    if tags:
        answer = tags[-1]
    else:
        lines = [line for line in text.strip().splitlines() if line.strip()]
        if not lines:
            return None
        answer = lines[-1]
    answer = answer.strip()
    if "=" in answer:  # "(55 - 36 + 7) * 19 / 19 = 65": keep the side with the numbers
        answer = answer.split("=")[0].strip()
    return answer or None


def _eval_expr(node: Any) -> Any:
    import ast
    from fractions import Fraction

    if isinstance(node, ast.Expression):
        return _eval_expr(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _eval_expr(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        left, right = _eval_expr(node.left), _eval_expr(node.right)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if right == 0:
            raise ZeroDivisionError
        return left / right
    raise ValueError(f"not allowed in a countdown answer: {type(node).__name__}")


def check_countdown(expression: str, nums: Sequence[int], target: int) -> bool:
    """Whether ``expression`` uses each of ``nums`` exactly once and evaluates to ``target`` (exactly).

    >>> check_countdown("(55 - 36 + 7) * 19 / 19", [19, 36, 55, 7, 19], 26)
    True
    >>> check_countdown("55 + 7 + 3", [55, 7], 65)
    False
    """
    if len(expression) > 500 or not _EXPR_CHARS.fullmatch(expression):
        return False
    used = sorted(int(x) for x in re.findall(r"\d+", expression))
    if used != sorted(int(x) for x in nums):
        return False
    try:
        return _eval_expr(parse_python(expression, mode="eval")) == target
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError, MemoryError):
        return False


@register_reward("countdown")
@in_process
def countdown_reward(
    prompts: list, completions: list, nums: list | None = None, target: list | None = None, **columns: Any
) -> list[float | None]:
    """Score countdown answers: 1.0 iff the answer uses every number once and equals the target.

    The problem comes from the ``nums`` and ``target`` columns, else from the
    prompt; a sample with neither scores None.

    >>> countdown_reward(["Using the numbers [3, 5, 2], create an equation that equals 16."] * 3,
    ...                  ["<answer>(3 + 5) * 2</answer>", "<answer>3 * 5 + 1</answer>", "no answer"])
    [1.0, 0.0, 0.0]
    """
    n = len(completions)
    nums_col, target_col = column(nums, n, "nums"), column(target, n, "target")
    rewards: list[float | None] = []
    for prompt, completion, ns, t in zip(prompts, completions, nums_col, target_col):
        problem = _countdown_problem(prompt, ns, t)
        if problem is None:
            rewards.append(None)
            continue
        answer = _countdown_answer(as_text(completion))
        rewards.append(1.0 if answer is not None and check_countdown(answer, *problem) else 0.0)
    return rewards


# --- sudoku ---------------------------------------------------------------------------
# A puzzle is a string of n*n cells (n = 4 or 9) read row by row, digits for givens and
# "0" or "." for blanks (the `puzzle` column, else the last such run in the prompt). The
# answer is the last n*n digits of the completion (separators and layout are ignored).

_SIZES = {16: 4, 81: 9}


def _sudoku_puzzle(prompt: Any, puzzle: Any) -> str | None:
    if puzzle is not None:
        cells = re.sub(r"[^0-9.]", "", str(puzzle))
        return cells if len(cells) in _SIZES else None
    for size in (81, 16):
        runs = re.findall(r"[0-9.](?:[\s|,+-]*[0-9.]){%d}" % (size - 1), as_text(prompt))
        if runs:
            return re.sub(r"[^0-9.]", "", runs[-1])
    return None


def check_sudoku(grid: str, puzzle: str) -> bool:
    """Whether ``grid`` (n*n digits) is a valid solution that keeps the givens of ``puzzle``.

    >>> check_sudoku("1234341221434321", "1.3.3..2.1.34.2.")
    True
    >>> check_sudoku("1234341221434312", "1.3.3..2.1.34.2.")
    False
    """
    n = _SIZES.get(len(puzzle))
    if n is None or len(grid) != len(puzzle) or not grid.isdigit():
        return False
    if any(p not in ".0" and p != g for p, g in zip(puzzle, grid)):
        return False
    box = int(n**0.5)
    want = {str(d) for d in range(1, n + 1)}
    rows = [grid[r * n : (r + 1) * n] for r in range(n)]
    cols = ["".join(row[c] for row in rows) for c in range(n)]
    boxes = [
        "".join(rows[r][c] for r in range(br, br + box) for c in range(bc, bc + box))
        for br in range(0, n, box)
        for bc in range(0, n, box)
    ]
    return all(set(group) == want for group in rows + cols + boxes)


@register_reward("sudoku")
@in_process
def sudoku_reward(prompts: list, completions: list, puzzle: list | None = None, **columns: Any) -> list[float | None]:
    """Score sudoku answers: 1.0 iff the last n*n digits of the completion solve the puzzle.

    >>> sudoku_reward(["Solve: 1.3.3..2.1.34.2."] * 2, ["1234\\n3412\\n2143\\n4321", "1234 3412 2143 4312"])
    [1.0, 0.0]
    """
    n = len(completions)
    puzzles = column(puzzle, n, "puzzle")
    rewards: list[float | None] = []
    for prompt, completion, given in zip(prompts, completions, puzzles):
        cells = _sudoku_puzzle(prompt, given)
        if cells is None:
            rewards.append(None)
            continue
        digits = re.sub(r"\D", "", as_text(completion))
        rewards.append(1.0 if len(digits) >= len(cells) and check_sudoku(digits[-len(cells) :], cells) else 0.0)
    return rewards
