"""Run configuration: typed, documented, validated with errors that name key and file.

Each field's description is its documentation (shown by `unmask train --help-config`).
Unknown keys are errors, with a did-you-mean suggestion; values are checked for type
and range; cross-field rules live in one validator per model.
"""

from __future__ import annotations

import copy
import difflib
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from rollout.families import FAMILIES
from rollout.sampling import SamplingParams


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraSettings(_Section):
    enabled: bool = Field(False, description="Train a LoRA adapter (peft) instead of all weights; weight sync ships only the adapter.")
    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Module names that get adapters.",
    )


Family = Literal[tuple(FAMILIES)]  # the registered families (rollout/families.py: traits, no torch)


class ModelConfig(_Section):
    path: str = Field(description="Local directory (or hub id) of the policy's base checkpoint.")
    family: Family | None = Field(
        None, description="block (SDAR/TraDo), llada (full attention) or dream (full attention, shifted logits); default: from the checkpoint."
    )
    block_size: int | None = Field(None, ge=1, description="Block models: tokens per block; default: the checkpoint's config.block_size.")
    trust_remote_code: bool = Field(False, description="Allow the checkpoint's own modeling code (LLaDA/Dream on the hub).")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA adapter for the policy; the reference is the base with the adapter disabled.")


class RewardSpec(_Section):
    name: str = Field(description="Built-in reward name, 'package.module:function', or an 'unmask.rewards' entry point.")
    weight: float = Field(1.0, description="Weight of this reward in the total.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword options bound to the reward, e.g. {mode: fraction, timeout_s: 10} for 'code'.")


class HeldoutConfig(_Section):
    """Where a source's held-out problems come from (scored before, during and after training; never trained on)."""

    path: str | None = Field(None, description="A separate file (or glob, directory, hub:ID) read with the source's fields, template and preset.")
    split: str | None = Field(None, description="Split of `path` (save_to_disk DatasetDict or hub dataset).")
    size: int | None = Field(None, ge=1, description="Carve this many rows from the source, deterministically (the same for every seed); generated sources (arithmetic) draw them from their own held-out split.")
    fraction: float | None = Field(None, gt=0.0, lt=1.0, description="Carve this fraction of the source's rows instead of a size.")

    @model_validator(mode="after")
    def _check(self) -> "HeldoutConfig":
        if self.size is not None and self.fraction is not None:
            raise ValueError("give heldout.size or heldout.fraction, not both")
        if self.split is not None and self.path is None:
            raise ValueError("heldout.split needs heldout.path")
        return self


class SourceConfig(_Section):
    """One data source: where its rows are, how they become prompts, what scores them."""

    path: str = Field(
        description="A local file (.jsonl/.json, optionally .gz; .parquet; .csv/.tsv; .arrow), a glob of files, a save_to_disk "
        "directory, hub:OWNER/NAME (needs network), gym:DATASET (reasoning-gym), or arithmetic (the built-in task)."
    )
    name: str | None = Field(None, description="Label in metrics (reward/<name>/mean, accuracy/<name>/heldout); default: the preset or the file's stem.")
    preset: str | None = Field(
        None, description="Row format with its template, reward and SFT target: math, gsm8k, code, mbpp, humaneval, gym, arithmetic, or none "
        "(default: gym/arithmetic from the path, else none: then set prompt/template, columns and rewards)."
    )
    split: str | None = Field(None, description="Split of a save_to_disk DatasetDict or of a hub dataset.")
    subset: str | None = Field(None, description="Hub datasets: the configuration name (e.g. 'main' for openai/gsm8k).")
    prompt: str | None = Field(None, description="Column holding the prompt text, or a chat `messages` list; default: the template fills the prompt.")
    template: str | None = Field(
        None, description="Prompt template: text with {column} placeholders ({{ }} for literal braces), a preset template name "
        "(default, short, raw, ...), or a text file; default: the preset's, or {prompt} when `prompt` names a column."
    )
    system_prompt: str | None = Field(None, description="System message; with a chat template it is the system turn, without one it is prepended.")
    chat_template: Literal["auto", "none"] = Field("auto", description="auto: wrap prompts in the tokenizer's chat template when it has one; none: raw text.")
    columns: list[str] | dict[str, str] = Field(
        default_factory=list, description="Extra dataset columns handed to the rewards as keyword arguments: names, or {kwarg: column}."
    )
    response: str | None = Field(None, description="SFT: the column holding the target response (default: the preset's, or the last assistant message).")
    chosen: str | None = Field(
        None, description="Preference pairs (algorithm.estimator: vrpo): the column holding the preferred response, text or chat turns "
        "ending in the assistant's answer (default with preset: preference: chosen)."
    )
    rejected: str | None = Field(None, description="Preference pairs: the column holding the dispreferred response (default with preset: preference: rejected).")
    rewards: list[RewardSpec] = Field(default_factory=list, description="Rewards of this source (default: the preset's, else the top-level rewards).")
    weight: float = Field(1.0, gt=0.0, description="This source's share of each step's prompts when several sources mix (normalised over sources).")
    heldout: HeldoutConfig = Field(default_factory=HeldoutConfig, description="Held-out split: a separate file, or a size/fraction carved from this source.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Preset options: arithmetic {digits}; gym {size, seed, <dataset config>}; math/gsm8k {question: FIELD, answer: FIELD}."
    )
    limit: int | None = Field(None, ge=1, description="Use only the first N rows of the source.")
    max_new_tokens: int | None = Field(None, ge=1, description="Generation budget for this source's prompts (default: the preset's).")
    generator: str | None = Field(None, description="'module:function' called with `path` when that file does not exist yet (data generated locally on first use).")


