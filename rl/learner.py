"""The learner: policy, frozen reference, optional value model, and optimizers that live for
the whole run.

A plain class; the trainer runs it as Ray actors, one per data-parallel rank. One `update`
consumes one rollout batch: old and reference log-probs (and old values) first, then
`epochs x minibatches` optimizer steps of the configured estimator and loss (or epochs x the unit's
segments, segment by segment: `EstimatorUnit.segment_count`).

The batch arrives as a `rl.batch.LearnerBatch` (tensors, advantages and the value model's
outcome rewards computed on the driver). Data parallelism, the collective calls, weights and
checkpoints live in rl/learner_state.py (`LearnerState`, which `Learner` extends); this module
is the update math.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from algorithms.estimators import get_estimator, group_positions, loss_mask, occurrence_index
from algorithms.losses import LOSSES, SEPARABLE_LOSSES, LossTotals
from algorithms.trace import trace_pass_index, trace_step_index
from algorithms.value import (
    GAE_FORMS,
    ValueModel,
    explained_variance,
    explained_variance_moments,
    fold_token_rewards,
    terminal_token_rewards,
    value_loss,
)
from rl import distributed
from rl.batch import LearnerBatch
from rl.config import AlgorithmConfig, RunConfig
from rl.distributed import Piece, minibatch_pieces
from rl.learner_state import LearnerState, as_float
from rollout.lora import apply_lora
from rollout.models import DiffusionLM, load_model
from rollout.trajectory import Trajectory
from rollout.weights import flatten_parameters


def _rows_tensor(rows: Sequence[Sequence[int]], width: int) -> torch.Tensor:
    """[N, width] long, each row's ints left-aligned, -1 after them."""
    out = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
    return out


def estimator_options(algo: AlgorithmConfig) -> dict:
    """The estimator keyword options of a run config (`AlgorithmConfig.estimator_options`): the
    unit's own option names, so coupled's `coupled_t_min` arrives as its `t_min`."""
    return algo.estimator_options()


class EstimatorModule(nn.Module):
    """A likelihood estimator as a module's forward: one call, one whole estimate.

    DDP expects one forward of the module it wraps per backward, and FSDP2 gathers the root's
    parameters (embeddings, final norm, LM head) in the root's forward. Estimators call the
    backbone and the head directly, several times per estimate for some (trace: one pass per
    step group; mc_elbo: n passes), so the module the parallel wrappers see is this one.
    """

    def __init__(self, lm: DiffusionLM, estimate: Callable):
        super().__init__()
        self.model = lm.model  # registered: the parameters DDP / FSDP2 manage
        self.lm, self.estimate = lm, estimate

    def forward(self, trajs: Sequence[Trajectory], **opts):
        return self.estimate(self.lm, trajs, None, **opts)


@dataclass
class _Scored:
    """What the no-grad passes computed for one piece, reused by every epoch's optimizer steps."""

    piece: Piece
    old: torch.Tensor | None  # [n, C] old log-probs (None: the unit's objective is ratio-free)
    keep: torch.Tensor  # [n, C] tokens carrying loss (estimator mask & loss_mask)
    adv: torch.Tensor  # [n] or [n, C]
    ref: torch.Tensor | None = None
    passes: torch.Tensor | None = None  # [n, C] trace pass of each token, -1 = none (loss_norm: pass)
    weights: torch.Tensor | None = None  # [n, C] (or [n, C, K]) the unit's loss_weights, taken over the whole minibatch
    old_values: torch.Tensor | None = None
    returns: torch.Tensor | None = None


def _learner_device(cfg: RunConfig) -> torch.device:
    """The GPU Ray gave this actor (cluster.gpus_per_bundle > 0; Ray makes it the only visible
    one), else the CPU."""
    if cfg.cluster.gpus_per_bundle > 0 and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _enable_gradient_checkpointing(model: nn.Module) -> None:
    # Non-reentrant: works with DDP hooks, FSDP2 and frozen (LoRA) base weights alike.
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


