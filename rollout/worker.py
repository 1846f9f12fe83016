"""The rollout worker: owns a model copy, takes new weights in memory, generates.

A plain class; rl/ runs it as a Ray actor (`ray.remote(RolloutWorker)`), tests call it
directly.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from rollout.engine import SamplingParams, generate
from rollout.models import DTYPES, load_model
from rollout.trajectory import Trajectory
from rollout.weights import WeightsSnapshot


class RolloutWorker:
    """Decode prompts with the current policy weights.

    Args:
        model_path: checkpoint directory to load once at start-up.
        block_size: override of the checkpoint's block size.
        threads: torch intra-op threads for this process (None keeps the default).
        family, trust_remote_code: see rollout.models.load_model.
        lora: LoRA settings (r, alpha, dropout, target_modules); weights then arrive as adapter deltas.
        device: where to decode; default the GPU when one is visible (Ray shows an actor only the
            GPUs it was given, none without num_gpus), else the CPU.
        compile: compile the backbone for decoding (`DiffusionLM.compile`).
        dtype: the weights' dtype for decoding: "auto" (bfloat16 on a GPU, float32 on the CPU,
            whose bf16 matmuls are slow without AMX), "float32", "bfloat16", "float16", or a
            torch.dtype. The learner keeps its own (fp32) weights; syncs arrive cast to this.
    """

    def __init__(
        self,
        model_path: str,
        block_size: int | None = None,
        threads: int | None = None,
        family: str | None = None,
        trust_remote_code: bool = False,
        lora: dict | None = None,
        device: str | None = None,
        compile: bool = False,
        dtype: str | torch.dtype = "auto",
    ):
        if threads:
            torch.set_num_threads(threads)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = decoding_dtype(dtype, device)
        self.lm = load_model(model_path, family=family, block_size=block_size, dtype=self.dtype, trust_remote_code=trust_remote_code)
        if device != "cpu":
            self.lm.model.to(device)
        self.peft = None
        if lora:
            from rollout.lora import apply_lora

            self.peft = apply_lora(self.lm, **lora)  # same adapter layout as the learner's
        if compile:
            self.lm.compile()  # after LoRA: the graph is of the modules that decode
        self.weights_version = 0
        self._adopted = False  # whether the parameters are a received snapshot's buffers (see load_weights)

    def decoding_dtype(self) -> torch.dtype:
        """The dtype this worker decodes in (what a sync should arrive as)."""
        return self.dtype

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int | None = None) -> int:
        """Replace the policy weights in memory (no disk): a full state dict, or only the LoRA
        adapter's tensors when the worker runs an adapter. Returns the new weights version."""
        if self.peft is not None:
            from rollout.lora import load_adapter_state

            load_adapter_state(self.peft, state_dict)
            self.weights_version = self.weights_version + 1 if version is None else version
            return self.weights_version
        slots = self.lm.model.state_dict(keep_vars=True)  # key -> the Parameter or buffer it loads into
        # Checked before anything is written: a mismatch leaves the old weights whole. A key may be
        # absent when its tensor is another present key's (tied embeddings appear once).
        present = {id(slots[k]) for k in state_dict if k in slots}
        missing = [k for k, v in slots.items() if k not in state_dict and id(v) not in present]
        unexpected = [k for k in state_dict if k not in slots]
        shapes = [f"{k}: {tuple(v.shape)} for {tuple(slots[k].shape)}" for k, v in state_dict.items() if k in slots and v.shape != slots[k].shape]
        if missing or unexpected or shapes:
            raise ValueError(f"weight sync mismatch: missing={missing[:5]} unexpected={unexpected[:5]} shape={shapes[:5]}")
        adopt = self._can_adopt(state_dict, slots)
        with torch.no_grad():
            for k, v in state_dict.items():
                slot = slots[k]
                if adopt:
                    # The received buffer becomes the tensor's storage: no copy, and the workers of
                    # one node then share the one copy in Ray's object store. Swapping .data keeps
                    # the Parameter objects, so ties (one object) and compiled graphs hold.
                    slot.data = v
                elif self._adopted:
                    # The parameters are buffers of an earlier snapshot, possibly shared with other
                    # workers in the object store: never write into them; take private copies instead.
                    slot.data = v.to(device=slot.device, dtype=slot.dtype, copy=True)
                else:
                    slot.copy_(v)
        self._adopted = adopt
        self.weights_version = self.weights_version + 1 if version is None else version
        return self.weights_version

    def _can_adopt(self, state_dict, slots: dict[str, torch.Tensor]) -> bool:
        """Whether `load_weights` may take the tensors as they are: a snapshot received through
        pickling (nobody else in this process holds it) whose tensors already have the device and
        dtype of what they replace. A GPU worker always copies (host to device)."""
        if not (isinstance(state_dict, WeightsSnapshot) and state_dict.received):
            return False
        return all(slots[k].device == v.device and slots[k].dtype == v.dtype for k, v in state_dict.items())

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        seed: int,
        groups: Sequence[int] | None = None,
        columns: Sequence[dict[str, Any]] | None = None,
    ) -> list[Trajectory]:
        """Decode every prompt; sampling randomness comes from `seed` alone."""
        generator = torch.Generator(device=self.lm.device).manual_seed(seed)
        trajs = generate(self.lm, prompts, params, generator, groups=groups, columns=columns)
        for t in trajs:
            t.version = self.weights_version
        return trajs

    def offload(self) -> int:
        """Release accelerator memory while a colocated learner updates: the weights move to
        host memory. Returns the bytes released (0 on CPU, where there is nothing to free)."""
        if self.lm.device.type == "cpu":
            return 0
        self._device = self.lm.device
        released = torch.cuda.memory_allocated(self._device) if self._device.type == "cuda" else 0
        self.lm.model.to("cpu")
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
        return int(released)

    def onload(self) -> None:
        """Move the weights back after `offload`."""
        device = getattr(self, "_device", None)
        if device is not None:
            self.lm.model.to(device)
            self._device = None



def decoding_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """`rollout.dtype` resolved for a worker on `device`: "auto" is bfloat16 on an accelerator
    (as JetEngine, vLLM and the families' own inference code decode) and float32 on the CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16
    if dtype not in DTYPES:
        raise ValueError(f"rollout dtype {dtype!r}: expected auto or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]
