"""The learner's parallel and state-dict plumbing, apart from the update math (rl/learner.py).

`LearnerState` is the half of `Learner` that deals with ranks and tensors at rest: joining the
process group and wrapping the models (DDP / FSDP2), the full weights the rollout workers need,
optimizer states in either parallel mode, and checkpoints.

Data parallelism (learner.ranks > 1). Every rank gets the same whole batch, draws the same
minibatch permutation, and runs its share of each minibatch in learner.micro_batches pieces
(rl.distributed.minibatch_pieces). Each piece's loss is its share of the whole minibatch's loss
(numerators over the minibatch's global token / sequence counts, algorithms.losses), so the
summed gradient of one optimizer step equals the single-rank gradient of the whole minibatch,
whatever the split. Random estimators seed each sample's masks with its duplicate counter over
the whole minibatch, so the split does not change the masks either.

Which calls are collective (must reach every rank at once; the trainer calls every method on
all ranks and keeps rank 0's answer, which is always right):
  setup_distributed            always (world_size > 1)
  update                       always
  get_weights                  fsdp2 only (the full weights are gathered); ddp: local
  save / state_files           fsdp2 only (weights and optimizer state are gathered); ddp: local
  load / load_state_files      fsdp2 only; under ddp every rank must still load the same files
Ranks other than 0 return {} from get_weights and state_files and write nothing in save.
"""

from __future__ import annotations

import contextlib
import inspect
import random
import tempfile
from pathlib import Path, PurePosixPath

import torch
from torch import nn

from rl import distributed
from rollout.lora import adapter_state, load_adapter_state
from rollout.models import load_model
from rollout.weights import WeightsSnapshot, snapshot


def _fully_shard(root: nn.Module, hf_model: nn.Module, mesh) -> None:
    """FSDP2: one unit per decoder layer (the classes transformers lists as `_no_split_modules`),
    then the root, which holds the rest (embeddings, final norm, head) and runs the estimate.

    Mixtures of experts (llada2 on Glm4Moe, sdar_moe on Qwen3-MoE) shard the same way: a layer's
    router and stacked experts (`experts.gate_up_proj` [E, 2I, H], `experts.down_proj` [E, H, I])
    live in its unit, split on dim 0, so each rank stores whole experts. Which experts a token picks
    differs between ranks, but every rank runs every layer and every stacked tensor gets a gradient
    (zero rows for experts nothing picked), so all ranks issue the same all-gathers and
    reduce-scatters; the gradients equal one rank's (tests/test_distributed_learner.py)."""
    from torch.distributed.fsdp import fully_shard

    layer_classes = set(getattr(hf_model, "_no_split_modules", None) or [])
    layers = [m for m in hf_model.modules() if type(m).__name__ in layer_classes]
    if not layers:
        raise ValueError(f"fsdp2: found no decoder layers in {type(hf_model).__name__} (its _no_split_modules is empty)")
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(root, mesh=mesh)


def as_float(x) -> float:
    from torch.distributed.tensor import DTensor

    if isinstance(x, DTensor):
        x = x.full_tensor()
    return float(x)

