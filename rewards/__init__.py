"""Reward functions for unmask: exact task verifiers, math answers and a plugin registry.

Every reward has the TRL signature ``fn(prompts, completions, **columns) ->
list[float | None]``. This package needs neither torch nor Ray, so scoring can run
anywhere (a CPU box, a Ray task, a TRL trainer).
"""

from .math import boxed_format_reward, math_reward
from .registry import get_reward, register_reward, score
from .tasks import arithmetic_format_reward, arithmetic_reward, solve_arithmetic

__all__ = [
    "arithmetic_format_reward",
    "arithmetic_reward",
    "boxed_format_reward",
    "get_reward",
    "math_reward",
    "register_reward",
    "score",
    "solve_arithmetic",
]
