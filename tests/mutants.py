"""Mutation check: one-line faults in the core modules that the suite must catch.

Each `Mutant` is a deliberate one-line bug (a swapped clip, a mask off by one step, a
checkpoint field not restored, a judge that trusts the program) and the tests expected to
catch it. `run_mutants` applies each to a scratch copy of the repository, one at a time,
runs those tests there, and records whether they failed. A mutant the suite does not catch
is a claim no test guards: fix the test, not the list.

    python tests/mutants.py                  # every mutant: a table, exit 1 if any survived
    python tests/mutants.py -k eps_swap      # the mutants whose name contains eps_swap
    python tests/mutants.py --json out.json  # the table as JSON too

tests/test_mutants.py runs the same check under the `slow` marker (CI's slow stage).

Each run is a fork of one server process that imported torch, transformers and peft once (never
the project's modules, which each run imports fresh from the mutated copy): a mutant then costs its
tests' own time, ~1-2 s for most, instead of ~15 s of interpreter start-up and imports on 2 cores.
UNMASK_MUTANTS_FORK=0 runs each in a fresh interpreter instead; the verdicts must not differ.

Adding an algorithm, a model family or a reward comes with its mutants here: the lines that
would be wrong in a way a reader would not notice (a sign, an index, a default, a mask).

Written by hand rather than with mutmut: mutmut mutates every line it can and runs the whole
suite per mutant (hours on 2 cores), while a targeted list of the faults that matter, each run
against the few tests that guard it, takes minutes and says which test guards which line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    """One deliberate fault: replace `original` by `replacement` in `path` (repo-relative).

    `original` must occur exactly once in the file, or `nth` (0-based) picks the occurrence
    when the same text appears several times; `tests` are pytest node ids (or files) that
    must fail with the fault in place.
    """

    name: str
    path: str
    original: str
    replacement: str
    tests: tuple[str, ...]
    why: str = ""
    nth: int | None = None


@dataclass
class Outcome:
    """What one mutant's run gave: caught (a test failed), survived (all passed) or error."""

    name: str
    status: str  # "caught" | "survived" | "error"
    caught_by: str  # first failing test, or why the run errored
    seconds: float


def M(name, path, original, replacement, tests, why="", nth=None) -> Mutant:
    return Mutant(name, path, original, replacement, tuple(tests), why, nth)


