"""torch.distributed plumbing for data-parallel learner ranks.

The learner ranks are Ray actors (or plain processes in tests) that join one torch.distributed
group: rank 0 picks an address (`master_address`), then every rank calls
`init_group` with it at the same time. Nothing here knows Ray; a world of one rank needs no
group at all, and every helper is then a no-op.

How a minibatch is shared (`minibatch_pieces`): every rank receives the whole rollout batch and
draws the same minibatch permutation, then splits each minibatch into ranks x micro_batches
contiguous pieces; rank r runs pieces r*M .. r*M+M-1, one forward/backward each, before the
optimizer step. Every rank runs exactly M pieces (an empty one becomes a zero-weight stand-in),
because DDP and FSDP2 need all ranks to take part in every backward.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


def node_ip() -> str:
    """This machine's address as other nodes see it (Ray's view when Ray runs here)."""
    try:
        import ray
    except ImportError:  # used without Ray (tests, plain processes)
        ray = None
    if ray is not None and ray.is_initialized():
        return ray.util.get_node_ip_address()
    try:
        # connect() on a UDP socket sends nothing; it only asks the kernel for the outgoing interface
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def free_port() -> int:
    """A TCP port that was free a moment ago (the usual bind-to-0 trick; the tiny race is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def master_address() -> tuple[str, int]:
    """(ip, port) for rank 0 to host the group's TCP store; call it on rank 0's node."""
    return node_ip(), free_port()


def resolve_backend(backend: str, device: torch.device) -> str:
    """learner.backend -> a torch.distributed backend; auto: nccl on GPU, gloo on CPU."""
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ValueError("learner.backend is nccl but the learner runs on CPU (no GPU visible): use gloo or auto")
    return backend


def init_group(backend: str, master_addr: str, master_port: int, rank: int, world_size: int, timeout_s: float = 1800.0) -> None:
    """Join the learner group (blocks until all `world_size` ranks have called it)."""
    if dist.is_initialized():
        if dist.get_world_size() != world_size or dist.get_rank() != rank:
            raise RuntimeError(f"this process is already rank {dist.get_rank()} of {dist.get_world_size()}")
        return
    # Some libraries read these instead of the init_method; keep them consistent.
    os.environ.setdefault("MASTER_ADDR", master_addr)
    os.environ.setdefault("MASTER_PORT", str(master_port))
    dist.init_process_group(
        backend,
        init_method=f"tcp://{master_addr}:{master_port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum `x` over the ranks, in place (returned for chaining); identity without a group."""
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


@dataclass
class Piece:
    """One rank's forward/backward share of a minibatch.

    idx: indices into the rollout batch; occurrences: each sample's duplicate counter over the
    whole minibatch (`algorithms.estimators.occurrence_index`), so the piece draws the masks
    the whole minibatch would; weight: 1, or 0 for a stand-in that keeps an empty piece's rank
    in step with the others (it runs a real sample and contributes nothing).
    """

    idx: list[int]
    occurrences: list[int]
    weight: float = 1.0


def minibatch_pieces(idx: list[int], occurrences: list[int], rank: int, world_size: int, micro_batches: int) -> list[Piece]:
    """Rank `rank`'s `micro_batches` pieces of the minibatch `idx` (module docstring).

    The minibatch is cut into world_size x micro_batches contiguous parts of near-equal size
    (the first ones one longer); rank r takes parts r*M .. r*M + M-1.
    """
    if not idx:
        raise ValueError("an empty minibatch cannot be split")
    parts = world_size * micro_batches
    base, extra = divmod(len(idx), parts)
    bounds, start = [], 0
    for p in range(parts):
        end = start + base + (1 if p < extra else 0)
        bounds.append((start, end))
        start = end
    out = []
    for a, b in bounds[rank * micro_batches : (rank + 1) * micro_batches]:
        if b > a:
            out.append(Piece(idx[a:b], occurrences[a:b]))
        else:
            out.append(Piece(idx[:1], occurrences[:1], weight=0.0))
    return out