class DataConfig(_Section):
    """The data every command loads through: training sources, their held-out splits, prompt limits."""

    sources: list[SourceConfig] = Field(min_length=1, description="Data sources; several mix by weight.")
    max_prompt_tokens: int | None = Field(None, ge=1, description="Drop prompts longer than this (after the template and chat template) before any rollout; counted as data/<source>/dropped.")
    shuffle: bool = Field(True, description="Shuffle each source once per epoch (with train.seed); false keeps file order.")

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        from rl.data.names import source_names

        source_names(self.sources)  # distinct names, or an error that says which to rename
        return self


# The decoding settings are rollout.sampling.SamplingParams' fields, taken as they are (type, default,
# range, description), so a config file and the engine accept and refuse the same values. Two differ:
# stop_at_eos stays an engine setting (rollouts always stop at EOS), and max_new_tokens may be left
# unset for each source's own budget.
_SAMPLING_FIELDS: dict[str, Any] = {name: (f.annotation, copy.copy(f)) for name, f in SamplingParams.__pydantic_fields__.items()}
del _SAMPLING_FIELDS["stop_at_eos"]
_SAMPLING_FIELDS["max_new_tokens"] = (
    int | None,
    Field(None, ge=1, description=SamplingParams.__pydantic_fields__["max_new_tokens"].description + " Default: the task's answer length + EOS."),
)


class SamplingConfig(create_model("SamplingFields", __base__=_Section, **_SAMPLING_FIELDS)):
    """A decoding section (rollout.sampling, eval.sampling): SamplingParams' fields, less stop_at_eos."""

    def params(self, default_max_new_tokens: int) -> SamplingParams:
        """The engine's SamplingParams for these settings; an unset max_new_tokens is `default_max_new_tokens`."""
        return SamplingParams(**{**self.model_dump(), "max_new_tokens": self.max_new_tokens or default_max_new_tokens})


class RolloutConfig(_Section):
    num_workers: int = Field(1, ge=1, description="RolloutWorker Ray actors; prompts are split evenly across them.")
    prompts_per_step: int = Field(16, ge=1, description="Distinct prompts per RL step (offline preference units such as vrpo: preference pairs per step).")
    samples_per_prompt: int = Field(8, ge=1, description="Completions per prompt (the GRPO group size).")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="Decoding used for training rollouts.")
    compile: bool = Field(
        False, description="Compile each worker's backbone with torch.compile(dynamic=True): the first rollout pays the compilation, "
        "later ones (weight syncs included) reuse it. Same tokens; on a 2-core CPU 1.5x faster decoding at 8 and 64 rows (benchmarks/rollout.py)."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights' dtype in the rollout workers: auto is bfloat16 on a GPU, float32 on the CPU. The learner "
        "keeps its fp32 weights and recomputes the old log-probs itself, so the importance ratio is unaffected (except under "
        "overlap, which uses the rollout's log-probs); weight syncs are cast on the learner, so bf16 workers receive half the bytes."
    )
    overlap: bool = Field(
        False, description="Decode step k+1's rollouts while the learner updates on step k (one-step off-policy): the importance "
        "ratio then uses the rollout's own log-probs, and the staleness is logged as rollout/staleness."
    )


class ScoringConfig(_Section):
    timeout_s: float = Field(60.0, gt=0.0, description="Wall-clock limit of one plugin reward call (the batch call, then each per-sample retry).")
    num_workers: int | None = Field(None, ge=1, description="Worker processes for plugin rewards and per-sample retries (default: min(8, cores)).")
    fail_fast: bool = Field(False, description="Stop the run on the first reward failure instead of scoring that sample None.")
    sandbox: Literal["auto", "bwrap", "rlimit"] = Field("auto", description="Code sandbox: bubblewrap where it works, else rlimits + Landlock + seccomp.")


class ValueConfig(_Section):
    enabled: bool = Field(False, description="Train a diffusion value model (TraceRL) and use step-level GAE advantages instead of group advantages.")
    form: Literal["tracerl", "step"] = Field(
        "tracerl", description="tracerl: TraceRL's per-token form, A_j = r_j - V_j + gamma V*_{t+1} + gamma lam A*_{t+1} (V* = a step's "
        "mean value), value head trained on the discounted Monte Carlo return R_j = r_j + gamma R*_{t+1} (algorithms.value.tracerl_gae); "
        "step: every token of a step gets its step's GAE advantage over step-mean values, value head trained on A + V (trace_gae)."
    )
    reward: Literal["zscore", "raw"] = Field(
        "zscore", description="Outcome reward the GAE sees: zscore, its group z-score (std per algorithm.zscore_std), as TraceRL feeds its "
        "value model; raw, the reward as scored. Process (step) rewards are used as given either way."
    )
    gamma: float = Field(1.0, ge=0.0, le=1.0, description="GAE discount per merged trace step (a group of `shrink` decoding steps).")
    lam: float = Field(1.0, ge=0.0, le=1.0, description="GAE lambda per merged trace step; every TraceRL value config ships 1.0.")
    lr: float = Field(1e-4, gt=0.0, description="AdamW learning rate of the value model.")
    clip: float = Field(0.2, gt=0.0, description="Clip range of the PPO value loss.")


# Defaults that follow from other fields, applied to the fields a config leaves unset
# (AlgorithmConfig._derive): GSPO clips a sequence ratio that stays within ~1e-3 of 1 and
# averages per sequence, so GRPO's token-scale range and token mean would not be GSPO.
GSPO_DEFAULTS = {"eps_low": 3e-4, "eps_high": 4e-4, "loss_norm": "sequence"}
GSPO_PROVENANCE = {
    "eps_low": "loss gspo: GSPO (Zheng et al., 2025, arXiv:2507.18071) clips the sequence ratio at 1 - 3e-4",
    "eps_high": "loss gspo: GSPO (arXiv:2507.18071) clips the sequence ratio at 1 + 4e-4",
    "loss_norm": "loss gspo: GSPO (arXiv:2507.18071) averages per sequence",
}
# The algorithm fields an estimator's preset (EstimatorUnit.config_defaults) or loss: gspo may
# fill when a config leaves them unset; the run's config.yaml names the source of each.
# OPTION_FIELDS are built-in estimators' options (EstimatorUnit.config_fields): only the unit that
# takes one gets its comment.
OPTION_FIELDS = ("shrink", "p_mask_prompt", "coupled_t_min", "coupled_t_max", "coupled_weighted", "coupled_full_mask_pass", "mc_samples", "quadrature")
PRESET_FIELDS = ("advantage", "zscore_std", "loss_norm", "eps_low", "eps_high", "beta", "redraw_masks", "epochs", *OPTION_FIELDS)