class Learner(LearnerState):
    """Owns the trainable policy (and value model) and their AdamW states; one data-parallel rank.

    Args:
        cfg: the run config (model, algorithm, learner sections).
        rank, world_size: this rank and the number of ranks (the trainer passes learner.ranks).
            With world_size > 1, call `setup_distributed` on every rank before anything else.
    """

    def __init__(self, cfg: RunConfig, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        m, algo, lc = cfg.model, cfg.algorithm, cfg.learner
        self.fsdp = world_size > 1 and lc.parallel == "fsdp2"
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.device = _learner_device(cfg)
        self.lm = load_model(m.path, family=m.family, block_size=m.block_size, trust_remote_code=m.trust_remote_code)
        self.lm.model.to(self.device)
        if lc.attention == "flex":
            if self.device.type == "cpu":
                raise ValueError("learner.attention: flex needs a GPU learner (torch has no flex attention backward on CPU); use sdpa")
            self.lm.model.set_attn_implementation("flex_attention")  # before the copies below, which inherit it
        if lc.gradient_checkpointing:
            _enable_gradient_checkpointing(self.lm.model)  # before the copies below, which inherit it
        self.ref = self.peft = None
        if m.lora.enabled:
            # The reference is then the base model with the adapter disabled: no second copy.
            self.peft = apply_lora(self.lm, m.lora.r, m.lora.alpha, m.lora.dropout, m.lora.target_modules)
            if Path(m.path).exists():  # saved adapters must find their base from any directory
                self.peft.peft_config["default"].base_model_name_or_path = str(Path(m.path).resolve())
        elif algo.beta > 0:
            # The reference is the initial policy, frozen.
            self.ref = copy.deepcopy(self.lm)
            self.ref.model.requires_grad_(False)
        self.value = None
        if algo.value.enabled:
            # The critic starts from the policy's weights, with its own copy and optimizer.
            self.value = ValueModel(copy.deepcopy(self.lm))
        self.estimator = get_estimator(algo.estimator)
        kind = "full" if self.lm.traits.full_attention else "block_causal"
        if kind not in self.estimator.attention:
            raise ValueError(
                f"algorithm.estimator: {self.estimator.name!r} is defined for {' and '.join(sorted(self.estimator.attention))} attention "
                f"only; model family {self.lm.traits.name!r} has {kind} attention (choose another estimator or family)"
            )
        self.estimator_opts = estimator_options(algo)
        self._estimator_options = self.estimator.check_options(self.estimator_opts)  # typed, for pass_scores
        self.loss_fn = self.estimator.objective or LOSSES[algo.loss]  # a unit's own objective (wd1, SPG) wins
        # One rank only: DDP and FSDP2 need the whole estimate inside one forward of the module they wrap.
        # The value loss is per token, so the critic's passes split whatever the policy's estimator.
        self.value_backward_per_pass = lc.backward_per_pass and world_size == 1
        self.backward_per_pass = self.value_backward_per_pass and self.estimator.several_passes(**self.estimator_opts)
        # TraceRL with a token-separable loss takes each pass's share of the loss directly. A loss
        # that couples tokens (GSPO's sequence ratio), or an estimator that combines passes per
        # token (coupled's full-mask pass, mc_elbo's average), needs every pass's log-probs first:
        # the passes then run twice, once without a graph and once for their backward.
        separable = self.estimator.objective is None and algo.loss in SEPARABLE_LOSSES
        self.recompute_per_pass = self.backward_per_pass and not (self.estimator.pass_scores is not None and separable)
        # What update() calls: replaced by their DDP / FSDP2 forms in setup_distributed.
        self._policy: nn.Module = EstimatorModule(self.lm, self.estimator)
        self._ref: nn.Module | None = EstimatorModule(self.ref, self.estimator) if self.ref is not None else None
        self._value: nn.Module | None = self.value
        self._ready = world_size == 1
        self.optimizer = self.value_optimizer = None
        if not self.fsdp and self.peft is None:
            # The policy's parameters as views of one buffer per dtype: get_weights' snapshot then
            # crosses the object store as one large copy (FSDP2 reshards them; LoRA sends the adapter).
            flatten_parameters(self.lm.model)
        if not self.fsdp:  # FSDP2 replaces the parameters with sharded ones: optimizers come after
            self._build_optimizers()
        self.step = 0
        self._lr_factor = None  # the lr schedule's factor function (lr_at), built on first use

    def _build_optimizers(self) -> None:
        algo = self.cfg.algorithm
        trainable = [p for p in self.lm.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=algo.lr, betas=tuple(algo.adam_betas), weight_decay=algo.weight_decay)
        if self.value is not None:
            self.value_optimizer = torch.optim.AdamW(self.value.parameters(), lr=algo.value.lr)

    # -- the update ------------------------------------------------------------------------------
    def _autocast(self):
        if not self.cfg.learner.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def update(self, batch: LearnerBatch) -> dict[str, float]:
        """One RL update on a rollout batch; returns diagnostics averaged over optimizer steps.
        Collective: every rank gets the same batch and returns the same (global) metrics.

        `batch` (`rl.batch.LearnerBatch`) carries per sample the group advantage (ignored when
        the value model is on), the loss mask (False keeps a sample out of the loss: truncation:
        mask), and for the value model the outcome reward its GAE sees (`value_rewards`, placed
        on the last trace step that carries loss) or per-token process rewards
        (`token_rewards`, placed on their trace steps by rl.process_rewards).
        """
        self._check_ready()
        algo = self.cfg.algorithm
        if not isinstance(batch, LearnerBatch):
            raise TypeError(f"Learner.update takes a LearnerBatch (StepBatch.for_learner / LearnerBatch.pack), got {type(batch).__name__}")
        if self.value is not None and batch.value_rewards is None and batch.token_rewards is None:
            raise ValueError("the value model needs value_rewards (the outcome reward per sample) or token_rewards")
        trajs = batch.trajectories()
        self._group_rank, self._group_size = group_positions(batch.group.tolist())  # over the whole batch, before any split
        seed = self.cfg.train.seed * 1_000_003 + self.step
        gen = torch.Generator().manual_seed(seed)
        segmented = self._segment_count() is not None  # the unit's segments, each for `epochs` consecutive steps
        chunks = self._segments(batch, gen) if segmented else self._minibatches(batch, gen)
        # Old, reference and current passes draw the same masks: same seed, per-sample RNG. With
        # redraw_masks every inner epoch e draws its own masks (d1), so the old and reference
        # log-probs of every epoch's masks are taken now, under the weights that sampled the batch.
        draws = algo.epochs if algo.redraw_masks and not self.estimator.replays_trace else 1
        mb_seed = lambda j, d=0: seed * 131 + j + 7_919 * d  # noqa: E731
        per_draw = [self._score_old(trajs, batch, chunks, lambda j, d=d: mb_seed(j, d)) for d in range(draws)]
        metrics: dict[str, list[float]] = defaultdict(list)
        if per_draw[0][2] is not None:
            metrics["logp_mismatch"] = per_draw[0][2]
        self.lm.model.train()
        if self.value is not None:
            self.value.train()
        if segmented:  # segment-major: each segment's epochs, then the next segment
            order = [(epoch, j) for j in range(len(chunks)) for epoch in range(algo.epochs)]
        else:
            order = [(epoch, j) for epoch in range(algo.epochs) for j in range(len(chunks))]
        for i, (epoch, j) in enumerate(order):
            d = epoch % draws
            scored, totals, _ = per_draw[d]
            opt_step = self.step * self.steps_per_update() + i if segmented else (self.step * algo.epochs + epoch) * algo.minibatches + j
            lr = self._set_lr(opt_step)
            if self.estimator.loss_weights is not None and self.estimator.scheduled_weights(self._estimator_options):  # weights that follow the optimizer step
                self._unit_weights(trajs, batch, chunks[j], scored[j], opt_step)
            for k, v in self._optimizer_step(trajs, scored[j], totals[j], mb_seed(j, d)).items():
                metrics[k].append(v)
            metrics["lr"].append(lr)
        self.lm.model.eval()
        if self.value is not None:
            self.value.eval()
        self.step += 1
        return {k: float(np.mean(v)) for k, v in metrics.items()}

    def _minibatches(self, batch: LearnerBatch, gen: torch.Generator) -> list[list[int]]:
        """The rows of each minibatch: a random permutation of the rows in `algorithm.minibatches` chunks, or of
        whole sibling groups (`LearnerBatch.siblings`) where the unit's loss couples them (`sibling_minibatches`)."""
        minibatches = self.cfg.algorithm.minibatches
        if not self.estimator.sibling_minibatches(self._estimator_options):
            return [c.tolist() for c in torch.randperm(len(batch), generator=gen).chunk(minibatches)]
        if batch.siblings is None:
            raise ValueError(f"estimator {self.estimator.name!r} keeps sibling rows in one minibatch, but the batch has no siblings "
                             "(LearnerBatch.pack(..., siblings=): the tree_batch rows' parent ids)")  # fmt: skip
        ids, group_of = torch.unique(batch.siblings, return_inverse=True)
        rows = [(group_of == g).nonzero().flatten().tolist() for g in range(len(ids))]
        return [[i for g in part.tolist() for i in rows[g]] for part in torch.randperm(len(ids), generator=gen).chunk(minibatches)]

    def _segment_count(self) -> int | None:
        """The segments the unit trains one after another per update (`EstimatorUnit.segment_count`), or None."""
        return self.estimator.segment_count(self._estimator_options, self.cfg.rollout.sampling.tree)

    def _segments(self, batch: LearnerBatch, gen: torch.Generator) -> list[list[int]]:
        """The rows of each of the unit's segments, in training order (`EstimatorUnit.segments`)."""
        if batch.siblings is None:
            raise ValueError(f"estimator {self.estimator.name!r} trains segments of parent nodes, but the batch has no siblings "
                             "(LearnerBatch.pack(..., siblings=): the tree_batch rows' parent ids)")  # fmt: skip
        return self.estimator.segments(self._estimator_options, batch.siblings, self.cfg.rollout.sampling.tree, gen)

    def steps_per_update(self) -> int:
        """Optimizer steps one update takes: epochs x minibatches, or epochs x the unit's segments
        (`EstimatorUnit.segment_count`: d-TreeRPO's per-parent schedule)."""
        algo = self.cfg.algorithm
        segments = self._segment_count()
        return algo.epochs * (algo.minibatches if segments is None else segments)

    def _objective_advantages(self, trajs: list[Trajectory], packed: LearnerBatch) -> torch.Tensor:
        """[B] the advantages the objective gets: the batch's, or the unit's advantage_weights of them, taken over
        the whole batch before any split (wd1's group softmax)."""
        adv_all = packed.advantages.float()
        if self.estimator.advantage_weights is not None:  # over the whole batch, not a piece's rows
            adv_all = self.estimator.advantage_weights(adv_all, packed.group, loss_mask(trajs, self.lm.eos_id).sum(1))
        return adv_all

    def _unit_weights(self, trajs: list[Trajectory], packed: LearnerBatch, idx: list[int], pieces: list[_Scored], opt_step: int | None = None) -> None:
        """Set each piece's `weights`: the unit's loss_weights over the whole minibatch `idx`, before any split
        (CJ-GRPO's per-step means); with `scheduled_weights`, those of optimizer step `opt_step`."""
        kw = {}
        if opt_step is not None:
            adv = self._objective_advantages(trajs, packed)
            kw = {"advantages": adv[idx], "siblings": None if packed.siblings is None else packed.siblings[idx],
                  "progress": (opt_step, self.cfg.train.steps * self.steps_per_update())}  # fmt: skip
        weights = self.estimator.loss_weights([trajs[i] for i in idx], packed.loss_mask[idx], self._estimator_options, self.lm.eos_id, **kw)
        row_of = {i: r for r, i in enumerate(idx)}
        for s in pieces:
            s.weights = weights[[row_of[i] for i in s.piece.idx], : s.keep.shape[1]].to(self.device)

    def lr_at(self, opt_step: int) -> float:
        """The policy's learning rate at optimizer step `opt_step` (0-based over the run): `algorithm.lr`
        times transformers' schedule factor (warm-up, then constant or cosine to min_lr_ratio). Derived
        from the step alone, so a resumed run continues the schedule where it stopped."""
        algo = self.cfg.algorithm
        if algo.lr_schedule == "constant" and not algo.warmup_steps:
            return algo.lr
        if self._lr_factor is None:
            from transformers import get_constant_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup

            total = self.cfg.train.steps * self.steps_per_update()
            probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)  # the schedule's factor, no state
            if algo.lr_schedule == "cosine":
                sched = get_cosine_with_min_lr_schedule_with_warmup(probe, algo.warmup_steps, total, min_lr_rate=algo.min_lr_ratio)
            else:
                sched = get_constant_schedule_with_warmup(probe, algo.warmup_steps)
            self._lr_factor = sched.lr_lambdas[0]
        return algo.lr * float(self._lr_factor(opt_step))

    def _set_lr(self, opt_step: int) -> float:
        lr = self.lr_at(opt_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _adv_kw(self, advantages: torch.Tensor, idx: Sequence[int] = ()) -> dict:
        """The estimate's extra keywords its unit asks for: `advantages=` (a piece's [n]; SPG's bound
        per sign) and `group_rank=`, `group_size=` of the piece's samples `idx` over the whole batch
        (ESPO's stratified masks)."""
        kw = {"advantages": advantages} if self.estimator.estimate_takes_advantages else {}
        if self.estimator.estimate_takes_group_ranks:
            kw["group_rank"] = [self._group_rank[i] for i in idx]
            kw["group_size"] = [self._group_size[i] for i in idx]
        return kw

    def _rows(self, batch: Sequence[Trajectory], index_fn, width: int) -> torch.Tensor:
        """[n, width] long: `index_fn(step_map, prompt_len, block_size, shrink, full_attention=)` per
        sample (the family's traits), -1 after."""
        shrink, traits = self.cfg.algorithm.shrink, self.lm.traits
        rows = [index_fn(t.step_map, len(t.prompt_ids), traits.block_size, shrink, full_attention=traits.full_attention) for t in batch]
        return _rows_tensor(rows, width).to(self.device)

    @torch.no_grad()
    def _score_old(self, trajs: list[Trajectory], packed: LearnerBatch, chunks, mb_seed):
        """Old and reference log-probs (and old values, GAE) of this rank's pieces, and each
        minibatch's global totals (one all-reduce)."""
        algo, lc = self.cfg.algorithm, self.cfg.learner
        dev = self.device
        adv_all = self._objective_advantages(trajs, packed)
        keep_all = packed.loss_mask
        token_rewards, value_rewards = packed.token_rewards, packed.value_rewards
        opts = self.estimator_opts
        scored: list[list[_Scored]] = []
        sums = torch.zeros((len(chunks), 5), dtype=torch.float64)  # tokens, sequences, passes, real tokens, |logp mismatch|
        for j, idx in enumerate(chunks):
            occ = occurrence_index([trajs[i] for i in idx])
            scored.append([])
            for piece in minibatch_pieces(idx, occ, self.rank, self.world_size, lc.micro_batches):
                batch = [trajs[i] for i in piece.idx]
                with self._autocast():
                    if self.estimator.needs_old_logp:
                        old, mask = self._policy(batch, seed=mb_seed(j), occurrences=piece.occurrences, **self._adv_kw(adv_all[piece.idx], piece.idx), **opts)
                    else:  # a ratio-free objective: no old-policy pass
                        old, mask = None, loss_mask(batch, self.lm.eos_id, dev)
                    ref = None
                    if algo.beta > 0:
                        if self.peft is not None:
                            with self.peft.disable_adapter():
                                ref = self._policy(batch, seed=mb_seed(j), occurrences=piece.occurrences, **self._adv_kw(adv_all[piece.idx], piece.idx), **opts)[0]
                        else:
                            ref = self._ref(batch, seed=mb_seed(j), occurrences=piece.occurrences, **self._adv_kw(adv_all[piece.idx], piece.idx), **opts)[0]
                keep = mask & keep_all[piece.idx].to(dev)[:, None]
                s = _Scored(piece, old, keep, adv_all[piece.idx].to(dev), ref)
                if algo.loss_norm == "pass":
                    s.passes = self._rows(batch, trace_pass_index, mask.shape[1])
                if self.value is not None:
                    # The MDP steps: merged step groups in decoding order, only where loss is
                    # taken (padding and the filler after the first EOS are no states).
                    steps = self._rows(batch, trace_step_index, mask.shape[1]).masked_fill(~mask, -1)
                    with self._autocast():
                        s.old_values = self._value(batch, algo.shrink).float()
                    if token_rewards is not None:
                        tok_r = torch.zeros(steps.shape, device=dev)
                        w = min(steps.shape[1], token_rewards.shape[1])
                        tok_r[:, :w] = token_rewards[piece.idx, :w].float().to(dev)
                        tok_r = fold_token_rewards(tok_r, steps)
                    else:
                        tok_r = terminal_token_rewards(value_rewards[piece.idx].float().to(dev), steps)
                    gae = GAE_FORMS[algo.value.form]
                    s.adv, s.returns = gae(tok_r, s.old_values, steps, algo.value.gamma, algo.value.lam)
                lengths = keep.sum(1)
                sums[j, 0] += piece.weight * float(lengths.sum())
                sums[j, 1] += piece.weight * float((lengths > 0).sum())
                if s.passes is not None:
                    sums[j, 2] += piece.weight * LossTotals.of(keep, s.passes).passes
                if self.estimator.replays_trace:
                    # ~0 when rollout and learner agree on weights and replay; large = stale or misaligned.
                    rollout_lp = torch.zeros_like(old)
                    for r, t in enumerate(batch):
                        rollout_lp[r, : len(t.logprobs)] = torch.tensor(t.logprobs)
                    sums[j, 3] += piece.weight * float(mask.sum())
                    sums[j, 4] += piece.weight * float(((old - rollout_lp).abs() * mask).sum())
                    if self.cfg.rollout.overlap:
                        # One-step off-policy: the samples came from the previous weights, so the
                        # behaviour policy of the ratio is the rollout's own distribution.
                        s.old = rollout_lp.to(old.dtype)
                scored[j].append(s)
            if self.estimator.loss_weights is not None and not self.estimator.scheduled_weights(self._estimator_options):
                self._unit_weights(trajs, packed, idx, scored[j])  # once: the same weights for every epoch
        distributed.all_reduce_sum(sums)
        totals = [LossTotals(float(t), float(n), float(k)) for t, n, k in sums[:, :3].tolist()]
        mismatch = (sums[:, 4] / sums[:, 3].clamp(min=1)).tolist() if self.estimator.replays_trace else None
        return scored, totals, mismatch

    def _optimizer_step(self, trajs, pieces: list[_Scored], totals: LossTotals, seed: int) -> dict[str, float]:
        """One optimizer step on one minibatch: forward/backward of this rank's pieces, gradients
        summed over pieces and ranks, global clipping, step. Returns the minibatch's metrics."""
        algo = self.cfg.algorithm
        opts = self.estimator_opts
        # Each piece's loss is its share of the whole minibatch's (totals), and DDP / FSDP2
        # average gradients over ranks, so scaling by world_size makes the result their sum.
        scale = float(self.world_size)
        sums: dict[str, float] = defaultdict(float)
        ev_moments = torch.zeros(5, dtype=torch.float64)
        self.optimizer.zero_grad(set_to_none=True)
        if self.value is not None:
            self.value_optimizer.zero_grad(set_to_none=True)
        for p, s in enumerate(pieces):
            batch = [trajs[i] for i in s.piece.idx]
            w = s.piece.weight

            def loss_of(logp: torch.Tensor, s: _Scored = s):
                return self.loss_fn(
                    logp, s.old, s.adv, s.keep, algo.eps_low, algo.eps_high,
                    ref_logp=s.ref, beta=algo.beta, norm=algo.loss_norm, norm_constant=algo.norm_constant, totals=totals,
                    pass_index=s.passes, **({"weights": s.weights} if s.weights is not None else {}),
                )

            with self._no_sync(sync=p == len(pieces) - 1):
                if self.recompute_per_pass:
                    estimate = functools.partial(self._policy, batch, seed=seed, occurrences=s.piece.occurrences, with_entropy=True, **self._adv_kw(s.adv, s.piece.idx), **opts)
                    logp, entropy, loss, m = self._backward_through_logprobs(estimate, loss_of, w * scale)
                elif self.backward_per_pass:
                    scores = self.estimator.pass_scores(self.lm, batch, self._estimator_options, with_entropy=True)
                    logp, entropy = self._backward_per_pass(scores, s.old, loss_of, w * scale)
                    with torch.no_grad():
                        loss, m = loss_of(logp)
                else:
                    with self._autocast():
                        logp, _, entropy = self._policy(batch, seed=seed, occurrences=s.piece.occurrences, with_entropy=True, **self._adv_kw(s.adv, s.piece.idx), **opts)
                    loss, m = loss_of(logp)
                    (loss * (w * scale)).backward()
                m["loss/total"] = loss.item()
                m["entropy"] = float((entropy * s.keep).sum()) / max(totals.tokens, 1.0)
                if self.value is not None:

                    def vloss_of(values: torch.Tensor, s: _Scored = s):
                        return value_loss(values, s.old_values, s.returns, s.keep, algo.value.clip, totals=totals)

                    if self.value_backward_per_pass:
                        passes = ((index, v, None) for index, v in self.value.pass_values(batch, algo.shrink))
                        values, _ = self._backward_per_pass(passes, s.returns.float(), vloss_of, w * scale)
                        with torch.no_grad():
                            vloss, vm = vloss_of(values)
                    else:
                        with self._autocast():
                            values = self._value(batch, algo.shrink).float()
                        vloss, vm = vloss_of(values)
                        (vloss * (w * scale)).backward()
                    m.update(vm)
                    ev_moments += w * explained_variance_moments(values, s.returns, s.keep)
            for k, v in m.items():
                sums[k] += w * v
        keys = sorted(sums)
        packed = torch.tensor([sums[k] for k in keys] + ev_moments.tolist(), dtype=torch.float64)
        distributed.all_reduce_sum(packed)
        out = dict(zip(keys, packed[: len(keys)].tolist()))
        # Gradients are already summed over ranks (DDP all-reduce / FSDP2 reduce-scatter), so the
        # norm is global: clip_grad_norm_ of FSDP2's sharded gradients reduces it across ranks.
        out["grad_norm"] = as_float(torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], algo.grad_clip))
        self.optimizer.step()
        if self.value is not None:
            torch.nn.utils.clip_grad_norm_(list(self.value.parameters()), algo.grad_clip)
            self.value_optimizer.step()
            out["explained_variance"] = explained_variance(packed[len(keys) :])
        return out

    def _backward_per_pass(self, scores, like: torch.Tensor, loss_of, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Backward after each TraceRL pass, not once after all of them (`learner.backward_per_pass`).

        scores: ((r, c), values [n_k], entropy [n_k] or None) per pass, each token in exactly one
        pass (`trace_pass_scores`, `ValueModel.pass_values`); loss_of: the piece's loss of an
        [n, C] tensor shaped like `like`. Each pass's activations are freed before the next pass
        runs, so the peak holds one pass, not ceil(steps per block / shrink) of them. Exact: with
        a token-separable loss (`SEPARABLE_LOSSES`, the value loss) a token's term depends only
        on its own value, so the gradient of the loss taken with this pass's values live (the
        others' as constants) is this pass's share of the whole gradient. Returns the detached
        values and entropies [n, C] of every pass.
        """
        out, entropy = torch.zeros_like(like), torch.zeros_like(like)
        with self._autocast():
            for index, v, ent in scores:
                loss, _ = loss_of(out.index_put(index, v.to(out.dtype)))
                (loss * weight).backward()
                out[index] = v.detach().to(out.dtype)
                if ent is not None:
                    entropy[index] = ent.to(entropy.dtype)
        return out, entropy

    def _backward_through_logprobs(self, estimate, loss_of, weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """Backward per forward pass of any estimator and loss, exact (`learner.backward_per_pass`
        where a pass's share of the loss is not its own: GSPO, coupled, mc_elbo).

        estimate() returns (logp, mask, entropy) [n, C], calling `lm.forward_logprobs` once per
        pass. First it runs with every pass computed without a graph, each pass's log-probs a
        leaf: the estimator's combination of them (scatters, weights, averages) and the loss are
        differentiated down to those leaves alone, giving g_k = dL/dlogp_k per pass. Then it runs
        again (same seed and inputs, so the same passes) and each pass back-propagates g_k as soon
        as it is computed: sum_k g_k . dlogp_k/dtheta is the whole gradient, with one pass's
        activations alive at a time. The price is one more forward per pass, without saved
        activations. Returns the detached estimate's log-probs and entropies [n, C], and the
        piece's loss (detached) and metrics, which the first round computed whole.
        """
        leaves: list[torch.Tensor] = []

        def leaf(compute):
            with torch.no_grad():
                lp, ent = compute()
            leaves.append(lp.requires_grad_())
            return lp, ent

        with self.lm.pass_hook(leaf), self._autocast():
            logp, _, entropy = estimate()
        loss, metrics = loss_of(logp)
        (loss * weight).backward()
        grads = [torch.zeros_like(x) if x.grad is None else x.grad for x in leaves]

        def backprop(compute):
            if not grads:
                raise RuntimeError("the estimator ran more passes the second time than the first: it must be deterministic given its seed")
            lp, ent = compute()
            lp.backward(grads.pop(0).to(lp.dtype))
            return lp.detach(), ent

        with self.lm.pass_hook(backprop), self._autocast():
            estimate()
        if grads:
            raise RuntimeError("the estimator ran fewer passes the second time than the first: it must be deterministic given its seed")
        return logp.detach(), entropy, loss.detach(), metrics
