"""Autoregressive baselines: a causal LM decoded with Hugging Face `generate()` or with vLLM.

Users compare a diffusion policy against an AR model of the same size; both engines return
the same Trajectory records as the diffusion engine (one token per step, so the step map is
0..n-1 and NFE is the number of generated tokens), so evaluation code treats them alike.
`ARModel` runs anywhere; `VLLMModel` is the engine for large AR baselines on a CUDA GPU (the
`gpu` extra) and imports vllm only when used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers import logging as hf_logging

from rollout.trajectory import Trajectory, answer_length

AR_FAMILY = "ar"
ENGINES = ("hf", "vllm")
"""Engines for AR checkpoints: transformers `generate()` and vLLM."""


class ARModel:
    """A causal LM and its tokenizer, decoded left to right by transformers `generate()`."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id

    @classmethod
    def load(cls, path: str | Path, dtype=torch.float32, trust_remote_code: bool = False) -> "ARModel":
        hf_logging.disable_progress_bar()
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
        return cls(model.eval(), AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code))

    def save_pretrained(self, path: str | Path) -> None:
        self.model.config.unmask_family = AR_FAMILY
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    @torch.no_grad()
    def generate(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, temperature: float = 0.0, generator: torch.Generator | None = None,
        columns: Sequence[dict[str, Any]] | None = None,
    ) -> list[Trajectory]:
        """Decode every prompt (left-padded batch) until EOS or `max_new_tokens`."""
        if generator is not None:
            torch.manual_seed(int(torch.randint(2**31, (), generator=generator)))  # HF sampling uses the global RNG
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(list(p))
            attn[i, width - len(p) :] = 1
        dev = next(self.model.parameters()).device
        out = self.model.generate(
            ids.to(dev), attention_mask=attn.to(dev), max_new_tokens=max_new_tokens, do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None, top_k=None, top_p=None,
            pad_token_id=self.pad_id, eos_token_id=self.eos_id, output_scores=True, return_dict_in_generate=True,
        )
        new = out.sequences[:, width:].cpu()  # [n, T]
        scores = torch.stack(out.scores, dim=1).float().cpu()  # [n, T, V] (processed by temperature)
        logp = torch.log_softmax(scores, -1).gather(-1, new[..., None]).squeeze(-1)
        trajs = []
        for i, p in enumerate(prompts):
            comp = new[i].tolist()
            n = answer_length(comp, self.eos_id)
            trajs.append(ar_trajectory(self.tokenizer, p, comp[:n], logp[i, :n].tolist(), temperature, i, columns))
        return trajs


def ar_trajectory(
    tokenizer, prompt: Sequence[int], comp: list[int], logprobs: list[float], temperature: float, i: int,
    columns: Sequence[dict[str, Any]] | None, eos: bool | None = None,
) -> Trajectory:
    """The Trajectory of a left-to-right decode (either engine): one token per step, so the
    step map is 0..n-1 and NFE is n. `comp` ends at the first EOS if one was decoded; `eos`
    overrides how that is detected (vLLM reports it as finish_reason "stop")."""
    ended = (bool(comp) and comp[-1] == tokenizer.eos_token_id) if eos is None else eos
    text_ids = comp[:-1] if comp and comp[-1] == tokenizer.eos_token_id else comp
    return Trajectory(
        prompt_ids=list(prompt), completion_ids=comp, step_map=list(range(len(comp))), logprobs=logprobs, block_size=1,
        temperature=temperature, nfe=len(comp), finish_reason="eos" if ended else "length",
        text=tokenizer.decode(text_ids, skip_special_tokens=True), group=i, columns=dict(columns[i]) if columns is not None else {},
    )  # fmt: skip


def is_ar_checkpoint(path: str | Path) -> bool:
    """True for checkpoints saved by ARModel (config.unmask_family == "ar")."""
    import json

    cfg = Path(path) / "config.json"
    return cfg.exists() and json.loads(cfg.read_text()).get("unmask_family") == AR_FAMILY


# --- vLLM ---------------------------------------------------------------------------------------


def import_vllm():
    """The vllm module, or an ImportError that says how to get it."""
    try:
        import vllm
    except ImportError as e:
        raise ImportError(f"the vLLM engine needs the vllm package on a CUDA machine: pip install 'unmask[gpu]' ({e})") from None
    return vllm


class VLLMModel:
    """An AR checkpoint served by a vLLM engine; `generate` has ARModel's contract.

    Prompts go in as token ids (nothing is re-tokenised), each request gets its own seed drawn
    from the caller's generator (so results do not depend on how vLLM batches), and the
    log-prob of every sampled token comes back. The engine is built with
    ``logprobs_mode="processed_logprobs"``: vLLM's default reports log-probs of the raw logits,
    not of the temperature-scaled distribution the token was sampled from.
    """

    def __init__(self, llm, tokenizer):
        self.llm, self.tokenizer = llm, tokenizer
        self.eos_id = tokenizer.eos_token_id

    @classmethod
    def load(cls, path: str | Path, dtype=torch.bfloat16, trust_remote_code: bool = False, **llm_kwargs: Any) -> "VLLMModel":
        """Start a vLLM engine on the checkpoint (``llm_kwargs`` go to ``vllm.LLM``, e.g. gpu_memory_utilization)."""
        vllm = import_vllm()
        kwargs = dict(model=str(path), dtype=dtype, trust_remote_code=trust_remote_code, seed=0, logprobs_mode="processed_logprobs")
        kwargs.update(llm_kwargs)
        try:
            llm = vllm.LLM(**kwargs)
        except TypeError as e:
            if "logprobs_mode" not in str(e):
                raise
            # vLLM before 0.10.2 has no logprobs_mode (its V0 engine reported processed log-probs).
            kwargs.pop("logprobs_mode")
            llm = vllm.LLM(**kwargs)
        return cls(llm, AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code))

    def generate(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, temperature: float = 0.0, generator: torch.Generator | None = None,
        columns: Sequence[dict[str, Any]] | None = None,
    ) -> list[Trajectory]:
        """Decode every prompt until EOS or `max_new_tokens`; one Trajectory per prompt, in order."""
        vllm = import_vllm()
        seeds = torch.randint(2**31, (len(prompts),), generator=generator).tolist() if generator is not None else [None] * len(prompts)
        params = [vllm.SamplingParams(n=1, temperature=temperature, max_tokens=max_new_tokens, logprobs=0, seed=seed) for seed in seeds]
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
        return [self._trajectory(p, out.outputs[0], temperature, i, columns) for i, (p, out) in enumerate(zip(prompts, outputs))]

    def _trajectory(self, prompt: Sequence[int], out: Any, temperature: float, i: int, columns) -> Trajectory:
        """A vLLM CompletionOutput as a Trajectory: token ids as sampled, the sampled tokens' log-probs."""
        comp = list(out.token_ids)
        if out.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM request {i} ended with finish_reason={out.finish_reason!r}")
        if out.logprobs is None or len(out.logprobs) != len(comp):
            raise RuntimeError(f"vLLM request {i}: expected a log-prob for each of its {len(comp)} tokens")
        logprobs = [float(step[tok].logprob) for step, tok in zip(out.logprobs, comp)]
        return ar_trajectory(self.tokenizer, prompt, comp, logprobs, temperature, i, columns, eos=out.finish_reason == "stop")

    def close(self) -> None:
        """Shut the engine down so the GPU memory it reserved is free for the next checkpoint."""
        import gc

        self.llm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
