"""Placing process (step-level) rewards on the trace steps that finished each chunk.

A reward may score chunks of the completion text (`rewards.StepReward`: values and character
end offsets). The value of a chunk goes to the decoding step at which the last of the chunk's
tokens was unmasked: on the token of that step, within the chunk, that sits rightmost. The
outcome (scalar) part of the reward goes on the last trace step, as without process rewards.
"""

from __future__ import annotations

from rewards import StepReward
from rollout.trajectory import Trajectory


def token_char_ends(traj: Trajectory, tokenizer) -> list[int]:
    """Character end offset, in `traj.text`, of each completion token (tokens after the text's
    end, such as EOS and what follows it, map to len(text))."""
    ends, limit = [], len(traj.text)
    for j in range(len(traj.completion_ids)):
        # Incremental decoding, because a token's characters depend on its neighbours.
        ends.append(min(limit, len(tokenizer.decode(traj.completion_ids[: j + 1], skip_special_tokens=True))))
    return ends


def token_rewards(traj: Trajectory, outcome: float, steps: StepReward | None, tokenizer) -> list[float]:
    """Per completion token rewards: `outcome` on the last trace step, each chunk's value on the
    step that finished that chunk. Their sum is outcome + sum(steps.values)."""
    out = [0.0] * len(traj.completion_ids)
    if not out:
        return out

    def place(tokens: list[int], value: float) -> None:
        last = max(traj.step_map[t] for t in tokens)
        out[max(t for t in tokens if traj.step_map[t] == last)] += value

    place(list(range(len(out))), outcome)
    if steps is not None:
        char_end = token_char_ends(traj, tokenizer)
        # Tokens that add no characters (EOS, anything after the text) belong to no chunk.
        visible = [t for t, e in enumerate(char_end) if e > (char_end[t - 1] if t else 0)]
        start = 0
        for value, end in zip(steps.values, steps.ends):
            chunk = [t for t in visible if start < char_end[t] <= end]
            place(chunk or [min(visible or range(len(out)), key=lambda t: abs(char_end[t] - end))], value)
            start = end
    return out
