"""The RL driver: the step loop and the run's bookkeeping (data, rewards, checkpoints, metrics).

One step reads: rollout -> score -> advantages -> update -> sync_weights, each stage
timed as timing_s/<stage>, handing one `rl.batch.StepBatch` along. Light work (scoring,
advantages) runs on the driver; decoding and learning run in the Ray actors of rl/actors.py.
Weights travel learner -> object store -> workers, never through disk.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import ray
import torch
from tqdm.auto import tqdm

from algorithms.advantages import filter_groups, group_advantages, truncated_rewards
from algorithms.ebpo import EbpoPrior
from rewards import get_reward
from rewards.registry import reward_name
from rl.actors import LearnerDied, LearnerRanks, RolloutWorkers
from rl.batch import StepBatch, padded, value_outcome_rewards
from rl.checkpoint import CheckpointStore, resolve_model_ref
from rl.cluster import connect, pack_dir, place, reap_stale_session, record_local_session
from rl.config import RunConfig, config_yaml
from rl.data import DataError, PromptStream, load_benchmark, load_source, parse_benchmark
from rl.data.names import source_name
from rl.process_rewards import token_rewards
from rl.scoring import score_steps, score_texts
from rl.tracking import MetricsLogger, plot_run
from rollout.families import family_traits
from rollout.models import checkpoint_family
from rollout.trajectory import answer_length


def _heldout_only(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.startswith("accuracy/")}


def no_signal(heldout: float | None = None, rewards: Sequence[float] | None = None) -> str | None:
    """The warning for a start with no reward signal (group advantages all 0: RL cannot begin),
    from the held-out accuracy before RL or the first step's rewards; None when there is signal.

    >>> no_signal(heldout=0.25), no_signal(rewards=[0.0, 0.5])
    (None, None)
    >>> no_signal(rewards=[0.0] * 4).split(":")[1]
    ' no reward signal'
    """
    if heldout is not None and heldout == 0:
        what = "held-out accuracy of the starting model is 0"
    elif rewards is not None and len(rewards) and not any(rewards):
        what = f"every sample of the first step ({len(rewards)}) got reward 0"
    else:
        return None
    return (
        f"warning: no reward signal: the {what}, so every advantage is 0 and RL has nothing to learn from. "
        "A base model must sometimes answer right in the format the reward checks: run `unmask sft` on these rows "
        "first (README: Train on your data), or check the template and max_new_tokens."
    )


class _StopSignals:
    """Record SIGINT/SIGTERM instead of dying mid-step, so the loop can checkpoint first.

    A second signal restores the default behaviour (a user pressing Ctrl-C twice gets out).
    Only the main thread may install handlers; elsewhere this does nothing.
    """

    def __init__(self):
        self.signum = 0
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signum:
            self.restore()
            signal.raise_signal(signum)
        self.signum = signum
        tqdm.write(f"signal {signum}: finishing this step, then writing a checkpoint (again to abort)")

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def _as_unit_rows(kept: StepBatch, rows: list, advantages: torch.Tensor, owner: list[int], siblings: torch.Tensor | None = None) -> StepBatch:
    """The batch as a unit's own learner rows (MDPO's step rows, d-TreeRPO's tree edges): row r carries
    sample owner[r]'s reward and loss mask and its own advantage (and its parent node, tree edges);
    per-sample value targets no longer apply."""
    own = torch.tensor(owner, dtype=torch.long)
    return dataclasses.replace(kept, trajs=rows, rewards=kept.rewards[own], advantages=advantages, loss_mask=kept.loss_mask[own],
                               value_rewards=None, token_rewards=None, step_rewards=None, scored_steps=None, siblings=siblings)  # fmt: skip


class Trainer:
    """Runs `unmask train`. Construct, then call `train()`."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path | None = None, resume: bool = False):
        # model.path may be any checkpoint form the README names (a model, step_N or run directory);
        # the workers, the learner and the run's config.yaml all get the model directory itself.
        cfg.model.path = resolve_model_ref(cfg.model.path)
        self.cfg = cfg
        self.run_dir = Path(run_dir or cfg.train.output_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        from transformers import AutoTokenizer

        family = cfg.model.family or checkpoint_family(cfg.model.path)
        if cfg.rollout.overlap and family is not None and "prefix" in family_traits(family).approximate_caches and cfg.rollout.sampling.kv_cache:
            # One-step overlap takes the importance ratio's old log-probs from the rollout; the
            # full-attention prefix cache is approximate, so they would not be the policy's own.
            raise ValueError(f"rollout.overlap with the {family} family needs rollout.sampling.kv_cache: false "
                             "(its prefix cache is approximate, and overlap uses the rollout's log-probs in the ratio)")
        # The data first: a bad file, row, column or template stops the run before Ray starts.
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
        self.sources = []
        for s in cfg.data.sources:  # reading and checking every row of a large file takes a while: say so first
            print(f"data {source_name(s)}: reading and checking {s.path} ...")
            self.sources.append(load_source(s, cfg.rewards))
        for src in self.sources:
            if not src.rewards:
                raise DataError(f"source {src.name!r} has no rewards: list rewards under the source (or top-level rewards), or use a preset that implies one")
        print(f"data: encoding {sum(len(src.train) + len(src.heldout) for src in self.sources)} prompts with the model's tokenizer ...")
        self.stream = PromptStream(self.sources, self.tokenizer, cfg.train.seed, cfg.data.shuffle, cfg.data.max_prompt_tokens)
        self.heldout = {name: exs[: cfg.eval.heldout_limit] for name, exs in self.stream.heldout().items()}
        from rewards.registry import with_sandbox

        # scoring.sandbox is an argument of the rewards that run code (held-out and eval.benchmarks
        # scoring pass it too), never an environment variable.
        self.reward_fns = {src.name: [with_sandbox(get_reward(s.name, **s.kwargs), cfg.scoring.sandbox) for s in src.rewards]
                           for src in self.sources}  # fmt: skip
        self.reward_weights = {src.name: [s.weight for s in src.rewards] for src in self.sources}
        if any(s.name == "code" for src in self.sources for s in src.rewards):
            from rewards import sandbox_info

            print(f"code sandbox: {sandbox_info(cfg.scoring.sandbox)}")
        budget = max(src.max_new_tokens for src in self.sources)  # one decode serves every source's prompts
        self.train_params = cfg.rollout.sampling.params(budget)
        if self.unit.needs_step_predictions:  # the unit scores intermediate answers (MDPO): the rollout records them
            self.train_params = dataclasses.replace(self.train_params, record_steps=True)
        self.eval_params = cfg.eval.sampling.params(budget)
        self.eval_benchmarks = self._load_eval_benchmarks()
        self._describe_data()
        self.store = CheckpointStore(cfg.train.checkpoint_dir or self.run_dir / "checkpoints")
        self.resume_from = self.store.latest() if resume else None
        if resume and self.resume_from is None:
            raise FileNotFoundError(f"--resume: no complete checkpoint under {self.store.root}")
        # EBPO's global prior (algorithms.ebpo) lives for the whole run: saved with every checkpoint, restored on resume.
        self.ebpo_prior = EbpoPrior() if cfg.algorithm.advantage == "ebpo" else None
        # Each preset field carries a comment naming its source (the paper's file, or your config).
        (self.run_dir / "config.yaml").write_text(config_yaml(self._resolved_config(), cfg.algorithm))

        n_workers, n_ranks = cfg.rollout.num_workers, cfg.learner.ranks
        if cfg.cluster.address is None:  # a run killed here before left its local Ray running: end it first
            ended = reap_stale_session(self.run_dir)
            if ended:
                print(f"ended {ended} Ray process(es) left by a killed run in {self.run_dir}")
        print(f"starting Ray, {n_workers} rollout worker(s) and {n_ranks} learner rank(s) ...")
        connect(cfg.cluster.address)
        if cfg.cluster.address is None:
            record_local_session(self.run_dir)
        self.placement = place(cfg.cluster, n_workers, n_ranks)
        # A local model directory travels to other nodes through the object store (no shared disk).
        packed = None
        if cfg.cluster.address is not None and Path(cfg.model.path).is_dir():
            packed = ray.put(pack_dir(cfg.model.path))
        # Rollout workers decode at the same time, so by default they split the cores (with the
        # learner ranks too when rollout.overlap runs both at once).
        busy = n_workers + (n_ranks if cfg.rollout.overlap else 0)
        threads = cfg.train.threads or max(1, int(ray.cluster_resources().get("CPU", os.cpu_count() or 1)) // busy)
        self.learners = LearnerRanks(cfg, self.placement.learner, packed, died=self._learner_died)
        lora = cfg.model.lora.model_dump(exclude={"enabled"}) if cfg.model.lora.enabled else None
        worker_args = (cfg.model.path, packed, cfg.model.block_size, threads, cfg.model.family, cfg.model.trust_remote_code, lora)
        self.workers = RolloutWorkers(self.placement.rollout, worker_args, {"compile": cfg.rollout.compile, "dtype": cfg.rollout.dtype})
        self.step = 0  # steps whose update has been applied (the learner's weights version)

    def _load_eval_benchmarks(self) -> list:
        """The configured eval benchmarks, loaded now so a bad path or option fails before training."""
        benches = []
        for spec in self.cfg.eval.benchmarks:
            try:
                benches.append(load_benchmark(parse_benchmark(spec)))
            except DataError as e:
                raise DataError(f"eval.benchmarks: {spec!r}: {e}") from None
        return benches

    def _resolved_config(self) -> dict:
        """The config as run: each source's preset spelled out (its template text, rewards and
        budget), so the copy records exactly what the model saw and what scored it."""
        data = self.cfg.model_dump()
        for d, src in zip(data["data"]["sources"], self.sources):
            d["template"] = src.template.text
            d["rewards"] = [r.model_dump() for r in src.rewards]
            d["max_new_tokens"] = src.max_new_tokens
        return data

    def _describe_data(self) -> None:
        """Print (and write data.json) what each source holds: rows, held-out, dropped, one prompt as the model sees it."""
        info = {}
        for src in self.sources:
            sample = src.heldout[0] if src.heldout else (src.train[0] if src.train else src.draw(1, self.cfg.train.seed, 0)[0])
            ids = self.stream.encode(src, sample)
            info[src.name] = {
                "origin": src.origin, "preset": src.preset.name, "weight": src.cfg.weight,
                "train_rows": None if src.infinite else len(src.train), "heldout_rows": len(src.heldout),
                "heldout_scored": len(self.heldout.get(src.name, [])),
                "dropped_train": self.stream.dropped[src.name], "dropped_heldout": self.stream.heldout_dropped[src.name],
                "rewards": [r.name for r in src.rewards], "max_new_tokens": src.max_new_tokens,
                "example_prompt": self.tokenizer.decode(ids), "example_prompt_tokens": len(ids),
            }  # fmt: skip
            rows = "endless" if src.infinite else f"{len(src.train)} train rows"
            drop = self.stream.dropped[src.name] + self.stream.heldout_dropped[src.name]
            print(f"data {src.name}: {src.origin}: {rows}, {len(src.heldout)} held-out"
                  + (f", {drop} prompts over data.max_prompt_tokens dropped" if drop else "") + f"; rewards {', '.join(r.name for r in src.rewards)}")  # fmt: skip
        if not self.heldout:
            print("no source has a held-out split (heldout: {path: FILE} or {size: N}): accuracy before/after is not measured")
        (self.run_dir / "data.json").write_text(json.dumps(info, indent=2))

    # -- Ray: rl/actors.py fans the work out; the trainer keeps the run's bookkeeping --------
    def _learner_died(self, stage: str, e: Exception) -> LearnerDied:
        last = self.store.latest()
        # A rank whose constructor raised: its own error (the last line of Ray's report) says why.
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = f" ({lines[-1]})" if "creation task" in str(e) and lines else ""
        return LearnerDied(
            f"a learner rank died during {stage} ({self.step} steps done): {type(e).__name__}{why}. "
            + (f"The last checkpoint is intact: {last}\nresume: unmask train {self.run_dir / 'config.yaml'} "
               f"--output-dir {self.run_dir} --resume" if last else "No checkpoint was written yet.")
        )

    def sync_weights(self, version: int, wait: bool = True) -> None:
        """Send the learner's weights (rank 0's) to every worker through the object store.

        wait=False only queues the load behind whatever the workers are decoding (overlap mode).
        """
        self.workers.sync(self.learners, version, wait=wait)

    @property
    def unit(self):
        """The run's estimator unit (`algorithm.estimator`): the stages ask it, never its name."""
        return self.cfg.algorithm.estimator_unit()

    @property
    def unit_options(self):
        """The unit's typed options (`algorithm.options` and its config fields)."""
        return self.unit.check_options(self.cfg.algorithm.estimator_options())

    # -- stages ----------------------------------------------------------------------------
    def rollout(self, step: int) -> StepBatch:
        """Decode step `step`'s prompts (samples_per_prompt each) and wait for them."""
        return self.collect(self.launch_rollout(step))

    def launch_rollout(self, step: int) -> dict:
        """Start decoding step `step`'s prompts; the data depend only on (seed, step). The
        dataset rows stay here (in the job, then the batch): the workers get prompt ids only."""
        examples = self.stream.batch(step, self.cfg.rollout.prompts_per_step)
        items = [(ex.prompt_ids, g) for g, ex in enumerate(examples) for _ in range(self.cfg.rollout.samples_per_prompt)]
        job = self.workers.launch(items, seed=self.cfg.train.seed * 1_000_003 + step, params=self.train_params)
        job["examples"] = examples
        return job

    def collect(self, job: dict) -> StepBatch:
        """Wait for a launched rollout: its trajectories with the examples they came from."""
        return StepBatch(self.workers.collect(job), job["examples"])

    def score(self, batch: StepBatch) -> dict[str, float]:
        """Score every sample with its source's rewards (sample t came from batch.example(t)):
        fills batch.rewards (the total per sample, in order) and batch.token_rewards; returns metrics."""
        trajs = batch.trajs
        n = len(trajs)
        total: list[float | None] = [None] * n
        outcome: list[float | None] = [None] * n
        steps: list[Any] = [None] * n
        correct = [False] * n
        # A unit that scores intermediate answers (MDPO), when the rollout recorded them.
        step_unit = self.unit if trajs and trajs[0].step_predictions is not None and self.unit.needs_step_predictions else None
        step_scored: list[list[int]] = [[] for _ in range(n)]
        step_values: list[list[float]] = [[] for _ in range(n)]
        metrics: dict[str, float] = {}
        sc = self.cfg.scoring
        for src in self.sources:
            idx = [i for i, t in enumerate(trajs) if batch.example(t).source == src.name]
            if not idx:
                continue
            exs = [batch.example(trajs[i]) for i in idx]
            columns = {k: [ex.columns[k] for ex in exs] for k in exs[0].columns}
            res = score_texts(
                src.template, self.reward_fns[src.name], self.reward_weights[src.name], [ex.prompt for ex in exs],
                [trajs[i].text for i in idx], columns, fail_fast=sc.fail_fast, timeout_s=sc.timeout_s, num_workers=sc.num_workers,
            )  # fmt: skip
            tot, per_fn, errors = res
            acc_fn = self.reward_fns[src.name][src.rewards.index(src.accuracy_reward())]
            acc_values = per_fn[reward_name(acc_fn)]
            for k, i in enumerate(idx):
                total[i], outcome[i], steps[i], correct[i] = tot[k], res.outcome[k], res.steps[k], acc_values[k] == 1.0
            vals = [v for v in tot if v is not None]
            metrics[f"reward/{src.name}/mean"] = float(np.mean(vals)) if vals else float("nan")
            metrics[f"accuracy/{src.name}/train"] = float(np.mean([correct[i] for i in idx]))
            for name, values in per_fn.items():
                v = [x for x in values if x is not None]
                metrics[f"reward/{src.name}/{name}/mean"] = float(np.mean(v)) if v else float("nan")
            for name, k in res.num_failed.items():
                metrics[f"reward/{src.name}/{name}/failed"] = float(k)
            for name, err in errors.items():
                tqdm.write(f"reward {name} ({src.name}) failed this step: {err}")
            if step_unit is not None:  # each sample's intermediate answers, the same scoring path
                scored = [step_unit.scored_steps(len(trajs[i].step_predictions), self.unit_options) for i in idx]
                values = score_steps(src.template, self.reward_fns[src.name], self.reward_weights[src.name], [ex.prompt for ex in exs],
                                     [trajs[i] for i in idx], scored, self.tokenizer, columns, fail_fast=sc.fail_fast,
                                     timeout_s=sc.timeout_s, num_workers=sc.num_workers)  # fmt: skip
                for k, i in enumerate(idx):
                    step_scored[i], step_values[i] = scored[k], values[k]
        metrics["accuracy/train"] = float(np.mean(correct))
        metrics["reward/failed"] = float(sum(v is None for v in total))
        # Process rewards: per-token rewards on the steps that finished each chunk (value model).
        batch.token_rewards = None
        if any(s is not None for s in steps):
            batch.token_rewards = padded([token_rewards(t, outcome[i] or 0.0, steps[i], self.tokenizer) for i, t in enumerate(trajs)])
        # A sample no reward could score gets 0: it is kept (never misaligned), it just earns nothing.
        batch.rewards = torch.tensor([0.0 if v is None else float(v) for v in total], dtype=torch.float64)
        if step_unit is not None:
            batch.step_rewards = padded(step_values)
            batch.scored_steps = padded([[s + 1 for s in row] for row in step_scored], torch.long) - 1  # -1 after a sample's steps
            metrics["reward/steps_scored"] = float(sum(len(s) for s in step_scored))
        return metrics

    def advantages(self, batch: StepBatch) -> tuple[StepBatch, dict[str, float]]:
        """Truncation handling, group filters and group advantages, on the driver.

        Returns the kept samples (`StepBatch.select`: a filtered group leaves with its rewards,
        step maps and process rewards) with their advantages, rewards and loss mask, and metrics.
        """
        algo, trajs = self.cfg.algorithm, batch.trajs
        r, loss_mask = truncated_rewards(batch.rewards.float(), [t.finish_reason for t in trajs], algo.truncation)
        groups = batch.groups
        if algo.advantage == "ebpo":  # the group baseline shrunk toward the run's prior, which this batch updates
            adv, prior_metrics = self.ebpo_prior.advantages(r, groups)
        else:
            adv, prior_metrics = group_advantages(r, groups, algo.advantage, std=algo.zscore_std), {}
        # Filters drop whole groups, so the z-scores are the kept groups' own statistics.
        value_r = value_outcome_rewards(r, groups, algo)
        keep = filter_groups(r, groups, algo.drop_zero_std, algo.min_acc, algo.max_acc)
        grouped = r.view(-1, self.cfg.rollout.samples_per_prompt)
        metrics = {
            "frac_reward_zero_std": float((grouped.std(dim=1) == 0).float().mean()),
            "frac_truncated": float(np.mean([t.finish_reason == "length" for t in trajs])),
            "frac_filtered": float(1 - keep.float().mean()),
            **prior_metrics,
        }
        scored = dataclasses.replace(batch, rewards=r, advantages=adv, loss_mask=loss_mask, value_rewards=value_r)
        kept = scored.select(keep.nonzero().flatten())
        if kept.step_rewards is not None and self.unit.step_batch is not None and len(kept):
            # The unit's own rows and advantages (MDPO: one row per sample and trained step, its step advantage).
            steps = [[s for s in row if s >= 0] for row in kept.scored_steps.tolist()]
            kept = _as_unit_rows(kept, *self.unit.step_batch(kept.trajs, kept.step_rewards, steps, self.unit_options))
            metrics["step_rows"] = float(len(kept.trajs))
        if self.unit.tree_batch is not None and len(kept):
            # A tree rollout's leaves become one row per tree edge, with its node advantage (d-TreeRPO).
            kept = _as_unit_rows(kept, *self.unit.tree_batch(kept.trajs, kept.rewards, self.train_params.tree, self.unit_options))
            metrics["tree_edges"] = float(len(kept.trajs))
        return kept, metrics

    def update(self, batch: StepBatch) -> dict[str, float]:
        """One learner update on every rank; colocated workers give up their memory meanwhile."""
        colocated = self.cfg.cluster.placement == "colocated"
        if colocated:
            self.workers.offload()
        packed = ray.put(batch.for_learner())  # tensors, once into the object store, read by every rank
        metrics = self.learners.call(lambda rank: rank.update.remote(packed), stage="update")
        if colocated:
            self.workers.onload()
        return metrics

    def evaluate(self, step: int) -> dict[str, float]:
        """Greedy (eval.sampling) accuracy on every source's held-out split and on eval.benchmarks.

        accuracy/heldout is the mean over all held-out problems; accuracy/<source>/heldout per source."""
        t0 = time.perf_counter()
        out: dict[str, float] = {}
        correct_all, nfe_all = [], []
        for src in self.sources:
            exs = self.heldout.get(src.name)
            if not exs:
                continue
            params = self.eval_params if self.cfg.eval.sampling.max_new_tokens else dataclasses.replace(self.eval_params, max_new_tokens=src.max_new_tokens)
            items = [(ex.prompt_ids, i) for i, ex in enumerate(exs)]  # the rows stay here
            trajs = self.workers.run(items, seed=0, params=params)
            spec = src.accuracy_reward()
            res = score_texts(src.template, [get_reward(spec.name, **spec.kwargs)], None, [ex.prompt for ex in exs], [t.text for t in trajs],
                              {k: [ex.columns[k] for ex in exs] for k in exs[0].columns}, timeout_s=self.cfg.scoring.timeout_s,
                              sandbox=self.cfg.scoring.sandbox)  # fmt: skip
            correct = [v == 1.0 for v in res[0]]
            out[f"accuracy/{src.name}/heldout"] = float(np.mean(correct))
            correct_all += correct
            nfe_all += [t.nfe for t in trajs]
        if correct_all:
            out["accuracy/heldout"] = float(np.mean(correct_all))
            out["eval/nfe_mean"] = float(np.mean(nfe_all))
        for bench in self.eval_benchmarks:
            out.update(self._evaluate_benchmark(bench))
        out["timing_s/eval"] = time.perf_counter() - t0
        return out

    def _evaluate_benchmark(self, bench) -> dict[str, float]:
        """One benchmark on the rollout workers, scored by its reward (as `unmask eval` does)."""
        from rl.data import encode_messages
        from rl.evaluate import score_benchmark

        params = dataclasses.replace(self.eval_params, max_new_tokens=bench.max_new_tokens)
        items = [(encode_messages(self.tokenizer, e.messages, bench.chat)[0], i) for i, e in enumerate(bench.examples)]
        trajs = self.workers.run(items, seed=0, params=params)
        rewards, err = score_benchmark(bench, bench.problems, [t.text for t in trajs], self.cfg.scoring.timeout_s, sandbox=self.cfg.scoring.sandbox)
        if err:
            tqdm.write(f"eval {bench.label}: reward failed on some samples: {err}")
        return {
            f"eval/{bench.label}/pass@1": float(np.mean([r == 1.0 for r in rewards])),
            f"eval/{bench.label}/nfe": float(np.mean([t.nfe for t in trajs])),
        }

    # -- the loop --------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        cfg, t_start = self.cfg, time.perf_counter()
        start, state = 0, {}
        if self.resume_from is not None:
            files, state = self.store.read(self.resume_from)
            start = self.learners.call(lambda rank: rank.load_state_files.remote(files), stage="resume")
            print(f"resumed from {self.resume_from} (step {start})")
            self._restore_advantage_state(state)
        self.step = start
        logger = MetricsLogger(self.run_dir, cfg.wandb.mode, cfg.wandb.project, cfg.model_dump(), resume_step=start if state else None)
        self.sync_weights(version=start)

        P = cfg.rollout.prompts_per_step
        if state:
            self._check_cursor(state.get("data_cursor"), start)
        if "accuracy_before" in state:
            before = state.get("heldout_before") or {"accuracy/heldout": state["accuracy_before"]}
        else:
            if self.heldout:
                print(f"held-out accuracy before RL: decoding {self._heldout_desc()} ...")
            before = self.evaluate(step=0)
            logger.log(before, step=0)
            if "accuracy/heldout" in before:
                print(f"held-out accuracy before RL: {before['accuracy/heldout']:.3f} ({self._heldout_desc()})")
                if warning := no_signal(heldout=before["accuracy/heldout"]):
                    print(warning)
        acc_before = before.get("accuracy/heldout")

        overlap = cfg.rollout.overlap
        bar = tqdm(range(start, cfg.train.steps), initial=start, total=cfg.train.steps, desc="RL", unit="step")
        stop = _StopSignals()  # SIGINT/SIGTERM: finish the step, checkpoint, exit
        pending = self.launch_rollout(start) if overlap else None
        for step in bar:
            metrics: dict[str, float] = {}
            if step == start:  # the first rollout is the slowest (workers warm up) and the bar says nothing until it ends
                tqdm.write(f"step {step + 1}: rolling out {P} prompts x {cfg.rollout.samples_per_prompt} samples "
                           f"(up to {self.train_params.max_new_tokens} new tokens each) on {cfg.rollout.num_workers} worker(s) ...")
            t0 = time.perf_counter()
            job = pending if overlap else self.launch_rollout(step)
            batch = self.collect(job)
            rollouts = batch.trajs
            metrics["timing_s/rollout"] = time.perf_counter() - t0  # overlap: the wait not hidden behind the update
            t1 = time.perf_counter() - job["t0"]  # launch to last sample: tokens_per_s is per second of decoding wall time
            staleness = [self.step - t.version for t in rollouts]

            t0 = time.perf_counter()
            metrics.update(self.score(batch))
            if step == start and (warning := no_signal(rewards=batch.rewards.tolist())):
                tqdm.write(warning)
            metrics["timing_s/score"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            kept, adv_metrics = self.advantages(batch)
            metrics.update(adv_metrics)
            metrics["timing_s/advantages"] = time.perf_counter() - t0

            if overlap and step + 1 < cfg.train.steps:
                # Step k+1 decodes with the weights of step k while the learner updates on step k.
                pending = self.launch_rollout(step + 1)
            t0 = time.perf_counter()
            if len(kept):
                metrics.update(self.update(kept))
            else:
                tqdm.write(f"step {step + 1}: every group was filtered out; no update")
            self.step = step + 1
            metrics["timing_s/update"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            self.sync_weights(version=step + 1, wait=not overlap)
            metrics["timing_s/sync_weights"] = time.perf_counter() - t0

            n_tok = sum(len(t.completion_ids) for t in rollouts)
            metrics.update(
                {
                    "reward/mean": float(batch.rewards.mean()),
                    "tokens_per_s": n_tok / max(t1, 1e-9),
                    "rollout/nfe_mean": float(np.mean([t.nfe for t in rollouts])),
                    "rollout/tokens_per_forward": n_tok / max(1, sum(t.nfe for t in rollouts)),
                    "rollout/frac_eos": float(np.mean([t.finish_reason == "eos" for t in rollouts])),
                    "rollout/response_length": float(np.mean([answer_length(t.completion_ids, self.tokenizer.eos_token_id) for t in rollouts])),
                    "rollout/staleness": float(np.mean(staleness)),
                    "faults/worker_restarts": float(self.workers.restarts),
                    "data/epoch": self.stream.epoch(step + 1, P),
                    **{f"data/{name}/dropped": float(k) for name, k in self.stream.dropped.items()},
                }
            )
            done = step + 1
            if cfg.eval.every and done % cfg.eval.every == 0 and done != cfg.train.steps:
                metrics.update(self.evaluate(done))
            logger.log(metrics, step=done)
            bar.set_postfix(
                reward=f"{metrics['reward/mean']:.2f}", acc=f"{metrics['accuracy/train']:.2f}",
                loss=f"{metrics.get('loss/total', float('nan')):.3f}", kl=f"{metrics.get('kl', float('nan')):.4f}",
                tok_s=f"{metrics['tokens_per_s']:.0f}",
            )
            if done % cfg.train.save_every == 0 or done == cfg.train.steps or stop.signum:
                wall = state.get("wall_seconds", 0.0) + time.perf_counter() - t_start
                ckpt = self.save(done, {"accuracy_before": acc_before, "heldout_before": _heldout_only(before), "wall_seconds": wall,
                                        "data_cursor": self.stream.cursor(done, P), **self._advantage_state()})
            if stop.signum:
                bar.close()
                logger.close()
                print(f"\nstopped by signal {stop.signum} after step {done}; checkpoint: {ckpt}\n"
                      f"resume: unmask train {self.run_dir / 'config.yaml'} --output-dir {self.run_dir} --resume")
                raise SystemExit(128 + stop.signum)
        stop.restore()
        bar.close()

        after = self.evaluate(cfg.train.steps)
        logger.log(after, step=cfg.train.steps)
        logger.close()
        wall = time.perf_counter() - t_start
        summary = {
            "accuracy_before": acc_before,
            "accuracy_after": after.get("accuracy/heldout"),
            "heldout_size": sum(len(v) for v in self.heldout.values()),
            "sources": {
                src.name: {
                    "accuracy_before": before.get(f"accuracy/{src.name}/heldout"), "accuracy_after": after.get(f"accuracy/{src.name}/heldout"),
                    "heldout_size": len(self.heldout.get(src.name, [])), "train_rows": None if src.infinite else len(src.train),
                    "dropped_prompts": self.stream.dropped[src.name] + self.stream.heldout_dropped[src.name],
                }
                for src in self.sources
            },  # fmt: skip
            "steps": cfg.train.steps,
            "wall_seconds": round(wall, 1),
            "wall_seconds_total": round(wall + state.get("wall_seconds", 0.0), 1),
            "run_dir": str(self.run_dir),
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        plot = plot_run(self.run_dir)
        last = self.store.step_path(cfg.train.steps)
        lines = []
        if acc_before is not None:
            lines.append(f"held-out accuracy: {acc_before:.3f} -> {summary['accuracy_after']:.3f} ({self._heldout_desc()}, "
                         f"{self.eval_params.strategy} decoding, T={self.eval_params.temperature})")  # fmt: skip
            if len(self.heldout) > 1:
                lines += [f"  {n}: {v['accuracy_before']:.3f} -> {v['accuracy_after']:.3f} ({v['heldout_size']} problems)"
                          for n, v in summary["sources"].items() if v["heldout_size"]]  # fmt: skip
        print(
            "\n" + "\n".join(lines) + "\n"
            f"wall time: {summary['wall_seconds']:.0f}s (this invocation)\n"
            f"run directory: {self.run_dir}\n"
            f"  config.yaml, metrics.jsonl, summary.json, {plot.name}" + (", checkpoints/" if self.store.root == str(self.run_dir / "checkpoints") else f"; checkpoints: {self.store.root}") + "\n"
            f"resume (e.g. with more steps): unmask train {self.run_dir / 'config.yaml'} --output-dir {self.run_dir} --resume --set train.steps={cfg.train.steps * 2}\n"
            + (f"evaluate:                      unmask eval {last} --data {self.run_dir / 'config.yaml'}" if self.heldout else "")
        )
        return summary

    def _heldout_desc(self) -> str:
        return f"{sum(len(v) for v in self.heldout.values())} problems" + (f" over {len(self.heldout)} sources" if len(self.heldout) > 1 else "")

    def _advantage_state(self) -> dict[str, Any]:
        """What the advantages stage carries across steps, for trainer_state.json: EBPO's prior."""
        return {"ebpo_prior": self.ebpo_prior.state_dict()} if getattr(self, "ebpo_prior", None) is not None else {}

    def _restore_advantage_state(self, state: dict) -> None:
        """Restore `_advantage_state` from a checkpoint's trainer_state.json (resume)."""
        if getattr(self, "ebpo_prior", None) is None:
            return
        if "ebpo_prior" not in state:
            raise ValueError("--resume with algorithm.advantage: ebpo, but the checkpoint has no EBPO prior (it was written by a run "
                             "with another advantage); resume with that run's advantage, or start a new run")
        self.ebpo_prior.load_state_dict(state["ebpo_prior"])

    def _check_cursor(self, saved: dict | None, start: int) -> None:
        """On resume the stream must stand where the checkpoint says; otherwise the data changed under the run."""
        if saved is None:
            return
        now = self.stream.cursor(start, self.cfg.rollout.prompts_per_step)
        if now != saved:
            tqdm.write(f"warning: the data cursor of the checkpoint ({saved}) differs from this run's ({now}): "
                       "the data files, sources or prompts_per_step changed since it was written; the prompt order will differ")  # fmt: skip

    def save(self, step: int, extra: dict[str, Any]) -> str:
        """Checkpoint: the learner's files (rank 0's, via the object store) written by the driver,
        then trainer_state.json, the marker that makes the checkpoint count as complete."""
        files = self.learners.call(lambda rank: rank.state_files.remote(), stage="checkpoint")
        return self.store.write(step, files, {"step": step, **extra})

    def shutdown(self) -> None:
        for actor in [*self.learners, *self.workers]:
            ray.kill(actor)
        self.placement.remove()


def trainer_class(cfg: RunConfig) -> type:
    """The driver the run's algorithm asks for: `rl.preference.PreferenceTrainer` for a unit that
    learns offline from preference pairs (`EstimatorUnit.offline_pairs`: VRPO; no rollouts, rewards
    or Ray), else `Trainer`. Both take (cfg, run_dir, resume) and run with `train()`."""
    if cfg.algorithm.estimator_unit().offline_pairs:
        from rl.preference import PreferenceTrainer

        return PreferenceTrainer
    return Trainer