MUTANTS: list[Mutant] = [
    # ---- losses (algorithms/losses.py) ----
    M(
        "eps_swap_policy_loss",
        "algorithms/losses.py",
        "torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)",
        "torch.clamp(ratio, 1.0 - eps_high, 1.0 + eps_low)",
        ["tests/test_advantages_losses.py"],
        "the shared clip range's two sides exchanged (PPO/GRPO, GSPO and the units' objectives; visible with eps_low != eps_high)",
    ),
    M(
        "ppo_min_for_max",
        "algorithms/losses.py",
        "    return torch.maximum(unclipped, clipped), clipped > unclipped",
        "    return torch.minimum(unclipped, clipped), clipped > unclipped",
        ["tests/test_advantages_losses.py", "tests/test_cj_grpo.py", "tests/test_mdpo.py", "tests/test_d_tree_rpo.py"],
        "the pessimistic PPO bound turned optimistic",
    ),
    M(
        "k3_missing_minus_one",
        "algorithms/losses.py",
        "return torch.exp(d) - d - 1",
        "return torch.exp(d) - d",
        ["tests/test_advantages_losses.py"],
        "k3 KL without its -1 (a constant offset: the gradient is unchanged, the logged kl is not)",
    ),
    M(
        "log_ratio_unclamped",
        "algorithms/losses.py",
        "return (a - b).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)",
        "return a - b",
        ["tests/test_paper_fidelity.py::test_log_ratio_is_clamped_in_the_ratio_and_in_k3"],
        "the [-10, 10] clamp before exp dropped",
    ),
    M(
        "sequence_norm_by_tokens",
        "algorithms/losses.py",
        "return per_seq.sum() / max(totals.sequences, 1.0)",
        "return per_seq.sum() / max(totals.tokens, 1.0)",
        ["tests/test_advantages_losses.py"],
        'norm "sequence" dividing by the token count',
    ),
    M(
        "pass_norm_sum_not_mean",
        "algorithms/losses.py",
        "per_pass = num / cnt.clamp(min=1)",
        "per_pass = num",
        ["tests/test_paper_fidelity.py::test_pass_norm_averages_within_each_trace_pass_then_over_passes"],
        'norm "pass" summing each pass instead of averaging it',
    ),
    # ---- advantages (algorithms/advantages.py) ----
    M(
        "zscore_population_for_sample",
        "algorithms/advantages.py",
        'dof = count - 1 if std == "sample" else count',
        "dof = count",
        ["tests/test_advantages_losses.py", "tests/test_paper_fidelity.py::test_group_zscore_population_or_bessel_std"],
        "the sample std (Bessel) replaced by the population std",
    ),
    M(
        "loo_includes_self",
        "algorithms/advantages.py",
        "rewards - (total[inv] - rewards) / others",
        "rewards - total[inv] / count[inv]",
        ["tests/test_estimator_units.py::test_each_presets_advantages_equal_its_papers_formula_by_hand"],
        "leave-one-out baseline including the sample itself (RLOO becomes mean-only)",
    ),
    # ---- value model and GAE (algorithms/value.py) ----
    M(
        "tracerl_value_form_is_step_form",
        "algorithms/value.py",
        "return _per_row_gae(token_rewards, token_values, step_map, gamma, lam, per_token=True)",
        "return _per_row_gae(token_rewards, token_values, step_map, gamma, lam, per_token=False)",
        ["tests/test_value.py"],
        "TraceRL's per-token value form replaced by the step form",
    ),
    M(
        "gae_drops_lambda",
        "algorithms/value.py",
        "next_a = r_step[j] + gamma * next_v - v_step[j] + gamma * lam * next_a",
        "next_a = r_step[j] + gamma * next_v - v_step[j] + gamma * next_a",
        ["tests/test_value.py"],
        "GAE's lambda ignored",
    ),
    M(
        "value_loss_unclipped",
        "algorithms/value.py",
        "loss = 0.5 * (torch.maximum(err, err_clip) * m).sum() / n",
        "loss = 0.5 * (err * m).sum() / n",
        ["tests/test_value.py"],
        "the clipped PPO value loss losing its clip",
    ),
    M(
        "terminal_reward_on_leftmost",
        "algorithms/value.py",
        "rightmost = torch.where(in_last, cols, -1).max(dim=1).values",
        "rightmost = torch.where(in_last, cols, 10**9).min(dim=1).values.clamp(max=step_map.shape[1] - 1)",
        ["tests/test_value.py"],
        "the terminal reward placed on the last step's leftmost token",
    ),
    # ---- TraceRL passes and masks (algorithms/trace.py, packing.py) ----
    M(
        "trace_scored_token_visible",
        "algorithms/trace.py",
        "[[q >= k for q in passes[i]] for i in rows]",
        "[[q > k for q in passes[i]] for i in rows]",
        ["tests/test_logprobs.py::test_estimators_score_only_their_rows_and_keep_their_values"],
        "a replayed pass that leaves the tokens it scores unmasked",
    ),
    M(
        "trace_ignores_shrink",
        "algorithms/trace.py",
        "return [rank[b][s] // shrink for b, s in zip(block_of, step_map)]",
        "return [rank[b][s] for b, s in zip(block_of, step_map)]",
        ["tests/test_algorithms.py::test_trace_pass_index_groups_steps_within_blocks"],
        "shrinkage ignored: one pass per step",
    ),
    M(
        "loss_stops_before_eos",
        "rollout/trajectory.py",
        "return ids.index(eos_id) + 1 if eos_id is not None and eos_id in ids else len(ids)",
        "return ids.index(eos_id) if eos_id is not None and eos_id in ids else len(ids)",
        ["rollout/trajectory.py", "algorithms/estimators.py"],
        "the first EOS itself left out of the loss",
    ),
    # ---- estimators and packing (algorithms/estimators.py, packing.py) ----
    M(
        "coupled_same_mask_twice",
        "algorithms/estimators.py",
        "second = [[not m for m in row] for row in first]",
        "second = first",
        ["tests/test_estimators.py::test_coupled_scores_every_token_exactly_once"],
        "coupled-GRPO's second pass masking the same tokens instead of the complement",
    ),
    M(
        "packing_grid_shift",
        "algorithms/packing.py",
        "start = (plen // block_size) * block_size  # first block with response tokens",
        "start = plen  # first block with response tokens",
        ["tests/test_logprobs.py::test_estimators_score_only_their_rows_and_keep_their_values"],
        "the noisy copy starting at the prompt's end instead of its block boundary (the grid shifts)",
    ),
    M(
        "trace_attention_from_block_size",
        "algorithms/trace.py",
        "full = is_full_attention(block_size, full_attention)",
        "full = block_size is None",
        ["tests/test_family_traits.py::test_pure_functions_follow_full_attention_not_the_block_size"],
        "TraceRL's pass grouping reading full attention off `block_size is None` instead of the family's traits",
        nth=0,
    ),
    M(
        "packing_attention_from_block_size",
        "algorithms/packing.py",
        "full = is_full_attention(block_size, full_attention)",
        "full = block_size is None",
        ["tests/test_family_traits.py::test_a_full_attention_family_with_a_block_size_is_treated_as_full_attention"],
        "a full-attention family with a block size packed as block diffusion (a clean copy, a block mask)",
    ),
    # ---- sampling and log-probs (rollout/) ----
    M(
        "mask_id_sampleable",
        "rollout/models.py",
        'bias[self.mask_id] = float("-inf")',
        "bias[self.mask_id] = 0.0",
        ["tests/test_models.py::test_sampling_logprobs_exclude_mask_and_apply_temperature"],
        "the mask id left in the sampling distribution",
    ),
    M(
        "learner_logprob_ignores_temperature",
        "rollout/logprobs.py",
        "z = z / temperature  # division",
        "z = z  # division",
        ["tests/test_logprobs.py::test_chunked_logprobs_entropy_and_gradients_equal_the_full_log_softmax_fp32"],
        "the learner's chunked head scoring under T = 1 while the rollout sampled at T",
    ),
    M(
        "step_map_off_by_one",
        "rollout/engine.py",
        "(state.first_step + state.taken)[:, None]",
        "(state.first_step + state.taken + 1)[:, None]",
        ["tests/test_engine.py::test_step_map_replays_greedy_decoding"],
        "each token recorded one step later than it was unmasked",
    ),
    # ---- decoding, caches and rollout faults (rollout/, rl/trainer.py) ----
    M(
        "adaptive_rule_off_by_one",
        "rollout/engine.py",
        "commit = rank < ((n + 1) * (1 - c) < p.factor)",
        "commit = rank < (n * (1 - c) < p.factor)",
        ["tests/test_decoders.py::test_adaptive_step_sizes_follow_the_factor_rule_and_the_bound"],
        "the adaptive decoder's (n + 1)(1 - c_n) < factor rule off by one",
    ),
    M(
        "dual_cache_block_start",
        "rollout/engine.py",
        "logits = self._encode(everything, cache, select(blk_start))",
        "logits = self._encode(everything, cache, select(gen))",
        ["tests/test_families.py::test_prefix_and_dual_cache_stay_close_to_full_recompute"],
        "a cached block's first step read from the wrong columns",
    ),
    M(
        "kv_cache_stores_keys_as_values",
        "rollout/cache.py",
        "self._v[..., self.length : end, :] = value_states",
        "self._v[..., self.length : end, :] = key_states",
        ["tests/test_engine.py::test_kv_cache_drift_in_float32_is_bounded"],
        "the KV cache writing keys where values go",
    ),
    M(
        "dead_worker_redoes_too_few_prompts",
        "rl/actors.py",
        'chunks[w], job["seed"], job["params"]) for w in failed',
        'chunks[w][1:], job["seed"], job["params"]) for w in failed',
        ["tests/test_faults.py"],
        "a replaced rollout worker redoing only part of its dead predecessor's prompts",
    ),
    M(
        "config_budget_ignored",
        "rl/config.py",
        '"max_new_tokens": self.max_new_tokens or default_max_new_tokens}',
        '"max_new_tokens": default_max_new_tokens}',
        ["tests/test_sampling.py::test_the_config_section_hands_the_engine_its_settings"],
        "a config's sampling.max_new_tokens overridden by the task's budget on the way to the engine",
    ),
    M(
        "coupled_pass_count",
        "algorithms/estimators.py",
        "lambda trajs, o: 3 if o.full_mask_pass else 2",
        "lambda trajs, o: 2",
        ["tests/test_estimators.py::test_count_forward_passes_by_name"],
        "coupled's fully masked pass not counted",
    ),
    # ---- checkpoint conversion maps (rollout/convert.py) ----
    M(
        "llada_gate_up_swapped",
        "rollout/convert.py",
        '"ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj"',
        '"ff_proj": "mlp.up_proj", "up_proj": "mlp.gate_proj"',
        ["tests/test_hub_checkpoints.py::test_hub_layout_loads_onto_the_stock_class_with_identical_logits"],
        "LLaDA's ff_proj/up_proj mapped onto the wrong Llama projections",
    ),
    # ---- estimator units and the one scoring path ----
    M(
        "trace_unit_sample_std",
        "algorithms/estimators.py",
        '_TRACERL_STD = ("population",',
        '_TRACERL_STD = ("sample",',
        ["tests/test_estimator_units.py"],
        "TraceRL's preset taking the sample std (its code divides by G)",
    ),
    M(
        "unit_options_unchecked",
        "algorithms/estimators.py",
        "unknown = sorted(set(options) - known)",
        "unknown = []",
        ["tests/test_estimator_units.py"],
        "a mistyped estimator option silently ignored",
    ),
    M(
        "plugin_estimator_not_found_from_cwd",
        "algorithms/estimators.py",
        "obj: Any = import_user_module(module)",
        'obj: Any = __import__("importlib").import_module(module)',
        ["tests/test_estimator_units.py::test_a_plugin_estimator_loads_from_the_directory_unmask_runs_in"],
        "a plugin estimator in the user's project not found by the console script (reward plugins are)",
    ),
    M(
        "training_scores_uncut_text",
        "rl/scoring.py",
        "texts = list(completions) if template is None else [template.cut(c) for c in completions]",
        "texts = list(completions)",
        ["tests/test_scoring_path.py"],
        "training rewards scored on the text past the template's stop strings (eval cuts it)",
    ),
    # ---- the code judge and the sandbox (rewards/) ----
    M(
        "judge_reraises_program_exception",
        "rewards/sandbox/_sandbox_child.py",
        'raise _call_failed("%s() raised %s" % (self._name, reply[2][:1000]))',
        'raise getattr(__import__("builtins"), reply[1], ProgramError)(reply[2])',
        ["tests/test_rewards_redteam.py"],
        "a program's exception re-raised in the judge as the class it named (StopIteration ends all(map(...)))",
    ),
    M(
        "judge_ignores_failed_calls",
        "rewards/sandbox/_sandbox_child.py",
        'if verdict == "ok" and _CALL_FAILURES:',
        'if verdict == "ok" and _CALL_FAILURES and False:',
        ["tests/test_rewards_redteam.py"],
        "a test that caught the program's failed call passes",
    ),
    M(
        "verdict_any_text_passes",
        "rewards/sandbox/_sandbox_child.py",
        '    elif text == "ok":',
        "    elif text:",
        ["tests/test_rewards_redteam.py", "tests/test_rewards_sandbox.py"],
        "the judge's verdict parse accepting any non-empty reply as a pass",
    ),
    M(
        "int_compared_with_tolerance",
        "rewards/code.py",
        "return type(got) in (int, float) and got == want  # int == float is exact in Python",
        "return type(got) in (int, float) and math.isclose(got, want, rel_tol=rel_tol)",
        ["tests/test_rewards_redteam.py"],
        "1000000000.0 passing for 1000000007",
    ),
    M(
        "result_size_unbounded",
        "rewards/code.py",
        "if len(raw) > case.result_cap:",
        "if False:",
        ["tests/test_rewards_redteam.py"],
        "program output parsed on the trusted side without a size bound",
    ),
    M(
        "warm_workdir_not_wiped",
        "rewards/sandbox/_sandbox_child.py",
        "        clean_ok = _wipe(base)",
        "        clean_ok = True",
        ["tests/test_rewards_redteam.py"],
        "a warm sandbox handing one sample's files to the next",
    ),
    M(
        "sweep_removes_live_dirs",
        "rewards/sandbox/launch.py",
        "            continue  # alive",
        "            pass",
        ["tests/test_rewards_sandbox.py"],
        "the work-dir sweep removing a running sandbox's dir (its PID is alive)",
    ),
    M(
        "sweep_ignores_age",
        "rewards/sandbox/launch.py",
        "            if now - entry.stat(follow_symlinks=False).st_mtime < older_than_s:",
        "            if False:",
        ["tests/test_rewards_sandbox.py"],
        "the sweep removing a fresh dir of a PID that looks dead (another pid namespace's sandbox in use)",
    ),
    M(
        "sweep_never_called",
        "rewards/sandbox/launch.py",
        "            sweep_stale_workdirs()",
        "            pass",
        ["tests/test_rewards_sandbox.py"],
        "SIGKILLed runs' work dirs never removed",
    ),
    M(
        "chmod_allowed",
        "rewards/sandbox/_sandbox_child.py",
        "90: _EPERM, 91: _EPERM, 268: _EPERM, 452: _EPERM,  # chmod, fchmod, fchmodat, fchmodat2",
        "268: _EPERM, 452: _EPERM,",
        ["tests/test_rewards_redteam.py", "tests/test_sandbox_uid.py"],
        "chmod/fchmod allowed: a uid-0 sample changes host file modes",
    ),
    # ---- optimizer schedule (rl/learner.py) ----
    M(
        "lr_schedule_ignores_the_run_step",
        "rl/learner.py",
        "            opt_step = self.step * self.steps_per_update() + i if segmented else (self.step * algo.epochs + epoch) * algo.minibatches + j",
        "            opt_step = self.step * self.steps_per_update() + i if segmented else epoch * algo.minibatches + j",
        ["tests/test_lr_schedule.py"],
        "the lr schedule restarting at every RL step (and after a resume)",
    ),
    M(
        "adam_betas_dropped",
        "rl/learner.py",
        "lr=algo.lr, betas=tuple(algo.adam_betas), weight_decay",
        "lr=algo.lr, weight_decay",
        ["tests/test_lr_schedule.py"],
        "a recipe's AdamW betas (d1, DiffuCoder: 0.99) silently torch's 0.999",
    ),
    M(
        "killed_runs_ray_not_reaped",
        "rl/trainer.py",
        "            ended = reap_stale_session(self.run_dir)",
        "            ended = 0",
        ["tests/test_e2e.py::test_a_driver_killed_alone_leaves_no_ray_processes_once_its_successor_starts"],
        "a kill -9'd run's Ray processes left running (with their memory and cores) under its successor",
    ),
    # ---- unmask plan (rl/plan.py) ----
    M(
        "plan_counts_parameters_as_activations",
        "rl/plan.py",
        "        self._seen: dict[int, torch.Tensor] = {id(p): p for p in params}  # kept alive, so no id is reused",
        "        self._seen: dict[int, torch.Tensor] = {}",
        ["tests/test_plan.py"],
        "weights the backward reads counted again as activations, once per row",
    ),
    M(
        "plan_attention_probabilities_counted",
        "rl/plan.py",
        "    torch.nn.functional.scaled_dot_product_attention = _fused_sdpa",
        "    torch.nn.functional.scaled_dot_product_attention = patch",
        ["tests/test_plan.py"],
        "the plan assuming the math attention kernel (an L x L matrix per head saved) instead of a fused one",
    ),
    M(
        "plan_passes_ignore_the_unit",
        "rl/plan.py",
        "    return max(1, unit.passes([planned_trajectory(cfg, shape, prompt, gen)], **cfg.algorithm.estimator_options()))",
        "    return 1",
        ["tests/test_plan.py::test_planned_passes_are_the_units_own_count_on_a_real_decode"],
        "the plan counting one forward pass per estimate whatever the unit takes (trace's steps, espo's 2 x num_mc)",
    ),
    M(
        "plan_steps_not_spread",
        "rl/plan.py",
        "        step_map += [base + i * k // n for i in range(n)]",
        "        step_map += [base + i for i in range(n)]",
        ["tests/test_plan.py::test_planned_passes_are_the_units_own_count_on_a_real_decode"],
        "the planned decode taking one token per step whatever steps_per_block says",
    ),
    M(
        "ablation_forwards_ignore_segments",
        "benchmarks/ablation.py",
        "    total = per_estimate * calls * (algo.minibatches if segments is None else segments)",
        "    total = per_estimate * calls * algo.minibatches",
        ["tests/test_d_tree_rpo.py::test_the_ablations_forward_count_is_the_learners"],
        "the ablation's fwd/update counting minibatches for d-TreeRPO, whose learner trains the tree's parent segments",
    ),
    M(
        "eval_sandbox_flag_dropped",
        "rl/evaluate.py",
        "            metrics, records = score_completions(bench, given, opts.samples, opts.score_timeout_s, sandbox=opts.sandbox)",
        "            metrics, records = score_completions(bench, given, opts.samples, opts.score_timeout_s)",
        ["tests/test_eval.py::test_sandbox_option_picks_the_code_sandbox_backend"],
        "`unmask eval --sandbox` accepted and ignored",
    ),
    M(
        "dtree_parents_per_step_ignored",
        "algorithms/d_tree_rpo.py",
        "    return [[i for seg in segments[a : a + parents_per_step] for i in seg] for a in range(0, len(segments), parents_per_step)]",
        "    return segments",
        ["tests/test_d_tree_rpo.py::test_parents_per_step_trains_k_shuffled_segments_together"],
        "d-TreeRPO's parents_per_step accepted and each segment still trained alone",
    ),
    M(
        "fsdp2_lora_resume_skips_the_adapter",
        "rl/learner_state.py",
        "        set_model_state_dict(self.lm.model, {n: state[k] for n, k in wanted.items()},",
        "        (lambda *a, **k: None)(self.lm.model, {n: state[k] for n, k in wanted.items()},",
        ["tests/test_distributed_learner.py::test_checkpoint_files_from_two_ranks_load_into_one"],
        "a LoRA run under fsdp2 resuming with the adapter it had, not the checkpoint's",
    ),
    M(
        "rcr_trajectories_trainable",
        "rl/batch.py",
        "        if any(t.remasked for t in trajs):  # the flag does not survive packing: refuse here, before any estimator",
        "        if False:",
        ["tests/test_rcr.py::test_a_learner_batch_refuses_remasked_trajectories"],
        "an rcr rollout packed for the learner, its last-commit step map replayed as an unmask-once trace",
    ),
    M(
        "plan_rows_are_the_samples",
        "rl/plan.py",
        "    if unit.planned_rows is None:",
        "    if True:",
        ["tests/test_d_tree_rpo.py::test_the_plan_sizes_the_learner_by_the_tree_edges_and_the_largest_chunk",
         "tests/test_mdpo.py::test_one_training_step_through_the_trainers_stages"],
        "unmask plan sizing d-TreeRPO's and MDPO's learner by the decoded samples, not their edge or step rows",
    ),
    M(
        "plan_fsdp_not_sharded",
        "rl/plan.py",
        '    shard = ranks if lc.parallel == "fsdp2" else 1',
        "    shard = 1",
        ["tests/test_plan.py"],
        "FSDP2's sharding of weights, gradients and AdamW state left out of the plan",
    ),
    M(
        "plan_rollout_working_set_left_out",
        "rl/plan.py",
        "        out[key] = forward",
        "        out[key] = 0",
        ["tests/test_plan.py::test_predicted_rollout_peak_matches_the_allocator"],
        "the rollout's largest forward (the prompt's prefill) missing beside the KV cache: under-predicts the decode's peak",
    ),
    M(
        "plan_experts_not_stood_in",
        "rl/plan.py",
        "    _shape_only_experts(model)",
        "    pass",
        ["tests/test_plan.py::test_a_mixture_of_experts_is_planned_and_matches_a_real_update"],
        "the experts' data-dependent loop run on meta tensors: mixture-of-experts models refused again",
    ),
    M(
        "sandbox_started_as_root",
        "rewards/sandbox/launch.py",
        "    if interp.uid != os.geteuid():  # root here",
        "    if False:  # root here",
        ["tests/test_sandbox_uid.py"],
        "programs running as uid 0 on a root host: only the filter between them and host metadata",
    ),
    M(
        "bwrap_binds_all_of_usr",
        "rewards/sandbox/interpreter.py",
        '_SYSTEM_PATHS = ("/lib",',
        '_SYSTEM_PATHS = ("/usr", "/lib",',
        ["tests/test_sandbox_uid.py"],
        "bubblewrap binding more of the host than programs need",
    ),
    M(
        "stage_taken_from_another_uid",
        "rewards/sandbox/interpreter.py",
        "    if st.st_uid != os.geteuid():",
        "    if False:",
        ["tests/test_sandbox_uid.py"],
        "a staged interpreter someone else planted, run as the sandbox",
    ),
    M(
        "retry_breaker_on_in_process_rewards",
        "rewards/registry.py",
        'stop = _breaker(workers) if entry.mode != "in_process" else None',
        "stop = _breaker(workers)",
        ["tests/test_rewards_redteam.py", "tests/test_rewards_score.py"],
        "a few raising samples stopping the per-sample retry of the code reward",
    ),
    M(
        "sandbox_choice_dropped",
        "rewards/registry.py",
        "    return functools.partial(fn, **{SANDBOX_KEYWORD: sandbox})",
        "    return fn",
        ["tests/test_sandbox_choice.py"],
        "scoring.sandbox not reaching the code reward (it falls back to UNMASK_SANDBOX or auto)",
    ),
    M(
        "pool_timeout_not_killed",
        "rewards/_pool.py",
        "    workers[k].stop(kill=True)",
        "    workers[k].conn.close()",
        ["tests/test_rewards_pool.py", "tests/test_rewards.py"],
        "a worker past its limit left running",
    ),
    M(
        "math_gold_only_candidate",
        "rewards/math.py",
        "candidates = [gold, wrapped] if _DELIMITED.search(gold) else [wrapped, gold]",
        "candidates = [gold]",
        ["tests/test_rewards_math.py"],
        "a bare gold answer not wrapped for math-verify",
    ),
    # ---- the learner's use of the value model and the KL (rl/learner.py, losses) ----
    M(
        "learner_always_step_form",
        "rl/learner.py",
        "gae = GAE_FORMS[algo.value.form]",
        'gae = GAE_FORMS["step"]',
        ["tests/test_worker_learner.py::test_default_value_form_gives_each_token_its_own_baseline"],
        "the learner ignoring value.form (TraceRL's per-token baseline lost)",
    ),
    M(
        "learner_drops_gae_advantages",
        "rl/learner.py",
        "s.adv, s.returns = gae(tok_r, s.old_values, steps, algo.value.gamma, algo.value.lam)",
        "_, s.returns = gae(tok_r, s.old_values, steps, algo.value.gamma, algo.value.lam)",
        ["tests/test_worker_learner.py::test_value_model_trains_and_checkpoints"],
        "the policy trained on group advantages although the value model is on",
    ),
    M(
        "process_rewards_misaligned",
        "rl/learner.py",
        "tok_r[:, :w] = token_rewards[piece.idx, :w].float().to(dev)",
        "tok_r[:, :w] = token_rewards[: len(piece.idx), :w].float().to(dev)",
        ["tests/test_worker_learner.py::test_value_model_uses_process_rewards_on_their_steps"],
        "a sample's step rewards read from another sample",
    ),
    M(
        "value_rewards_never_zscored",
        "rl/batch.py",
        'if algo.value.reward == "raw":',
        "if True:",
        ["tests/test_step_batch.py::test_advantages_stage_gives_the_value_model_its_outcome_rewards"],
        "the value model's GAE given raw rewards although value.reward is zscore (TraceRL's)",
    ),
    M(
        "learner_batch_rows_shifted",
        "rl/batch.py",
        "p, c = int(self.prompt_lens[i]), int(self.completion_lens[i])",
        "p, c = int(self.prompt_lens[i - 1]), int(self.completion_lens[i])",
        ["tests/test_step_batch.py::test_learner_batch_is_tensors_that_give_back_the_exact_trajectories"],
        "the learner rebuilding a row with another row's prompt length",
    ),
    M(
        "k3_direction_reversed",
        "algorithms/losses.py",
        "d = clamped_log_ratio(ref_logp, logp)",
        "d = clamped_log_ratio(logp, ref_logp)",
        ["tests/test_advantages_losses.py::test_sequence_loss_kl_and_registry"],
        "k3 of KL(ref || pi) instead of KL(pi || ref)",
    ),
    # ---- SFT (algorithms/sft.py, packing.py) ----
    M(
        "sft_loss_on_unmasked_tokens",
        "algorithms/sft.py",
        "loss_mask[i, : len(c)] = torch.tensor(m)",
        "loss_mask[i, : len(c)] = True",
        ["tests/test_sft_data.py::test_loss_is_on_response_tokens_only"],
        "diffusion SFT taking loss on response tokens it left visible",
    ),
    M(
        "noisy_copy_not_masked",
        "algorithms/packing.py",
        "noisy_c = [mask_id if mk else t for t, mk in zip(c, m)]",
        "noisy_c = list(c)",
        ["tests/test_sft_data.py::test_loss_is_on_response_tokens_only"],
        "the noisy copy keeping the tokens it should mask",
    ),
    # ---- checkpoint save / load (rl/learner_state.py) ----
    M(
        "policy_optimizer_not_restored",
        "rl/learner_state.py",
        'self._load_optimizer_state(self.optimizer, self.lm.model, state["optimizer"])',
        "None",
        ["tests/test_worker_learner.py::test_checkpoint_restores_step_optimizer_and_the_next_update"],
        "Learner.load leaving the policy's AdamW moments at zero (the next update differs from an uninterrupted run's)",
    ),
    M(
        "learner_step_not_restored",
        "rl/learner_state.py",
        'self.step = state["step"]',
        "self.step = 0",
        ["tests/test_worker_learner.py::test_checkpoint_restores_step_optimizer_and_the_next_update"],
        "Learner.load restarting the step count (its minibatch order and the trainer's resume step)",
    ),
    M(
        "value_optimizer_not_restored",
        "rl/learner_state.py",
        "self._load_optimizer_state(self.value_optimizer",
        "None and self._load_optimizer_state(self.value_optimizer",
        ["tests/test_worker_learner.py::test_value_model_trains_and_checkpoints"],
        "Learner.load skipping the value optimizer's state",
    ),
    M(
        "fsdp2_decoder_layers_not_units",
        "rl/learner_state.py",
        "for layer in layers:",
        "for layer in layers[:0]:",
        ["tests/test_distributed_learner.py::test_fsdp2_units_are_decoder_layers_and_expert_stacks_shard_by_expert"],
        "fsdp2 wrapping only the root: every layer, MoE experts included, gathered at once (gradients stay right, memory does not)",
    ),
    # ---- paper presets (algorithms/estimators.py units, rl/config.py) ----
    M(
        "one_step_preset_drops_beta",
        "algorithms/estimators.py",
        '            beta=(0.04, f"{_D1}slurm_scripts/train.yaml:68',
        '            _beta=(0.04, f"{_D1}slurm_scripts/train.yaml:68',
        ["tests/test_presets.py::test_each_unit_derives_its_papers_values_with_a_source_for_each"],
        "d1's preset losing its KL weight (beta 0.04 to the initial policy): one_step runs without a reference",
    ),
    M(
        "preset_comment_on_user_value",
        "rl/config.py",
        "            if getattr(algorithm, key) != value:",
        "            if False:",
        ["tests/test_presets.py::test_config_yaml_names_each_presets_source_and_loads_back_to_the_same_config"],
        "config.yaml crediting a paper for a value the user set",
    ),
    M(
        "epochs_not_a_preset_field",
        "rl/config.py",
        '"beta", "redraw_masks", "epochs", *OPTION_FIELDS)',
        '"beta", "redraw_masks", *OPTION_FIELDS)',
        ["tests/test_presets.py::test_each_unit_derives_its_papers_values_with_a_source_for_each"],
        "the papers' number of passes (num_iterations) never applied: every preset runs one epoch",
    ),
    # ---- wd1 (algorithms/wd1.py, the unit hook in rl/learner.py) ----
    M(
        "wd1_drops_negative_weights",
        "algorithms/wd1.py",
        "return (size[inv] * (softmax(a) - softmax(-a))).to(advantages.dtype)",
        "return (size[inv] * softmax(a)).to(advantages.dtype)",
        ["tests/test_wd1.py::test_weights_by_hand_per_group_in_any_row_order"],
        "wd1 without its negative-sample term softmax(-A) (the wll_d1_pos_only variant, not wd1)",
    ),
    M(
        "wd1_softmax_over_the_whole_batch",
        "algorithms/wd1.py",
        "    _, inv = torch.unique(groups, return_inverse=True)  # [B] dense group index",
        "    inv = torch.zeros_like(groups)",
        ["tests/test_wd1.py::test_weights_by_hand_per_group_in_any_row_order"],
        "one softmax over every sample of the step instead of one per group",
    ),
    M(
        "wd1_length_normalised",
        "algorithms/wd1.py",
        "    seq_logp = (logp * m).sum(1)  # [B]",
        "    seq_logp = (logp * m).sum(1) / m.sum(1).clamp(min=1)  # [B]",
        ["tests/test_wd1.py::test_loss_by_hand_is_the_weighted_sum_of_sequence_loglikelihoods_over_samples"],
        "a token mean per sequence where wd1 sums the sequence's log-likelihood",
    ),
    M(
        "wd1_old_pass_taken",
        "rl/learner.py",
        "                    if self.estimator.needs_old_logp:",
        "                    if True:",
        ["tests/test_wd1.py::test_a_learner_update_takes_one_pass_per_epoch_and_weighs_each_whole_group"],
        "the learner scoring an old policy a ratio-free unit never uses (a wasted forward per minibatch and draw)",
    ),
    M(
        "wd1_weights_per_minibatch",
        "rl/learner.py",
        "        if self.estimator.advantage_weights is not None:  # over the whole batch",
        "        if False:  # over the whole batch",
        ["tests/test_wd1.py::test_a_learner_update_takes_one_pass_per_epoch_and_weighs_each_whole_group"],
        "the learner handing a unit's objective raw advantages instead of its weights",
    ),
    M(
        "wd1_preset_p_mask_prompt",
        "algorithms/wd1.py",
        '            p_mask_prompt=(0.15, f"{_WD1}wd1/train.yaml:69',
        '            p_mask_prompt=(0.3, f"{_WD1}wd1/train.yaml:69',
        ["tests/test_wd1.py::test_a_one_line_config_gets_wd1s_preset_and_refuses_a_loss_or_kl"],
        "wd1's preset taking the config class default 0.3 instead of the 0.15 its runs use",
    ),
    # ---- SPG (algorithms/spg.py) ----
    M(
        "spg_bound_sign_swapped",
        "algorithms/spg.py",
        "    return torch.where(positive[:, None], elbo, negative).to(pass_logp.dtype)",
        "    return torch.where(positive[:, None], negative, elbo).to(pass_logp.dtype)",
        ["tests/test_spg.py::test_bounds_by_hand_elbo_for_positive_advantages_the_chosen_bound_for_the_rest"],
        "the upper bound raised on good answers and the lower bound pushed down on bad ones: no sandwich",
    ),
    M(
        "spg_eubo_without_ratio",
        "algorithms/spg.py",
        "torch.exp(eubo_beta * lp) / t.clamp(min=1e-8), zero).mean(0)",
        "torch.exp(eubo_beta * lp), zero).mean(0)",
        ["tests/test_spg.py::test_bounds_by_hand_elbo_for_positive_advantages_the_chosen_bound_for_the_rest"],
        "the EUBO's p^beta not divided by the pass's empirical masking ratio t_j",
    ),
    M(
        "spg_eubo_without_beta",
        "algorithms/spg.py",
        "    eubo = eubo / (hit.sum(1, keepdim=True).clamp(min=1) * eubo_beta)",
        "    eubo = eubo / hit.sum(1, keepdim=True).clamp(min=1)",
        ["tests/test_spg.py::test_bounds_by_hand_elbo_for_positive_advantages_the_chosen_bound_for_the_rest"],
        "the EUBO's log not divided by beta (only visible with beta != 1)",
    ),
    M(
        "spg_weights_without_length",
        "algorithms/spg.py",
        "    return (advantages.double() * ell / mean[inv].clamp(min=1)).to(advantages.dtype)",
        "    return advantages",
        ["tests/test_spg.py::test_weights_and_loss_by_hand"],
        "SPG's per-micro-batch length weighting (l_i / sum l) dropped: a plain mean over samples",
    ),
    M(
        "spg_masks_leave_later_blocks_clean",
        "algorithms/spg.py",
        "        comp = [c >= start + bl or c >= length for c in range(width)]",
        "        comp = [c >= length for c in range(width)]",
        ["tests/test_spg.py::test_block_masks_follow_spgs_rules"],
        "block_random's masks without the fully masked blocks after the picked one",
    ),
    M(
        "spg_block_causal_not_refused",
        "algorithms/spg.py",
        '        attention=frozenset({"full"}),',
        '        attention=frozenset({"full", "block_causal"}),',
        ["tests/test_spg.py::test_a_one_line_config_gets_spgs_preset_and_a_block_causal_model_is_refused"],
        "SPG accepted on a block-causal family, where a noisy block sees clean earlier blocks",
    ),
    # ---- VRPO (algorithms/vrpo.py, the pair loop rl/preference.py, pair rows in rl/data, the offline_pairs dispatch) ----
    M(
        "vrpo_margin_sign_swapped",
        "algorithms/vrpo.py",
        "    margin = chosen_reward - rejected_reward  # [B]",
        "    margin = rejected_reward - chosen_reward  # [B]",
        ["tests/test_vrpo.py::test_loss_by_hand_dpo_on_elbo_differences"],
        "DPO pushing the rejected response up and the chosen one down",
    ),
    M(
        "vrpo_reference_not_detached",
        "algorithms/vrpo.py",
        "    chosen_reward = beta * (policy_chosen - ref_chosen.detach())  # [B]",
        "    chosen_reward = beta * (policy_chosen - ref_chosen)  # [B]",
        ["tests/test_vrpo.py::test_loss_by_hand_dpo_on_elbo_differences"],
        "a gradient reaching the frozen reference's ELBO",
    ),
    M(
        "vrpo_count_weight_without_L_over_l",
        "algorithms/vrpo.py",
        "            weight[k].append([length / l_k / n if mk else 0.0 for mk in m])",
        "            weight[k].append([1.0 / n if mk else 0.0 for mk in m])",
        ["tests/test_vrpo.py::test_count_elbo_by_hand_masks_exactly_l_tokens_with_weight_L_over_l"],
        "LLaDA's exact-count ELBO without its L/l weight (a plain masked log-likelihood, biased)",
    ),
    M(
        "vrpo_reference_on_its_own_masks",
        "rl/preference.py",
        "            ref = self._reference_elbo(trajs, seed, piece_occ)",
        "            ref = self._reference_elbo(trajs, seed + 1, piece_occ)",
        ["tests/test_vrpo.py::test_responses_are_tokenised_after_the_runs_prompt_with_one_eos_and_cut_at_the_budget"],
        "no antithetic sampling: the reference drawing its own timesteps and masks (identical models no longer give margin 0)",
    ),
    M(
        "vrpo_response_without_eos",
        "rl/preference.py",
        '            ids = self.tokenizer(getattr(ex, role), add_special_tokens=False)["input_ids"] + [self.lm.eos_id]',
        '            ids = self.tokenizer(getattr(ex, role), add_special_tokens=False)["input_ids"]',
        ["tests/test_vrpo.py::test_responses_are_tokenised_after_the_runs_prompt_with_one_eos_and_cut_at_the_budget"],
        "a response scored without its EOS (the decision to stop is part of y)",
    ),
    M(
        "vrpo_pair_swapped",
        "rl/data/sources.py",
        "        return out[0], out[1]",
        "        return out[1], out[0]",
        ["tests/test_vrpo.py::test_pair_rows_in_the_common_formats"],
        "the data layer handing the rejected response as the chosen one",
    ),
    M(
        "vrpo_identical_pair_accepted",
        "rl/data/sources.py",
        "        if out[0] == out[1]:",
        "        if False:",
        ["tests/test_vrpo.py::test_bad_pair_rows_are_named_by_file_and_line"],
        "a pair with the same response on both sides trained on instead of reported",
    ),
    M(
        "vrpo_preset_beta",
        "algorithms/vrpo.py",
        '            beta=(0.2, f"{_PAPER}, as recalled',
        '            beta=(0.1, f"{_PAPER}, as recalled',
        ["tests/test_vrpo.py::test_a_one_line_config_gets_the_preset_and_the_pair_path"],
        "VRPO's preset taking DPO's usual 0.1 instead of the paper's 0.2",
    ),
    M(
        "vrpo_takes_the_rollout_path",
        "rl/trainer.py",
        "    if cfg.algorithm.estimator_unit().offline_pairs:",
        "    if False:",
        ["tests/test_vrpo.py::test_a_one_line_config_gets_the_preset_and_the_pair_path"],
        "an offline pair unit sent to the RL trainer (rollouts, rewards) instead of the pair loop",
    ),
    # ---- hub checkpoints as published (rollout/hub_tokenizer.py, checkpoint_checks.py, convert_llada2.py) ----
    M(
        "dream_decode_skips_every_added_special",
        "rollout/hub_tokenizer.py",
        'special=entry["content"] in skipped,',
        'special=entry.get("special", False),',
        ["tests/test_dream_tokenizer.py::test_dream_tokenizer_loads_without_remote_code_with_its_ids_and_special_tokens"],
        "decode(skip_special_tokens=True) dropping <|im_start|>/<|im_end|>, which DreamTokenizer keeps (it skips named specials only)",
    ),
    M(
        "missing_relative_path_sent_to_the_hub",
        "rollout/checkpoint_checks.py",
        "    if _looks_local(text):",
        "    if False:",
        ["tests/test_loader_errors.py::test_a_missing_relative_path_never_goes_to_the_hub"],
        "runs/no-such-model looked up on the hub (retries, network errors) instead of refused as a missing local path",
    ),
    M(
        "remote_code_habit_not_refused",
        "rollout/checkpoint_checks.py",
        "    if not trust_remote_code or family is None or family in REMOTE_CODE_ON_5 or int(",
        "    if True or family is None or family in REMOTE_CODE_ON_5 or int(",
        ["tests/test_loader_errors.py::test_trust_remote_code_on_a_converted_family_says_what_unmask_does_instead"],
        "trust_remote_code=True on SDAR/Dream/LLaDA(2) reaching their 4.4x code and failing with an unrelated error",
    ),
    M(
        "llada_moe_sent_down_the_llama_path",
        "rollout/convert.py",
        '    if any("moe" in a.lower() for a in archs) or cfg.get("num_experts"):',
        "    if False:",
        ["tests/test_loader_errors.py::test_llada_moe_is_refused_by_its_architecture"],
        "LLaDA-MoE (model_type llada) not refused by its architecture",
    ),
    M(
        "llada2_k_and_v_swapped",
        "rollout/convert_llada2.py",
        "            q, k, v = t.split([heads * hd, kv * hd, kv * hd], dim=0)",
        "            q, v, k = t.split([heads * hd, kv * hd, kv * hd], dim=0)",
        ["tests/test_moe_family.py::test_llada2_loads_onto_glm4moe_with_identical_logits_and_its_special_ids"],
        "the fused query_key_value split in the wrong head order",
    ),
    M(
        "llada2_gate_up_swapped",
        "rollout/convert_llada2.py",
        'torch.cat([stacked["gate"], stacked["up"]], dim=1)',
        'torch.cat([stacked["up"], stacked["gate"]], dim=1)',
        ["tests/test_moe_family.py::test_llada2_loads_onto_glm4moe_with_identical_logits_and_its_special_ids"],
        "Glm4Moe's stacked gate_up_proj built up-first (the SiLU on the wrong half)",
    ),
    M(
        "llada2_norm_topk_copied_from_the_flag",
        "rollout/convert_llada2.py",
        "        norm_topk_prob=k > 1,",
        '        norm_topk_prob=bool(cfg.get("norm_topk_prob", True)),',
        ["tests/test_moe_family.py::test_topk_renormalisation_follows_the_remote_code_not_the_flag"],
        "norm_topk_prob copied from config.json, which LLaDA2's router ignores (it renormalises whenever k > 1)",
    ),
    M(
        "llada2_block_size_4",
        "rollout/convert_llada2.py",
        "LLADA2_BLOCK_SIZE = 32",
        "LLADA2_BLOCK_SIZE = 4",
        ["tests/test_moe_family.py::test_llada2_loads_onto_glm4moe_with_identical_logits_and_its_special_ids"],
        "LLaDA2 decoded and trained on SDAR's block grid instead of its own blocks of 32",
    ),
    M(
        "llada2_missing_expert_accepted",
        "rollout/convert_llada2.py",
        "if sorted(got) != list(range(config.n_routed_experts)):",
        "if not got:",
        ["tests/test_moe_family.py::test_tensors_the_conversion_cannot_place_are_refused_naming_them"],
        "an incomplete download's missing experts surfacing as a KeyError instead of a refusal naming them",
    ),
    M(
        "llada2_bf16_router_accepted",
        "rollout/convert_llada2.py",
        'lambda v: v in (None, "fp32", "float32"), "the router runs in fp32"',
        'lambda v: True, "the router runs in fp32"',
        ["tests/test_moe_family.py::test_other_variants_are_refused_by_name"],
        "a bf16 router (other expert choices than Glm4Moe's fp32 sigmoid) loaded as if it were the fp32 one",
    ),
    # ---- SDAR-MoE on Qwen3-MoE (rollout/convert_sdar_moe.py) and MoE under LoRA (rollout/lora.py) ----
    M(
        "sdar_moe_gate_up_swapped",
        "rollout/convert_sdar_moe.py",
        'torch.cat([stacked["gate"], stacked["up"]], dim=1)',
        'torch.cat([stacked["up"], stacked["gate"]], dim=1)',
        ["tests/test_sdar_moe.py::test_sdar_moe_loads_onto_qwen3moe_with_identical_logits_and_its_special_ids"],
        "Qwen3-MoE's stacked gate_up_proj built up-first (the SiLU on the wrong half)",
    ),
    M(
        "sdar_moe_head_dim_from_hidden_size",
        "rollout/convert_sdar_moe.py",
        'head_dim=c.get("head_dim") or c["hidden_size"] // heads',
        'head_dim=c["hidden_size"] // heads',
        ["tests/test_sdar_moe.py::test_sdar_moe_loads_onto_qwen3moe_with_identical_logits_and_its_special_ids"],
        "head_dim taken as hidden_size / heads (64 for SDAR-30B-A3B, whose config says 128)",
    ),
    M(
        "sdar_moe_norm_topk_always_on",
        "rollout/convert_sdar_moe.py",
        'norm_topk_prob=bool(c["norm_topk_prob"])',
        "norm_topk_prob=True",
        ["tests/test_sdar_moe.py::test_sdar_moe_loads_onto_qwen3moe_with_identical_logits_and_its_special_ids", "tests/test_sdar_moe.py::test_family_from_model_type_or_architecture_and_no_aux_loss_in_the_converted_config"],
        "top-k routing weights renormalised where the checkpoint (or SDARMoeConfig's default) says not to",
    ),
    M(
        "sdar_moe_mlp_only_layers_dropped",
        "rollout/convert_sdar_moe.py",
        'mlp_only_layers=list(c.get("mlp_only_layers") or [])',
        "mlp_only_layers=[]",
        ["tests/test_sdar_moe.py::test_sdar_moe_loads_onto_qwen3moe_with_identical_logits_and_its_special_ids"],
        "the dense layers that mlp_only_layers names built as mixtures of experts",
    ),
    M(
        "sdar_moe_aux_loss_flag_copied",
        "rollout/convert_sdar_moe.py",
        "output_router_logits=False,  # no auxiliary balance loss in RL (module docstring)",
        'output_router_logits=bool(c.get("output_router_logits")),',
        ["tests/test_sdar_moe.py::test_family_from_model_type_or_architecture_and_no_aux_loss_in_the_converted_config"],
        "the converted config asks for the load-balancing loss the families' own RL does not use",
    ),
    M(
        "sdar_moe_shared_expert_accepted",
        "rollout/convert_sdar_moe.py",
        "    for key, why in _FOREIGN_MOE.items():",
        "    for key, why in {}.items():",
        ["tests/test_sdar_moe.py::test_variants_the_conversion_cannot_reproduce_are_refused_by_name"],
        "a shared expert / another router silently dropped instead of refused by name",
    ),
    M(
        "sdar_moe_missing_expert_accepted",
        "rollout/convert_sdar_moe.py",
        "if sorted(got) != list(range(n)):",
        "if not got:",
        ["tests/test_sdar_moe.py::test_expert_tensors_that_disagree_with_num_experts_are_refused_naming_what_was_found"],
        "missing experts (a KeyError) or ones past num_experts (silently dropped) instead of a refusal naming them",
    ),
    M(
        "sdar_moe_architecture_read_as_dense_sdar",
        "rollout/convert.py",
        '_ARCH_PREFIXES = {"sdarmoe": "sdar_moe", "sdar": "block",',
        '_ARCH_PREFIXES = {"sdar": "block",',
        ["tests/test_sdar_moe.py::test_family_from_model_type_or_architecture_and_no_aux_loss_in_the_converted_config"],
        "SDARMoeForCausalLM sent down the dense SDAR path by its architecture prefix",
    ),
    M(
        "sdar_moe_block_size_not_defaulted",
        "rollout/convert.py",
        'if family in ("block", "sdar_moe") and cfg.get("block_size") is None:',
        'if family == "block" and cfg.get("block_size") is None:',
        ["tests/test_sdar_moe.py::test_sdar_moe_loads_onto_qwen3moe_with_identical_logits_and_its_special_ids"],
        "SDAR-MoE's hub config has no block_size and gets no default of 4",
    ),
    M(
        "lora_moe_expert_check_inverted",
        "rollout/lora.py",
        "    if experts and any(t in EXPERT_PROJECTIONS for t in target_modules) and not adapted:",
        "    if experts and any(t in EXPERT_PROJECTIONS for t in target_modules):",
        ["tests/test_sdar_moe.py::test_lora_on_moe_adapts_experts_not_the_router_and_merges_exactly"],
        "the check that peft adapted a MoE's stacked experts fires on a peft that did",
    ),
    M(
        "lora_router_target_accepted",
        "rollout/lora.py",
        "    if moe_experts(model) and ROUTER in target_modules:",
        "    if False:",
        ["tests/test_sdar_moe.py::test_lora_refuses_the_router_as_a_target"],
        "the MoE router named as a LoRA target reaches peft instead of unmask's refusal",
    ),
    # ---- Fast-dLLM v2: block-causal with shifted logits (rollout/convert.py, engine.py, algorithms/packing.py) ----
    M(
        "fast_dllm_opener_read_from_the_noisy_copy",
        "algorithms/packing.py",
        "sel = [plen + j if logit_shift and (plen + j) % block_size == 0 else total + (plen - start) + j for j in range(len(c))]",
        "sel = [total + (plen - start) + j for j in range(len(c))]",
        ["tests/test_fast_dllm_v2.py::test_packing_reads_a_block_opener_from_the_clean_column_before_it",
         "tests/test_fast_dllm_v2.py::test_replay_scores_each_token_in_the_context_the_sampler_saw"],
        "a shifted head's block-opening token scored from the previous noisy block's end, not the clean column the sampler read",
    ),
    M(
        "fast_dllm_cache_drops_the_opener_column",
        "rollout/engine.py",
        "keep = max(blk_start - shift, 0)",
        "keep = blk_start",
        ["tests/test_fast_dllm_v2.py::test_replay_scores_each_token_in_the_context_the_sampler_saw"],
        "the cached sampler's later steps of a block predicting its first token from the block itself (the column before is cached, not re-encoded)",
    ),
    M(
        "fast_dllm_prefill_keeps_the_opener_column",
        "rollout/engine.py",
        "                cache.crop(-shift)",
        "                pass",
        ["tests/test_fast_dllm_v2.py::test_replay_scores_each_token_in_the_context_the_sampler_saw"],
        "the prompt's last column both cached and re-encoded: the first block attends to it twice",
    ),
    M(
        "fast_dllm_bd_size_ignored",
        "rollout/convert.py",
        'out.block_size = cfg.get("bd_size") or FAST_DLLM_V2_BLOCK_SIZE',
        "out.block_size = 4",
        ["tests/test_fast_dllm_v2.py::test_fast_dllm_v2_loads_onto_qwen2_with_shifted_block_causal_logits"],
        "Fast-dLLM v2 decoded on SDAR's blocks of 4 instead of its config's bd_size 32",
    ),
    M(
        "fast_dllm_logits_aligned",
        "rollout/families.py",
        '"fast_dllm_v2": FamilyTraits("fast_dllm_v2", Attention.BLOCK_CAUSAL, shift_logits=True, block_size=32)',
        '"fast_dllm_v2": FamilyTraits("fast_dllm_v2", Attention.BLOCK_CAUSAL, shift_logits=False, block_size=32)',
        ["tests/test_fast_dllm_v2.py::test_fast_dllm_v2_loads_onto_qwen2_with_shifted_block_causal_logits"],
        "Fast-dLLM v2's AR-style heads read at the token's own position",
    ),
    # ---- TDAR's bounded adaptive confidence decoding (rollout/engine.py `strategy: bacd`) ----
    M(
        "bacd_history_ignored",
        "rollout/engine.py",
        "                tau = torch.where(count > 0, total / count.clamp(min=1), tau)",
        "                pass",
        ["tests/test_decoders.py::test_bacd_thresholds_follow_the_blocks_own_history"],
        "tau always the best masked confidence: the mean of the block's commits never raises the bar",
    ),
    M(
        "bacd_unclamped",
        "rollout/engine.py",
        "            commit = conf >= tau.clamp(lower, upper)[:, None]",
        "            commit = conf >= tau[:, None]",
        ["tests/test_decoders.py::test_bacd_thresholds_follow_the_blocks_own_history"],
        "tau outside TDAR's [lower, upper] bounds",
    ),
    # ---- Stable-DiffCoder: Llama, block-causal, exact budget (rollout/convert.py, families.py, engine.py) ----
    M(
        "sdc_budget_rounded_to_the_block_grid",
        "rollout/engine.py",
        "        if self.lm.traits.budget_on_block_grid:\n            return",
        "        if True:\n            return",
        ["tests/test_stable_diffcoder.py::test_budget_is_exact_and_the_last_block_is_cut_there",
         "tests/test_stable_diffcoder.py::test_replay_equals_the_rollout_with_cut_blocks"],
        "Stable-DiffCoder decoded to the end of the block (SDAR's canvas): up to 3 tokens past max_new_tokens, the last block's context not its generate_block's",
    ),
    M(
        "sdc_cut_columns_left_in_attention",
        "rollout/engine.py",
        "                self.valid[i, end : int(self.col_end[i])] = False",
        "                pass",
        ["tests/test_stable_diffcoder.py::test_budget_is_exact_and_the_last_block_is_cut_there",
         "tests/test_stable_diffcoder.py::test_replay_equals_the_rollout_with_cut_blocks"],
        "the cut block's tokens attend to padding past the budget, which neither its own decoder nor the replay has",
    ),
    M(
        "sdc_eos_stop_past_the_budget",
        "rollout/engine.py",
        "                self.stop[hit] = self.col_end[hit].clamp(max=blk_end)",
        "                self.stop[hit] = blk_end",
        ["tests/test_stable_diffcoder.py::test_eos_in_a_cut_block_ends_the_completion_at_the_budget"],
        "an eos in a cut last block makes the completion run on into the padding past the budget",
    ),
    M(
        "sdc_auto_map_not_read",
        "rollout/convert.py",
        "    for target in (config.get(\"auto_map\") or {}).values():",
        "    for target in ():",
        ["tests/test_stable_diffcoder.py::test_told_apart_from_a_plain_llama_by_architecture_or_auto_map"],
        "the pre-5.3 Stable-DiffCoder config (architectures LlamaForCausalLM) loaded as a plain Llama",
    ),
    M(
        "sdc_attention_dropout_kept",
        "rollout/convert.py",
        "    out.attention_dropout = 0.0",
        "    pass",
        ["tests/test_stable_diffcoder.py::test_dropout_is_off_so_the_learner_replays_the_rollout"],
        "its attention_dropout 0.1 applied in the learner's train mode: every replayed log-prob a random draw",
    ),
    M(
        "sdc_remote_code_refused",
        "rollout/checkpoint_checks.py",
        "or family in REMOTE_CODE_ON_5 or",
        "or",
        ["tests/test_stable_diffcoder.py::test_its_own_code_is_allowed_where_it_runs_on_transformers_5"],
        "trust_remote_code refused for Stable-DiffCoder, whose own code targets transformers 5.3",
    ),
    # ---- ESPO (algorithms/espo.py, the group-rank and objective-KL hooks in rl/learner.py, rl/config.py) ----
    M(
        "espo_counts_not_stratified",
        "algorithms/espo.py",
        "            x = stratified_counts(k, length, rows)[row]",
        "            x = k",
        ["tests/test_espo.py::test_masks_count_exactly_and_stratify_each_cell_whatever_the_piece"],
        "every sample of a cell masks the same count k: ESPO spreads the cell's counts (L + 1) / b apart",
    ),
    M(
        "espo_complement_weight_one_minus_p",
        "algorithms/espo.py",
        "    w2 = (1.0 / (L / (L + 1) - p).clamp(min=1e-12)).to(lp2.dtype)",
        "    w2 = (1.0 / (1 - p).clamp(min=1e-12)).to(lp2.dtype)",
        ["tests/test_espo.py::test_elbo_terms_by_hand"],
        "the complement pass weighted 1 / (1 - p) where ESPO's code uses 1 / (L / (L + 1) - p)",
    ),
    M(
        "espo_passes_not_halved",
        "algorithms/espo.py",
        "    return (e1 + e2) / 2",
        "    return e1 + e2",
        ["tests/test_espo.py::test_elbo_terms_by_hand"],
        "the two coupled passes summed, not averaged (twice ESPO's ELBO)",
    ),
    M(
        "espo_complement_pass_masks_m",
        "algorithms/espo.py",
        "        lp2, ent2 = _score(lm, trajs, noisy2, temperature",
        "        lp2, ent2 = _score(lm, trajs, noisy1, temperature",
        ["tests/test_espo.py::test_the_estimate_scores_the_whole_canvas_with_a_complement_pass"],
        "the complement's tokens scored with M masked instead of ~M",
    ),
    M(
        "espo_mc_not_averaged",
        "algorithms/espo.py",
        "    logp = torch.where(keep, logp / num_mc, torch.zeros_like(logp))",
        "    logp = torch.where(keep, logp, torch.zeros_like(logp))",
        ["tests/test_espo.py::test_the_estimate_scores_the_whole_canvas_with_a_complement_pass"],
        "num_mc draws summed, not averaged",
    ),
    M(
        "espo_canvas_stops_at_eos",
        "algorithms/espo.py",
        "    if canvas:\n        lengths = [len(t.completion_ids) for t in trajs]",
        "    if False:\n        lengths = [len(t.completion_ids) for t in trajs]",
        ["tests/test_espo.py::test_the_estimate_scores_the_whole_canvas_with_a_complement_pass"],
        "the ELBO cut at the first EOS where ESPO's sums the whole canvas, filler included",
    ),
    M(
        "espo_ratio_not_per_length",
        "algorithms/espo.py",
        "    log_ratio = (((seq - (old_logp * m).sum(1)) / length.clamp(min=1))).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)",
        "    log_ratio = (seq - (old_logp * m).sum(1)).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)",
        ["tests/test_espo.py::test_loss_by_hand_sequence_ratio_per_canvas_length_and_k2_kl"],
        "the raw sequence ratio, not ESPO's per-token normalised one exp(delta / L)",
    ),
    M(
        "espo_kl_not_per_length",
        "algorithms/espo.py",
        "        return (seq - ref_seq) ** 2 / 2 / length.clamp(min=1)",
        "        return (seq - ref_seq) ** 2 / 2",
        ["tests/test_espo.py::test_loss_by_hand_sequence_ratio_per_canvas_length_and_k2_kl"],
        "the k2 KL not divided by the canvas length (espo_trainer.py:200 divides by batch x L)",
    ),
    M(
        "espo_group_ranks_not_passed",
        "rl/learner.py",
        "        if self.estimator.estimate_takes_group_ranks:",
        "        if False:",
        ["tests/test_espo.py::test_a_learner_update_scores_old_and_reference_on_the_same_stratified_masks"],
        "the learner does not give the estimate each sample's rank in its group over the whole batch",
    ),
    M(
        "espo_beta_refused",
        "rl/config.py",
        '        if unit.objective is not None and (self.loss != "grpo" or (self.beta > 0 and not unit.objective_kl)):',
        '        if unit.objective is not None and (self.loss != "grpo" or self.beta > 0):',
        ["tests/test_espo.py::test_a_one_line_config_gets_espos_preset_and_a_block_causal_model_is_refused"],
        "an objective with its own KL refused with beta > 0 (ESPO's preset beta 1e-3 could not load)",
    ),
    M(
        "espo_preset_advantage_mean",
        "algorithms/espo.py",
        '            advantage=("loo", ',
        '            advantage=("mean", ',
        ["tests/test_espo.py::test_a_one_line_config_gets_espos_preset_and_a_block_causal_model_is_refused"],
        "ESPO's leave-one-out baseline (espo_trainer.py:694) replaced by the group mean",
    ),
    M(
        "espo_block_causal_not_refused",
        "algorithms/espo.py",
        '        attention=frozenset({"full"}),',
        '        attention=frozenset({"full", "block_causal"}),',
        ["tests/test_espo.py::test_a_one_line_config_gets_espos_preset_and_a_block_causal_model_is_refused"],
        "ESPO accepted on a block-causal family, where its canvas masks are not defined",
    ),
    # ---- GDPO (algorithms/gdpo.py) ----
    M(
        "gdpo_mask_count_rounded",
        "algorithms/gdpo.py",
        "            count = int(t * length)  # floor, as GDPO's int(p_mask * target_len)",
        "            count = round(t * length)  # floor, as GDPO's int(p_mask * target_len)",
        ["tests/test_gdpo.py::test_masks_hold_exactly_floor_t_l_tokens_and_follow_the_samples_generator"],
        "a node's mask count rounded instead of floored: one token more than GDPO masks at t L = 8.87",
    ),
    M(
        "gdpo_weight_without_1_over_t",
        "algorithms/gdpo.py",
        "    return torch.where(masked, lp * (w / (t * draws)), torch.zeros_like(lp))",
        "    return torch.where(masked, lp * (w / draws), torch.zeros_like(lp))",
        ["tests/test_gdpo.py::test_elbo_terms_by_hand"],
        "the ELBO's 1/t weight dropped: a quadrature of the wrong integrand",
    ),
    M(
        "gdpo_ratio_not_per_length",
        "algorithms/espo.py",
        "    log_ratio = (((seq - (old_logp * m).sum(1)) / length.clamp(min=1))).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)",
        "    log_ratio = ((seq - (old_logp * m).sum(1)) / 1.0).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)",
        ["tests/test_gdpo.py::test_loss_by_hand_sequence_ratio_per_canvas_length_and_k3_kl"],
        "the sequence ratio not divided by the canvas length (gdpo_trainer.py:120)",
    ),
    M(
        "gdpo_kl_k2",
        "algorithms/gdpo.py",
        "        return torch.exp(delta) - delta - 1.0",
        "        return delta**2 / 2",
        ["tests/test_gdpo.py::test_loss_by_hand_sequence_ratio_per_canvas_length_and_k3_kl"],
        "GDPO's k3 on the ELBOs replaced by ESPO's k2",
    ),
    M(
        "gdpo_canvas_stops_at_eos",
        "algorithms/gdpo.py",
        "        keep = _pad([[True] * n_ for n_ in lengths], width, torch.bool, lm.device)",
        "        keep = until_eos",
        ["tests/test_gdpo.py::test_the_estimate_sums_each_nodes_masked_log_probs_over_the_whole_canvas"],
        "the ELBO summed up to the first EOS where GDPO sums the whole canvas (its completion mask never enters the loss)",
    ),
    M(
        "gdpo_block_causal_not_refused",
        "algorithms/gdpo.py",
        '        attention=frozenset({"full"}),',
        '        attention=frozenset({"full", "block_causal"}),',
        ["tests/test_gdpo.py::test_a_one_line_config_gets_gdpos_preset_and_a_block_causal_model_is_refused"],
        "GDPO accepted on a block-causal family, where its canvas masks are not defined",
    ),
    M(
        "gdpo_preset_drops_passes",
        "algorithms/gdpo.py",
        '            epochs=(12, f"{_GDPO}gdpo/slurm_scripts/train.yaml:73',
        '            _epochs=(12, f"{_GDPO}gdpo/slurm_scripts/train.yaml:73',
        ["tests/test_presets.py::test_each_unit_derives_its_papers_values_with_a_source_for_each"],
        "GDPO's 12 passes over each rollout batch (num_iterations) lost from its preset",
    ),
    # ---- EBPO (algorithms/ebpo.py, the advantages stage and trainer_state.json in rl/trainer.py) ----
    M(
        "ebpo_shrinkage_inverted",
        "algorithms/ebpo.py",
        "        baseline = (1.0 - shrink) * mean + shrink * mu_glob  # [M] V_m",
        "        baseline = shrink * mean + (1.0 - shrink) * mu_glob  # [M] V_m",
        ["tests/test_ebpo.py::test_two_steps_by_hand"],
        "the baseline leaning on the prior where the group is reliable and on the group where it is not",
    ),
    M(
        "ebpo_noise_not_over_group_size",
        "algorithms/ebpo.py",
        "        noise = sigma2 / count  # [M] sigma^2 / G",
        "        noise = sigma2  # [M] sigma^2 / G",
        ["tests/test_ebpo.py::test_two_steps_by_hand"],
        "the group mean's variance taken as one reward's: sigma^2, not sigma^2 / G",
    ),
    M(
        "ebpo_not_standardised",
        "algorithms/ebpo.py",
        "        adv = (raw - raw.mean()) / (std + eps)",
        "        adv = raw - raw.mean()",
        ["tests/test_ebpo.py::test_two_steps_by_hand"],
        "the raw advantages not divided by the batch std",
    ),
    M(
        "ebpo_welford_population_variance",
        "algorithms/ebpo.py",
        "        return self.m2 / (self.count - 1) if self.count > 1 else 0.0",
        "        return self.m2 / self.count if self.count > 1 else 0.0",
        ["tests/test_ebpo.py::test_welford_is_the_sample_mean_and_variance"],
        "the running variances with the population divisor",
    ),
    M(
        "ebpo_mode_ignored_by_trainer",
        "rl/trainer.py",
        '        if algo.advantage == "ebpo":  # the group baseline shrunk toward the run\'s prior, which this batch updates',
        '        if False:  # the group baseline shrunk toward the run\'s prior, which this batch updates',
        ["tests/test_ebpo.py::test_the_trainer_uses_the_prior_saves_it_with_the_checkpoint_and_restores_it_on_resume"],
        "advantage: ebpo not routed to the prior",
    ),
    M(
        "ebpo_prior_not_saved",
        "rl/trainer.py",
        '        return {"ebpo_prior": self.ebpo_prior.state_dict()} if getattr(self, "ebpo_prior", None) is not None else {}',
        "        return {}",
        ["tests/test_ebpo.py::test_the_trainer_uses_the_prior_saves_it_with_the_checkpoint_and_restores_it_on_resume"],
        "the EBPO prior left out of trainer_state.json",
    ),
    M(
        "ebpo_prior_not_restored",
        "rl/trainer.py",
        '        self.ebpo_prior.load_state_dict(state["ebpo_prior"])',
        "        pass",
        ["tests/test_ebpo.py::test_the_trainer_uses_the_prior_saves_it_with_the_checkpoint_and_restores_it_on_resume"],
        "a resumed run restarting EBPO's prior from nothing: different advantages from the uninterrupted run",
    ),
    # ---- CJ-GRPO (algorithms/cj_grpo.py, the loss_weights hook in rl/learner.py, trace's canvas) ----
    M(
        "cj_weights_token_mean",
        "algorithms/cj_grpo.py",
        "            w[r, c] = 1.0 / (len(toks) * n_steps[gi] * len(n_steps))",
        "            w[r, c] = 1.0 / int(keep.sum())",
        ["tests/test_cj_grpo.py::test_weights_by_hand_per_step_then_steps_then_groups"],
        "a token mean over the minibatch where CJ-GRPO averages each step's tokens, then the steps",
    ),
    M(
        "cj_weights_not_per_group",
        "algorithms/cj_grpo.py",
        "        cells.setdefault((int(g[r]), int(steps[r, c])), []).append((r, c))",
        "        cells.setdefault((0, int(steps[r, c])), []).append((r, c))",
        ["tests/test_cj_grpo.py::test_weights_by_hand_per_step_then_steps_then_groups"],
        "steps pooled over the whole minibatch, not per group (CJ-GRPO's micro-batch is one group)",
    ),
    M(
        "cj_kl_dropped",
        "algorithms/cj_grpo.py",
        "    per_token = pg + beta * kl if beta > 0 else pg",
        "    per_token = pg",
        ["tests/test_cj_grpo.py::test_loss_by_hand"],
        "the k3 term dropped from each token's loss",
    ),
    M(
        "cj_weights_not_passed",
        "rl/learner.py",
        '                    pass_index=s.passes, **({"weights": s.weights} if s.weights is not None else {}),',
        "                    pass_index=s.passes,",
        ["tests/test_cj_grpo.py::test_a_learner_update_reduces_per_decoding_step_of_each_group"],
        "the learner does not hand the unit's per-minibatch weights to its objective",
    ),
    M(
        "cj_trace_stops_at_eos",
        "algorithms/trace.py",
        "        keep = len(t.completion_ids) if canvas else loss_length(t.completion_ids, lm.eos_id)",
        "        keep = loss_length(t.completion_ids, lm.eos_id)",
        ["tests/test_cj_grpo.py::test_the_replay_scores_the_eos_filler_as_cj_grpo_does"],
        "the replay stops scoring at the first EOS where CJ-GRPO scores the whole canvas",
    ),
    M(
        "cj_preset_beta",
        "algorithms/cj_grpo.py",
        "            beta=(0.04, ",
        "            beta=(0.0, ",
        ["tests/test_cj_grpo.py::test_a_one_line_config_gets_cj_grpos_preset_and_a_block_causal_model_is_refused"],
        "CJ-GRPO's k3 KL (train.yaml:70 beta 0.04) dropped from the preset",
    ),
    M(
        "cj_block_causal_not_refused",
        "algorithms/cj_grpo.py",
        '        objective=cj_grpo_loss, objective_kl=True, attention=frozenset({"full"}),',
        '        objective=cj_grpo_loss, objective_kl=True, attention=frozenset({"full", "block_causal"}),',
        ["tests/test_cj_grpo.py::test_a_one_line_config_gets_cj_grpos_preset_and_a_block_causal_model_is_refused"],
        "CJ-GRPO accepted on a block-causal family, whose passes are not one decoding step",
    ),
    # ---- JustGRPO (algorithms/just_grpo.py, the rollout_sampling hook in rl/config.py) ----
    M(
        "just_std_population",
        "algorithms/just_grpo.py",
        "    var = torch.zeros(k, dtype=a.dtype).index_add(0, inv, (a - mean[inv]) ** 2) / (size - 1).clamp(min=1)",
        "    var = torch.zeros(k, dtype=a.dtype).index_add(0, inv, (a - mean[inv]) ** 2) / size",
        ["tests/test_just_grpo.py::test_weights_by_hand_zscore_then_valid_count_per_cell"],
        "the population std where grpo.py:60 takes torch's .std (G - 1)",
    ),
    M(
        "just_cells_by_sorted_id",
        "algorithms/just_grpo.py",
        "    order = list(dict.fromkeys(groups.tolist()))  # groups in rollout order",
        "    order = sorted(set(groups.tolist()))",
        ["tests/test_just_grpo.py::test_weights_by_hand_zscore_then_valid_count_per_cell"],
        "the accumulation cells formed from sorted group ids, not the groups' rollout order",
    ),
    M(
        "just_valid_sum_not_mean",
        "algorithms/just_grpo.py",
        "    v_c = torch.zeros(cells, dtype=a.dtype).index_add(0, cell, valid) / n_c  # grpo.py:31: gather, mean",
        "    v_c = torch.zeros(cells, dtype=a.dtype).index_add(0, cell, valid)",
        ["tests/test_just_grpo.py::test_weights_by_hand_zscore_then_valid_count_per_cell", "tests/test_just_grpo.py::test_a_learner_update_on_a_left_to_right_rollout"],
        "the cell's nonzero-advantage counts summed where grpo.py:31 averages them over the ranks",
    ),
    M(
        "just_no_length_scale",
        "algorithms/just_grpo.py",
        "        w[i, : len(t.completion_ids)] = 1.0 / len(t.completion_ids)",
        "        w[i, : len(t.completion_ids)] = 1.0",
        ["tests/test_just_grpo.py::test_loss_weights_are_one_over_the_canvas_length", "tests/test_just_grpo.py::test_a_learner_update_on_a_left_to_right_rollout"],
        "each token's loss not divided by the canvas length (grpo.py:32's gen_length)",
    ),
    M(
        "just_loss_stops_at_eos",
        "algorithms/just_grpo.py",
        "    w = weights[:, : logp.shape[1]].to(logp.dtype)",
        "    w = weights[:, : logp.shape[1]].to(logp.dtype) * mask[:, : logp.shape[1]].to(logp.dtype)",
        ["tests/test_just_grpo.py::test_loss_by_hand"],
        "the loss stops at the first EOS where grpo.py scores the whole canvas",
    ),
    M(
        "just_any_order_accepted",
        "algorithms/just_grpo.py",
        "        if any(a >= b for a, b in zip(t.step_map, t.step_map[1:])):",
        "        if False:",
        ["tests/test_just_grpo.py::test_the_estimate_is_the_exact_left_to_right_likelihood_and_other_orders_are_refused"],
        "a trajectory decoded in another order than left to right trained as if it were JustGRPO's",
    ),
    M(
        "just_block_causal_not_refused",
        "algorithms/just_grpo.py",
        '        attention=frozenset({"full"}), loss_weights=just_grpo_loss_weights,',
        '        attention=frozenset({"full", "block_causal"}), loss_weights=just_grpo_loss_weights,',
        ["tests/test_just_grpo.py::test_a_one_line_config_gets_just_grpos_preset_and_a_block_causal_model_is_refused"],
        "JustGRPO accepted on a block-causal family (its canvas is LLaDA's full attention)",
    ),
    M(
        "just_rollout_not_left_to_right",
        "rl/config.py",
        "            if name not in self.rollout.sampling.model_fields_set:",
        "            if False:",
        ["tests/test_just_grpo.py::test_a_one_line_config_gets_just_grpos_preset_and_a_block_causal_model_is_refused"],
        "a one-line just_grpo config decodes in one confidence-ordered block instead of left to right",
    ),
    # ---- MDPO (algorithms/mdpo.py, the step records in rollout/engine.py, rl/scoring.py's step path, rl/trainer.py) ----
    M(
        "mdpo_record_conf_not_the_predictions_probability",
        "rollout/engine.py",
        "            prob = torch.where(masked, tok_lp.exp(), torch.zeros_like(tok_lp)).float()",
        "            prob = torch.where(masked, conf.clamp(min=0), torch.zeros_like(tok_lp)).float()",
        ["tests/test_mdpo.py::test_record_steps_off_changes_nothing_and_on_each_commit_is_its_steps_prediction"],
        "the recorded confidence is the commit criterion (eos_guard-damped, -1 at committed columns), not the prediction's probability",
    ),
    M(
        "mdpo_record_block_reaches_into_the_prompt",
        "rollout/engine.py",
        "            lo, hi = max(rec.blk_start, a), min(rec.blk_start + rec.width, b)  # the block's completion columns",
        "            lo, hi = rec.blk_start, min(rec.blk_start + rec.width, b)",
        ["tests/test_mdpo.py::test_record_steps_off_changes_nothing_and_on_each_commit_is_its_steps_prediction"],
        "a partial first block's prompt columns written over the start of the completion's canvas",
    ),
    M(
        "mdpo_record_step_off_by_one",
        "rollout/engine.py",
        "            canvas = torch.where(step_map < t, comp, torch.full_like(comp, self.lm.mask_id))",
        "            canvas = torch.where(step_map < t - 1, comp, torch.full_like(comp, self.lm.mask_id))",
        ["tests/test_mdpo.py::test_record_steps_off_changes_nothing_and_on_each_commit_is_its_steps_prediction"],
        "step t's canvas forgets the tokens the previous step committed",
    ),
    M(
        "mdpo_later_means_not_flipped_back",
        "algorithms/mdpo.py",
        "    return diff + torch.cat([after.flip(-1), r[:, -1:]], dim=1)",
        "    return diff + torch.cat([after, r[:, -1:]], dim=1)",
        ["tests/test_mdpo.py::test_step_values_and_advantages_by_hand"],
        "adv-v4's running mean of the later rewards put on the wrong steps (their flip back)",
    ),
    M(
        "mdpo_population_std",
        "algorithms/mdpo.py",
        "        std = (((x - mean) ** 2 * v).sum(0) / (n - 1).clamp(min=1)).sqrt()",
        "        std = (((x - mean) ** 2 * v).sum(0) / n.clamp(min=1)).sqrt()",
        ["tests/test_mdpo.py::test_step_values_and_advantages_by_hand"],
        "the step z-score with the population std where mdpo_trainer.py:867 uses torch's .std (G - 1)",
    ),
    M(
        "mdpo_signed_step_selection",
        "algorithms/mdpo.py",
        "    return torch.topk(advantages.abs().sum(0), k=min(k, advantages.shape[-1])).indices",
        "    return torch.topk(advantages.sum(0), k=min(k, advantages.shape[-1])).indices",
        ["tests/test_mdpo.py::test_selected_steps_and_scored_steps", "tests/test_mdpo.py::test_step_rows_replay_the_samplers_input"],
        "the trained steps picked by the largest advantage, not the largest |A| (negative steps never trained)",
    ),
    M(
        "mdpo_step_commits_in_its_own_input",
        "algorithms/mdpo.py",
        "                step_map=[0 if m < s else (1 if p > 0 else 2) for m, p in zip(t.step_map, conf.tolist())], logprobs=[0.0] * len(canvas), block_size=t.block_size,",
        "                step_map=[0 if m <= s else (1 if p > 0 else 2) for m, p in zip(t.step_map, conf.tolist())], logprobs=[0.0] * len(canvas), block_size=t.block_size,",
        ["tests/test_mdpo.py::test_step_rows_replay_the_samplers_input"],
        "a step row's input shows the tokens that step committed: not the canvas the sampler saw",
    ),
    M(
        "mdpo_kl_scaled_by_lambda",
        "algorithms/mdpo.py",
        "    return torch.stack([kl * lam, kl], dim=-1)",
        "    return torch.stack([kl * lam, kl * lam], dim=-1)",
        ["tests/test_mdpo.py::test_weights_and_loss_by_hand"],
        "the k2 KL scaled by lambda too (theirs adds beta * kl after the lambda scaling, mdpo_trainer.py:1521-1523)",
    ),
    M(
        "mdpo_no_lambda",
        "algorithms/mdpo.py",
        "    lam = length.to(torch.float64)[:, None] / count",
        "    lam = torch.ones_like(count)",
        ["tests/test_mdpo.py::test_weights_and_loss_by_hand", "tests/test_mdpo.py::test_step_rows_replay_the_samplers_input"],
        "the policy term without lambda_t = L / |M_t| (later steps, with few masked tokens, weigh as much as early ones)",
    ),
    M(
        "mdpo_rows_not_averaged_per_sample",
        "algorithms/mdpo.py",
        "    return mdpo_token_weights(conf, masked, length, len(trajs) / options.train_steps)",
        "    return mdpo_token_weights(conf, masked, length, len(trajs))",
        ["tests/test_mdpo.py::test_step_rows_replay_the_samplers_input"],
        "the loss averaged over (sample, step) rows, not summed over a sample's trained steps then averaged over samples",
    ),
    M(
        "mdpo_step_scored_with_another_prompt",
        "rl/scoring.py",
        "        flat_prompts += [prompts[i]] * len(texts)",
        "        flat_prompts += [prompts[0]] * len(texts)",
        ["tests/test_mdpo.py::test_intermediate_answers_are_scored_through_the_one_scoring_path"],
        "an intermediate answer scored against the first sample's prompt",
    ),
    M(
        "mdpo_rollout_does_not_record",
        "rl/trainer.py",
        "            self.train_params = dataclasses.replace(self.train_params, record_steps=True)",
        "            pass",
        ["tests/test_mdpo.py::test_unmask_train_runs_mdpo_from_a_one_line_config"],
        "estimator: mdpo with a rollout that records no step predictions (nothing to score)",
    ),
    # ---- a first run on one's own data (issue 33: rl/checkpoint.py, rl/cli.py, rl/trainer.py) ----
    M(
        "own_data_model_ref_unresolved",
        "rl/checkpoint.py",
        "    return str(resolve_model_path(ref)) if Path(ref).is_dir() else str(ref)",
        "    return str(ref)",
        ["tests/test_own_data.py::test_sft_and_eval_accept_a_step_n_checkpoint_and_say_what_they_do"],
        "model.path / init: RUN/checkpoints/step_N handed to the loader as is (the README names it as a CHECKPOINT form)",
    ),
    M(
        "own_data_generate_ignores_the_run_of_a_checkpoint",
        "rl/checkpoint.py",
        '    if _STEP_DIR.match(p.name) and p.parent.name == "checkpoints":',
        "    if False:",
        ["tests/test_own_data.py::test_generate_prompts_as_the_run_did"],
        "unmask generate RUN/checkpoints/step_N prompts without the run's template, system prompt and budget",
    ),
    M(
        "own_data_stdout_block_buffered",
        "rl/cli.py",
        "    sys.stdout.reconfigure(line_buffering=True)",
        "    pass",
        ["tests/test_own_data.py::test_sft_and_eval_accept_a_step_n_checkpoint_and_say_what_they_do"],
        "progress lines reach a pipe or log only when a buffer fills: a newcomer sees nothing while the data loads",
    ),
    M(
        "own_data_no_signal_never_warns",
        "rl/trainer.py",
        "    if heldout is not None and heldout == 0:",
        "    if heldout is not None and heldout < 0:",
        ["tests/test_own_data.py::test_train_warns_when_the_base_has_no_reward_signal"],
        "held-out accuracy 0 before RL passes in silence (RL has nothing to learn from)",
    ),
    M(
        "smoke_drops_recipe_lora",
        "rl/smoke.py",
        '    data["model"]["trust_remote_code"] = False',
        '    data["model"]["trust_remote_code"] = False\n    data["model"]["lora"] = {}',
        ["tests/test_recipes.py::test_smoke_config_keeps_the_recipe_and_shrinks_the_rest"],
        "d1's smoke run trains all weights instead of its r128 LoRA: the recipe's adapter path is never exercised",
    ),
    M(
        "smoke_resets_decoding",
        "rl/smoke.py",
        "    out = dict(sampling, max_new_tokens=SMOKE_NEW_TOKENS, max_batch=None)",
        "    out = dict(max_new_tokens=SMOKE_NEW_TOKENS, max_batch=None)",
        ["tests/test_recipes.py::test_smoke_config_keeps_the_recipe_and_shrinks_the_rest"],
        "the smoke run decodes with the default static strategy, not the recipe's threshold/entropy/temperature",
    ),
    M(
        "smoke_tokens_per_step_changed",
        "rl/smoke.py",
        '        out["steps_per_block"] = max(1, round(steps * out["block_length"] / old_block))',
        '        out["steps_per_block"] = steps',
        ["tests/test_recipes.py::test_smoke_config_keeps_the_recipe_and_shrinks_the_rest"],
        "a shrunk full-attention block keeps the recipe's step count: d1's 2 tokens per step becomes fewer than one",
    ),
    M(
        "smoke_wrong_family",
        "rl/smoke.py",
        '    family = cfg.model.family or "block"',
        '    family = "block"',
        ["tests/test_recipes.py::test_smoke_config_keeps_the_recipe_and_shrinks_the_rest"],
        "every recipe's smoke model is a block model: LLaDA's and Dream's attention and logit shift go untested",
    ),
    M(
        "smoke_drops_value_model",
        "rl/smoke.py",
        '    data["algorithm"]["minibatches"] = min(cfg.algorithm.minibatches, MAX_SMOKE_MINIBATCHES)',
        '    data["algorithm"]["minibatches"] = min(cfg.algorithm.minibatches, MAX_SMOKE_MINIBATCHES)\n    data["algorithm"]["value"]["enabled"] = False',
        ["tests/test_recipes.py::test_smoke_config_keeps_the_recipe_and_shrinks_the_rest"],
        "TraDo-4B's smoke run drops its value model: step-level GAE and the value loss never run",
    ),
    # ---- d-TreeRPO (algorithms/d_tree_rpo.py, rollout/tree.py, tree_generate and _FullDecoder.resume in rollout/engine.py) ----
    M(
        "dtree_resume_replans_the_whole_block",
        "rollout/engine.py",
        "            plans.append(transfer_schedule(m, total - done)[: self.stop_step - now] if m else [0])",
        "            plans.append(transfer_schedule(m, total)[: self.stop_step - now] if m else [0])",
        ["tests/test_d_tree_rpo.py::test_a_decode_resumed_at_step_s_with_the_same_randomness_is_the_straight_decode"],
        "a decode resumed mid-block spreads the rest over the whole block's steps: not the straight decode's schedule",
    ),
    M(
        "dtree_resume_runs_past_the_branch",
        "rollout/engine.py",
        "            plans.append(transfer_schedule(m, total - done)[: self.stop_step - now] if m else [0])",
        "            plans.append(transfer_schedule(m, total - done) if m else [0])",
        ["tests/test_d_tree_rpo.py::test_a_decode_resumed_at_step_s_with_the_same_randomness_is_the_straight_decode"],
        "a branch decodes to the end of its block instead of stopping at the branch step",
    ),
    M(
        "dtree_raw_prob_tempered",
        "rollout/engine.py",
        "            return tok_lp.exp() if t in (0, 1) else torch.exp(t * tok_lp - torch.logsumexp(t * lp, dim=-1))",
        "            return tok_lp.exp()",
        ["tests/test_d_tree_rpo.py::test_raw_prob_confidence_is_the_untempered_probability_of_the_sampled_token"],
        "raw_prob ranks by the tempered probability: not their untempered softmax (:600-601), other tokens committed first",
    ),
    M(
        "dtree_children_not_grouped_under_their_parent",
        "rollout/engine.py",
        "        idx = torch.arange(len(rows)).repeat_interleave(n_root if level == 0 else bf)  # each node's children, in order",
        "        idx = torch.arange(len(rows)).repeat(n_root if level == 0 else bf)",
        ["tests/test_d_tree_rpo.py::test_tree_leaves_extend_their_parents_and_come_in_tree_order"],
        "a node's children scattered over the batch: leaves out of tree order, a prompt's tree mixed with another's",
    ),
    M(
        "dtree_branch_points_off_by_one",
        "rollout/tree.py",
        "    return [total_steps - p for p in points]",
        "    return [max(0, total_steps - p - 1) for p in points]",
        ["tests/test_d_tree_rpo.py::test_tree_leaves_extend_their_parents_and_come_in_tree_order"],
        "the tree branches one step early (their branch points are T - int(k T / s) steps left)",
    ),
    M(
        "dtree_advantage_is_the_value",
        "algorithms/d_tree_rpo.py",
        "        out.append(v - sibling_mean)",
        "        out.append(v - v.mean(-1, keepdim=True))",
        ["tests/test_d_tree_rpo.py::test_node_values_and_advantages_by_hand"],
        "the node's own value inside the baseline (group mean, not the mean of its siblings, dtreerpo_trainer.py:402-409)",
    ),
    M(
        "dtree_values_not_averaged_up",
        "algorithms/d_tree_rpo.py",
        "        values.insert(0, values[0].mean(-1))  # level k: the mean of its children",
        "        values.insert(0, values[0].amax(-1))",
        ["tests/test_d_tree_rpo.py::test_node_values_and_advantages_by_hand"],
        "an internal node's value is its best child's, not the mean of its children's (:364-365)",
    ),
    M(
        "dtree_edge_scores_the_parents_tokens",
        "algorithms/d_tree_rpo.py",
        "                code = [CONTEXT if m < done[k] else (SCORED if m < done[k + 1] else LATER) for m in t.step_map]",
        "                code = [CONTEXT if m < done[k] else (SCORED if m <= done[k + 1] else LATER) for m in t.step_map]",
        ["tests/test_d_tree_rpo.py::test_edge_rows_one_per_edge_with_parent_canvas_and_the_childs_new_tokens"],
        "an edge scores the first token its child's own child unmasks: the edge's tokens are those between the two branch points",
    ),
    M(
        "dtree_edge_read_off_the_wrong_leaf",
        "algorithms/d_tree_rpo.py",
        "                i = g * leaves + j * span",
        "                i = g * leaves + j",
        ["tests/test_d_tree_rpo.py::test_edge_rows_one_per_edge_with_parent_canvas_and_the_childs_new_tokens"],
        "a level-1 edge read off a leaf of another node: the row's canvas is not its node's",
    ),
    M(
        "dtree_eos_masked_tokens_count",
        "algorithms/d_tree_rpo.py",
        "    child = [c for c, m in zip(t.completion_ids, t.step_map) if m != LATER]",
        "    child = list(t.completion_ids)",
        ["tests/test_d_tree_rpo.py::test_edge_rows_one_per_edge_with_parent_canvas_and_the_childs_new_tokens"],
        "an EOS the child has not unmasked yet cuts its scored tokens (theirs: the child canvas's first EOS, :183)",
    ),
    M(
        "dtree_empty_rows_not_counted",
        "algorithms/d_tree_rpo.py",
        "    row_mean = m / m.sum(1, keepdim=True).clamp(min=1) / len(trajs)",
        "    row_mean = m / m.sum(1, keepdim=True).clamp(min=1) / max(1, int((m.sum(1) > 0).sum()))",
        ["tests/test_d_tree_rpo.py::test_the_loss_by_hand_row_token_mean_then_mean_over_every_row"],
        "the row mean over rows with a scored token only: theirs divides by every row (an edge after an EOS weighs as 0, :799-800)",
    ),
    M(
        "dtree_kl_sign",
        "algorithms/d_tree_rpo.py",
        "    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)",
        "    kl = k3_kl(ref_logp, logp) if ref_logp is not None else torch.zeros_like(logp)",
        ["tests/test_d_tree_rpo.py::test_the_loss_by_hand_row_token_mean_then_mean_over_every_row"],
        "k3 with the log-ratio reversed: exp(logp - ref) - (logp - ref) - 1, not theirs (:808-809)",
    ),
    M(
        "dtree_estimate_sees_the_childs_tokens",
        "algorithms/d_tree_rpo.py",
        "    noisy = [[m != CONTEXT for m in t.step_map] for t in trajs]",
        "    noisy = [[m == LATER for m in t.step_map] for t in trajs]",
        ["tests/test_d_tree_rpo.py::test_the_estimate_is_one_forward_on_the_parent_canvas"],
        "the edge's tokens visible in its input: the forward is on the child canvas, not the parent's (:175)",
    ),
    M(
        "dtree_trainer_keeps_leaf_rows",
        "rl/trainer.py",
        "        if self.unit.tree_batch is not None and len(kept):",
        "        if False:",
        ["tests/test_d_tree_rpo.py::test_one_training_step_through_the_trainers_stages"],
        "the trainer trains the leaves with group advantages instead of the tree's edge rows",
    ),
    M(
        "dtree_samples_per_prompt_not_the_leaves",
        "rl/config.py",
        '                self.rollout.__dict__["samples_per_prompt"] = leaves',
        "                pass",
        ["tests/test_d_tree_rpo.py::test_a_one_line_config_gets_the_preset_and_the_tree_and_a_block_causal_model_is_refused"],
        "a one-line d_tree_rpo config keeps 8 samples per prompt: the tree rollout refuses the batch",
    ),
    M(
        "dtree_sd_keeps_non_positive_children",
        "algorithms/d_tree_rpo.py",
        "        kept = rows[adv[rows] > 0]  # the children better than their siblings' mean",
        "        kept = rows[adv[rows] >= 0]",
        ["tests/test_d_tree_rpo.py::test_self_distillation_by_hand_q_kl_and_the_schedules"],
        "children with A = 0 join q: theirs keeps A > 0 only (:871-876)",
    ),
    M(
        "dtree_sd_softmax_without_tau",
        "algorithms/d_tree_rpo.py",
        "        w = torch.softmax(adv[kept] / tau, dim=0)  # [K]",
        "        w = torch.softmax(adv[kept], dim=0)  # [K]",
        ["tests/test_d_tree_rpo.py::test_self_distillation_by_hand_q_kl_and_the_schedules"],
        "the sibling weights ignore the temperature tau(t) (:878)",
    ),
    M(
        "dtree_sd_only_child_distilled",
        "algorithms/d_tree_rpo.py",
        "        if len(rows) <= 1:  # an only child has nothing to distil from (their :866)",
        "        if len(rows) < 1:",
        ["tests/test_d_tree_rpo.py::test_self_distillation_by_hand_q_kl_and_the_schedules"],
        "an only child is distilled toward itself and counts its positions (theirs skips it, :866)",
    ),
    M(
        "dtree_sd_ties_not_pooled",
        "algorithms/d_tree_rpo.py",
        "        q = (same * w_act[None, :, :]).sum(1) / (total + 1e-8)  # [K, C] q of child k's token at j",
        "        q = w_act / (total + 1e-8)",
        ["tests/test_d_tree_rpo.py::test_self_distillation_by_hand_q_kl_and_the_schedules"],
        "two children putting the same token at j are two entries of q, not one of mass w_k + w_k' (their unique + index_add, :888-890)",
    ),
    M(
        "dtree_sd_weights_not_renormalised_over_active",
        "algorithms/d_tree_rpo.py",
        "        a[kept] = torch.where(on, w[:, None] / (total + 1e-8), 0.0)",
        "        a[kept] = torch.where(on, w[:, None], 0.0)",
        ["tests/test_d_tree_rpo.py::test_self_distillation_by_hand_q_kl_and_the_schedules"],
        "q_j weighs the children active at j by their softmax weight over all kept children, not renormalised over the active ones (:891-893)",
    ),
    M(
        "dtree_sd_counts_tokens_not_positions",
        "algorithms/d_tree_rpo.py",
        "        count += int((total > 0).sum())",
        "        count += int(on.sum())",
        ["tests/test_d_tree_rpo.py::test_self_distillation_by_hand_q_kl_and_the_schedules"],
        "the mean over (child, j) tokens instead of (parent, j) pairs (:895-901)",
    ),
    M(
        "dtree_sd_not_a_mean",
        "algorithms/d_tree_rpo.py",
        "    return a / max(count, 1), log_q",
        "    return a, log_q",
        ["tests/test_d_tree_rpo.py::test_self_distillation_by_hand_q_kl_and_the_schedules"],
        "the KL summed over (parent, j) pairs, not their mean (:901)",
    ),
    M(
        "dtree_sd_lambda_linear",
        "algorithms/d_tree_rpo.py",
        "    lam = options.sd_lambda_max * (math.exp(options.sd_gamma * progress) - 1.0) / (math.exp(options.sd_gamma) - 1.0)",
        "    lam = options.sd_lambda_max * progress",
        ["tests/test_d_tree_rpo.py::test_self_distillation_by_hand_q_kl_and_the_schedules"],
        "lambda(t) linear in t/T, not the exponential ramp (:830)",
    ),
    M(
        "dtree_sd_tau_without_beta",
        "algorithms/d_tree_rpo.py",
        "    tau = max(options.sd_tau_max * (1.0 - progress) ** options.sd_tau_beta, 1e-6)",
        "    tau = max(options.sd_tau_max * (1.0 - progress), 1e-6)",
        ["tests/test_d_tree_rpo.py::test_self_distillation_by_hand_q_kl_and_the_schedules"],
        "tau(t) linear decay, the exponent beta dropped (:833-834)",
    ),
    M(
        "dtree_sd_kl_sign",
        "algorithms/d_tree_rpo.py",
        "        sd_terms = weights[..., 1] * (weights[..., 2] - logp) * on",
        "        sd_terms = weights[..., 1] * (weights[..., 2] + logp) * on",
        ["tests/test_d_tree_rpo.py::test_self_distillation_by_hand_q_kl_and_the_schedules"],
        "the KL pushes p_parent away from q: sum q (log q + log p)",
    ),
    M(
        "dtree_sd_minibatches_split_siblings",
        "rl/learner.py",
        "        if not self.estimator.sibling_minibatches(self._estimator_options):",
        "        if True:",
        ["tests/test_d_tree_rpo.py::test_minibatches_keep_sibling_groups_whole_with_the_term_on", "tests/test_d_tree_rpo.py::test_one_training_step_through_the_trainers_stages"],
        "the minibatches shuffle rows with the term on: a parent's children land in different minibatches",
    ),
    M(
        "dtree_sd_schedule_ignores_the_step",
        "rl/learner.py",
        '                  "progress": (opt_step, self.cfg.train.steps * self.steps_per_update())}  # fmt: skip',
        '                  "progress": (0, self.cfg.train.steps * self.steps_per_update())}  # fmt: skip',
        ["tests/test_d_tree_rpo.py::test_one_training_step_through_the_trainers_stages"],
        "lambda(t) and tau(t) frozen at t = 0 (lambda 0: the term never acts)",
    ),
    M(
        "dtree_sd_weights_once_per_update",
        "rl/learner.py",
        "            if self.estimator.loss_weights is not None and self.estimator.scheduled_weights(self._estimator_options):  # weights that follow the optimizer step",
        "            if False:",
        ["tests/test_d_tree_rpo.py::test_one_training_step_through_the_trainers_stages"],
        "the self-distillation weights never computed per optimizer step (the loss refuses the missing weights)",
    ),
    M(
        "dtree_sd_siblings_dropped_by_the_trainer",
        "rl/trainer.py",
        "                               value_rewards=None, token_rewards=None, step_rewards=None, scored_steps=None, siblings=siblings)  # fmt: skip",
        "                               value_rewards=None, token_rewards=None, step_rewards=None, scored_steps=None, siblings=None)  # fmt: skip",
        ["tests/test_d_tree_rpo.py::test_one_training_step_through_the_trainers_stages"],
        "the edge rows reach the learner without their parent ids",
    ),
    M(
        "dtree_schedule_epoch_major",
        "rl/learner.py",
        "            order = [(epoch, j) for j in range(len(chunks)) for epoch in range(algo.epochs)]",
        "            order = [(epoch, j) for epoch in range(algo.epochs) for j in range(len(chunks))]",
        ["tests/test_d_tree_rpo.py::test_per_parent_schedule_trains_each_segment_for_epochs_consecutive_steps"],
        "the segments visited round-robin each epoch, not one segment for num_iterations consecutive steps (dtreerpo_trainer.py:650-697)",
    ),
    M(
        "dtree_schedule_total_ignores_segments",
        "rl/learner.py",
        "        return algo.epochs * (algo.minibatches if segments is None else segments)",
        "        return algo.epochs * algo.minibatches",
        ["tests/test_d_tree_rpo.py::test_per_parent_schedule_trains_each_segment_for_epochs_consecutive_steps"],
        "the lr and self-distillation totals count epochs x minibatches, not epochs x parent segments: the schedules end early",
    ),
    M(
        "dtree_segments_by_prompt_parent",
        "algorithms/d_tree_rpo.py",
        "    position = siblings % per_prompt  # [n]",
        "    position = siblings // per_prompt  # [n]",
        ["tests/test_d_tree_rpo.py::test_parent_segments_are_the_parent_positions_of_every_prompt_in_a_seeded_order"],
        "a segment is one prompt's whole tree, not one parent node position across the prompts (_pack_segments_by_parent, :474-488)",
    ),
    M(
        "dtree_segments_not_shuffled",
        "algorithms/d_tree_rpo.py",
        "    segments = [(position == p).nonzero().flatten().tolist() for p in torch.randperm(per_prompt, generator=generator).tolist()]",
        "    segments = [(position == p).nonzero().flatten().tolist() for p in range(per_prompt)]",
        ["tests/test_d_tree_rpo.py::test_parent_segments_are_the_parent_positions_of_every_prompt_in_a_seeded_order"],
        "the segments in tree order (root first) every update, not shuffled (their random.shuffle, :661)",
    ),
    M(
        "dtree_schedule_off_by_default",
        "algorithms/d_tree_rpo.py",
        "    per_parent_schedule: bool = True",
        "    per_parent_schedule: bool = False",
        ["tests/test_d_tree_rpo.py::test_per_parent_schedule_trains_each_segment_for_epochs_consecutive_steps"],
        "a one-line d_tree_rpo config trains epochs x minibatches over all edge rows, not their per-parent schedule (dtreerpo.yaml parents_per_step 1)",
    ),
    M(
        "rcr_schedule_without_float_floor",
        "rollout/engine.py",
        "    done = [num_masked - math.floor(num_masked * max(1.0 - (t + 1) / steps, 1e-6)) for t in range(steps)]",
        "    done = [math.ceil(num_masked * (t + 1) / steps) for t in range(steps)]",
        ["tests/test_rcr.py::test_linear_schedule_is_maskgit_linear_with_its_float_floor"],
        "the exact ceil, not MDPO's float floor: linear_schedule(5, 5) becomes [1, 1, 1, 1, 1] where theirs is [1, 1, 1, 2, 0]",
    ),
    M(
        "rcr_remasks_the_most_confident",
        "rollout/engine.py",
        "                    low = run.topk(k, dim=1, largest=False).indices  # [n, k]",
        "                    low = run.topk(k, dim=1, largest=True).indices  # [n, k]",
        ["tests/test_rcr.py::test_hand_checked_rcr_remasks_the_least_confident_and_a_committed_token_changes"],
        "the most confident tokens re-masked instead of the least",
    ),
    M(
        "rcr_remask_only_the_current_block",
        "rollout/engine.py",
        "                    low = run.topk(k, dim=1, largest=False).indices  # [n, k]",
        "                    low = run[:, blk_start - gen :].topk(k, dim=1, largest=False).indices + (blk_start - gen)  # [n, k]",
        ["tests/test_rcr.py::test_matches_mdpo_diffusion_generate_tokens_across_blocks"],
        "earlier blocks' tokens never re-masked: MDPO's running confidence persists across blocks",
    ),
    M(
        "rcr_running_confidence_not_kept",
        "rollout/engine.py",
        "                run.copy_(torch.where(masked, conf, run))",
        "                run.copy_(torch.where(masked, conf, torch.ones_like(run)))",
        ["tests/test_rcr.py::test_hand_checked_rcr_remasks_the_least_confident_and_a_committed_token_changes"],
        "tokens committed at earlier steps count as fully confident, so only the fresh fills are re-masked",
    ),
    M(
        "rcr_step_map_first_commit",
        "rollout/engine.py",
        "                self.step_map[:, seen] = torch.where(masked, step, self.step_map[:, seen])",
        "                self.step_map[:, seen] = torch.where(masked & (self.step_map[:, seen] < 0), step, self.step_map[:, seen])",
        ["tests/test_rcr.py::test_hand_checked_rcr_remasks_the_least_confident_and_a_committed_token_changes"],
        "the step map keeps a re-masked token's first commit, not its last",
    ),
    M(
        "rcr_not_dispatched",
        "rollout/engine.py",
        '    if params.strategy == "rcr":  # MDPO\'s remasking sampler (below)',
        '    if params.strategy == "rcr_":  # MDPO\'s remasking sampler (below)',
        ["tests/test_rcr.py::test_hand_checked_rcr_remasks_the_least_confident_and_a_committed_token_changes"],
        "strategy rcr decoded by the ordinary full-attention decoder",
    ),
    M(
        "rcr_block_causal_accepted",
        "rollout/engine.py",
        "    if not lm.traits.full_attention:",
        "    if False:",
        ["tests/test_rcr.py::test_refusals_name_the_family_and_the_unsupported_settings"],
        "a block-causal model decoded with RCR instead of refused",
        nth=1,  # the first is tree_generate's
    ),
    M(
        "rcr_rl_rollouts_accept_it",
        "rl/config.py",
        '        if self.rollout.sampling.strategy == "rcr":',
        '        if self.rollout.sampling.strategy == "rcr_":',
        ["tests/test_rcr.py::test_rl_rollouts_refuse_rcr_and_evaluation_accepts_it"],
        "RL rollouts decode with remasking, which the trace replay and estimators cannot score",
    ),
    M(
        "rcr_parse_steps_ignored",
        "rollout/sampling.py",
        '            return spec.strip(), replace(base, strategy="rcr", steps_per_block=int(args[0]) if args else base.steps_per_block)',
        '            return spec.strip(), replace(base, strategy="rcr")',
        ["tests/test_rcr.py::test_parse_strategy_rcr"],
        "`rcr:STEPS` keeps the base steps per block",
    ),
]


