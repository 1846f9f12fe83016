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