class AlgorithmConfig(_Section):
    estimator: str = Field(
        "trace", description="Likelihood estimator: trace (TraceRL, replays the step map), one_step (diffu-GRPO), coupled (DiffuCoder), "
        "mc_elbo (quadrature ELBO per token), gdpo (GDPO: quadrature ELBO, sequence ratio, its own objective), block_random; wd1 and spg (ratio-free, each with its own objective); espo (sequence ELBO ratio, its own objective and KL); vrpo (LLaDA 1.5: DPO on ELBOs, offline from preference pairs, no rollouts or rewards); or a plugin unit by import path, "
        "'package.module:UNIT' (an algorithms.estimators.EstimatorUnit)."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Options of the estimator beyond the fields below (a plugin estimator's own); "
        "an option the estimator does not take is an error that lists the ones it does."
    )
    shrink: int = Field(1, ge=1, description="TraceRL shrinkage s: consecutive decoding steps merged into one training step.")
    p_mask_prompt: float = Field(0.15, ge=0.0, le=1.0, description="one_step: probability of masking each prompt token (d1 uses 0.15).")
    redraw_masks: bool = Field(
        False, description="Random estimators: draw new masks at every inner epoch (old and reference log-probs are then taken for every "
        "epoch's masks before the first update) instead of reusing one draw. Default: the estimator's preset, true for one_step and coupled "
        "(d1's and DiffuCoder's random_masking draw a mask seed per inner iteration), false otherwise; trace is deterministic and ignores it."
    )
    coupled_weighted: bool = Field(
        True, description="coupled: DiffuCoder's ELBO weights, 1/t on the pass masking M and 1/(1 - t) on its complement (false: the plain per-token log-prob)."
    )
    coupled_full_mask_pass: bool = Field(
        True, description="coupled: add DiffuCoder's fully masked pass and average it with the coupled estimate (3 forward passes instead of 2)."
    )
    coupled_t_min: float = Field(0.2, gt=0.0, lt=1.0, description="coupled: lower bound of the masking ratio t ~ U[t_min, t_max] (DiffuCoder: 0.2).")
    coupled_t_max: float = Field(0.8, gt=0.0, lt=1.0, description="coupled: upper bound of the masking ratio t (DiffuCoder: 0.8).")
    mc_samples: int = Field(4, ge=1, description="mc_elbo: Monte Carlo samples (or quadrature nodes) of the masking level t; vrpo: the ELBO budget n per response (n timesteps, one mask each; 8 in LLaDA 1.5).")
    quadrature: bool = Field(False, description="mc_elbo: Gauss-Legendre nodes instead of random t (GDPO).")
    advantage: Literal["zscore", "mean", "loo", "ebpo"] = Field(
        "zscore", description="Group advantage: GRPO z-score, mean-centred (Dr. GRPO), leave-one-out, or ebpo (EBPO, arXiv:2602.05165: the group "
        "mean shrunk toward a global prior kept over the run, then standardised over the batch; the prior is saved in checkpoints). Default: each estimator's paper, "
        "zscore for trace (TraceRL), mean for one_step (d1's trainer: A = r - mean, the std only logged), loo for coupled (DiffuCoder, unscaled)."
    )
    zscore_std: Literal["sample", "population"] = Field(
        "population", description="Std of the group z-score (advantage: zscore, and value.reward: zscore): population divides by the "
        "group size G (TraceRL's dLLM-RL code), sample by G - 1 (Bessel's correction: torch's default std, as TRL's GRPO trainer, which d1 builds on). "
        "Default: each estimator's paper, population for trace and block_random (dLLM-RL), sample for the others."
    )
    drop_zero_std: bool = Field(False, description="Drop groups whose rewards are all equal (they carry no signal) before the update.")
    min_acc: float | None = Field(None, ge=0.0, le=1.0, description="Dynamic accuracy filter: drop groups whose mean reward is below this.")
    max_acc: float | None = Field(None, ge=0.0, le=1.0, description="Dynamic accuracy filter: drop groups whose mean reward is above this.")
    truncation: Literal["keep", "mask", "wrong"] = Field("keep", description="Responses cut at the length limit: keep their reward, mask them out of the loss, or score them as wrong.")
    loss: Literal["grpo", "gspo"] = Field(
        "grpo", description="grpo: token-level clipped ratio; gspo: sequence-level length-normalised ratio (pair with mc_elbo), which "
        "brings GSPO's own defaults for the fields left unset: eps_low 3e-4, eps_high 4e-4, loss_norm sequence."
    )
    eps_low: float = Field(0.2, ge=0.0, description="Lower clip of the importance ratio (1 - eps_low); default: the estimator's preset (0.5 for one_step and coupled, as d1 and DiffuCoder; 0.2 otherwise), or 3e-4 with loss: gspo.")
    eps_high: float = Field(
        0.2, ge=0.0, description="Upper clip of the importance ratio (1 + eps_high); default: the estimator's preset (0.5 for one_step and coupled; 0.2 otherwise; DAPO raises it to 0.28), or 4e-4 with loss: gspo."
    )
    beta: float = Field(0.0, ge=0.0, description="Weight of the k3 KL penalty to the initial policy; 0 skips the reference model. Default: the estimator's preset, "
        "0.04 for one_step (d1, whose reference is the initial policy), else 0 (dLLM-RL's and DiffuCoder's KL partners are not the initial policy).")
    loss_norm: Literal["token", "sequence", "constant", "pass"] = Field(
        "token", description="token: mean over all tokens of a minibatch (DAPO); sequence: per sequence, then over "
        "sequences (GRPO's original, GSPO's; the default with loss: gspo); constant: sum / norm_constant (Dr. GRPO); pass: per trace "
        "pass of each sample, then over (sample, pass) pairs (dLLM-RL's LLaDA/Dream/MMaDA TraceRL trainers; estimator trace only). "
        "Default: the estimator's preset, pass for trace, sequence for block_random (dLLM-RL), token for one_step and coupled (d1, DiffuCoder)."
    )
    norm_constant: float | None = Field(None, gt=0.0, description="loss_norm=constant: the divisor (e.g. max completion length x minibatch size).")
    lr: float = Field(1e-4, gt=0.0, description="AdamW learning rate (the peak, with a schedule).")
    adam_betas: tuple[float, float] = Field(
        (0.9, 0.999), description="AdamW (beta1, beta2); d1 and DiffuCoder train with (0.9, 0.99), dLLM-RL with torch's (0.9, 0.999)."
    )
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="Learning-rate schedule over the run's optimizer steps (train.steps x epochs x minibatches), after "
        "the warm-up: constant, or cosine down to min_lr_ratio x lr (transformers' cosine-with-min-lr schedule, as TRL runs it)."
    )
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="lr_schedule cosine: the final lr as a fraction of lr (DiffuCoder: 0.1).")
    warmup_steps: int = Field(0, ge=0, description="Optimizer steps of linear warm-up from 0 to lr (transformers' form: 0 at the first step).")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0.0, description="Max global gradient norm.")
    minibatches: int = Field(1, ge=1, description="Optimizer steps per rollout batch (the batch is split this many ways). Ignored "
        "by d_tree_rpo's per-parent schedule (on by default), which trains the tree's parent segments one after another.")
    epochs: int = Field(1, ge=1, description="Passes over each rollout batch (mu, d1's num_iterations); old log-probs are taken before the first. "
        "Default: the estimator's preset where the authors' config states it (12 for one_step and gdpo, 2 for coupled), else 1.")
    value: ValueConfig = Field(default_factory=ValueConfig, description="The diffusion value model (TraceRL + value).")

    def estimator_unit(self):
        """The `algorithms.estimators.EstimatorUnit` named by `estimator` (imported on first use:
        the config module itself does not need torch)."""
        from algorithms.estimators import get_estimator

        return get_estimator(self.estimator)

    def estimator_options(self) -> dict[str, Any]:
        """The estimator's keyword options: its fields of this config, then `options`."""
        unit = self.estimator_unit()
        opts = {option: getattr(self, name) for option, name in unit.config_fields.items()}
        opts.update(self.options)
        return opts

    def _derive(self, unit) -> None:
        """Fill the fields this config leaves unset with the defaults that follow from `loss` and
        `estimator` (each paper's own). Written past validate_assignment: the values are the
        fields' own types, and assigning would re-enter this validator."""
        for name, (value, _) in self.preset(unit).items():
            if name not in self.model_fields_set:
                self.__dict__[name] = value

    def preset(self, unit=None) -> dict[str, tuple[Any, str | None]]:
        """Each of PRESET_FIELDS -> (the value a config that leaves it unset gets, its source):
        `loss: gspo`'s own defaults first, then the estimator unit's paper defaults (with the
        unit's provenance line), else the field's own default (source None)."""
        unit = unit or self.estimator_unit()
        gspo = self.loss == "gspo"
        out = {}
        for name in PRESET_FIELDS:
            if gspo and name in GSPO_DEFAULTS:
                out[name] = (GSPO_DEFAULTS[name], GSPO_PROVENANCE[name])
            elif name in unit.config_defaults:
                source = unit.provenance.get(name)
                out[name] = (unit.config_defaults[name], f"{unit.name} preset" + (f": {source}" if source else ""))
            else:
                out[name] = (type(self).model_fields[name].default, None)
        return out

    @model_validator(mode="after")
    def _check(self) -> "AlgorithmConfig":
        try:
            unit = self.estimator_unit()
        except ValueError as exc:
            raise ValueError(f"algorithm.estimator: {exc}") from None
        try:
            unit.check_options(self.estimator_options())
        except ValueError as exc:
            raise ValueError(f"algorithm.options: {exc}") from None
        self._derive(unit)
        if unit.objective is not None and (self.loss != "grpo" or (self.beta > 0 and not unit.objective_kl)):
            raise ValueError(
                f"algorithm.{'loss' if self.loss != 'grpo' else 'beta'}: estimator {self.estimator!r} brings its own objective "
                f"({unit.objective.__module__}.{unit.objective.__name__}), which takes no algorithm.loss"
                + ("" if unit.objective_kl else " and no KL term") + "; remove algorithm.loss"
                + ("" if unit.objective_kl else " and set algorithm.beta: 0")
            )
        if self.loss_norm == "constant" and self.norm_constant is None:
            raise ValueError("algorithm.loss_norm is 'constant' but algorithm.norm_constant is not set")
        if self.loss_norm == "pass" and not unit.replays_trace:
            raise ValueError(
                f"algorithm.loss_norm: pass averages over TraceRL's replayed passes; estimator {self.estimator!r} does not replay "
                "the trace (use algorithm.estimator: trace)"
            )
        if self.value.enabled and not unit.replays_trace:
            raise ValueError(
                f"algorithm.value.enabled: values are read on the decoding trace, which estimator {self.estimator!r} does not "
                "replay (use algorithm.estimator: trace)"
            )
        if self.min_acc is not None and self.max_acc is not None and self.min_acc > self.max_acc:
            raise ValueError("algorithm.min_acc must be <= algorithm.max_acc")
        if self.coupled_t_min > self.coupled_t_max:
            raise ValueError("algorithm.coupled_t_min must be <= algorithm.coupled_t_max")
        # Inconsistent but possibly deliberate combinations: warn, as TRL does, rather than refuse.
        if self.loss == "gspo" and max(self.eps_low, self.eps_high) > 0.01:
            warnings.warn(
                f"algorithm.loss is gspo but the clip range is eps_low={self.eps_low}, eps_high={self.eps_high}: a sequence ratio "
                "(the geometric mean of token ratios) rarely leaves [0.99, 1.01], so this range almost never clips; GSPO uses "
                "3e-4 / 4e-4 (unset eps_low and eps_high to get them)",
                UserWarning,
                stacklevel=2,
            )
        if self.loss == "gspo" and self.loss_norm in ("token", "constant"):
            warnings.warn(
                f"algorithm.loss is gspo with loss_norm: {self.loss_norm}, which weights each sequence by its length; GSPO "
                "averages per sequence (loss_norm: sequence, the default with gspo)",
                UserWarning,
                stacklevel=2,
            )
        if self.loss == "grpo" and max(self.eps_low, self.eps_high) < 0.01:
            warnings.warn(
                f"algorithm.loss is grpo with a GSPO-scale clip range (eps_low={self.eps_low}, eps_high={self.eps_high}): "
                "token ratios leave that range at once, so nearly every token is clipped; did you mean loss: gspo?",
                UserWarning,
                stacklevel=2,
            )
        return self


