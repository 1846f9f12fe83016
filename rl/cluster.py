"""Ray plumbing for a run: joining a cluster, placing actors, shipping a local model.

Placement (cluster.placement):

- separate: one placement-group bundle per rollout worker and per learner rank; the two
  pools never share a device.
- colocated: bundle i hosts rollout worker i and learner rank i, each asking for half of
  it; the rollout side releases its memory while the learner updates.

On CPU the bundles hold fractional CPUs, so two workers and two learner ranks fit on a
two-core machine and the tests exercise the same code as a GPU cluster.
"""

from __future__ import annotations

import io
import json
import os
import signal
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rl.config import ClusterConfig


def connect(address: str | None) -> None:
    """Start Ray on this machine (address None) or join an existing cluster ('auto',
    'HOST:PORT', 'ray://HOST:PORT'). A session that is already connected is kept."""
    if ray.is_initialized():
        return
    quiet = dict(logging_level="ERROR", log_to_driver=False)
    if address is not None:
        ray.init(address=address, **quiet)
        return
    # Ray's own processes (GCS, raylet, workers) start in this process group, so a scheduler's
    # SIGTERM to the group would kill them before the driver could checkpoint. They inherit
    # the signal mask of the thread that starts them: block SIGTERM while they are spawned
    # (Ray itself blocks SIGINT in them the same way); the driver handles it afterwards.
    blocked = threading.current_thread() is threading.main_thread()
    if blocked:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        # "local" even when a `ray start` cluster runs here: joining one must be asked for.
        ray.init(address="local", num_cpus=max(2, os.cpu_count() or 1), include_dashboard=False, **quiet)
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


# A local Ray instance's processes, recorded in the run directory (`record_local_session`), so the
# next run there can end them when this driver was killed: after kill -9 nothing stops Ray's GCS,
# raylet and workers, which otherwise stay (with their memory and cores) until a reboot.
SESSION_FILE = "ray_local.json"


def _alive(pid: int, started: float):
    """The process `pid` if it is still the one that started at `started` (pids are reused), else None."""
    import psutil

    try:
        p = psutil.Process(pid)
        return p if abs(p.create_time() - started) < 0.01 else None
    except psutil.Error:
        return None


def record_local_session(run_dir: str | Path) -> None:
    """Write this driver's pid and every process it has started (Ray's, once `connect` made a local
    instance), each with its start time, to RUN_DIR/ray_local.json."""
    import psutil

    me = psutil.Process()
    procs = me.children(recursive=True)
    data = {"driver": [me.pid, me.create_time()], "processes": [[p.pid, p.create_time()] for p in procs]}
    (Path(run_dir) / SESSION_FILE).write_text(json.dumps(data))


def reap_stale_session(run_dir: str | Path) -> int:
    """End the Ray processes a killed run left in RUN_DIR (its ray_local.json, when its driver is gone),
    with every process they started since; returns how many were ended. A live driver's are left alone."""
    import psutil

    f = Path(run_dir) / SESSION_FILE
    try:
        data = json.loads(f.read_text())
        driver, recorded = data["driver"], data["processes"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    if _alive(*driver) is not None:
        return 0
    victims: dict[int, Any] = {}
    for pid, started in recorded:
        p = _alive(pid, started)
        if p is None:
            continue
        try:
            for q in [p, *p.children(recursive=True)]:
                victims[q.pid] = q
        except psutil.Error:
            victims[p.pid] = p
    for p in victims.values():
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(list(victims.values()), timeout=10)
    f.unlink(missing_ok=True)
    return len(victims)


@dataclass
class Placement:
    """Scheduling options for every rollout worker and learner rank of a run."""

    groups: list[Any]
    rollout: list[dict]
    learner: list[dict]

    def remove(self) -> None:
        for pg in self.groups:
            remove_placement_group(pg)


def place(cfg: ClusterConfig, num_workers: int, num_ranks: int, timeout_s: float = 600.0) -> Placement:
    """Reserve bundles for the rollout workers and learner ranks (a Ray placement group) and
    return the `.options(...)` of each actor. Waits for the cluster to have room, saying so."""
    colocated = cfg.placement == "colocated"
    n_bundles = max(num_workers, num_ranks) if colocated else num_workers + num_ranks
    cpus = cfg.cpus_per_bundle or max(0.01, float(ray.cluster_resources().get("CPU", 1)) / n_bundles)
    bundle = {"CPU": cpus}
    if cfg.gpus_per_bundle:
        bundle["GPU"] = cfg.gpus_per_bundle
    pg = placement_group([dict(bundle) for _ in range(n_bundles)], strategy=cfg.strategy, name="")
    _wait_ready(pg, n_bundles, bundle, timeout_s)
    share = 0.5 if colocated else 1.0

    def opts(index: int) -> dict:
        o = {
            "num_cpus": cpus * share,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index),
        }
        if cfg.gpus_per_bundle:
            o["num_gpus"] = cfg.gpus_per_bundle * share
        return o

    if colocated:
        return Placement([pg], [opts(i) for i in range(num_workers)], [opts(i) for i in range(num_ranks)])
    return Placement([pg], [opts(i) for i in range(num_workers)], [opts(num_workers + j) for j in range(num_ranks)])


def _wait_ready(pg, n: int, bundle: dict, timeout_s: float) -> None:
    t0, warned = time.monotonic(), False
    while True:
        ready, _ = ray.wait([pg.ready()], timeout=5.0)
        if ready:
            return
        waited = time.monotonic() - t0
        if not warned:
            print(f"waiting for the cluster to fit {n} bundles of {bundle} (has {ray.available_resources()}); "
                  "add nodes with `ray start --address=HEAD:6379`")
            warned = True
        if waited > timeout_s:
            remove_placement_group(pg)
            raise RuntimeError(f"the Ray cluster could not fit {n} bundles of {bundle} within {timeout_s:.0f}s "
                               f"(cluster: {ray.cluster_resources()}); lower cluster.cpus_per_bundle / gpus_per_bundle or add nodes")


# -- model directories on nodes without a shared filesystem -------------------------------------
def pack_dir(path: str | Path) -> bytes:
    """A local model directory as an uncompressed tar (weights do not compress)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(path), arcname=".")
    return buf.getvalue()


def local_model_path(path: str, packed: bytes | None) -> str:
    """`path` if this node can read it (same node, shared disk, or a hub id), else the shipped
    copy unpacked into a temporary directory on this node."""
    if packed is None or Path(path).exists():
        return path
    out = tempfile.mkdtemp(prefix="unmask-model-")
    with tarfile.open(fileobj=io.BytesIO(packed), mode="r") as tar:
        tar.extractall(out, filter="data")
    return out
