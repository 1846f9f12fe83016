"""What every hub-layout conversion refuses (rollout/convert.py, rollout/convert_llada2.py), in one
place both import: the error, and the rule that a config field must hold a value the stock class
reproduces exactly."""

from __future__ import annotations

from typing import Any, Callable


class UnsupportedCheckpoint(ValueError):
    """A checkpoint whose computation the stock class would not reproduce exactly."""


def require(cfg: dict, key: str, allowed: Callable[[Any], bool], what: str, family: str) -> None:
    """Refuse `cfg` when it sets `key` to a value `allowed` rejects (an absent key is the default)."""
    if key in cfg and not allowed(cfg[key]):
        raise UnsupportedCheckpoint(f"{family} config {key}={cfg[key]!r}: {what}; unmask converts this family only without it")