class LearnerConfig(_Section):
    ranks: int = Field(1, ge=1, description="Data-parallel learner ranks (Ray actors in one torch.distributed group); each minibatch is split across them.")
    parallel: Literal["ddp", "fsdp2"] = Field(
        "ddp", description="ddp: every rank holds the whole model and gradients are averaged; fsdp2: parameters, gradients and "
        "optimizer state are sharded across ranks (models that do not fit one GPU)."
    )
    micro_batches: int = Field(1, ge=1, description="Gradient accumulation: each rank's share of a minibatch runs in this many forward/backward pieces per optimizer step.")
    bf16: bool = Field(False, description="Learner forward passes under bf16 autocast (weights and optimizer state stay fp32).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations during the backward pass: less memory for more compute.")
    attention: Literal["sdpa", "flex"] = Field(
        "sdpa", description="Attention kernel of the learner's forwards. sdpa: the packed pattern as a dense additive mask. "
        "flex: torch flex attention with a BlockMask of the pattern, built without a dense mask, whose empty tiles the kernel "
        "skips (GPU only: torch has no flex attention backward on CPU)."
    )
    backward_per_pass: bool = Field(
        True, description="On one rank, take the backward after each forward pass of the estimate (trace, coupled, mc_elbo) and of "
        "the value model, so only one pass's activations are alive at a time (same gradients; off: one backward after all passes). "
        "Except for trace with loss grpo, each pass's share needs every pass's log-probs, so the passes first run once without a graph "
        "(one more forward per pass)."
    )
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="torch.distributed backend; auto: nccl on GPU, gloo on CPU.")


