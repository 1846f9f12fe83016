"""Weights in transit: a state dict that crosses process boundaries as raw byte buffers.

`Learner.get_weights` returns a `WeightsSnapshot`; the trainer puts it in Ray's object store and
every `RolloutWorker.load_weights` reads it from there. Pickled by default, a torch tensor goes
through `torch.save` into a bytes object (a copy), that bytes object into the store (a copy) and
back through `torch.load` on the reader (another copy). A snapshot instead pickles each tensor as
a flat uint8 numpy view of its storage: pickle protocol 5 hands such arrays to Ray out of band,
so the only copy on the way in is the one into shared memory, and a reader on the same node gets
tensors that *are* that shared memory. `load_state_dict` then makes the one copy into the
worker's parameters. Tensors that share storage (tied embeddings) travel once.

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

import warnings

import torch

# (dtype name, shape, index of the first key holding the same tensor or None)
_Meta = tuple[str, tuple[int, ...], int | None]


class WeightsSnapshot(dict):
    """A `dict[str, torch.Tensor]` of CPU tensors that pickles zero-copy (see the module docstring).

    Its tensors may be views of live parameters (the learner's CPU path makes no copy): pickling
    it, as Ray does when an actor method returns it, is what takes the snapshot. Keep it across an
    optimizer step in the same process only after `.clone()`-ing what you need.

    `received` is True for a snapshot rebuilt from a pickle (read from the object store): its
    buffers then belong to nobody else in this process, so a CPU reader may adopt them as its
    parameters instead of copying them (`RolloutWorker.load_weights` does). They may be shared,
    read-only memory, so an adopter must never write to them in place.
    """

    received = False

    def __reduce__(self):
        keys = list(self)
        metas: list[_Meta] = []
        arrays = []
        first: dict[tuple, int] = {}  # storage identity -> index of the key that carries it
        for i, k in enumerate(keys):
            t = self[k]
            if t.device.type != "cpu":
                raise ValueError(f"WeightsSnapshot holds CPU tensors only; {k!r} is on {t.device}")
            t = t.detach()
            ident = (t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
            if t.numel() and ident in first:  # a tied tensor: point at its first key, send nothing
                metas.append((str(t.dtype).removeprefix("torch."), tuple(t.shape), first[ident]))
                arrays.append(None)
                continue
            first[ident] = i
            # uint8 view: numpy has no bfloat16, and bytes are what the store holds anyway.
            flat = t.contiguous().reshape(-1).view(torch.uint8)
            metas.append((str(t.dtype).removeprefix("torch."), tuple(t.shape), None))
            arrays.append(flat.numpy())
        return _rebuild, (keys, metas, arrays)


def _rebuild(keys: list[str], metas: list[_Meta], arrays: list) -> WeightsSnapshot:
    """Inverse of `WeightsSnapshot.__reduce__`: tensors over the received buffers, no copy."""
    out = WeightsSnapshot()
    with warnings.catch_warnings():
        # Buffers read from Ray's store are read-only; the worker only copies out of them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for k, (dtype, shape, alias), arr in zip(keys, metas, arrays):
            if alias is not None:
                out[k] = out[keys[alias]]
                continue
            out[k] = torch.from_numpy(arr).view(getattr(torch, dtype)).reshape(shape)
    out.received = True
    return out


def snapshot(state_dict: dict[str, torch.Tensor]) -> WeightsSnapshot:
    """The state dict's tensors, detached and on the CPU, as a `WeightsSnapshot`.

    CPU tensors are not copied (the snapshot is taken when it is pickled); tensors on an
    accelerator are copied to host memory, the one round trip the object store needs.
    """
    return WeightsSnapshot({k: v.detach() if v.device.type == "cpu" else v.detach().to("cpu") for k, v in state_dict.items()})
