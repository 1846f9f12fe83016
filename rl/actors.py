"""The Ray side of a run: learner ranks and rollout workers as actors, and the calls that fan
out to them. The trainer (rl/trainer.py) runs the stages; this module is where they reach Ray.

    LearnerRanks     one `LearnerActor` per data-parallel rank: every call reaches all ranks
                     (collectives), rank 0's answer is kept, a dead rank ends the run
    RolloutWorkers   the `WorkerActor`s: prompts split over them, a worker that dies mid-call
                     replaced and its share decoded again, weights loaded from the learners

Actor methods are called as such (`rank.update.remote(batch)`), never by name.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Sequence

import ray
import torch
from tqdm.auto import tqdm

from rl.cluster import local_model_path
from rl.config import RunConfig
from rl.learner import Learner
from rollout.engine import SamplingParams
from rollout.trajectory import Trajectory
from rollout.worker import RolloutWorker


class LearnerDied(RuntimeError):
    """A learner rank died: the run ends; checkpoints written before are intact."""


class LearnerActor(Learner):
    """The learner as a Ray actor: finds the model on its own node (a shipped copy if the
    driver's directory is not there)."""

    def __init__(self, cfg: RunConfig, rank: int, world_size: int, packed: bytes | None):
        path = local_model_path(cfg.model.path, packed)
        if path != cfg.model.path:
            cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": path})})
        if not cfg.train.threads:
            # Ray pins an actor to as many threads as whole CPUs it asked for (often 1), but the
            # stages take turns, so the update may use this node's cores (shared with the
            # rollout workers only when they decode meanwhile, with rollout.overlap).
            busy = world_size + (cfg.rollout.num_workers if cfg.rollout.overlap else 0)
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // busy))
        super().__init__(cfg, rank=rank, world_size=world_size)

    def alive(self) -> bool:
        """A no-op call: its answer means every earlier call on this rank has finished."""
        return True


class WorkerActor(RolloutWorker):
    """A rollout worker as a Ray actor (model found on its own node, like LearnerActor)."""

    def __init__(self, model_path: str, packed: bytes | None, *args, **kwargs):
        super().__init__(local_model_path(model_path, packed), *args, **kwargs)


def split_evenly(items: Sequence[Any], n: int) -> list[list[Any]]:
    """Split items into n contiguous chunks whose sizes differ by at most one.

    >>> split_evenly(list(range(5)), 2)
    [[0, 1, 2], [3, 4]]
    """
    k, r = divmod(len(items), n)
    bounds = [i * k + min(i, r) for i in range(n + 1)]
    return [list(items[bounds[i] : bounds[i + 1]]) for i in range(n)]


class LearnerRanks:
    """The learner actors, one per rank (`ranks[0]` answers). `died(stage, error)` builds the
    exception a dead rank raises (the trainer's: it names the last intact checkpoint)."""

    def __init__(self, cfg: RunConfig, placement: Sequence[dict], packed, died: Callable[[str, Exception], Exception]):
        self.ranks = [ray.remote(LearnerActor).options(**opts).remote(cfg, rank, len(placement), packed) for rank, opts in enumerate(placement)]
        self.died = died
        if len(self.ranks) > 1:
            addr, port = ray.get(self.ranks[0].master_address.remote())  # rank 0 hosts the rendezvous
            self.call(lambda rank: rank.setup_distributed.remote(addr, port), stage="setup_distributed")

    def __getitem__(self, i: int):
        return self.ranks[i]

    def __iter__(self):
        return iter(self.ranks)

    def __len__(self) -> int:
        return len(self.ranks)

    def call(self, call: Callable[[Any], Any], stage: str) -> Any:
        """`call(rank)` on every rank (it starts one actor method: collective calls must reach all
        ranks) and rank 0's answer. A dead rank ends the run with `died(stage, error)`."""
        futures = [call(rank) for rank in self.ranks]
        try:
            return ray.get(futures)[0]
        except ray.exceptions.RayActorError as e:
            raise self.died(stage, e) from e

    def weights(self, dtype: torch.dtype | None):
        """An object ref to rank 0's weights cast to `dtype` (collective under fsdp2), once
        every rank has answered: a death shows here, not as a failed load in the workers."""
        refs = [rank.get_weights.remote(dtype) for rank in self.ranks]
        try:
            ray.get([rank.alive.remote() for rank in self.ranks])  # queued behind get_weights; nothing is fetched
        except ray.exceptions.RayActorError as e:
            raise self.died("weight sync", e) from e
        return refs[0]


class RolloutWorkers:
    """The rollout worker actors: launch a decode over them, collect it, load weights.

    `weights` is the (object ref, version) the workers hold (None before the first sync); a
    replaced worker is given it before anything else it is asked."""

    def __init__(self, placement: Sequence[dict], args: tuple, kwargs: dict):
        self.placement, self.args, self.kwargs = list(placement), args, kwargs
        self.actors = [self._spawn(w) for w in range(len(self.placement))]
        self.weights = None
        self.sync_dtype = None  # the workers' decoding dtype, asked once at the first sync
        self.restarts = 0

    def __getitem__(self, i: int):
        return self.actors[i]

    def __iter__(self):
        return iter(self.actors)

    def __len__(self) -> int:
        return len(self.actors)

    def _spawn(self, w: int):
        return ray.remote(WorkerActor).options(**self.placement[w]).remote(*self.args, **self.kwargs)

    def launch(self, items: Sequence[Any], seed: int, params: SamplingParams) -> dict:
        """Start decoding items, (prompt ids, group) pairs, split over the workers; `collect`
        gathers the result."""
        chunks = split_evenly(items, len(self.actors))
        futures = {w: self._submit(w, chunks[w], seed, params) for w, chunk in enumerate(chunks) if chunk}
        return {"chunks": chunks, "futures": futures, "seed": seed, "params": params, "weights": self.weights, "t0": time.perf_counter()}

    def _submit(self, w: int, chunk, seed: int, params: SamplingParams):
        prompts, groups = zip(*chunk)
        return self.actors[w].generate.remote(list(prompts), params, seed * 7919 + w, list(groups))

    def _replace(self, w: int, weights) -> None:
        self.actors[w] = self._spawn(w)
        if weights is not None:
            self.actors[w].load_weights.remote(*weights)  # queued before anything else it is asked
        self.restarts += 1

    def collect(self, job: dict, retries: int = 2) -> list[Trajectory]:
        """Wait for a launched decode, concatenated in order.

        A worker that died mid-call is replaced, given the weights the call was launched with,
        and its share of the prompts is decoded again with the same seed, so the step completes
        unchanged. It then gets the newest weights, if a sync happened in between.
        """
        chunks, futures = job["chunks"], dict(job["futures"])
        parts: list[list[Trajectory]] = [[] for _ in chunks]
        for attempt in range(retries + 1):
            failed = []
            for w, fut in futures.items():
                try:
                    parts[w] = ray.get(fut)
                except ray.exceptions.RayActorError as e:
                    if attempt == retries:
                        raise RuntimeError(f"rollout worker {w} died {retries + 1} times in one call") from e
                    tqdm.write(f"rollout worker {w} died ({type(e).__name__}); replacing it and redoing its {len(chunks[w])} prompts")
                    self._replace(w, job["weights"])
                    failed.append(w)
            if not failed:
                break
            futures = {w: self._submit(w, chunks[w], job["seed"], job["params"]) for w in failed}
            if self.weights is not None and self.weights is not job["weights"]:
                for w in failed:
                    self.actors[w].load_weights.remote(*self.weights)
        return [t for part in parts for t in part]

    def run(self, items: Sequence[Any], seed: int, params: SamplingParams) -> list[Trajectory]:
        """Decode items over the workers and wait (see `collect` for faults)."""
        return self.collect(self.launch(items, seed, params))

    def sync(self, learners: LearnerRanks, version: int, wait: bool = True) -> None:
        """Load the learners' weights (rank 0's) into every worker through the object store.

        wait=False only queues the load behind whatever the workers are decoding (overlap mode).
        """
        if self.sync_dtype is None:
            try:
                self.sync_dtype = ray.get(self.actors[0].decoding_dtype.remote())
            except ray.exceptions.RayActorError:
                pass  # sync uncast this time; the loads below replace the dead worker
        # Cast on the learner (a bf16 worker receives half the bytes); collective under fsdp2.
        ref = learners.weights(self.sync_dtype)
        self.weights = (ref, version)
        loads = {w: worker.load_weights.remote(ref, version) for w, worker in enumerate(self.actors)}
        if not wait:
            return
        for w, fut in loads.items():
            try:
                ray.get(fut)
            except ray.exceptions.RayActorError:
                tqdm.write(f"rollout worker {w} died; replacing it")
                self._replace(w, self.weights)

    def offload(self) -> None:
        """Free the workers' accelerator memory (colocated placement, during the update)."""
        ray.get([w.offload.remote() for w in self.actors])

    def onload(self) -> None:
        ray.get([w.onload.remote() for w in self.actors])