class ClusterConfig(_Section):
    address: str | None = Field(
        None, description="Ray cluster to join: none starts Ray on this machine; 'auto' joins the cluster `ray start` made here; "
        "'HOST:6379' or 'ray://HOST:10001' a remote one (also `unmask train --address`)."
    )
    placement: Literal["separate", "colocated"] = Field(
        "separate", description="separate: one placement-group bundle per rollout worker and per learner rank; colocated: rollout "
        "worker i and learner rank i share bundle i, and the rollout side releases its memory during the update."
    )
    gpus_per_bundle: float = Field(0.0, ge=0.0, description="GPUs in each bundle (e.g. 1 on GPU nodes); 0 runs on CPU.")
    cpus_per_bundle: float | None = Field(None, gt=0.0, description="CPUs in each bundle; default: the cluster's CPUs shared evenly by the bundles.")
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field("PACK", description="Ray placement-group strategy across nodes.")


class EvalTableConfig(_Section):
    """A paper's evaluation table, as `unmask eval CKPT --config FILE` runs it (flags on the command line win)."""

    benchmarks: list[str] = Field(
        default_factory=list, description="Benchmarks of the table, in the `unmask eval -b` syntax (NAME[:PATH][,KEY=VALUE...]); empty: eval.benchmarks."
    )
    strategies: list[str] = Field(
        default_factory=list, description="Decoding strategies, one column each, in the --strategy syntax (e.g. 'threshold:0.9', 'static'); "
        "empty: sampling.strategy. Each starts from `sampling`'s settings."
    )
    samples: int = Field(1, ge=1, description="Samples per problem (pass@k and avg@k with k = samples); > 1 needs sampling.temperature > 0.")
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=0.0),
        description="Decoding the strategies start from (temperature, top_k, block_length, steps_per_block...); its max_new_tokens is every benchmark's budget.",
    )

    @model_validator(mode="after")
    def _check(self) -> "EvalTableConfig":
        from rollout.sampling import parse_strategy

        base = self.sampling.params(8)
        for spec in self.strategies:
            parse_strategy(spec, base)  # ValueError: names the spec and the allowed forms
        for b in self.benchmarks:
            _check_benchmark_spec(b)
        if self.samples > 1 and self.sampling.temperature == 0:
            raise ValueError(f"samples {self.samples} with temperature 0 gives {self.samples} identical samples; set sampling.temperature > 0")
        return self


def _check_benchmark_spec(spec: str) -> None:
    from rl.data import parse_benchmark
    from rl.data.presets import PRESETS

    name = parse_benchmark(spec).name
    if name not in PRESETS or name == "none":
        raise ValueError(f"benchmark {spec!r}: unknown name {name!r}; known: {', '.join(sorted(k for k in PRESETS if k != 'none'))}")


