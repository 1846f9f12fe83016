"""Diffusion-LM decoding that records trajectories.

The names below load on first use (PEP 562): `rollout.sampling`, which the run config and the
command line import, then comes without torch and transformers.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CHATML_TEMPLATE": "rollout.tokenizer",
    "DiffusionLM": "rollout.models",
    "SamplingParams": "rollout.sampling",
    "Trajectory": "rollout.trajectory",
    "build_bpe_tokenizer": "rollout.tokenizer",
    "build_char_tokenizer": "rollout.tokenizer",
    "build_tiny_block_lm": "rollout.models",
    "generate": "rollout.engine",
    "load_model": "rollout.models",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