def _apply(text: str, m: Mutant) -> str:
    count = text.count(m.original)
    if m.nth is None:
        if count != 1:
            raise ValueError(f"{m.name}: {m.original!r} occurs {count} times in {m.path} (must be exactly once, or set nth)")
        return text.replace(m.original, m.replacement)
    if count <= m.nth:
        raise ValueError(f"{m.name}: {m.original!r} occurs {count} times in {m.path}, nth={m.nth}")
    start = -1
    for _ in range(m.nth + 1):
        start = text.index(m.original, start + 1)
    return text[:start] + m.replacement + text[start + len(m.original) :]


def scratch_copy(dest: Path) -> Path:
    """Copy the repository's sources (no venv, git, runs) to dest; return it."""
    ignore = shutil.ignore_patterns(".venv", ".git", "runs", "wandb", "__pycache__", "*.egg-info", ".pytest_cache", "build")
    shutil.copytree(REPO, dest, ignore=ignore, dirs_exist_ok=True)
    return dest


# Third-party modules every mutant's pytest run would import again (~7 s of a 2-core machine's
# time per run, ~20 min over the list). The fork server imports them once and forks a child per
# run; never the project's own modules (rl, rollout, algorithms, rewards, tests: the mutated
# sources must be imported fresh), nor modules that start threads on import (datasets' pyarrow
# pool), which a fork would leave half-copied. Importing ray starts nothing (its services start
# with ray.init, in the child), and saves each run that imports the trainer ~0.4 s.
PRELOAD = (
    "numpy", "torch", "pytest", "hypothesis", "pydantic", "yaml", "safetensors", "tokenizers", "typer",
    "transformers", "transformers.modeling_utils", "transformers.models.llama.modeling_llama",
    "transformers.models.qwen2.modeling_qwen2", "transformers.models.qwen3.modeling_qwen3",
    "transformers.models.qwen3_moe.modeling_qwen3_moe", "transformers.models.glm4_moe.modeling_glm4_moe",
    "peft", "math_verify", "ray",
)