class EvalConfig(_Section):
    every: int = Field(0, ge=0, description="Score the held-out splits every N RL steps (0: only before and after training).")
    heldout_limit: int | None = Field(None, ge=1, description="Score at most the first N held-out problems of each source (faster evals; the summary says how many).")
    benchmarks: list[str] = Field(
        default_factory=list, description="Benchmarks scored with the same decoding whenever the held-out split is (before, every N "
        "steps, after), in the `unmask eval -b` syntax, e.g. 'gsm8k:data/gsm8k_test.jsonl,limit=200'; logged as eval/LABEL/pass@1."
    )
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=0.0), description="Decoding for held-out evaluation (greedy by default)."
    )
    table: EvalTableConfig | None = Field(
        None, description="The paper's evaluation table (benchmarks, strategies, samples, decoding) for `unmask eval CKPT --config FILE`; "
        "not run during training. None: `unmask eval --config` uses benchmarks and sampling above."
    )

    def table_settings(self) -> EvalTableConfig:
        """What `unmask eval --config` runs: `table`, or the in-training benchmarks and decoding."""
        if self.table is None:
            return EvalTableConfig(benchmarks=list(self.benchmarks), sampling=self.sampling)
        if not self.table.benchmarks:
            return self.table.model_copy(update={"benchmarks": list(self.benchmarks)})
        return self.table


class WandbConfig(_Section):
    mode: Literal["offline", "online", "disabled"] = Field("offline", description="wandb mode; offline writes under the run directory.")
    project: str = Field("unmask", description="wandb project.")


class TrainConfig(_Section):
    steps: int = Field(40, ge=1, description="RL steps (rollout + update) in the run.")
    seed: int = Field(0, description="Seed for data order, sampling and minibatch shuffling.")
    save_every: int = Field(10, ge=1, description="Write a resumable checkpoint every N steps (and at the end).")
    output_dir: str = Field("runs/quickstart", description="Run directory (config copy, metrics.jsonl, checkpoints, plots).")
    checkpoint_dir: str | None = Field(
        None, description="Where checkpoints go: a directory or an fsspec URL (s3://bucket/run, gs://...); default: RUN_DIR/checkpoints. "
        "The driver writes them (learner state travels through the Ray object store), so no shared filesystem is needed."
    )
    threads: int | None = Field(None, ge=1, description="torch threads per actor; default: all cores for the learner, cores / num_workers for each rollout worker.")


