"""Diffusion-LM decoding that records trajectories."""

from rollout.engine import SamplingParams, generate
from rollout.models import DiffusionLM, build_tiny_block_lm, load_model
from rollout.tokenizer import CHATML_TEMPLATE, build_bpe_tokenizer, build_char_tokenizer
from rollout.trajectory import Trajectory

__all__ = [
    "CHATML_TEMPLATE",
    "DiffusionLM",
    "SamplingParams",
    "Trajectory",
    "build_bpe_tokenizer",
    "build_char_tokenizer",
    "build_tiny_block_lm",
    "generate",
    "load_model",
]
