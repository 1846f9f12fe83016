"""Source names: the label of each source in metrics, derived once so config checks and the loader agree."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def source_name(src: Any) -> str:
    """A source's metric label: its `name`, else its preset, else what its path names.

    >>> from types import SimpleNamespace as S
    >>> source_name(S(name=None, preset=None, path="data/gsm8k_train.jsonl.gz")), source_name(S(name=None, preset=None, path="gym:countdown"))
    ('gsm8k_train', 'countdown')
    """
    if src.name:
        return src.name
    if src.preset and src.preset != "none":
        return src.preset
    path = src.path
    if path.startswith(("gym:", "hub:")):
        path = path[4:]
    stem = Path(path.rstrip("/")).name
    while Path(stem).suffix and len(Path(stem).suffix) <= 8:
        stem = Path(stem).stem
    return re.sub(r"[^\w.-]+", "_", stem) or "data"


def source_names(sources: list[Any]) -> list[str]:
    """Every source's name; two sources with one name are an error (their metrics would merge)."""
    names = [source_name(s) for s in sources]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise ValueError(f"data.sources[{names.index(n)}] and data.sources[{i}] are both named {n!r}; give one of them name: OTHER")
    return names