class RunConfig(_Section):
    """An RL run: `unmask train CONFIG`."""

    model: ModelConfig
    data: DataConfig = Field(description="Training data: sources with their prompts, rewards and held-out splits.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    rewards: list[RewardSpec] = Field(default_factory=list, description="Rewards for every source that lists none of its own and whose preset implies none.")
    scoring: ScoringConfig = Field(default_factory=ScoringConfig, description="How rewards are run.")
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig, description="Learner ranks and memory/speed settings.")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="Ray cluster and placement of rollout workers and learner ranks.")
    eval: EvalConfig = Field(default_factory=EvalConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    wandb: WandbConfig = Field(default_factory=WandbConfig)

    @model_validator(mode="after")
    def _check(self) -> "RunConfig":
        if self.rollout.sampling.strategy == "rcr":
            raise ValueError(
                "rollout.sampling.strategy: rcr re-masks committed tokens, but trajectory replay and the likelihood estimators "
                "assume every token is unmasked once (MDPO's own trainer samples with rcr off); use rcr in eval.sampling, "
                "eval.table or `unmask eval/generate --strategy rcr`, and a non-remasking strategy (static, threshold, ...) here"
            )
        if self.rollout.sampling.temperature == 0 and self.rollout.samples_per_prompt > 1:
            raise ValueError(
                "rollout.sampling.temperature is 0 (greedy) but rollout.samples_per_prompt > 1: every sample of a "
                "group would be identical and get zero advantage; set a temperature > 0"
            )
        if self.rollout.overlap and (not self.algorithm.estimator_unit().replays_trace or self.algorithm.shrink != 1):
            raise ValueError(
                "rollout.overlap needs algorithm.estimator: trace with algorithm.shrink: 1 (the one-step-stale ratio uses the "
                "rollout's log-probs, which are the trace estimator's likelihoods only without shrinkage)"
            )
        if self.learner.attention == "flex" and self.cluster.gpus_per_bundle == 0:
            raise ValueError("learner.attention: flex needs a GPU learner (cluster.gpus_per_bundle > 0): torch has no flex attention backward on CPU; use sdpa")
        if self.rollout.overlap and self.cluster.placement == "colocated":
            raise ValueError("rollout.overlap needs cluster.placement: separate (colocated rollout workers give their memory to the learner during the update)")
        # The decoding the estimator's paper trains on (JustGRPO: one token per step, left to right),
        # where the config leaves it unset; written past validate_assignment, as AlgorithmConfig._derive.
        for name, value in self.algorithm.estimator_unit().rollout_sampling.items():
            if name not in self.rollout.sampling.model_fields_set:
                self.rollout.sampling.__dict__[name] = value
        if self.eval.sampling.tree is not None:
            raise ValueError("eval.sampling.tree: evaluation decodes one sample per problem; a tree is a training rollout (rollout.sampling.tree)")
        if self.rollout.sampling.tree is not None:  # a tree rollout: each prompt's samples are its leaves
            n, bf, s = self.rollout.sampling.tree
            leaves = n * bf ** (s - 1)  # rollout.tree.tree_leaves (this module imports no torch)
            if "samples_per_prompt" not in self.rollout.model_fields_set:
                self.rollout.__dict__["samples_per_prompt"] = leaves
            elif self.rollout.samples_per_prompt != leaves:
                raise ValueError(f"rollout.samples_per_prompt is {self.rollout.samples_per_prompt}, but rollout.sampling.tree "
                                 f"{tuple(self.rollout.sampling.tree)} has {leaves} leaves per prompt; set it to {leaves} or leave it unset")
            if self.rollout.prompts_per_step % self.rollout.num_workers:
                raise ValueError(f"a tree rollout decodes each prompt's tree on one worker: rollout.prompts_per_step "
                                 f"({self.rollout.prompts_per_step}) must be a multiple of rollout.num_workers ({self.rollout.num_workers})")
            if self.rollout.overlap:
                raise ValueError("rollout.sampling.tree does not run with rollout.overlap")
            unit = self.algorithm.estimator_unit()
            segments = unit.segment_count(unit.check_options(self.algorithm.estimator_options()), tuple(self.rollout.sampling.tree))
            if segments is not None and "minibatches" in self.algorithm.model_fields_set and self.algorithm.minibatches != 1:
                # a shared base config's minibatches (configs/quickstart_full.yaml) is deliberate for other units: warn, not refuse
                warnings.warn(f"algorithm.minibatches ({self.algorithm.minibatches}) is ignored: estimator {unit.name!r} trains the tree's "
                              f"{segments} parent segments one after another (each for algorithm.epochs optimizer steps); set "
                              "algorithm.options: {per_parent_schedule: false} for epochs x minibatches over all edge rows",
                              UserWarning, stacklevel=2)  # fmt: skip
        return self


class ArchConfig(_Section):
    family: Family = Field("block", description="Architecture family of a fresh tiny model: block (Qwen3), llada (Llama), dream (Qwen2).")
    hidden_size: int = Field(128, ge=8, description="Transformer width.")
    num_layers: int = Field(4, ge=1, description="Transformer layers.")
    num_heads: int = Field(4, ge=1, description="Attention heads.")
    num_kv_heads: int = Field(2, ge=1, description="Key/value heads (GQA).")
    intermediate_size: int = Field(512, ge=8, description="MLP width.")
    block_size: int = Field(4, ge=1, description="Tokens per diffusion block (block family only).")


class TokenizerConfig(_Section):
    """The tokenizer of a fresh tiny model (ignored with `init`, which brings its own)."""

    kind: Literal["char", "bpe"] = Field("char", description="char: one token per character (synthetic tasks); bpe: byte-level BPE trained on the data, with a ChatML chat template and <|MASK|>.")
    path: str | None = Field(None, description="Use this saved tokenizer instead (a directory with tokenizer.json); it needs a mask token.")
    vocab_size: int = Field(512, ge=260, description="bpe: vocabulary size (256 bytes + merges + 4 special tokens).")
    chat_template: bool = Field(True, description="bpe: give the tokenizer a ChatML chat template (prompts are then wrapped in it).")


class SFTConfig(_Section):
    """Supervised training of a diffusion LM (or an AR baseline) on prompt/response data: `unmask sft CONFIG`."""

    objective: Literal["diffusion", "ar"] = Field(
        "diffusion", description="diffusion: masked-token loss on response tokens under the family's attention (block diffusion for block models, random masking for full attention); ar: next-token loss (an autoregressive baseline on the same backbone)."
    )
    init: str | None = Field(None, description="Checkpoint to start from (a hub-layout SDAR/TraDo, Dream or LLaDA directory converts on load); None builds a fresh tiny model from `arch` and `tokenizer`.")
    trust_remote_code: bool = Field(False, description="Run the `init` checkpoint's own modeling code (other architectures).")
    arch: ArchConfig = Field(default_factory=ArchConfig, description="Architecture of a fresh tiny model.")
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig, description="Tokenizer of a fresh tiny model.")
    data: DataConfig = Field(description="Training data (the same section as `unmask train`): each row needs a response (the preset's target, `response: COLUMN`, or a final assistant message).")
    steps: int = Field(1500, ge=1, description="Optimizer steps.")
    batch_size: int = Field(64, ge=1, description="Sequences per step.")
    lr: float = Field(1e-3, gt=0.0, description="AdamW learning rate (linear warmup over 5% of steps, then constant).")
    max_response_tokens: int | None = Field(None, ge=1, description="Full-attention models: the canvas length (default: the longest source budget); block models ignore it. Longer responses are cut (counted).")
    seed: int = Field(0, description="Seed for model init, data and masks.")
    eval_every: int = Field(250, ge=1, description="Held-out greedy accuracy every N steps (sources with a held-out split and a reward).")
    eval_size: int = Field(200, ge=1, description="Held-out problems per source per evaluation during SFT.")
    save_every: int | None = Field(None, ge=1, description="Write a resumable checkpoint (model, optimizer, scheduler, RNG) every N steps; `unmask sft --resume` continues from the last.")
    output_dir: str = Field("runs/sft", description="Where the final model (transformers format) is written.")
    threads: int | None = Field(None, ge=1, description="torch threads; default all cores.")


class ConfigError(ValueError):
    """A config file failed validation; the message names file, key and fix."""


def load_config(path: str | Path, overrides: list[str] | None = None, schema: type[BaseModel] = RunConfig):
    """Read a YAML config, apply `key.sub=value` overrides, and validate it.

    Raises ConfigError with one line per problem: `FILE: key.path: message`.
    """
    path = Path(path)
    data = _read_yaml(path)
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            if isinstance(node, list):  # data.sources.0.weight=2: a list item by index
                if not p.isdigit() or int(p) >= len(node):
                    raise ConfigError(f"override {item!r}: {p} is not an index of that list (it has {len(node)} items)")
                node = node[int(p)]
                continue
            node = node.setdefault(p, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        if isinstance(node, list):
            if not leaf.isdigit() or int(leaf) >= len(node):
                raise ConfigError(f"override {item!r}: {leaf} is not an index of that list (it has {len(node)} items)")
            node[int(leaf)] = yaml.safe_load(value)
        else:
            node[leaf] = yaml.safe_load(value)
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, path, schema, overrides)) from None


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a config file; a top-level `base: other.yaml` (relative to this file) is read first
    and this file's keys are merged over it, section by section."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: `base` chain loops back to itself")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    return _merge(_read_yaml(path.parent / base, seen + (path.resolve(),)), data)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _format_errors(err: ValidationError, path: Path, schema: type[BaseModel], overrides: list[str] | None = None) -> str:
    lines = [f"{path}: invalid config ({err.error_count()} problem{'s' if err.error_count() > 1 else ''})"]
    keys = [(tuple(item.partition("=")[0].split(".")), item) for item in overrides or []]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        parts = tuple(str(p) for p in e["loc"])
        # A problem at (or above) a key that --set wrote is that override's, not the file's.
        where = next((f"--set {item}" for key, item in reversed(keys) if parts and key[: len(parts)] == parts[: len(key)]), str(path))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            known = _fields_at(schema, e["loc"][:-1])
            close = difflib.get_close_matches(str(e["loc"][-1]), known, n=1)
            msg = "unknown key" + (f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known)}")
        elif "input" in e and e["type"] not in ("missing",) and not isinstance(e["input"], dict):
            msg += f" (got {e['input']!r})"
        lines.append(f"  {where}: {loc or '<top>'}: {msg}")
    return "\n".join(lines)


