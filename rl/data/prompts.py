"""Prompts: templates filled from a row, and the token ids a model sees (chat template or raw text)."""

from __future__ import annotations

import re
from typing import Any

from rl.data.files import DataError

_TOKEN = re.compile(r"\{\{|\}\}|\{(\w+)\}")


def placeholders(template: str) -> list[str]:
    """The ``{column}`` placeholders of a template, in order (``{{``/``}}`` are literal braces).

    >>> placeholders("Q: {question} \\\\boxed{{}} {question}")
    ['question', 'question']
    """
    return [m.group(1) for m in _TOKEN.finditer(template) if m.group(1)]


def render(template: str, fields: dict[str, Any], where: str = "") -> str:
    r"""Fill ``{column}`` placeholders from a row; ``{{`` and ``}}`` write literal braces. A
    placeholder no column fills is a DataError that names the row and its columns.

    >>> render("{question} Put it in \\boxed{{}}.", {"question": "1+1?"})
    '1+1? Put it in \\boxed{}.'
    """
    names = placeholders(template)
    if not names:
        raise DataError(f"{where}: the prompt template has no {{column}} placeholder, so every prompt would be the same "
                        f"(columns: {', '.join('{' + k + '}' for k in fields if k != 'id')})")  # fmt: skip
    missing = [n for n in dict.fromkeys(names) if n not in fields]
    if missing:
        raise DataError(f"{where}: template placeholder {{{missing[0]}}} is not a column of this row (columns: {', '.join(sorted(fields)) or 'none'})")

    def fill(m: re.Match) -> str:
        if m.group(1):
            v = fields[m.group(1)]
            return "\n".join(map(str, v)) if isinstance(v, list) else str(v)
        return m.group(0)[0]

    return _TOKEN.sub(fill, template)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def encode_messages(tokenizer, messages: list[dict[str, str]], chat: bool) -> tuple[list[int], bool]:
    """Token ids of the chat turns before the answer, wrapped in the tokenizer's chat template
    (with the assistant's generation prompt) when `chat` and it has one; otherwise the turns'
    texts joined by blank lines. Returns (ids, whether a chat template was applied)."""
    if chat and has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"], True
    return tokenizer("\n\n".join(m["content"] for m in messages))["input_ids"], False


def encode_many(tokenizer, conversations: list[list[dict[str, str]]], chat: bool, batch_size: int = 4096) -> list[list[int]]:
    """`encode_messages` for many prompts at once (the same ids), tokenised in batches by the fast
    tokenizer; what a large training file costs once, at start-up."""
    use_chat = chat and has_chat_template(tokenizer)
    out: list[list[int]] = []
    for i in range(0, len(conversations), batch_size):
        part = conversations[i : i + batch_size]
        if use_chat:
            texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in part]
            out += tokenizer(texts, add_special_tokens=False)["input_ids"]
        else:
            out += tokenizer(["\n\n".join(t["content"] for t in m) for m in part])["input_ids"]
    return out


def encode_prompt(tokenizer, text: str, chat: bool, system_prompt: str | None = None) -> tuple[list[int], bool]:
    """Token ids of one prompt text (with an optional system prompt): see `encode_messages`."""
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [{"role": "user", "content": text}]
    return encode_messages(tokenizer, messages, chat)


def is_messages(value: Any) -> bool:
    """Whether a column holds a chat conversation: a list of {role, content} dicts."""
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
