"""Synthetic reasoning tasks with exact verifiers, seeded prompt generators and splits.

The arithmetic task writes operands and answers at a fixed width with zero padding
("047+385=" -> "0432"): a ~1M-parameter diffusion LM learns this format in minutes on a
CPU, while unpadded formats learn far slower.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class ArithmeticTask:
    """Zero-padded addition of two `digits`-digit numbers.

    The held-out split is a fixed ~5% of all operand pairs (chosen by a hash of the pair),
    and training never samples from it.
    """

    digits: int = 3
    reward: str = "arithmetic"  # name of the exact verifier in rewards/

    def row(self, a: int, b: int) -> dict[str, str]:
        """The dataset row for a + b: {"prompt": ..., "answer": ...}."""
        w = self.digits
        return {"prompt": f"{a:0{w}d}+{b:0{w}d}=", "answer": f"{a + b:0{w + 1}d}"}

    def is_heldout(self, a: int, b: int) -> bool:
        # A fixed multiplicative hash, so the split never depends on the sampling seed.
        return ((a * 1_000_003 + b) * 2_654_435_761 >> 7) % 20 == 0

    def _sample(self, rng: random.Random, heldout: bool) -> dict[str, str]:
        hi = 10**self.digits - 1
        while True:
            a, b = rng.randint(0, hi), rng.randint(0, hi)
            if self.is_heldout(a, b) == heldout:
                return self.row(a, b)

    def train_rows(self, n: int, seed: int, step: int) -> list[dict[str, str]]:
        """`n` training rows for RL/SFT step `step`; a pure function of (seed, step), so a
        resumed run sees exactly the data order of an uninterrupted one."""
        rng = random.Random(f"train-{seed}-{step}")
        return [self._sample(rng, heldout=False) for _ in range(n)]

    def heldout_rows(self, n: int, seed: int = 0) -> list[dict[str, str]]:
        """`n` distinct held-out rows (the same for every run with this seed)."""
        rng, seen, rows = random.Random(f"heldout-{seed}"), set(), []
        limit = sum(1 for a in range(10**self.digits) for b in range(10**self.digits) if self.is_heldout(a, b)) if self.digits <= 2 else None
        if limit is not None and n > limit:
            raise ValueError(f"the held-out split of {self.digits}-digit arithmetic has only {limit} problems, asked for {n}")
        while len(rows) < n:
            row = self._sample(rng, heldout=True)
            if row["prompt"] not in seen:
                seen.add(row["prompt"])
                rows.append(row)
        return rows

    @property
    def max_new_tokens(self) -> int:
        """Answer digits plus EOS."""
        return self.digits + 2


TASKS = {"arithmetic": ArithmeticTask}


def make_task(name: str, **kwargs) -> ArithmeticTask:
    """Build a task by name (see TASKS)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {sorted(TASKS)}")
    return TASKS[name](**kwargs)
