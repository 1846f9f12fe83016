"""Weights in transit: a state dict that crosses process boundaries as raw byte buffers.

`Learner.get_weights` returns a `WeightsSnapshot`; the trainer puts it in Ray's object store and
every `RolloutWorker.load_weights` reads it from there. Pickled by default, a torch tensor goes
through `torch.save` into a bytes object (a copy), that bytes object into the store (a copy) and
back through `torch.load` on the reader (another copy). A snapshot instead pickles its tensors as
flat uint8 numpy views of their storage: pickle protocol 5 hands such arrays to Ray out of band,
so the only copy on the way in is the one into shared memory, and a reader on the same node gets
tensors that *are* that shared memory, which a CPU worker adopts as its parameters (no copy).
Tensors over one storage travel as one buffer: tied embeddings once, and a learner's parameters,
which `flatten_parameters` lays out in one buffer per dtype, as one large copy (Ray copies a large
buffer in parallel; 91 separate tensors of a 100M model took ~25% longer to put).

Plain `pickle` (multiprocessing, files) works too: the arrays are then written in band.
No Ray import here: rollout/ stays usable without it.

GPU workers still make the host round trip (device -> store -> device). Ray Direct Transport
(`method.options(tensor_transport="nccl" | "cuda_ipc")`, alpha in Ray 2.5x) would move the tensors
device to device instead; not done here because it needs (1) `get_weights` to return plain device
tensors (a snapshot hides them from RDT by pickling them as numpy), cloned on the device, since
RDT reads them when a reader fetches, not when the method returns, and a view would race the next
update; (2) for NCCL, a collective group over learner rank 0 and the workers, rebuilt whenever a
worker is replaced; (3) the trainer's kept reference (for replacing workers) to stay readable.
On CPU only RDT's GLOO transport runs, which tests the plumbing but not the device path.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter

import torch

# (dtype name, shape, index of the buffer that holds the tensor, byte offset in that buffer)
_Meta = tuple[str, tuple[int, ...], int, int]


def _coalesce(tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    """Flat uint8 buffers that hold `tensors`, and where each tensor lies: (buffer index, byte offset).

    Contiguous tensors of one dtype over one storage travel as one buffer, the byte range they
    span, when they tile it (no gap wider than what they cover): a model flattened by
    `flatten_parameters` goes as one buffer per dtype, and a tied tensor is the same bytes, sent
    once. Anything else, a tensor that is not contiguous or a small view of a big storage, goes
    as its own contiguous copy. So every buffer holds tensors of one dtype. The buffers are views
    where they can be (no copy) and stay on the tensors' device.
    """
    groups: dict[tuple, list[int]] = {}  # (device, storage address, dtype) -> indices of its tensors
    for i, t in enumerate(tensors):
        if t.is_contiguous() and t.numel():
            groups.setdefault((t.device, t.untyped_storage().data_ptr(), t.dtype), []).append(i)
    buffers: list[torch.Tensor] = []
    where: list[tuple[int, int] | None] = [None] * len(tensors)
    for idx in groups.values():
        spans = {(tensors[i].storage_offset() * tensors[i].element_size(), tensors[i].nbytes) for i in idx}
        lo, hi = min(a for a, _ in spans), max(a + n for a, n in spans)
        if hi - lo > sum(n for _, n in spans):
            continue  # gaps: the span would carry bytes nobody asked for; each tensor goes alone
        storage = tensors[idx[0]].untyped_storage()
        buffers.append(torch.empty(0, dtype=torch.uint8, device=tensors[idx[0]].device).set_(storage, lo, (hi - lo,)))
        for i in idx:
            where[i] = (len(buffers) - 1, tensors[i].storage_offset() * tensors[i].element_size() - lo)
    for i, t in enumerate(tensors):
        if where[i] is None:
            buffers.append(t.contiguous().reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8))
            where[i] = (len(buffers) - 1, 0)
    return buffers, where


def _view(buffer: torch.Tensor, offset: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """The tensor of `dtype` and `shape` at byte `offset` of a flat uint8 buffer (a view)."""
    nbytes = math.prod(shape) * dtype.itemsize
    return buffer[offset : offset + nbytes].view(dtype).reshape(shape)


class WeightsSnapshot(dict):
    """A `dict[str, torch.Tensor]` of CPU tensors that pickles zero-copy (see the module docstring).

    Its tensors may be views of live parameters (the learner's CPU path makes no copy): pickling
    it, as Ray does when an actor method returns it, is what takes the snapshot. Keep it across an
    optimizer step in the same process only after `.clone()`-ing what you need.

    Tensors that are views of one storage (a learner's parameters after `flatten_parameters`, tied
    embeddings) travel as one buffer, so the store takes one large copy instead of one per tensor.

    `received` is True for a snapshot rebuilt from a pickle (read from the object store): its
    buffers then belong to nobody else in this process, so a CPU reader may adopt them as its
    parameters instead of copying them (`RolloutWorker.load_weights` does). They may be shared,
    read-only memory, so an adopter must never write to them in place.
    """

    received = False

    def __reduce__(self):
        keys = list(self)
        tensors = [self[k].detach() for k in keys]
        for k, t in zip(keys, tensors):
            if t.device.type != "cpu":
                raise ValueError(f"WeightsSnapshot holds CPU tensors only; {k!r} is on {t.device}")
        buffers, where = _coalesce(tensors)
        metas: list[_Meta] = [(str(t.dtype).removeprefix("torch."), tuple(t.shape), b, off) for t, (b, off) in zip(tensors, where)]
        # uint8 arrays: numpy has no bfloat16, and bytes are what the store holds anyway.
        return _rebuild, (keys, metas, [b.numpy() for b in buffers])


def _rebuild(keys: list[str], metas: list[_Meta], arrays: list) -> WeightsSnapshot:
    """Inverse of `WeightsSnapshot.__reduce__`: tensors over the received buffers, no copy."""
    with warnings.catch_warnings():
        # Buffers read from Ray's store are read-only; the worker only copies out of them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        buffers = [torch.from_numpy(a) for a in arrays]
    out = WeightsSnapshot({k: _view(buffers[b], off, getattr(torch, dtype), shape) for k, (dtype, shape, b, off) in zip(keys, metas)})
    out.received = True
    return out


def snapshot(state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> WeightsSnapshot:
    """The state dict's tensors, detached and on the CPU, as a `WeightsSnapshot`; floating-point
    tensors cast to `dtype` if given (what the readers decode in: half the bytes for bf16 workers).

    CPU tensors are not copied unless cast (the snapshot is taken when it is pickled); tensors
    on an accelerator are copied to host memory, the one round trip the object store needs. Both
    the cast and the copy run once per buffer `_coalesce` finds (one per dtype for a flattened
    model), the cast on the tensors' device, before the transfer.
    """
    keys = list(state_dict)
    tensors = [state_dict[k].detach() for k in keys]
    if dtype is None and all(t.device.type == "cpu" for t in tensors):
        return WeightsSnapshot(zip(keys, tensors))  # views of the live tensors
    buffers, where = _coalesce(tensors)
    src = {b: t.dtype for t, (b, _) in zip(tensors, where)}  # one dtype per buffer
    dst = {b: dtype if dtype is not None and d.is_floating_point else d for b, d in src.items()}
    # One cast of each buffer, on its device, before the one copy to host (none for a CPU buffer).
    host = [(buf if src[b] == dst[b] else buf.view(src[b]).to(dst[b]).view(torch.uint8)).to("cpu") for b, buf in enumerate(buffers)]
    return WeightsSnapshot(
        (k, _view(host[b], off // t.element_size() * dst[b].itemsize, dst[b], tuple(t.shape))) for k, t, (b, off) in zip(keys, tensors, where)
    )


def flatten_parameters(module: torch.nn.Module) -> int:
    """Make every parameter of `module` a view of one contiguous buffer per (device, dtype), in
    place, and return how many buffers that took.

    Values, Parameter objects (and so ties and optimizers built afterwards) are unchanged. A
    snapshot of the state dict then crosses the object store as one large copy per dtype (Ray
    copies a large buffer in parallel) and a GPU learner's device-to-host copy is one transfer.
    Call it after the module reached its device (`.to()` makes new, separate tensors again).
    """
    groups: dict[tuple, list[torch.nn.Parameter]] = {}
    for p in module.parameters():  # each Parameter once: tied weights are one object
        groups.setdefault((p.device, p.dtype), []).append(p)
    for (device, dtype), params in groups.items():
        flat = torch.empty(sum(p.numel() for p in params), dtype=dtype, device=device)
        offset = 0
        with torch.no_grad():
            for p in params:
                n = p.numel()
                flat[offset : offset + n].copy_(p.reshape(-1))
                p.data = flat[offset : offset + n].view_as(p)
                offset += n
    return len(groups)


def separate_storages(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with each tensor over a storage of its own, without copying CPU tensors.

    Savers treat tensors that share a storage as ties: transformers' `save_pretrained` clones
    every such tensor that is not an identical alias before safetensors writes it, which for a
    model after `flatten_parameters` is a second copy of all its weights. A CPU view is here
    rewrapped over the same memory as its own storage (through numpy, no copy); an accelerator
    tensor is copied to the host, which serialising needs anyway. Identical aliases (tied
    embeddings) stay identical, so savers still find and drop them.
    """
    count = Counter((t.device, t.untyped_storage().data_ptr()) for t in state_dict.values())
    out = {}
    for k, t in state_dict.items():
        t = t.detach()
        if count[(t.device, t.untyped_storage().data_ptr())] == 1 or not t.is_contiguous() or not t.numel():
            out[k] = t
        elif t.device.type == "cpu":
            out[k] = torch.from_numpy(t.reshape(-1).view(torch.uint8).numpy()).view(t.dtype).reshape(t.shape)
        else:
            out[k] = t.to("cpu")
    return out
