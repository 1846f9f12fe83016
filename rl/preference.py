"""`unmask train` for offline preference units (`EstimatorUnit.offline_pairs`: VRPO).

Such a unit learns from preference pairs of the data, (prompt, chosen, rejected), with no rollouts
and no rewards, so the run needs neither rollout workers nor Ray: one process holds the policy, the
frozen reference (the initial policy; with LoRA the base with the adapter off) and AdamW, through
the same `rl.learner.Learner` the RL path uses (loading, LoRA, the lr schedule, checkpoint files).

One step reads: pairs -> responses as trajectories -> ELBOs of policy and reference on the same
masks -> the unit's objective -> optimizer step. The step's pairs and masks are pure functions of
(train.seed, step), and a checkpoint holds the learner's files plus the data cursor, so a resumed
run continues exactly (as `rl.trainer` does for RL).

Responses: each is tokenised as SFT tokenises its targets (no special tokens, one EOS appended),
after the prompt exactly as the run's template and chat template encode it (`PromptStream`); a
response longer than its source's max_new_tokens is cut there (counted as data/<source>/cut).
Nothing is padded into a response, so padding never carries loss.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from algorithms.estimators import occurrence_index
from rl.checkpoint import CheckpointStore, resolve_model_ref
from rl.config import RunConfig, config_yaml
from rl.data import DataError, PromptStream, load_source
from rl.data.names import source_name
from rl.data.sources import Example, Source
from rl.tracking import MetricsLogger, plot_run
from rollout.trajectory import Trajectory

HELDOUT_SEED = 12_345  # held-out pairs are scored on the same masks at every evaluation


class PreferenceTrainer:
    """Runs `unmask train` for a unit with `offline_pairs` (VRPO). Construct, then call `train()`.

    Pairs per step: rollout.prompts_per_step; gradient accumulation: learner.micro_batches; the
    objective's beta: algorithm.beta; the ELBO options: the unit's (algorithm.mc_samples, options).
    """

    def __init__(self, cfg: RunConfig, run_dir: str | Path | None = None, resume: bool = False):
        cfg.model.path = resolve_model_ref(cfg.model.path)
        self.cfg, self.unit = cfg, cfg.algorithm.estimator_unit()
        if not self.unit.offline_pairs:
            raise ValueError(f"algorithm.estimator {self.unit.name!r} learns from rollouts, not preference pairs: use rl.trainer.Trainer")
        if cfg.learner.ranks != 1:
            raise ValueError(f"learner.ranks: {cfg.learner.ranks}: a preference run ({self.unit.name}) trains in one process; set learner.ranks: 1")
        if cfg.algorithm.beta <= 0:
            raise ValueError(f"algorithm.beta: {self.unit.name} is DPO on ELBOs and needs beta > 0 (its preset: {self.unit.config_defaults.get('beta')})")
        self.run_dir = Path(run_dir or cfg.train.output_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        from transformers import AutoTokenizer

        # The data first: a bad file, row or column stops the run before any model is loaded.
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
        self.sources: list[Source] = []
        for s in cfg.data.sources:
            print(f"data {source_name(s)}: reading and checking {s.path} ...")
            src = load_source(s, cfg.rewards)
            for ex in src.train + src.heldout:
                if ex.chosen is None:
                    raise DataError(f"{ex.loc}: source {src.name!r} has no preference pair (set chosen: and rejected: columns, or preset: preference); "
                                    f"algorithm.estimator {self.unit.name!r} trains on pairs")  # fmt: skip
            if src.infinite:
                raise DataError(f"source {src.name!r}: {src.origin} generates prompts without preference pairs; {self.unit.name} needs a file of pairs")
            self.sources.append(src)
        self.stream = PromptStream(self.sources, self.tokenizer, cfg.train.seed, cfg.data.shuffle, cfg.data.max_prompt_tokens)
        self.heldout = self.stream.heldout()
        self.store = CheckpointStore(cfg.train.checkpoint_dir or self.run_dir / "checkpoints")
        self.resume_from = self.store.latest() if resume else None
        if resume and self.resume_from is None:
            raise FileNotFoundError(f"--resume: no complete checkpoint under {self.store.root}")
        data = cfg.model_dump()
        for d, src in zip(data["data"]["sources"], self.sources):
            d["template"], d["max_new_tokens"] = src.template.text, src.max_new_tokens
        (self.run_dir / "config.yaml").write_text(config_yaml(data, cfg.algorithm))
        from rl.learner import Learner

        print(f"{self.unit.name}: loading the policy and its frozen reference from {cfg.model.path} (offline pairs: no rollouts, no Ray) ...")
        self.learner = Learner(cfg)  # refuses a family whose attention the unit's ELBO is not defined for
        self.lm = self.learner.lm
        self.options = cfg.algorithm.estimator_options()
        self.cut: Counter = Counter()
        self._ids: dict[tuple[str, str, str], list[int]] = {}
        for src in self.sources:
            print(f"data {src.name}: {src.origin}: {len(src.train)} train pairs, {len(src.heldout)} held-out"
                  + (f", {self.stream.dropped[src.name]} over data.max_prompt_tokens dropped" if self.stream.dropped[src.name] else ""))  # fmt: skip

    # -- pairs -----------------------------------------------------------------------------------
    def response_ids(self, src: Source, ex: Example, role: str) -> list[int]:
        """Token ids of `ex`'s chosen or rejected response: the text without special tokens, then
        EOS; cut at the source's max_new_tokens (counted once per response)."""
        key = (src.name, ex.id, role)
        if key not in self._ids:
            ids = self.tokenizer(getattr(ex, role), add_special_tokens=False)["input_ids"] + [self.lm.eos_id]
            if len(ids) > src.max_new_tokens:
                ids = ids[: src.max_new_tokens]
                self.cut[src.name] += 1
            self._ids[key] = ids
        return self._ids[key]

    def trajectories(self, examples: list[Example]) -> tuple[list[Trajectory], list[Trajectory]]:
        """(chosen, rejected): each pair's responses as trajectories after its encoded prompt."""
        by_name = {s.name: s for s in self.sources}
        out: dict[str, list[Trajectory]] = {"chosen": [], "rejected": []}
        for g, ex in enumerate(examples):
            src = by_name[ex.source]
            for role, trajs in out.items():
                ids = self.response_ids(src, ex, role)
                trajs.append(Trajectory(list(ex.prompt_ids), ids, [0] * len(ids), [0.0] * len(ids), None, 1.0, 0, "eos", group=g))
        return out["chosen"], out["rejected"]

    def _reference_elbo(self, trajs: list[Trajectory], seed: int, occurrences: list[int]) -> torch.Tensor:
        """The reference's ELBOs on the policy's masks (same seed and occurrences: antithetic sampling)."""
        from algorithms.vrpo import sequence_elbo

        with torch.no_grad(), self.learner._autocast():
            if self.learner.ref is not None:
                return sequence_elbo(self.learner.ref, trajs, seed, occurrences, **self.options)
            with self.learner.peft.disable_adapter():  # LoRA: the base without the adapter is the initial policy
                return sequence_elbo(self.lm, trajs, seed, occurrences, **self.options)

    def pair_metrics(self, examples: list[Example], seed: int, backward: bool, pieces: int = 1) -> dict[str, float]:
        """The objective on `examples` (summed over `pieces` micro-batches, each its share of the
        whole), with its backward pass when `backward`; returns the objective's metrics."""
        from algorithms.vrpo import sequence_elbo

        chosen, rejected = self.trajectories(examples)
        n = len(examples)
        occ = occurrence_index(chosen + rejected)  # over the whole step: a pair's masks do not depend on its micro-batch
        totals: Counter = Counter()
        for idx in np.array_split(np.arange(n), min(pieces, n)):
            idx = idx.tolist()
            trajs = [chosen[i] for i in idx] + [rejected[i] for i in idx]
            piece_occ = [occ[i] for i in idx] + [occ[n + i] for i in idx]
            ref = self._reference_elbo(trajs, seed, piece_occ)
            with torch.set_grad_enabled(backward), self.learner._autocast():
                pol = sequence_elbo(self.lm, trajs, seed, piece_occ, **self.options)
            k = len(idx)
            loss, m = self.unit.objective(pol[:k], pol[k:], ref[:k], ref[k:], self.cfg.algorithm.beta, pairs=n)
            if backward:
                loss.backward()
            totals.update(m)  # each piece's metrics are its share of the whole: they add up
        return dict(totals)

    def update(self, step: int) -> dict[str, float]:
        """One optimizer step on step `step`'s pairs (rollout.prompts_per_step of them)."""
        cfg, learner = self.cfg, self.learner
        examples = self.stream.batch(step, cfg.rollout.prompts_per_step)
        seed = cfg.train.seed * 1_000_003 + step  # the masks of this step, shared by policy and reference
        lr = learner.lr_at(learner.step)
        for group in learner.optimizer.param_groups:
            group["lr"] = lr
        learner.optimizer.zero_grad(set_to_none=True)
        self.lm.model.train()
        metrics = self.pair_metrics(examples, seed, backward=True, pieces=cfg.learner.micro_batches)
        params = [p for p in self.lm.model.parameters() if p.requires_grad]
        metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.algorithm.grad_clip))
        learner.optimizer.step()
        self.lm.model.eval()
        learner.step += 1
        metrics["lr"] = lr
        return metrics

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Preference accuracy, margin and loss on each source's held-out pairs (fixed masks)."""
        out: dict[str, float] = {}
        P = self.cfg.rollout.prompts_per_step
        for name, exs in self.heldout.items():
            sums: Counter = Counter()
            for i in range(0, len(exs), P):
                part = exs[i : i + P]
                m = self.pair_metrics(part, HELDOUT_SEED, backward=False)
                sums.update({k: v * len(part) for k, v in m.items()})
            for key in ("rewards/accuracies", "rewards/margins", "loss/policy"):
                out[f"eval/{name}/{key}"] = sums[key] / len(exs)
        return out

    # -- the loop --------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        cfg, t_start = self.cfg, time.perf_counter()
        P, start, state = cfg.rollout.prompts_per_step, 0, {}
        if self.resume_from is not None:
            files, state = self.store.read(self.resume_from)
            start = self.learner.load_state_files(files)
            self.cut.update(state.get("cut", {}))
            saved, now = state.get("data_cursor"), self.stream.cursor(start, P)
            if saved is not None and saved != now:
                tqdm.write(f"warning: the data cursor of the checkpoint ({saved}) differs from this run's ({now}): the data changed since it was written")
            print(f"resumed from {self.resume_from} (step {start})")
        logger = MetricsLogger(self.run_dir, cfg.wandb.mode, cfg.wandb.project, cfg.model_dump(), resume_step=start if state else None)
        before = state.get("heldout_before")
        if before is None and self.heldout:
            before = self.evaluate()
            logger.log(before, step=0)
        bar = tqdm(range(start, cfg.train.steps), initial=start, total=cfg.train.steps, desc=self.unit.name, unit="step")
        ckpt = None
        for step in bar:
            t0 = time.perf_counter()
            metrics = self.update(step)
            metrics["timing_s/update"] = time.perf_counter() - t0
            done = step + 1
            metrics["data/epoch"] = self.stream.epoch(done, P)
            metrics.update({f"data/{name}/cut": float(self.cut[name]) for name in (s.name for s in self.sources)})
            if self.heldout and cfg.eval.every and done % cfg.eval.every == 0 and done != cfg.train.steps:
                metrics.update(self.evaluate())
            logger.log(metrics, step=done)
            bar.set_postfix(loss=f"{metrics['loss/policy']:.3f}", acc=f"{metrics['rewards/accuracies']:.2f}", margin=f"{metrics['rewards/margins']:.3f}")
            if done % cfg.train.save_every == 0 or done == cfg.train.steps:
                wall = state.get("wall_seconds", 0.0) + time.perf_counter() - t_start
                ckpt = self.store.write(done, self.learner.state_files(), {
                    "step": done, "data_cursor": self.stream.cursor(done, P), "wall_seconds": wall, "cut": dict(self.cut),
                    "heldout_before": before,
                })  # fmt: skip
        bar.close()
        after = self.evaluate() if self.heldout else {}
        if after:
            logger.log(after, step=cfg.train.steps)
        logger.close()
        wall = time.perf_counter() - t_start
        summary = {
            "algorithm": self.unit.name, "steps": cfg.train.steps, "pairs_per_step": P,
            "heldout_before": before, "heldout_after": after or None, "responses_cut": dict(self.cut),
            "wall_seconds": round(wall, 1), "run_dir": str(self.run_dir), "last_checkpoint": ckpt,
        }  # fmt: skip
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        plot_run(self.run_dir)
        lines = [f"held-out {k.split('/', 1)[1]}: {before[k]:.3f} -> {after[k]:.3f}" for k in after if "accuracies" in k or "margins" in k] if after and before else []
        print("\n" + "\n".join(lines) + ("\n" if lines else "") + f"wall time: {wall:.0f}s (this invocation)\nrun directory: {self.run_dir}\n"
              f"resume (e.g. with more steps): unmask train {self.run_dir / 'config.yaml'} --output-dir {self.run_dir} --resume "
              f"--set train.steps={cfg.train.steps * 2}")  # fmt: skip
        return summary
