"""How to decode: `SamplingParams`, the one definition of every decoding setting.

Each field's type, default, range and description is written here once. The engine takes a
SamplingParams (rollout.engine.generate); the run config's `rollout.sampling` and
`eval.sampling` sections are built from these fields (rl.config.SamplingConfig), so a config
file and a direct `SamplingParams(...)` accept the same values and refuse a bad one with the
same message. The decoding strategies themselves are described in rollout.engine.

This module needs no torch: the config and the command line import it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal, get_args

from pydantic import (
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveInt,
    ValidationError,
    field_validator,
)
from pydantic.dataclasses import dataclass

Strategy = Literal["static", "threshold", "adaptive", "prophet", "rcr", "bacd"]
Schedule = Literal["even", "ascending"]
Confidence = Literal["prob", "margin", "entropy", "raw_prob"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
CONFIDENCES: tuple[str, ...] = get_args(Confidence)

# `--strategy` specs (`unmask eval`, `unmask generate`): each strategy's arguments, read by parse_strategy.
STRATEGY_SPECS: dict[str, str] = {
    "static": "static[:STEPS|:ascending]",
    "threshold": "threshold[:T]",
    "adaptive": "adaptive[:FACTOR[:MAX_PER_STEP]]",
    "prophet": "prophet[:STEPS|:G1,G2,G3]",
    "rcr": "rcr[:STEPS]",
    "bacd": "bacd[:LOWER,UPPER]",
}


@dataclass(config=ConfigDict(extra="forbid"))
class SamplingParams:
    """How to decode. Shared by rollouts, evaluation and `unmask generate`; validated on construction
    (a bad value raises pydantic's ValidationError, a ValueError, naming the field)."""

    strategy: Strategy = Field(
        "static", description="static: fixed steps per block; threshold: dynamic confidence threshold (Fast-dLLM); adaptive: "
        "confidence-adaptive step sizes, bounded (Fast-dLLM's factor rule); prophet: static with early commit once the top-2 gap "
        "says the block has converged (Prophet). All only unmask, so TraceRL replays them. rcr: MDPO's Running Confidence "
        "Remasking (rollout.engine.rcr_generate; full attention, evaluation and generation only): every step fills all masked positions, then "
        "re-masks the least confident ones, so a committed token can change and the trajectory cannot be replayed. bacd: TDAR's "
        "Bounded Adaptive Confidence Decoding (its LMDeploy unmasking.py): commit every masked token whose confidence reaches tau, "
        "tau the block's best confidence at its first step, then the mean confidence of what the block committed so far, clamped to bacd_bounds."
    )
    steps_per_block: int | None = Field(None, ge=1, description="Static, prophet and rcr: denoising steps per block (default: block_size, one token per step).")
    schedule: Schedule = Field(
        "even", description="Static and prophet step sizes: even (the remainder first), or ascending 1, 2, 4, ... tokens per step (which ignores steps_per_block)."
    )
    threshold: float = Field(0.9, gt=0.0, le=1.0, description="Threshold strategy: commit every masked token whose confidence exceeds this.")
    factor: float = Field(
        1.0, gt=0.0, description="Adaptive strategy: commit the largest n with (n + 1) * (1 - c_n) < factor (c_n: n-th highest confidence; larger commits more per step)."
    )
    bacd_bounds: tuple[float, float] = Field(
        (0.6, 0.9), description="Bacd strategy: (lower, upper) clamp of its confidence threshold (TDAR's confidence_lower_threshold / "
        "confidence_upper_threshold defaults)."
    )
    max_tokens_per_step: int | None = Field(None, ge=1, description="Threshold, adaptive and bacd: at most this many tokens per step and sample (None: no bound).")
    prophet_gaps: tuple[NonNegativeFloat, NonNegativeFloat, NonNegativeFloat] = Field(
        (7.5, 5.0, 2.5), description="Prophet: mean top-1 minus top-2 log-prob gap of a block's masked positions that commits the rest "
        "of the block, for progress < 1/3, < 2/3, and later (Prophet's own values)."
    )
    confidence: Confidence = Field(
        "prob", description="Confidence criterion: prob (of the sampled token), margin (top-1 minus top-2 probability), entropy (exp(-entropy), "
        "1 for a one-hot distribution), or raw_prob (of the sampled token at temperature 1, the softmax of the raw logits: LLaDA's generate "
        "and the d1 / d-TreeRPO samplers rank by it whatever their temperature)."
    )
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature; 0 is greedy. Log-probs use logits / temperature.")
    top_k: int | None = Field(
        None, ge=1, description="Sample among the k most likely tokens (log-probs stay those of the full temperature-scaled distribution, as the learner scores them)."
    )
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus sampling: the smallest set of tokens with cumulative probability >= top_p.")
    max_new_tokens: int = Field(
        8, ge=1, description="Generation budget; block models stop at the first block boundary at or past it (Stable-DiffCoder, "
        "whose own decoder stops exactly at its budget: at it)."
    )
    stop_at_eos: bool = Field(True, description="Stop a sample after the block in which it decoded EOS (off: decode the whole budget).")
    kv_cache: bool = Field(
        True, description="Block models: exact cache of committed blocks. Full attention: approximate prefix cache, refreshed once per "
        "block (Fast-dLLM). False recomputes the whole sequence at every step."
    )
    dual_cache: bool = Field(False, description="Full attention with kv_cache: also cache the suffix after the current block (Fast-dLLM dual cache; a little more approximate).")
    block_length: int | None = Field(
        None, ge=1, description="Full attention: semi-autoregressive decoding block (LLaDA's block_length); default: one block. Block models use their own block size."
    )
    eos_guard: float | None = Field(
        None, gt=0.0, le=1.0, description="Full attention: damp the confidence of a position predicting EOS by eos_guard**(1-progress) "
        "(progress: the fraction of the completion decoded), so EOS is not committed early everywhere (after EOSER)."
    )
    record_steps: bool = Field(
        False, description="Record, at every denoising step, the predicted canvas (the token predicted at each still-masked position "
        "of the block being decoded) and the probability of each prediction, in Trajectory.step_predictions / step_confidences "
        "(MDPO scores these intermediate answers). Off: nothing is kept and decoding is unchanged."
    )
    tree: tuple[PositiveInt, PositiveInt, PositiveInt] | None = Field(
        None, description="Tree rollout (d-TreeRPO), full attention, static even schedule: (num_tree_samples, tree_branch_factor, "
        "tree_contraction_factor s). Each prompt's root is decoded into num_tree_samples children, each child continued "
        "into tree_branch_factor children at every branch point (after int(k T / s) of the T steps, k = 1..s-1); "
        "the num_tree_samples x tree_branch_factor^(s-1) leaves are the prompt's samples (samples_per_prompt). "
        "None: ordinary rollouts, unchanged."
    )
    max_batch: int | None = Field(
        None, ge=1, description="Decode at most this many samples at once per worker; block models refill finished rows with waiting "
        "prompts (continuous batching, same tokens at T=0), full attention decodes in chunks. None: all at once."
    )

    @field_validator("bacd_bounds")
    @classmethod
    def _bounds_in_order(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < v[0] <= v[1] <= 1.0:
            raise ValueError(f"bacd_bounds must be (lower, upper) with 0 < lower <= upper <= 1, got {v}")
        return v


def sampling_error(e: ValueError) -> str:
    """A refused SamplingParams as one line per problem, worded as a config error: `threshold: Input
    should be greater than 0 (got 0.0)`."""
    if not isinstance(e, ValidationError):
        return str(e)
    return "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']} (got {d['input']!r})" for d in e.errors())


def parse_strategy(spec: str, base: SamplingParams) -> tuple[str, SamplingParams]:
    """A `--strategy` spec (STRATEGY_SPECS) -> (label, params); bare names keep `base`'s settings.

    ``static`` | ``static:STEPS`` (steps per block) | ``static:ascending``; ``threshold`` |
    ``threshold:T``; ``adaptive`` | ``adaptive:FACTOR`` | ``adaptive:FACTOR:MAX_PER_STEP``;
    ``prophet`` | ``prophet:STEPS`` | ``prophet:G1,G2,G3`` (gaps for each third of the decode);
    ``rcr`` | ``rcr:STEPS`` (steps per block); ``bacd`` | ``bacd:LOWER,UPPER``.

    >>> parse_strategy("threshold:0.7", SamplingParams())[1].threshold
    0.7
    >>> parse_strategy("adaptive:2:3", SamplingParams())[1].max_tokens_per_step
    3
    """
    name, _, arg = spec.strip().partition(":")
    args = arg.split(":") if arg else []
    try:
        if name in ("static", "prophet") and len(args) <= 1:
            kw = {"strategy": name}
            if args and args[0] == "ascending":
                kw["schedule"] = "ascending"
            elif args and name == "prophet" and "," in args[0]:
                kw["prophet_gaps"] = tuple(float(g) for g in args[0].split(","))
            elif args:
                kw["steps_per_block"] = int(args[0])
            return spec.strip(), replace(base, **kw)
        if name == "rcr" and len(args) <= 1:
            return spec.strip(), replace(base, strategy="rcr", steps_per_block=int(args[0]) if args else base.steps_per_block)
        if name == "bacd" and len(args) <= 1:
            bounds = tuple(float(b) for b in args[0].split(",")) if args else base.bacd_bounds
            return spec.strip(), replace(base, strategy="bacd", bacd_bounds=bounds)
        if name == "threshold" and len(args) <= 1:
            return spec.strip(), replace(base, strategy="threshold", threshold=float(args[0]) if args else base.threshold)
        if name == "adaptive" and len(args) <= 2:
            kw = {"strategy": "adaptive"}
            if args:
                kw["factor"] = float(args[0])
            if len(args) == 2:
                kw["max_tokens_per_step"] = int(args[1])
            return spec.strip(), replace(base, **kw)
    except ValueError as e:
        raise ValueError(f"strategy {spec!r}: {sampling_error(e)}") from None
    raise ValueError(f"unknown strategy {spec!r}: {', '.join(STRATEGY_SPECS[s] for s in STRATEGIES)}")
