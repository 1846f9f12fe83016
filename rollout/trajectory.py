"""The Trajectory record every rollout returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence


def answer_length(completion_ids: Sequence[int], eos_id: int | None) -> int:
    """Tokens of the answer: up to and including the first EOS (all of them without one).

    The one definition of where an answer ends: the loss and its masks (algorithms), the
    response length the trainer logs and the answer tokens evaluation counts all use it; the
    tokens after the first EOS (the rest of its block, a full-attention canvas) are context.

    >>> answer_length([7, 2, 9, 2], eos_id=2), answer_length([7, 9], eos_id=2), answer_length([7], None)
    (2, 2, 1)
    """
    ids = list(completion_ids)
    return ids.index(eos_id) + 1 if eos_id is not None and eos_id in ids else len(ids)


@dataclass
class Trajectory:
    """One sampled completion and how it was decoded.

    Token ids are exactly as sampled; nothing downstream re-tokenises text.
    """

    prompt_ids: list[int]
    """Prompt token ids."""
    completion_ids: list[int]
    """Sampled ids of every decoded position, EOS included. Block models decode whole
    blocks, so the block that holds the first EOS is kept entire: its later tokens were
    part of the context the sampler saw and the learner must replay them."""
    step_map: list[int]
    """Per completion token: the 0-based global denoising step at which it was first
    unmasked. Monotone over blocks (block j's steps come after block j-1's)."""
    logprobs: list[float]
    """Per completion token: log-prob under the distribution it was sampled from, at its step."""
    block_size: int | None
    """Tokens per block for block models, None for full attention."""
    temperature: float
    """Sampling temperature (0 = greedy)."""
    nfe: int
    """Forward passes this sample took part in."""
    finish_reason: str
    """"eos" if an EOS was decoded, else "length"."""
    text: str = ""
    """Completion text up to (not including) the first EOS."""
    group: int = 0
    """Index of the prompt this sample belongs to (for group advantages)."""
    columns: dict[str, Any] = field(default_factory=dict)
    """The dataset row, handed to reward functions as keyword columns."""
    version: int = 0
    """Weights version (learner updates applied) of the policy that decoded this sample; the
    learner's version minus this is the sample's staleness."""
    step_predictions: Any = None
    """[S, C] long tensor, only with `SamplingParams.record_steps` (else None): row t is the canvas the
    model predicted at denoising step t (S = the sample's steps): the tokens committed before t, the
    step's prediction at every position masked at its input in the block being decoded, the mask id
    at later blocks' positions. A token committed at step t equals row t at its position; the last
    row is the completion (MDPO's intermediate answers)."""
    step_confidences: Any = None
    """[S, C] float32 tensor with `step_predictions`: the probability of each prediction under the
    sampling distribution at its step (0 where the step predicted nothing)."""
    remasked: bool = False
    """True when the decoder could re-mask committed tokens (strategy "rcr"): a token may have been
    committed several times, step_map and logprobs hold its last commit, and the trajectory is not
    an unmask-once trace (trace estimators must not replay it)."""

    def __post_init__(self) -> None:
        n = len(self.completion_ids)
        if len(self.step_map) != n or len(self.logprobs) != n:
            raise ValueError(
                f"Trajectory: completion_ids ({n}), step_map ({len(self.step_map)}) and "
                f"logprobs ({len(self.logprobs)}) must have the same length"
            )
        if (self.step_predictions is None) != (self.step_confidences is None):
            raise ValueError("Trajectory: step_predictions and step_confidences come together (record_steps)")
        if self.step_predictions is not None:
            shapes = {tuple(self.step_predictions.shape), tuple(self.step_confidences.shape)}
            if len(shapes) != 1 or self.step_predictions.dim() != 2 or self.step_predictions.shape[1] != n:
                raise ValueError(f"Trajectory: step_predictions and step_confidences must both be [steps, {n}], got {sorted(shapes)}")
        if self.finish_reason not in ("eos", "length"):
            raise ValueError(f"Trajectory: finish_reason must be 'eos' or 'length', got {self.finish_reason!r}")

    @property
    def num_steps(self) -> int:
        """Number of distinct denoising steps that committed tokens."""
        return len(set(self.step_map))
