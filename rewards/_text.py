"""Helpers shared by the reward functions: turning TRL inputs into plain text."""

from __future__ import annotations

import ast
import threading
from typing import Any

# CPython before 3.11.9 and 3.12.1 keeps the AST builder's recursion depth in one global
# (gh-106905): two threads in ast.parse at once, which the scoring threads are, fail with
# "SystemError: AST constructor recursion depth mismatch". One lock serialises our parses.
_PARSE_LOCK = threading.Lock()


def as_text(item: Any) -> str:
    """Return the text of one prompt or completion.

    TRL hands rewards either plain strings or conversations (a list of
    ``{"role", "content"}`` messages); for a conversation the last message is the
    one being scored (the assistant turn, or the user turn of a prompt).

    >>> as_text("12")
    '12'
    >>> as_text([{"role": "user", "content": "1+1="}])
    '1+1='
    """
    if item is None:
        return ""
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        return str(item.get("content", ""))
    if isinstance(item, (list, tuple)):
        return as_text(item[-1]) if item else ""
    return str(item)


def column(values: Any, n: int, name: str) -> list[Any]:
    """Return a dataset column as a list of length ``n`` (``[None] * n`` when absent).

    A length mismatch is a caller bug (misaligned rows would score the wrong
    answers silently), so it raises rather than truncating.
    """
    if values is None:
        return [None] * n
    if isinstance(values, (str, bytes)):
        raise TypeError(f"column {name!r} must be a list with one entry per completion, got a string")
    values = list(values)
    if len(values) != n:
        raise ValueError(f"column {name!r} has {len(values)} entries for {n} completions")
    return values


def parse_python(source: str, mode: str = "exec") -> ast.AST:
    """``ast.parse`` that is safe to call from the scoring threads at once.

    Raises ``SyntaxError`` for anything that does not parse, including source nested
    too deep for the parser (``RecursionError``/``MemoryError``), so callers need one
    ``except``.

    >>> type(parse_python("1 + 2", mode="eval")).__name__
    'Expression'
    """
    with _PARSE_LOCK:
        try:
            try:
                return ast.parse(source, mode=mode)
            except SystemError:  # another thread parsed outside this lock: the depth resets per parse
                return ast.parse(source, mode=mode)
        except (RecursionError, MemoryError) as e:
            raise SyntaxError(f"source nested too deeply to parse: {type(e).__name__}") from None
