"""`unmask plan`: the memory and compute of a run, from its config alone, before anything starts.

No weights are loaded. The model is built from its config.json (or, for a hub id, from the
published shape in `KNOWN_SHAPES`) on the meta device, so its parameter count is exact, and the
activations a learner keeps for backward are counted by running its backbone on meta tensors of
the run's real shape under autograd's saved-tensor hooks: the same modules and kernels' saved
sets, no memory, no FLOPs. Per GPU:

- learner: weights, gradients and AdamW state (fp32; sharded by FSDP2 over `learner.ranks`;
  LoRA: only the adapter trains), the reference model when `beta > 0` without LoRA, the value
  model when enabled, and the largest pass's activations at the micro-batch's rows and packed
  length (block-causal: prompt + clean + noisy copy; full attention: prompt + noisy), under bf16
  autocast and gradient checkpointing as configured. A backward allocates the gradients while
  the pass's activations are still alive, so the update's peak is activations + gradients.
- rollout worker: weights in the rollout dtype, the KV cache of its share of the batch at the full
  prompt + generation length, and the decode's largest transient (`rollout_memory`).

Mixture-of-experts models count every expert's weights (all resident); their expert loop runs on
meta tensors with the routing replaced by its size (`_expert_loop`), so the routed experts'
activations (tokens x top_k rows through gate/up/down) and the router's are counted as saved.

It answers "does it fit, and with what micro-batch / rollout batch": the largest of each whose
peak fits `--gpu-memory` with `HEADROOM` left for the CUDA context and fragmentation. FLOPs per
RL step are 2 x parameters per token forward (x3 with backward) over the tokens each stage
processes, plus attention's 4 x length^2 x width per layer and row.

benchmarks/plan_check.py compares the predicted update activations and rollout peaks with measured ones on this CPU.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rl.config import RunConfig

GIB = 1 << 30
HEADROOM = 0.10  # of GPU memory kept free: CUDA context, allocator fragmentation, NCCL buffers

# Published shapes of the bases the recipes name (their hub config.json, as stock transformers
# configs), for planning without a local copy.
KNOWN_SHAPES: dict[str, dict[str, Any]] = {
    # SDAR-8B-Chat / TraDo-8B: Qwen3-8B's shape (JetAstra/SDAR-8B-Chat config.json).
    "qwen3-8b": {"model_type": "qwen3", "hidden_size": 4096, "num_hidden_layers": 36, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 12288, "vocab_size": 151936,
                 "tie_word_embeddings": False, "family": "block", "block_size": 4},
    # SDAR-4B-Chat / TraDo-4B: Qwen3-4B's shape.
    "qwen3-4b": {"model_type": "qwen3", "hidden_size": 2560, "num_hidden_layers": 36, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 9728, "vocab_size": 151936,
                 "tie_word_embeddings": True, "family": "block", "block_size": 4},
    # LLaDA-8B-Instruct (GSAI-ML/LLaDA-8B-Instruct config.json: d_model 4096, n_layers 32, n_heads 32,
    # n_kv_heads 32, mlp_hidden_size 12288, embedding_size 126464), as the Llama it converts to.
    "llada-8b": {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
                 "num_key_value_heads": 32, "head_dim": 128, "intermediate_size": 12288, "vocab_size": 126464,
                 "tie_word_embeddings": False, "family": "llada"},
    # DiffuCoder-7B-Instruct / Dream-7B: Qwen2.5-7B's shape (apple/DiffuCoder-7B-Instruct config.json).
    "qwen2.5-7b": {"model_type": "qwen2", "hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28,
                   "num_key_value_heads": 4, "head_dim": 128, "intermediate_size": 18944, "vocab_size": 152064,
                   "tie_word_embeddings": False, "family": "dream"},
}
HUB_SHAPES = {
    "JetLM/SDAR-8B-Chat": "qwen3-8b", "JetAstra/SDAR-8B-Chat": "qwen3-8b", "Gen-Verse/TraDo-8B-Instruct": "qwen3-8b",
    "Gen-Verse/TraDo-8B-Thinking": "qwen3-8b", "JetLM/SDAR-4B-Chat": "qwen3-4b", "JetAstra/SDAR-4B-Chat": "qwen3-4b",
    "Gen-Verse/TraDo-4B-Instruct": "qwen3-4b",
    "GSAI-ML/LLaDA-8B-Instruct": "llada-8b", "apple/DiffuCoder-7B-Instruct": "qwen2.5-7b", "Dream-org/Dream-v0-Instruct-7B": "qwen2.5-7b",
}  # fmt: skip


@dataclass(frozen=True)
class Shape:
    """The model as the plan needs it: a stock transformers config, its family and block size."""

    config: Any
    family: str
    block_size: int | None
    source: str  # where the shape came from (a config.json, or KNOWN_SHAPES[...])


def model_shape(path: str, family: str | None = None) -> Shape:
    """The stock config of `path`: a local checkpoint's config.json (hub layouts converted as the
    loader converts them), or a hub id / key of `KNOWN_SHAPES`."""
    from transformers import AutoConfig

    from rollout.convert import hub_family, read_config, stock_config
    from rollout.families import FAMILIES
    from rollout.models import MODEL_TYPES

    key = HUB_SHAPES.get(path, path)
    if key in KNOWN_SHAPES:
        spec = dict(KNOWN_SHAPES[key])
        fam, block = spec.pop("family"), spec.pop("block_size", None)
        return Shape(AutoConfig.for_model(**spec), family or fam, block, f"KNOWN_SHAPES[{key!r}]")
    raw = read_config(path)
    if not raw:
        raise ValueError(
            f"model.path {path!r}: no config.json there and not a known hub id; plan needs the model's shape "
            f"(a local checkpoint, or one of {sorted(HUB_SHAPES)})"
        )
    if hub_family(raw) is not None:
        fam, cfg, _ = stock_config(raw)
    else:
        cfg = AutoConfig.from_pretrained(path)
        fam = raw.get("unmask_family") or MODEL_TYPES.get(str(raw.get("model_type", "")).lower())
    fam = family or fam
    if fam not in FAMILIES:
        raise ValueError(f"model.path {path!r}: cannot tell its diffusion family; set model.family")
    return Shape(cfg, fam, getattr(cfg, "block_size", None) or FAMILIES[fam].block_size, str(Path(path) / "config.json"))


def _meta_model(cfg, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    cfg = type(cfg).from_dict(cfg.to_dict())
    cfg._attn_implementation = "sdpa"
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg, dtype=dtype)


def parameter_count(shape: Shape) -> int:
    """Parameters of the model (tied embeddings counted once)."""
    model = _meta_model(shape.config, torch.float32)
    return sum(p.numel() for p in model.parameters())


class _FlashAttention(torch.autograd.Function):
    """What a fused attention kernel (flash / memory-efficient, CUDA or CPU) saves for backward:
    q, k, v, the output, the log-sum-exp per row and the mask; never the [L, L] probabilities."""

    @staticmethod
    def forward(ctx, q, k, v, mask):
        out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse, *([mask] if mask is not None else []))
        return out

    @staticmethod
    def backward(ctx, grad):  # never run: the plan only counts what forward saves
        raise NotImplementedError


def _fused_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False, **_):
    return _FlashAttention.apply(query, key, value, attn_mask)


class _SavedBytes:
    """Bytes autograd saves for backward, each storage once (views of one storage count once);
    parameters are not counted (they exist before the update and after it)."""

    def __init__(self, params) -> None:
        self.total = 0
        self._seen: dict[int, torch.Tensor] = {id(p): p for p in params}  # kept alive, so no id is reused

    def pack(self, t: torch.Tensor):
        base = t._base if t._base is not None else t
        if id(base) not in self._seen:
            self._seen[id(base)] = base
            self.total += base.numel() * base.element_size()
        return t


def _expert_loop(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
    """transformers' eager expert loop (Glm4MoeExperts, Qwen3MoeExperts, OlmoeExperts: `gate_up_proj`
    [E, 2I, H], `down_proj` [E, H, I]) with the routing replaced by its size: which tokens an expert gets
    is data the meta device does not have, but every layer sends tokens x top_k assignments to its
    experts, so they are split evenly. The same ops run on each expert's share (the gather, gate/up,
    activation, down, the routing weight, the scatter back), so autograd saves what the real loop saves
    (per assignment: its input and output rows, gate/up, the activation and its product, two indices;
    under autocast, each hit expert's weight cast too)."""
    n, k = top_k_index.shape
    total, experts = n * k, self.num_experts
    out = torch.zeros_like(hidden_states)
    for e in range(experts):
        share = total // experts + (1 if e < total % experts else 0)
        if share == 0:
            continue
        token_idx = torch.zeros(share, dtype=torch.long, device=hidden_states.device)
        top_k_pos = torch.zeros(share, dtype=torch.long, device=hidden_states.device)
        gate, up = torch.nn.functional.linear(hidden_states[token_idx], self.gate_up_proj[e]).chunk(2, dim=-1)
        h = torch.nn.functional.linear(self.act_fn(gate) * up, self.down_proj[e])
        h = h * top_k_weights[token_idx, top_k_pos, None]
        out.index_add_(0, token_idx, h.to(out.dtype))
    return out


def _shape_only_experts(model) -> int:
    """Give every mixture-of-experts block of `model` the shape-only expert loop; returns how many."""
    import types

    count = 0
    for module in model.modules():
        params = dict(module.named_parameters(recurse=False))
        if params.get("gate_up_proj") is not None and params["gate_up_proj"].dim() == 3 and "down_proj" in params:
            module.forward = types.MethodType(_expert_loop, module)
            count += 1
    return count


def activation_bytes(shape: Shape, rows: int, length: int, *, bf16: bool, checkpointing: bool, scored_tokens: int = 0) -> int:
    """Bytes saved for backward by one forward of the backbone over [rows, length] tokens (plus the
    LM head over `scored_tokens` rows, chunked: their hidden states), counted on meta tensors."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = _meta_model(shape.config, dtype)
    if checkpointing:
        with _quiet():  # transformers' notes on use_cache and the method's new name are not for this user
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    ids = torch.zeros((rows, length), dtype=torch.long, device="meta")
    pos = torch.zeros((rows, length), dtype=torch.long, device="meta")
    mask = torch.zeros((rows, 1, length, length), dtype=dtype, device="meta")  # the packed pattern, additive
    meter = _SavedBytes(model.parameters())
    _shape_only_experts(model)
    patch = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = _fused_sdpa
    try:
        with _quiet(), torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda t: t):
            model.model(input_ids=ids, position_ids=pos, attention_mask=mask)
    except (RuntimeError, NotImplementedError) as exc:  # a data-dependent kernel the meta device cannot run
        raise ValueError(
            f"unmask plan cannot count the activations of {type(model).__name__} on the meta device "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
        ) from None
    finally:
        torch.nn.functional.scaled_dot_product_attention = patch
    hidden = shape.config.hidden_size
    return meter.total + scored_tokens * hidden * torch.finfo(dtype).bits // 8


def update_peak(shape: Shape, n_params: int, rows: int, prompt: int, gen: int, *, bf16: bool = False, checkpointing: bool = False,
                passes: int = 1, passes_alive: int = 1, trainable: int | None = None) -> tuple[int, int]:
    """(activations, peak) of one learner update's forward/backward above what exists before it
    (weights, AdamW state). Activations: the largest pass's, for `rows` rows (`passes_alive` passes
    at once without backward_per_pass). Gradients (fp32, of the trainable parameters) are allocated
    during the backward while activations are freed layer by layer: with one pass, the peak is the
    activations plus the first gradients the backward makes (the LM head's); with several, every
    gradient exists from the first pass on, under each later pass's activations."""
    length = packed_length(shape.family, prompt, gen)
    acts = activation_bytes(shape, rows, length, bf16=bf16, checkpointing=checkpointing, scored_tokens=rows * gen) * passes_alive
    trainable = n_params if trainable is None else trainable
    head = 4 * shape.config.vocab_size * shape.config.hidden_size if trainable == n_params else 0
    return acts, acts + (4 * trainable if passes > 1 else head)


def rollout_memory(shape: Shape, rows: int, prompt: int, gen: int, *, dtype_bytes: int, kv_cache: bool = True,
                   block_length: int | None = None, n_params: int | None = None) -> dict[str, int]:
    """Bytes of one rollout worker decoding `rows` sequences of `prompt` + `gen` tokens with unmask's
    sampler (rollout/engine.py), by part; their sum is the decode's peak.

    - weights, in the rollout dtype;
    - KV cache: block-causal decoding preallocates every layer's keys and values for the whole canvas
      (prompt + generation, rounded up to the block grid; rollout.cache.SlotCache); full attention
      with kv_cache fills a cache over the whole canvas at each block's first step and crops it to a
      view of the same storage, so it too holds the canvas; without kv_cache there is none;
    - the largest forward's working set, which lives beside the cache: block-causal, the prompt's
      prefill (all rows' full prompt blocks in one forward); full attention, every step's forward over
      the whole canvas. Per token, the MLP's three [tokens, intermediate] tensors (gate, up, their
      product) and four hidden-width ones (residual, norm, attention and MLP outputs), or the
      attention stage's q/k/v and output when wider, plus the additive mask [rows, 1, q, k];
    - one step's logits and the sampler's float32 copies of them (log-softmax, the sampling
      probabilities, the temperature-scaled logits), at the positions a step predicts: a block's,
      or full attention's block_length (default: the whole generation). This replaces the working
      set when larger, as the forward's tensors are freed before the LM head runs.
    """
    c = shape.config
    L, h = c.num_hidden_layers, c.hidden_size
    heads = c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or h // heads
    inter = _dense_intermediate(c)
    block_causal = _block_causal(shape.family)
    if block_causal:
        bs = shape.block_size or 1
        width = -(-(prompt + gen) // bs) * bs  # SlotCache capacity: the canvas
        q = k = prompt // bs * bs  # the prefill: full prompt blocks
        m = bs
    else:
        width = prompt + gen
        q = k = width
        m = min(block_length or gen, gen)
    per_token = max(3 * inter + 4 * h, 2 * heads * head_dim + 4 * kv_heads * head_dim + 2 * h)
    out: dict[str, int] = {}
    if n_params is not None:
        out[f"weights ({'bf16' if dtype_bytes == 2 else 'fp32'})"] = dtype_bytes * n_params
    out["KV cache"] = rows * 2 * L * kv_heads * head_dim * width * dtype_bytes if (kv_cache or block_causal) else 0
    forward = rows * (q * per_token + q * k) * dtype_bytes
    logits = rows * m * c.vocab_size * (dtype_bytes + 3 * 4)
    key = "forward working set (prefill)" if block_causal else "forward working set (whole canvas)"
    if forward >= logits:
        out[key] = forward
    else:
        out["one step's logits and sampler copies (fp32)"] = logits
    return out


def _block_causal(family: str) -> bool:
    from rollout.families import family_traits

    return family_traits(family).block_causal


def _dense_intermediate(c) -> int:
    """The MLP width a token goes through: a dense model's intermediate size; a mixture of experts'
    routed experts (top_k of them) and shared experts side by side."""
    experts_k = getattr(c, "num_experts_per_tok", None)
    moe = getattr(c, "moe_intermediate_size", None)
    if experts_k and moe:
        shared = getattr(c, "n_shared_experts", None) or 0
        return max(c.intermediate_size, (experts_k + shared) * moe)
    return c.intermediate_size


@dataclass
class PlanReport:
    """What `unmask plan` prints (bytes per GPU unless named otherwise)."""

    model: str
    family: str
    parameters: int
    gpus: int
    gpu_memory: int
    learner: dict[str, int] = field(default_factory=dict)
    learner_peak: int = 0
    rollout: dict[str, int] = field(default_factory=dict)
    rollout_peak: int = 0
    micro_batch_rows: int = 0
    max_micro_batch_rows: int = 0
    rollout_rows: int = 0
    max_rollout_rows: int = 0
    flops: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        budget = self.gpu_memory * (1 - HEADROOM)
        return self.learner_peak <= budget and self.rollout_peak <= budget


def _lengths(cfg: RunConfig) -> tuple[int, int]:
    """(prompt tokens, generation tokens): data.max_prompt_tokens (else 256), and the largest
    generation budget of the sources (each its own, else its preset's)."""
    from rl.data.sources import prompting

    prompt = cfg.data.max_prompt_tokens or 256
    return prompt, max(prompting(s)[2] for s in cfg.data.sources)


def packed_length(family: str, prompt: int, gen: int) -> int:
    """Tokens of one learner row: block-causal [prompt | clean | noisy], full attention [prompt | noisy]."""
    from rollout.families import family_traits

    return prompt + (2 * gen if family_traits(family).block_causal else gen)


def plan(cfg: RunConfig, gpus: int | None = None, gpu_memory_gb: float = 80.0) -> PlanReport:
    """Memory per GPU and FLOPs per step of the run `cfg` on `gpus` GPUs of `gpu_memory_gb` each.

    gpus: the run's learner ranks and rollout workers both become `gpus` (each GPU holds one of
    each, used in turn); None keeps the config's `learner.ranks` and `rollout.num_workers`.
    """
    from algorithms.estimators import get_estimator

    if gpus is not None:
        cfg = cfg.model_copy(update={
            "learner": cfg.learner.model_copy(update={"ranks": gpus}),
            "rollout": cfg.rollout.model_copy(update={"num_workers": gpus}),
        })  # fmt: skip
    gpus = gpus or max(cfg.learner.ranks, cfg.rollout.num_workers)

    shape = model_shape(cfg.model.path, cfg.model.family)
    if cfg.model.block_size:
        shape = Shape(shape.config, shape.family, cfg.model.block_size, shape.source)
    n_params = parameter_count(shape)
    algo, lc, lora = cfg.algorithm, cfg.learner, cfg.model.lora
    ranks = max(lc.ranks, 1)
    prompt, gen = _lengths(cfg)
    length = packed_length(shape.family, prompt, gen)
    unit = get_estimator(algo.estimator)
    samples = cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt  # decoded
    trained, step_rows = learner_rows(unit, cfg)  # the learner's rows: the samples, or the unit's own
    rows = max(1, math.ceil(step_rows / ranks / lc.micro_batches))
    report = PlanReport(cfg.model.path, shape.family, n_params, gpus, int(gpu_memory_gb * GIB), micro_batch_rows=rows)

    shard = ranks if lc.parallel == "fsdp2" else 1
    if lora.enabled:
        h, layers = shape.config.hidden_size, shape.config.num_hidden_layers
        trainable = layers * len(lora.target_modules) * lora.r * 2 * h  # A [r, in] + B [out, r], in ~ out ~ hidden
        report.learner["weights (frozen base, fp32)"] = 4 * n_params // shard
    else:
        trainable = n_params
        report.learner["weights (fp32)"] = 4 * n_params // shard
    report.learner["gradients (fp32)"] = 4 * trainable // shard
    report.learner["AdamW state (fp32)"] = 8 * trainable // shard
    if algo.beta > 0 and not lora.enabled:
        report.learner["reference model (fp32)"] = 4 * n_params // shard
    if algo.value.enabled:
        report.learner["value model: weights, gradients, AdamW"] = 16 * n_params // shard
    passes = _passes(unit, cfg, gen, shape)
    passes_alive = 1 if (lc.backward_per_pass or passes == 1) else passes
    trainable_shard = trainable // shard
    kw = dict(bf16=lc.bf16, checkpointing=lc.gradient_checkpointing, passes=passes, passes_alive=passes_alive, trainable=trainable_shard)
    # Activations are linear in the rows (each row its own mask and states): one row's, counted once.
    one, peak_one = update_peak(shape, n_params, 1, prompt, gen, **kw)
    acts = one * rows
    report.learner["activations of the largest pass"] = acts
    static = sum(v for k, v in report.learner.items() if not k.startswith("activations"))
    # Gradients are counted in `static` already; the update's own peak adds what update_peak found.
    report.learner_peak = static - report.learner["gradients (fp32)"] + acts + (peak_one - one)
    budget = report.gpu_memory * (1 - HEADROOM)
    report.max_micro_batch_rows = max(0, int((budget - report.learner_peak + acts) // max(one, 1)))
    if shard > 1:
        report.notes.append(f"FSDP2 over {shard} ranks: weights, gradients and AdamW state sharded; one layer is gathered at a time")

    # Rollout worker: weights, KV cache and the largest transient of its decode (rollout_memory).
    # A worker decodes its share of the step's samples, at most sampling.max_batch at a time.
    rollout_rows = max(1, math.ceil(samples / cfg.rollout.num_workers))
    if cfg.rollout.sampling.max_batch:
        rollout_rows = min(rollout_rows, cfg.rollout.sampling.max_batch)
    wbytes = 2 if cfg.rollout.dtype in ("bfloat16", "float16", "auto") else 4
    s = cfg.rollout.sampling
    report.rollout_rows = rollout_rows
    report.rollout = rollout_memory(shape, rollout_rows, prompt, gen, dtype_bytes=wbytes, kv_cache=s.kv_cache,
                                    block_length=s.block_length, n_params=n_params)  # fmt: skip
    report.rollout_peak = sum(report.rollout.values())
    per_row = (report.rollout_peak - wbytes * n_params) / rollout_rows
    report.max_rollout_rows = max(0, int((budget - wbytes * n_params) // per_row))
    c = shape.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads

    # FLOPs per RL step.
    attn = 4 * c.num_hidden_layers * c.num_attention_heads * head_dim  # per (query, key) pair, fwd
    steps_per_block = getattr(cfg.rollout.sampling, "steps_per_block", None) or (shape.block_size or 1)
    decode_tokens = samples * gen * max(1, steps_per_block) // max(1, shape.block_size or 1)
    report.flops["rollout"] = float(2 * n_params * decode_tokens + attn * samples * gen * (prompt + gen) // 2)
    fwd = 2 * n_params * length + attn * length * length  # `passes` as counted for the memory above
    report.flops["learner"] = float(trained * algo.epochs * passes * 3 * fwd)
    if algo.value.enabled:
        report.flops["value"] = float(trained * algo.epochs * passes * 3 * fwd)
    return report


def learner_rows(unit, cfg: RunConfig) -> tuple[int, int]:
    """(learner rows of one RL step, rows of its largest optimizer step) before the split over ranks and
    micro-batches: the samples over `algorithm.minibatches`, or what the unit trains instead
    (`EstimatorUnit.planned_rows`: MDPO's step rows, d-TreeRPO's tree edges and parent segments)."""
    r, prompts = cfg.rollout, cfg.rollout.prompts_per_step
    if unit.planned_rows is None:
        per_prompt, step_per_prompt = r.samples_per_prompt, None
    else:
        tree = tuple(r.sampling.tree) if r.sampling.tree is not None else None
        per_prompt, step_per_prompt = unit.planned_rows(unit.check_options(cfg.algorithm.estimator_options()), r.samples_per_prompt, tree)
    total = prompts * per_prompt
    return total, (math.ceil(total / cfg.algorithm.minibatches) if step_per_prompt is None else prompts * step_per_prompt)


def planned_trajectory(cfg: RunConfig, shape: Shape, prompt: int, gen: int):
    """A stand-in Trajectory of the planned lengths and decode: `gen` tokens (block models: to the end of the block
    holding the last one) in decode blocks (the family's block
    size, else `sampling.block_length`, else one block), each block in `sampling.steps_per_block` steps (default one
    token per step) with its tokens spread evenly over them, steps numbered globally as the rollout records them.
    Threshold strategies decode in at most that many steps, so the plan is an upper bound there."""
    from rollout.trajectory import Trajectory

    s = cfg.rollout.sampling
    decode_block = shape.block_size or s.block_length or gen
    if shape.block_size:  # block models decode whole blocks: the last one ends at a block boundary
        gen = -(-(prompt + gen) // shape.block_size) * shape.block_size - prompt
    step_map, base, start = [], 0, 0
    while start < gen:
        # Block models count blocks from position 0, so the first block holds what the prompt leaves of it.
        n = min(gen - start, decode_block - (prompt + start) % decode_block if shape.block_size else decode_block)
        k = min(n, s.steps_per_block or decode_block)
        step_map += [base + i * k // n for i in range(n)]
        base, start = base + k, start + n
    return Trajectory(prompt_ids=[0] * prompt, completion_ids=[0] * gen, step_map=step_map, logprobs=[0.0] * gen,
                      block_size=shape.block_size, temperature=s.temperature, nfe=base, finish_reason="length")  # fmt: skip


def _passes(unit, cfg: RunConfig, gen: int, shape: Shape) -> int:
    """Forward passes of one estimate, as the unit counts them (`EstimatorUnit.passes`) on a trajectory of the
    planned decode (planned_trajectory): trace, cj_grpo and just_grpo follow the decode's steps, the others their
    own options (coupled 2-3, mc_elbo n, spg num_t, espo 2 x num_mc, ...); a plugin unit is counted the same way."""
    prompt, _ = _lengths(cfg)
    return max(1, unit.passes([planned_trajectory(cfg, shape, prompt, gen)], **cfg.algorithm.estimator_options()))


def _gib(n: float) -> str:
    return f"{n / GIB:7.2f} GiB"


def format_plan(r: PlanReport) -> str:
    """The report as `unmask plan` prints it."""
    budget = r.gpu_memory * (1 - HEADROOM)
    out = [f"model {r.model} ({r.family}): {r.parameters / 1e9:.2f}B parameters; {r.gpus} GPU(s) of {r.gpu_memory / GIB:.0f} GiB "
           f"({HEADROOM:.0%} kept free: {budget / GIB:.1f} GiB usable)", "", f"learner, per GPU (micro-batch {r.micro_batch_rows} rows):"]
    out += [f"  {k:42s} {_gib(v)}" for k, v in r.learner.items()]
    out.append(f"  {'peak':42s} {_gib(r.learner_peak)}  {'fits' if r.learner_peak <= budget else 'DOES NOT FIT'}; "
               f"largest micro-batch that fits: {r.max_micro_batch_rows} rows")
    out.append(f"rollout worker ({r.rollout_rows} rows):")
    out += [f"  {k:42s} {_gib(v)}" for k, v in r.rollout.items()]
    out.append(f"  {'peak':42s} {_gib(r.rollout_peak)}  {'fits' if r.rollout_peak <= budget else 'DOES NOT FIT'}; "
               f"largest rollout batch that fits: {r.max_rollout_rows} rows per worker")
    out.append("FLOPs per RL step: " + ", ".join(f"{k} {v:.3g}" for k, v in r.flops.items()) + f" (total {sum(r.flops.values()):.3g})")
    out += [f"note: {n}" for n in r.notes]
    return "\n".join(out)


@contextlib.contextmanager
def _quiet():
    import warnings

    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)