def _pytest_args(tests: tuple[str, ...]) -> list[str]:
    # -o addopts clears the default "not slow" filter so a listed node id always runs.
    return ["-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=--doctest-modules", *tests]


def _env(workdir: Path) -> dict[str, str]:
    # PYTHONPATH puts the copy ahead of the editable install for this process and every child it
    # starts (CLI subprocesses, Ray workers); no bytecode, so a restored file is never shadowed by
    # the mutant's .pyc written in the same second.
    return {**os.environ, "PYTHONPATH": str(workdir), "PYTHONDONTWRITEBYTECODE": "1"}


def _serve(workdir: str) -> None:
    """The fork server's loop (run as `python tests/mutants.py --serve WORKDIR`).

    Reads one JSON request per line on stdin ({"tests", "timeout", "out"}), forks a child that runs
    pytest in-process with its output in `out`, and answers {"rc", "timed_out"} on stdout. Each
    child is its own process group, killed whole when it ends or times out, so a Ray cluster or CLI
    subprocess a failing test left behind does not outlive its run.
    """
    import importlib
    import signal

    # `python tests/mutants.py` puts tests/ first on sys.path; a child must see what `python -m
    # pytest` run in the copy sees: the copy first.
    sys.path[0] = workdir
    reply = os.fdopen(os.dup(1), "w")  # answers go here; anything a module prints goes to stderr
    os.dup2(2, 1)
    for name in PRELOAD:
        with contextlib.suppress(ImportError):  # a missing optional module only costs its import in each child
            importlib.import_module(name)
    import pytest

    # pytest's own modules and plugins, which every run imports again otherwise (~0.45 s a run): collecting an
    # empty directory imports them once, and no project file (its rootdir is the empty directory).
    with tempfile.TemporaryDirectory() as empty, contextlib.redirect_stdout(sys.stderr):
        pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", empty])

    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child: one pytest run, then exit without running the server's cleanup
            rc = 3
            try:
                os.setsid()
                null = os.open(os.devnull, os.O_RDONLY)
                out = os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(null, 0)
                os.dup2(out, 1)
                os.dup2(out, 2)
                rc = int(pytest.main(_pytest_args(tuple(req["tests"]))))
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(rc)
        deadline = time.monotonic() + req["timeout"]
        status, timed_out = None, False
        while status is None:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
            elif time.monotonic() > deadline:
                timed_out = True
                os.killpg(pid, signal.SIGKILL)
                status = os.waitpid(pid, 0)[1]
            else:
                time.sleep(0.05)
        try:  # whatever the run started and left behind
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        rc = os.waitstatus_to_exitcode(status)
        reply.write(json.dumps({"rc": rc, "timed_out": timed_out}) + "\n")
        reply.flush()


