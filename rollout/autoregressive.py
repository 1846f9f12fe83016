"""Autoregressive baselines: a causal LM decoded with Hugging Face `generate()` and its KV cache.

Users compare a diffusion policy against an AR model of the same size; this wrapper returns
the same Trajectory records as the diffusion engine (one token per step, so the step map is
0..n-1 and NFE is the number of generated tokens), so evaluation code treats both alike.
On GPU machines vLLM is the engine for large AR baselines (the `gpu` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers import logging as hf_logging

from rollout.trajectory import Trajectory

AR_FAMILY = "ar"


class ARModel:
    """A causal LM and its tokenizer, decoded left to right."""

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
            n = comp.index(self.eos_id) + 1 if self.eos_id in comp else len(comp)
            trajs.append(
                Trajectory(
                    prompt_ids=list(p), completion_ids=comp[:n], step_map=list(range(n)), logprobs=logp[i, :n].tolist(),
                    block_size=1, temperature=temperature, nfe=n, finish_reason="eos" if self.eos_id in comp[:n] else "length",
                    text=self.tokenizer.decode(comp[: n - 1] if comp[n - 1] == self.eos_id else comp[:n], skip_special_tokens=True),
                    group=i, columns=dict(columns[i]) if columns is not None else {},
                )
            )
        return trajs


def is_ar_checkpoint(path: str | Path) -> bool:
    """True for checkpoints saved by ARModel (config.unmask_family == "ar")."""
    import json

    cfg = Path(path) / "config.json"
    return cfg.exists() and json.loads(cfg.read_text()).get("unmask_family") == AR_FAMILY
