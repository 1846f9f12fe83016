"""Model-family adapters: loading, attention pattern, logit alignment, special tokens.

Everything that differs between diffusion-LM families lives here, so samplers and
likelihood estimators are written once:

- attention: block-causal (SDAR, TraDo, the project's tiny model) or full (bidirectional;
  LLaDA, Dream);
- logit alignment: aligned (the logit at position p predicts the token at p; LLaDA,
  SDAR) or shifted (position p-1 predicts p; Dream, DiffuCoder);
- mask / eos / pad ids, read from the tokenizer or config, never hard-coded.

The first two, with the block size and the approximate caches, are the family's traits
(rollout/families.py, `DiffusionLM.traits`): callers ask them, never `block_size is None`.

Checkpoints in a family's original hub layout (SDAR/TraDo, Dream, LLaDA) load onto the stock
class through rollout/convert.py, without the family's remote code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
from pathlib import Path

import torch
from transformers import logging as hf_logging
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3Model,
)

from rollout.attention import SDPA_GQA, additive_mask, block_attention_allowed, full_attention_allowed
from rollout.families import FAMILIES, FamilyTraits, family_traits
from rollout.logprobs import head_logprobs
from rollout.weights import separate_storages


# transformers renamed `past_key_values` to `cache` in 5.x; pass whichever this version takes.
_CACHE_KWARG = "cache" if "cache" in inspect.signature(Qwen3Model.forward).parameters else "past_key_values"


# config.model_type -> family, for checkpoints saved without `unmask_family`.
MODEL_TYPES = {"qwen3": "block", "sdar": "block", "llama": "llada", "llada": "llada", "qwen2": "dream", "dream": "dream",
               "llada2_moe": "llada2", "glm4_moe": "llada2", "fast_dllm_qwen": "fast_dllm_v2",
               "sdar_moe": "sdar_moe", "qwen3_moe": "sdar_moe"}


class DiffusionLM:
    """A diffusion LM: a transformers model, its tokenizer and its family.

    Args:
        model: a causal-LM class from transformers that accepts a 4D attention mask.
        tokenizer: must define a mask token (and an eos token).
        family: key of FAMILIES (rollout/families.py).
        block_size: tokens per block for block-causal families.
    """

    def __init__(self, model: PreTrainedModel, tokenizer, family: str = "block", block_size: int | None = None):
        traits = family_traits(family)
        self.model, self.tokenizer = model, tokenizer
        self.mask_id = _special_id(tokenizer, model.config, "mask_token_id")
        self.eos_id = _special_id(tokenizer, model.config, "eos_token_id")
        pad = tokenizer.pad_token_id
        self.pad_id = self.eos_id if pad is None else pad
        if traits.block_causal:
            block_size = block_size or getattr(model.config, "block_size", None) or traits.block_size
            if not block_size or block_size < 1:
                raise ValueError("a block-diffusion model needs block_size >= 1 (config.block_size or argument)")
            traits = dataclasses.replace(traits, block_size=block_size)
        # Full attention: the argument and config.block_size are ignored (decoding blocks are a
        # sampler setting, not the model's).
        self.traits: FamilyTraits = traits
        # Real checkpoints pad the embedding past the tokenizer (SDAR: ids 151670-151935 have no
        # token): sampling such an id would crash decoding, so it is excluded like the mask id.
        self.num_tokens = min(len(tokenizer), model.config.vocab_size)
        self._pass_hook = None  # see `pass_hook`
        if getattr(model.config, "_attn_implementation", None) == "sdpa" and type(model).__module__.startswith("transformers."):
            # Stock classes only: a checkpoint's own code may read the name itself (rollout.attention).
            model.set_attn_implementation(SDPA_GQA)

    @property
    def family(self) -> FamilyTraits:
        """The family's traits (`traits`), under the name callers used before."""
        return self.traits

    @property
    def block_size(self) -> int | None:
        """Tokens per block of a block-causal family (`traits.block_size`). Ask `traits.full_attention`
        for the attention kind, not whether this is None."""
        return self.traits.block_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def compile(self) -> "DiffusionLM":
        """Compile the backbone in place with `torch.compile(dynamic=True)` (decoding only).

        One graph serves every batch size, prompt length and KV length, so the first decode
        pays the compilation (tens of seconds on a CPU) and later ones, weight syncs included
        (parameters are the graph's inputs, not constants), reuse it; a few shapes still get their
        own graph (a batch of one, a cache filled to its end). On a 2-core CPU the demo model's
        threshold decoding ran 1.5x faster at 8 and at 64 rows, with identical tokens
        (benchmarks/rollout.py, `compile`). Not CUDA graphs ("reduce-overhead"): the KV length
        changes every block, so each would be recorded anew.
        Returns self.
        """
        self.model.model.compile(dynamic=True)
        return self

    @contextlib.contextmanager
    def pass_hook(self, hook):
        """Route every `forward_logprobs` call through `hook(compute)` while the context is open.

        `compute()` runs the pass and returns its (logp, entropy); the hook returns what the
        caller gets instead. The learner's backward per pass uses it to run an estimator's passes
        without a graph, then again one backward at a time (rl.learner `_backward_through_logprobs`).
        """
        old, self._pass_hook = self._pass_hook, hook
        try:
            yield
        finally:
            self._pass_hook = old

    @property
    def flex(self) -> bool:
        """True when the backbone runs flex attention: packed inputs then pass a BlockMask."""
        return getattr(self.model.config, "_attn_implementation", None) == "flex_attention"

    def encode(self, input_ids: torch.Tensor, position_ids: torch.Tensor, allowed: torch.Tensor, cache=None) -> torch.Tensor:
        """Final hidden states [B, Q, H] of the backbone under the given attention pattern.

        `allowed` is the bool pattern [B, Q, K] (rollout.attention), its additive form
        [B, 1, Q, K] from `additive_mask` when many forwards share one pattern (the sampler's
        steps), or for a model running flex attention (`flex`) a BlockMask
        (`PackedBatch.attention`).
        """
        dense_bool = isinstance(allowed, torch.Tensor) and not allowed.is_floating_point()
        mask = additive_mask(allowed, self.model.dtype) if dense_bool else allowed
        kwargs = {_CACHE_KWARG: cache, "use_cache": True} if cache is not None else {}
        return self.model.model(input_ids=input_ids, position_ids=position_ids, attention_mask=mask, **kwargs).last_hidden_state

    def forward_logits(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        allowed: torch.Tensor,
        select: torch.Tensor,
        cache=None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits predicting the tokens at the `select`ed positions.

        Args:
            input_ids: [B, Q] token ids.
            position_ids: [B, Q] absolute positions (a noisy copy repeats its positions).
            allowed: [B, Q, K] bool attention pattern (rollout.attention); K = cached + Q. Or its
                additive [B, 1, Q, K] form (`additive_mask`), built once for many forwards.
            select: [B, S] long indices into Q whose tokens we want predicted.
            cache: a transformers `DynamicCache` to read and append to (None: no cache).
            rows: [B, S] bool, the selected slots to compute (None: all of them).
        Returns:
            [B, S, V] float logits, or [n, V] for the n True slots of `rows` in row-major order
            (`rows.nonzero()`). Only those rows go through the LM head.
        """
        hidden = self.encode(input_ids, position_ids, allowed, cache)
        return self.model.lm_head(self.predicting_rows(hidden, select, rows))

    def forward_logprobs(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        allowed: torch.Tensor,
        select: torch.Tensor,
        rows: torch.Tensor,
        targets: torch.Tensor,
        temperature: float,
        with_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sampling-distribution log-probs of `targets` at the `rows` slots of `select`: one pass.

        The learner's forward. Inputs as `forward_logits`; rows [B, S] bool says which slots carry
        loss (only those reach the LM head), targets [B, S] long the token each slot is scored on.
        The log-prob is `sampling_logprobs`'s (logits / temperature, mask id and padded ids
        excluded), computed by `rollout.logprobs.head_logprobs` in vocabulary chunks, so no
        [n, V] tensor is kept for backward. A head that is not a plain nn.Linear (a LoRA-wrapped
        head, say) falls back to full logits of the n rows.
        Returns:
            (logp [n], entropy [n] or None) for the n True slots in row-major order; entropy is
            detached (a metric).
        """
        compute = functools.partial(self._forward_logprobs, input_ids, position_ids, allowed, select, rows, targets, temperature, with_entropy)
        return compute() if self._pass_hook is None else self._pass_hook(compute)

    def _forward_logprobs(self, input_ids, position_ids, allowed, select, rows, targets, temperature, with_entropy):
        hidden = self.predicting_rows(self.encode(input_ids, position_ids, allowed), select, rows)  # [n, H]
        tok = targets[rows]  # [n]
        head = self.model.lm_head
        if isinstance(head, torch.nn.Linear):
            return head_logprobs(hidden, head.weight, head.bias, tok, temperature, self.num_tokens, self.mask_id, with_entropy)
        lp = self.sampling_logprobs(head(hidden), temperature)  # [n, V]
        entropy = torch.special.entr(lp.detach().exp()).sum(-1) if with_entropy else None
        return lp.gather(-1, tok[:, None]).squeeze(-1), entropy

    def predicting_rows(self, hidden: torch.Tensor, select: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states [B, S, H] that predict the tokens at `select` [B, S] of `hidden` [B, Q, H];
        with `rows` [B, S] bool, only the True slots: [n, H] in row-major order.

        Aligned families read the token's own position; shifted heads (Dream) read the one before.
        """
        if self.traits.shift_logits:
            select = (select - 1).clamp(min=0)
        if rows is not None:
            b, s = rows.nonzero(as_tuple=True)
            return hidden[b, select[b, s]]
        return hidden.gather(1, select[:, :, None].expand(-1, -1, hidden.shape[-1]))

    def sampling_logprobs(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """Log-probs of the distribution tokens are actually sampled from.

        logits / temperature with the mask token excluded (a sampler that can emit the mask
        id can loop forever), and ids past the tokenizer (padded vocabularies) too. Temperature 0
        (greedy) scores under temperature 1. The rollout
        and the learner both call this, so their log-probs agree by construction.
        """
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()  # log-softmax in at least fp32
        if temperature > 0:
            logits = logits / temperature
        return torch.log_softmax(logits + self._excluded(logits), dim=-1)

    def _excluded(self, logits: torch.Tensor) -> torch.Tensor:
        """[V] 0 for decodable ids, -inf for the mask id and ids past the tokenizer (padded rows of
        the embedding: no token to decode); built once per dtype and device. Adding 0 leaves a
        logit bit-identical, so this equals writing -inf into a copy, without the copy."""
        key = (logits.shape[-1], logits.dtype, logits.device)
        if getattr(self, "_excluded_key", None) != key:
            bias = torch.zeros(logits.shape[-1], dtype=logits.dtype, device=logits.device)
            bias[self.mask_id] = float("-inf")
            bias[self.num_tokens :] = float("-inf")
            self._excluded_bias, self._excluded_key = bias, key
        return self._excluded_bias

    def attention_allowed(self, position_ids: torch.Tensor, valid: torch.Tensor, query_start: int = 0) -> torch.Tensor:
        """This family's attention over one (unpacked) sequence per row: [B, L - query_start, L]."""
        if self.traits.full_attention:
            return full_attention_allowed(valid)[:, query_start:]
        noisy = torch.zeros_like(valid)
        return block_attention_allowed(position_ids // self.block_size, noisy, valid, query_start)

    def sequence_logits(self, input_ids: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
        """Logits for plain sequences (positions 0..L-1, no padding) under this family's attention."""
        bsz, length = input_ids.shape
        pos = torch.arange(length, device=input_ids.device).expand(bsz, length)
        valid = torch.ones_like(input_ids, dtype=torch.bool)
        return self.forward_logits(input_ids, pos, self.attention_allowed(pos, valid), select)

    def save_pretrained(self, path: str | Path, state_dict: dict | None = None) -> None:
        """Save weights (safetensors) and tokenizer so transformers can load them back.
        `state_dict` replaces the module's own tensors (e.g. full weights gathered from shards)."""
        if self.traits.block_causal:
            self.model.config.block_size = self.traits.block_size
        self.model.config.unmask_family = self.traits.name
        # A learner's parameters are views of one buffer (flatten_parameters): unshare them, or
        # transformers would clone every one of them before writing.
        self.model.save_pretrained(path, state_dict=separate_storages(self.model.state_dict() if state_dict is None else state_dict))
        self.tokenizer.save_pretrained(path)


# Mask tokens as hub tokenizers spell them (SDAR/TraDo's files say <|MASK|> or <MASK>; Dream <|mask|>; LLaDA <|mdm_mask|>;
# Fast-dLLM v2 |<MASK>|, an added token its tokenizer does not name as the mask; Stable-DiffCoder <[MASK_TOKEN]>).
_MASK_TOKENS = ("<|MASK|>", "<MASK>", "<|mask|>", "<|mdm_mask|>", "<mask>", "[MASK]", "|<MASK>|", "<[MASK_TOKEN]>")


def _special_id(tokenizer, config, attr: str) -> int:
    value = getattr(tokenizer, attr, None)
    if value is None:
        value = getattr(config, attr, None)
    if value is None and attr == "mask_token_id":  # hub tokenizers often add the mask token without naming it
        vocab = tokenizer.get_vocab()
        value = next((vocab[t] for t in _MASK_TOKENS if t in vocab), None)
    if value is None:
        raise ValueError(f"the tokenizer/config defines no {attr.replace('_id', '')}; a diffusion LM needs one")
    return int(value)


# The dtypes a user may name (rollout.dtype, `unmask eval --dtype`), by the names torch gives them.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(
    path: str | Path,
    family: str | None = None,
    block_size: int | None = None,
    dtype=torch.float32,
    trust_remote_code: bool = False,
) -> DiffusionLM:
    """Load a diffusion LM from a local directory (or the hub when the user has network).

    The family is `family`, else `config.unmask_family` (written by save_pretrained), else
    inferred from `config.model_type` (MODEL_TYPES). Hub-layout checkpoints of the known families
    (SDAR/TraDo, Dream/DiffuCoder, LLaDA, LLaDA2) load onto their stock classes without remote code,
    tokenizer included (rollout.hub_tokenizer); other checkpoints with their own modeling code need
    `trust_remote_code=True` and a model class that accepts a 4D attention mask. A LoRA adapter
    directory loads onto its base model, merged. What cannot load is refused first, by name
    (rollout.checkpoint_checks): a file, a missing path, a directory without a model, remote code
    that cannot run, an unconvertible architecture or flag.
    """
    from rollout.checkpoint_checks import check_loadable, resolve_model_dir
    from rollout.convert import hub_family, load_hub_checkpoint, read_config
    from rollout.hub_tokenizer import load_tokenizer

    hf_logging.disable_progress_bar()  # a per-tensor loading bar in every actor is noise
    path = resolve_model_dir(path)
    if (path / "adapter_config.json").exists():  # a LoRA checkpoint: base + adapter, merged
        return load_merged(path, family=family, block_size=block_size, dtype=dtype, trust_remote_code=trust_remote_code)
    config = read_config(path)
    check_loadable(path, config, trust_remote_code)
    if hub_family(config) is not None and not trust_remote_code:
        # SDAR/TraDo, Dream, LLaDA in their hub layout: the stock class, weights renamed exactly.
        _, model = load_hub_checkpoint(path, dtype)
    elif trust_remote_code:
        # The checkpoint's own code: the class its auto_map names; its attention left as it chose.
        auto_map = config.get("auto_map") or {}
        auto = AutoModelForCausalLM if "AutoModelForCausalLM" in auto_map or not auto_map else AutoModel
        model = auto.from_pretrained(path, dtype=dtype, trust_remote_code=True)
    else:
        # trust_remote_code=False: never the interactive "run the custom code? [y/N]" prompt (a Ray actor would hang on it)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa", trust_remote_code=False)
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    family = family or checkpoint_family(path)
    if family is None:
        raise ValueError(
            f"cannot tell the diffusion family of model_type {model.config.model_type!r}; pass family= one of {sorted(FAMILIES)}"
        )
    return DiffusionLM(model.eval(), tokenizer, family=family, block_size=block_size)


def load_merged(path: str | Path, family: str | None = None, block_size: int | None = None, dtype=torch.float32,
                trust_remote_code: bool = False) -> DiffusionLM:
    """Load a LoRA adapter directory onto its base model and merge it: a plain DiffusionLM."""
    from peft import PeftModel  # only adapter checkpoints need peft

    path = Path(path)
    base_path = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = load_model(base_path, family=family, block_size=block_size, dtype=dtype, trust_remote_code=trust_remote_code)
    merged = PeftModel.from_pretrained(base.model, path).merge_and_unload()
    return DiffusionLM(merged.eval(), base.tokenizer, family=base.traits.name, block_size=base.traits.block_size)


def checkpoint_family(path: str | Path) -> str | None:
    """The family a local checkpoint will load as, read from its config.json alone (None if unknown)."""
    from rollout.convert import hub_family, read_config

    cfg = read_config(path)
    return cfg.get("unmask_family") or hub_family(cfg) or MODEL_TYPES.get(str(cfg.get("model_type", "")).lower())


_ARCHS = {"block": (Qwen3Config, Qwen3ForCausalLM), "llada": (LlamaConfig, LlamaForCausalLM), "dream": (Qwen2Config, Qwen2ForCausalLM),
          "fast_dllm_v2": (Qwen2Config, Qwen2ForCausalLM), "stable_diffcoder": (LlamaConfig, LlamaForCausalLM)}  # fmt: skip


def build_tiny_lm(
    tokenizer,
    family: str = "block",
    block_size: int = 4,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 512,
    max_positions: int = 256,
    seed: int = 0,
) -> DiffusionLM:
    """A randomly initialised tiny diffusion LM on its family's stock architecture.

    block: Qwen3 (SDAR/TraDo), llada: Llama (LLaDA), dream: Qwen2 (Dream). About 1M
    parameters at the defaults. Embeddings keep the transformers default init (std 0.02);
    a large init drowns the position signal and the model learns far slower.
    """
    if family not in _ARCHS:
        raise ValueError(f"unknown family {family!r}; known: {sorted(_ARCHS)}")
    config_cls, model_cls = _ARCHS[family]
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attn_implementation="sdpa",
    )
    config.mask_token_id = tokenizer.mask_token_id
    config.unmask_family = family
    block_causal = family_traits(family).block_causal
    if block_causal:
        config.block_size = block_size
    torch.manual_seed(seed)
    return DiffusionLM(model_cls(config).eval(), tokenizer, family=family, block_size=block_size if block_causal else None)


def build_tiny_block_lm(tokenizer, block_size: int = 4, **kwargs) -> DiffusionLM:
    """`build_tiny_lm` for the block-diffusion family (the quickstart's architecture)."""
    return build_tiny_lm(tokenizer, family="block", block_size=block_size, **kwargs)