class LearnerState:
    """Parallel set-up, weights and checkpoints of a `Learner` (a mixin: the attributes it reads,
    `cfg, rank, world_size, device, fsdp, lm, ref, value, peft, _policy, _ref, _value, _ready,
    optimizer, value_optimizer, step` and `_build_optimizers`, are set by `Learner.__init__`)."""

    # -- distributed set-up ----------------------------------------------------------------
    def master_address(self) -> tuple[str, int]:
        """(this node's IP, a free port) for the group's rendezvous; ask rank 0."""
        return distributed.master_address()

    def setup_distributed(self, master_addr: str, master_port: int, timeout_s: float = 1800.0) -> None:
        """Join the learner group and wrap the models for learner.parallel. Collective: call it
        on every rank at once, with rank 0's `master_address()`. A no-op for one rank.

        ddp: torch DistributedDataParallel around the estimator module (gradients are averaged
        across ranks during the last micro-batch's backward). fsdp2: `fully_shard` on every
        decoder layer and on the estimator module (the root), for policy, reference and value
        model; the optimizers are built on the sharded parameters.
        """
        if self._ready:
            return
        backend = distributed.resolve_backend(self.cfg.learner.backend, self.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # NCCL binds each rank to its current device
        distributed.init_group(backend, master_addr, master_port, self.rank, self.world_size, timeout_s)
        if self.fsdp:
            from torch.distributed.device_mesh import init_device_mesh

            mesh = init_device_mesh(self.device.type, (self.world_size,))
            _fully_shard(self._policy, self.lm.model, mesh)
            if self._ref is not None:
                _fully_shard(self._ref, self.ref.model, mesh)
            if self.value is not None:
                _fully_shard(self.value, self.value.backbone, mesh)
            self._build_optimizers()
        else:
            from torch.nn.parallel import DistributedDataParallel as DDP

            kw = {"device_ids": [self.device.index]} if self.device.type == "cuda" else {}
            # DDP starts every rank from rank 0's parameters (LoRA's random init included); no
            # buffer sync per forward: the only buffers are rotary tables, equal on every rank.
            sync_kw = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters else "broadcast_buffers"
            kw[sync_kw] = False
            self._policy = DDP(self._policy, **kw)
            if self.value is not None:
                # The critic never reads the LM head: untied heads get no gradient.
                self._value = DDP(self.value, find_unused_parameters=True, **kw)
        self._ready = True

    def shutdown_distributed(self) -> None:
        """Leave the group (tests, clean shutdown)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    def _check_ready(self) -> None:
        if not self._ready:
            raise RuntimeError(f"learner rank {self.rank} of {self.world_size}: call setup_distributed() on every rank first")

    # -- weights -----------------------------------------------------------------------------
    def get_weights(self, dtype: torch.dtype | None = None) -> WeightsSnapshot:
        """What rollout workers need to match the policy (CPU tensors): the full state dict, or
        only the adapter's tensors with LoRA. Rank 0 answers; other ranks return {}.
        Collective under fsdp2 (the shards are gathered to rank 0).

        `dtype`: the workers' decoding dtype (rollout.dtype); the weights are cast to it here, on
        the learner's device, so half the bytes cross for bf16 workers and a CPU worker adopts
        them as they arrive. An adapter travels in its own dtype.

        A `WeightsSnapshot`: it crosses Ray's object store as raw buffers (one copy in, none out).
        On a CPU learner without a cast its tensors are views of the live parameters, so the
        snapshot is taken when Ray stores the return value; in-process callers that keep it
        across an `update` must clone it."""
        self._check_ready()
        if self.fsdp and self.peft is not None:
            return WeightsSnapshot(self._adapter_full_state())
        if self.fsdp:
            return snapshot(self._full_state(self.lm.model), dtype)
        if self.rank != 0:
            return WeightsSnapshot()
        if self.peft is not None:
            return WeightsSnapshot(adapter_state(self.peft))
        return snapshot(self.lm.model.state_dict(), dtype)

    def _full_state(self, module: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
        """Unsharded CPU state dict on rank 0 ({} elsewhere); collective under fsdp2. trainable_only: the
        parameters that require grad (a LoRA adapter's), so the frozen base is never gathered."""
        if not self.fsdp:
            return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()} if self.rank == 0 else {}
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only))

    # LoRA under fsdp2: the adapter's parameters are shards of lm.model (a PeftModel's base_model.model), so they are
    # gathered by name and handed to peft's own (de)serialisation, which reads the PeftModel's keys.
    _PEFT_PREFIX = "base_model.model."

    def _adapter_full_state(self) -> dict[str, torch.Tensor]:
        """The adapter's tensors as `adapter_state` gives them (peft's keys), gathered to rank 0 ({} elsewhere);
        collective under fsdp2: only the trainable (adapter) shards are gathered."""
        from peft import get_peft_model_state_dict

        full = self._full_state(self.lm.model, trainable_only=True)
        if self.rank != 0:
            return {}
        return dict(get_peft_model_state_dict(self.peft, state_dict={self._PEFT_PREFIX + k: v for k, v in full.items()}))

    def _load_adapter_sharded(self, state: dict[str, torch.Tensor]) -> None:
        """Load an adapter file's tensors (peft's keys: no adapter name) into the sharded adapter; every rank holds
        `state`. Strict: every adapter parameter must be in it, and nothing else."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        name = self.peft.active_adapter
        wanted = {n: self._PEFT_PREFIX + n.replace(f".{name}.", ".") for n, p in self.lm.model.named_parameters() if p.requires_grad}
        missing, unexpected = sorted(set(wanted.values()) - set(state)), sorted(set(state) - set(wanted.values()))
        if missing or unexpected:
            raise ValueError(f"adapter checkpoint does not match the model's adapter: missing {missing[:3]}, unexpected {unexpected[:3]}")
        set_model_state_dict(self.lm.model, {n: state[k] for n, k in wanted.items()},
                             options=StateDictOptions(full_state_dict=True, strict=False))  # fmt: skip

    def _load_full_state(self, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        if not self.fsdp:
            module.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True))  # every rank holds `state`

    def _no_sync(self, sync: bool):
        """Accumulate without communicating on all but a step's last micro-batch (DDP). FSDP2
        reduce-scatters every micro-batch, which keeps gradients sharded (its point)."""
        stack = contextlib.ExitStack()
        if not sync:
            for module in (self._policy, self._value):
                if hasattr(module, "no_sync"):
                    stack.enter_context(module.no_sync())
        return stack

    # -- checkpoints -------------------------------------------------------------------------------
    def _optimizer_state(self, optimizer: torch.optim.Optimizer, module: nn.Module) -> dict | None:
        """ddp / one rank: optimizer.state_dict() (identical on every ddp rank). fsdp2: the full,
        unsharded state keyed by parameter name, gathered to rank 0 (collective), or None before
        the first step (gathering an empty state would make torch take a zero step to create it)."""
        if not self.fsdp:
            return optimizer.state_dict()
        if not optimizer.state:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def _load_optimizer_state(self, optimizer: torch.optim.Optimizer, module: nn.Module, state: dict | None) -> None:
        """Load either format of `_optimizer_state` under either mode (checkpoints move between
        ddp and fsdp2 and between rank counts)."""
        if state is None:
            return
        names = {id(p): n for n, p in module.named_parameters()}
        order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
        keys = [*state["state"], *(p for g in state["param_groups"] for p in g["params"])]
        by_name = bool(keys) and isinstance(keys[0], str)
        if self.fsdp:
            if not by_name:
                state = {
                    "state": {order[i]: v for i, v in state["state"].items()},
                    "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]],
                }
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))
            return
        if by_name:
            index = {n: i for i, n in enumerate(order)}
            state = {
                "state": {index[n]: v for n, v in state["state"].items()},
                "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]],
            }
        optimizer.load_state_dict(state)

    def save(self, path: str | Path) -> None:
        """Weights in transformers format under path/model (or the LoRA adapter under path/adapter);
        optimizer, value model and RNG in path/learner.pt. Rank 0 writes; collective under fsdp2
        (every rank must call it; the others write nothing)."""
        path = Path(path)
        # Gather first, on every rank in the same order (collectives under fsdp2).
        model_state = self._full_state(self.lm.model, trainable_only=self.peft is not None) if self.fsdp else None
        optimizer = self._optimizer_state(self.optimizer, self.lm.model)
        ref = None if self.ref is None else self._full_state(self.ref.model)
        value = None if self.value is None else self._full_state(self.value)
        value_optimizer = None if self.value is None else self._optimizer_state(self.value_optimizer, self.value)
        if self.rank != 0:
            return
        path.mkdir(parents=True, exist_ok=True)
        if self.peft is not None:
            # base_model_name_or_path points at the base; fsdp2: the gathered adapter, not the live shards
            adapter = None if model_state is None else {self._PEFT_PREFIX + k: v for k, v in model_state.items()}
            self.peft.save_pretrained(path / "adapter", state_dict=adapter)
            self.lm.tokenizer.save_pretrained(path / "adapter")
        else:
            self.lm.save_pretrained(path / "model", state_dict=model_state)  # fsdp2: the gathered weights
        torch.save(
            {
                "step": self.step,
                "optimizer": optimizer,
                "torch_rng": torch.get_rng_state(),
                "python_rng": random.getstate(),
                "ref": ref,
                "value": value,
                "value_optimizer": value_optimizer,
            },
            path / "learner.pt",
        )

    def load(self, path: str | Path) -> int:
        """Restore weights, optimizers, value model, step and RNG from a checkpoint written by `save`.
        Every rank must load the same checkpoint; collective under fsdp2."""
        self._check_ready()
        path = Path(path)
        state = torch.load(path / "learner.pt", weights_only=False, map_location="cpu")
        if self.peft is not None:
            from safetensors.torch import load_file

            adapter = load_file(path / "adapter" / "adapter_model.safetensors")
            self._load_adapter_sharded(adapter) if self.fsdp else load_adapter_state(self.peft, adapter)
        else:
            restored = load_model(path / "model", family=self.lm.traits.name, block_size=self.lm.traits.block_size,
                                  trust_remote_code=self.cfg.model.trust_remote_code)
            self._load_full_state(self.lm.model, restored.model.state_dict())
        self._load_optimizer_state(self.optimizer, self.lm.model, state["optimizer"])
        if self.ref is not None and state["ref"] is not None:
            self._load_full_state(self.ref.model, state["ref"])
        if self.value is not None:
            if state.get("value") is None:
                raise ValueError(f"{path} has no value model, but algorithm.value.enabled is set")
            self._load_full_state(self.value, state["value"])
            self._load_optimizer_state(self.value_optimizer, self.value, state["value_optimizer"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        self.step = state["step"]
        return self.step

    def state_files(self) -> dict[str, bytes]:
        """The checkpoint as {relative path: file bytes}: exactly what `save` writes (model/ or
        adapter/ in transformers / peft format, learner.pt), so the driver can store it anywhere
        without a shared filesystem. Rank 0 answers, other ranks return {}; collective under fsdp2."""
        with tempfile.TemporaryDirectory(prefix="unmask-ckpt-") as tmp:
            self.save(tmp)
            root = Path(tmp)
            return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    def load_state_files(self, files: dict[str, bytes]) -> int:
        """Inverse of `state_files`: restore from those files and return the step. Every rank
        must get the same files; collective under fsdp2."""
        with tempfile.TemporaryDirectory(prefix="unmask-ckpt-") as tmp:
            root = Path(tmp)
            for rel, data in files.items():
                parts = PurePosixPath(rel).parts
                if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
                    raise ValueError(f"checkpoint file {rel!r} is not a relative path inside the checkpoint")
                dest = root.joinpath(*parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
            return self.load(root)
