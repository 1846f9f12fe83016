r"""Process (step-level) rewards: one value per chunk of a completion.

A reward function may return, for any sample, a :class:`StepReward` instead of a
float. A *chunk* is a span of the completion's text (the string the reward was
given; for a conversation, the last message's content): chunk ``k`` is
``text[ends[k-1]:ends[k]]`` with ``ends[-1] = 0``. Its value rewards the trace
step that finished the chunk (the decoding step at which the last of the chunk's
tokens was unmasked); text after the last end gets no step reward.

In the scalar total a StepReward counts as the sum of its values (the return of
the steps with no discount), so outcome and process rewards add up the same way.

>>> text = "Step 1: 2+2=4\n\nStep 2: 4*3=12\n\nAnswer: 12"
>>> r = StepReward.from_text(text, [1.0, 0.0, 1.0])
>>> r.ends, r.total, r.chunks(text)[1]
((15, 31, 41), 2.0, 'Step 2: 4*3=12\n\n')
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass


def split_steps(text: str, delimiter: str = "\n\n") -> tuple[int, ...]:
    r"""Return the chunk end offsets of ``text`` split at ``delimiter``.

    A delimiter (or a run of them) belongs to the chunk before it; the last chunk
    ends at ``len(text)``. An empty text has no chunks.

    >>> split_steps("a\n\nb\n\n\n\nc")
    (3, 8, 9)
    >>> split_steps("one line", "\n")
    (8,)
    """
    if not delimiter:
        raise ValueError("delimiter must not be empty")
    if not text:
        return ()
    ends = [m.end() for m in re.finditer(f"(?:{re.escape(delimiter)})+", text) if 0 < m.start() and m.end() < len(text)]
    ends.append(len(text))
    return tuple(ends)


@dataclass(frozen=True)
class StepReward:
    """Rewards for consecutive chunks of one completion: ``values[k]`` for the chunk ending at ``ends[k]``.

    ``ends`` are character offsets into the completion text, strictly increasing
    and positive; ``values`` are finite floats, one per chunk.
    """

    values: tuple[float, ...]
    ends: tuple[int, ...]

    def __post_init__(self) -> None:
        values = tuple(float(v) for v in self.values)
        ends = tuple(int(e) for e in self.ends)
        if len(values) != len(ends):
            raise ValueError(f"StepReward has {len(values)} values for {len(ends)} chunk ends")
        if not values:
            raise ValueError("StepReward needs at least one chunk")
        if any(not math.isfinite(v) for v in values):
            raise ValueError(f"StepReward values must be finite, got {values}")
        if ends[0] <= 0 or any(b <= a for a, b in zip(ends, ends[1:])):
            raise ValueError(f"StepReward ends must be positive and strictly increasing, got {ends}")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "ends", ends)

    @classmethod
    def from_text(cls, text: str, values: Sequence[float], delimiter: str = "\n\n") -> StepReward:
        """Values for the chunks of ``text`` split at ``delimiter`` (see :func:`split_steps`)."""
        ends = split_steps(text, delimiter)
        if len(ends) != len(values):
            raise ValueError(f"text has {len(ends)} chunks split at {delimiter!r} but got {len(values)} values")
        return cls(tuple(values), ends)

    @property
    def total(self) -> float:
        """The scalar this reward contributes to the total: the sum of its values."""
        return math.fsum(self.values)

    def chunks(self, text: str) -> list[str]:
        """The chunks of ``text`` these values belong to."""
        starts = (0, *self.ends[:-1])
        return [text[a:b] for a, b in zip(starts, self.ends)]

    def scaled(self, weight: float) -> StepReward:
        return StepReward(tuple(weight * v for v in self.values), self.ends)


def merge_steps(parts: Sequence[StepReward]) -> StepReward | None:
    """Add several StepRewards of one completion: values at the same end are summed."""
    acc: dict[int, float] = {}
    for part in parts:
        for end, value in zip(part.ends, part.values):
            acc[end] = acc.get(end, 0.0) + value
    if not acc:
        return None
    ends = sorted(acc)
    return StepReward(tuple(acc[e] for e in ends), tuple(ends))