def _fields_at(schema: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    model = schema
    for part in loc:
        if isinstance(part, int):
            continue
        ann = model.model_fields[part].annotation
        args = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        elif args:
            model = args[0]
        else:
            return []
    return sorted(model.model_fields)


def estimators_help() -> str:
    """Every registered estimator (`algorithm.estimator`) with its paper, its options and the
    defaults it brings to the fields a config leaves unset, for `unmask config-help`."""
    import dataclasses

    from algorithms.estimators import ESTIMATORS

    out = ["algorithm.estimator: the registered estimators (a plugin: 'package.module:UNIT')"]
    for name, unit in sorted(ESTIMATORS.items()):
        options = ", ".join(_option_help(unit, f) for f in dataclasses.fields(unit.options)) or "none"
        out.append(f"  {name}: {unit.paper}\n    options: {options}")
        if unit.objective is not None:  # replaces algorithm.loss
            out.append(f"    objective: {unit.objective.__module__}.{unit.objective.__name__}" + ("" if unit.needs_old_logp else " (ratio-free: no old-policy pass)") + (" (its own KL form: algorithm.beta)" if unit.objective_kl else ""))
        if unit.rollout_sampling:
            out.append("    rollout.sampling (when a config leaves it unset): " + ", ".join(f"{k}={_yaml_scalar(v)}" for k, v in unit.rollout_sampling.items()))
        if not unit.config_defaults:
            out.append("    preset: none (the fields' own defaults)")
            continue
        out.append("    preset (algorithm.<field> when a config leaves it unset; # where the value comes from):")
        for key, value in unit.config_defaults.items():
            source = unit.provenance.get(key)
            out.append(f"      {key}: {_yaml_scalar(value)}" + (f"  # {source}" if source else ""))
    return "\n".join(out)


def _option_help(unit, option) -> str:
    """`name=default` of one estimator option; one a config field sets defaults to that field's
    preset, else the field's default (coupled's weighted: True), and names the field."""
    field_name = unit.config_fields.get(option.name)
    if field_name is None:
        return f"{option.name}={option.default!r}"
    value = unit.config_defaults.get(field_name, AlgorithmConfig.model_fields[field_name].default)
    return f"{option.name}={value!r} (algorithm.{field_name})"


def _yaml_scalar(value: Any) -> str:
    """`value` as YAML writes it on one line (true, 0.2, mean)."""
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def config_yaml(data: dict, algorithm: AlgorithmConfig) -> str:
    """The run's config as YAML (`data`: its model_dump, sources resolved), each preset field of
    `algorithm:` with a trailing comment: where its value comes from (the estimator's paper, with
    the authors' file, or loss: gspo), `set in your config` where the config chose another value,
    or `unmask default` where no preset gives one (another estimator's options get none).
    Comments only: `load_config` reads it back to the same config."""
    unit = algorithm.estimator_unit()
    preset = {k: v for k, v in algorithm.preset(unit).items() if k not in OPTION_FIELDS or k in unit.config_fields.values()}
    lines, inside = [], False
    for line in yaml.safe_dump(data, sort_keys=False).splitlines():
        if not line.startswith(" "):
            inside = line == "algorithm:"
        key, sep, _ = line[2:].partition(":")
        if inside and line.startswith("  ") and not line.startswith("   ") and sep and key in preset:
            value, source = preset[key]
            if getattr(algorithm, key) != value:
                note = "set in your config" + (f" ({source.split(':')[0]}: {_yaml_scalar(value)})" if source else "")
            else:
                note = source or "unmask default"
            line = f"{line}  # {note}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def config_help(schema: type[BaseModel] = RunConfig, prefix: str = "", defaults: BaseModel | None = None) -> str:
    """Every config key with its default and description, for `unmask config-help`.

    Defaults are the values a config that leaves the key out gets: a section's own default
    instance wins over its class (eval.sampling's temperature is 0.0, rollout.sampling's 1.0),
    and a default_factory is called (a list shows as [], not PydanticUndefined)."""
    out = []
    for name, f in schema.model_fields.items():
        ann = f.annotation
        if defaults is not None:
            required, value = False, getattr(defaults, name)
        else:
            required = f.is_required()
            value = None if required else f.get_default(call_default_factory=True)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.append(config_help(ann, prefix + name + ".", value if isinstance(value, BaseModel) else None))
            continue
        item = getattr(ann, "__args__", (None,))[0] if getattr(ann, "__origin__", None) is list else None
        if isinstance(item, type) and issubclass(item, BaseModel) and item is not RewardSpec:
            out.append(f"{prefix}{name} = a list; each item:\n    {f.description or ''}")
            out.append(config_help(item, prefix + name + "[]."))
            continue
        out.append(f"{prefix}{name} = {'required' if required else repr(value)}\n    {f.description or ''}")
    return "\n".join(out)
