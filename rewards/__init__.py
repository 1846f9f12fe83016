"""Reward functions for unmask: exact task verifiers, math answers, sandboxed code, a plugin registry.

Every reward has the TRL signature ``fn(prompts, completions, **columns) ->
list[float | None]`` (a sample's value may also be a :class:`StepReward`, one
value per chunk of the completion). This package needs neither torch nor Ray, so
scoring can run anywhere (a CPU box, a Ray task, a TRL trainer).
"""

from .code import code_reward, extract_code
from .math import boxed_format_reward, math_reward
from .registry import ScoreResult, SampleFailure, get_reward, in_process, register_reward, score
from .sandbox import sandbox_info
from .steps import StepReward, split_steps
from .tasks import arithmetic_format_reward, arithmetic_reward, countdown_reward, solve_arithmetic, sudoku_reward

__all__ = [
    "SampleFailure",
    "ScoreResult",
    "StepReward",
    "arithmetic_format_reward",
    "arithmetic_reward",
    "boxed_format_reward",
    "code_reward",
    "countdown_reward",
    "extract_code",
    "get_reward",
    "in_process",
    "math_reward",
    "register_reward",
    "sandbox_info",
    "score",
    "solve_arithmetic",
    "split_steps",
    "sudoku_reward",
]