class _ForkServer:
    """A `_serve` process for one scratch copy, started on first use."""

    _servers: ClassVar[dict[Path, _ForkServer]] = {}

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", str(workdir)],
            cwd=workdir, env=_env(workdir), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )

    @classmethod
    def for_dir(cls, workdir: Path) -> _ForkServer:
        server = cls._servers.get(workdir)
        if server is None or server.proc.poll() is not None:
            server = cls._servers[workdir] = cls(workdir)
        return server

    def run(self, tests: tuple[str, ...], timeout: float) -> subprocess.CompletedProcess:
        with tempfile.NamedTemporaryFile(prefix="mutant-", suffix=".log", delete=False) as f:
            out = Path(f.name)
        try:
            self.proc.stdin.write(json.dumps({"tests": list(tests), "timeout": timeout, "out": str(out)}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the mutants' fork server exited ({self.proc.poll()})")
            reply = json.loads(line)
            text = out.read_text(errors="replace")
        finally:
            out.unlink(missing_ok=True)
        if reply["timed_out"]:
            raise subprocess.TimeoutExpired(tests, timeout, output=text)
        return subprocess.CompletedProcess(list(tests), reply["rc"], stdout=text, stderr="")


def _pytest(workdir: Path, tests: tuple[str, ...], timeout: float) -> subprocess.CompletedProcess:
    """Run pytest on `tests` in `workdir`: in a child of the fork server where fork exists (set
    UNMASK_MUTANTS_FORK=0 for a fresh interpreter per run, as the server's results must equal)."""
    if hasattr(os, "fork") and os.environ.get("UNMASK_MUTANTS_FORK", "1") != "0":
        return _ForkServer.for_dir(workdir).run(tests, timeout)
    cmd = [sys.executable, "-m", "pytest", *_pytest_args(tests)]
    return subprocess.run(cmd, check=False, cwd=workdir, env=_env(workdir), capture_output=True, text=True, timeout=timeout)


def run_mutant(m: Mutant, workdir: Path, timeout: float = 600) -> Outcome:
    """Apply `m` in `workdir`, run its tests, restore the file; caught means a test failed."""
    target = workdir / m.path
    original = target.read_text()
    start = time.monotonic()
    try:
        target.write_text(_apply(original, m))
        try:
            proc = _pytest(workdir, m.tests, timeout)
        except subprocess.TimeoutExpired:
            return Outcome(m.name, "error", f"timed out after {timeout:.0f} s", time.monotonic() - start)
    finally:
        target.write_text(original)
    seconds = time.monotonic() - start
    out = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return Outcome(m.name, "survived", "", seconds)
    failed = re.findall(r"^FAILED (\S+)", out, re.M)
    if proc.returncode == 1 and failed:
        return Outcome(m.name, "caught", failed[0], seconds)
    tail = " | ".join(out.strip().splitlines()[-3:])
    return Outcome(m.name, "error", f"pytest exit {proc.returncode}: {tail}", seconds)


def check_unmutated(workdir: Path, mutants: list[Mutant], timeout: float = 1200) -> subprocess.CompletedProcess:
    """Run every listed test once without a mutant: a mutant is only caught against a green run."""
    tests = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
    return _pytest(workdir, tests, timeout)


def run_mutants(mutants: list[Mutant], workdir: Path | None = None, progress=print) -> list[Outcome]:
    """Run each mutant in a scratch copy (made in a temporary directory unless given)."""
    with tempfile.TemporaryDirectory(prefix="unmask-mutants-") as tmp:
        work = workdir or scratch_copy(Path(tmp) / "repo")
        outcomes = []
        for i, m in enumerate(mutants, 1):
            o = run_mutant(m, work)
            progress(f"[{i}/{len(mutants)}] {o.status:8s} {m.name} ({o.seconds:.0f} s) {o.caught_by}")
            outcomes.append(o)
        return outcomes


def table(mutants: list[Mutant], outcomes: list[Outcome]) -> str:
    """A markdown table: mutant, file, status, the test that caught it."""
    rows = ["| mutant | file | status | caught by |", "|---|---|---|---|"]
    for m, o in zip(mutants, outcomes):
        rows.append(f"| {m.name} | {m.path} | {o.status} | {o.caught_by} |")
    caught = sum(o.status == "caught" for o in outcomes)
    rows.append(f"\n{caught}/{len(outcomes)} caught")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-k", default="", help="only mutants whose name contains this")
    p.add_argument("--json", type=Path, help="also write the outcomes here")
    p.add_argument("--skip-baseline", action="store_true", help="do not first check that the listed tests pass unmutated")
    args = p.parse_args(argv)
    chosen = [m for m in MUTANTS if args.k in m.name]
    with tempfile.TemporaryDirectory(prefix="unmask-mutants-") as tmp:
        work = scratch_copy(Path(tmp) / "repo")
        for m in chosen:  # a stale mutant (its line moved) is an error before anything runs
            _apply((work / m.path).read_text(), m)
        if not args.skip_baseline:
            base = check_unmutated(work, chosen)
            if base.returncode != 0:
                print(base.stdout[-3000:], base.stderr[-2000:])
                print("the listed tests fail without any mutant: fix the suite first")
                return 2
        outcomes = run_mutants(chosen, work)
    print(table(chosen, outcomes))
    if args.json:
        args.json.write_text(json.dumps([{**asdict(m), **asdict(o)} for m, o in zip(chosen, outcomes)], indent=2))
    return 0 if all(o.status == "caught" for o in outcomes) else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        _serve(sys.argv[2])
    else:
        sys.exit(main())
