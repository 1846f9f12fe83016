"""LoRA adapters (peft) on a DiffusionLM: inject, ship the delta, merge.

peft injects the low-rank layers into the model's modules in place, so `DiffusionLM`
keeps calling the same transformers model and every family works unchanged. Only the
adapter's tensors travel from the learner to the rollout workers each step.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

# load_merged (an adapter directory merged onto its base) lives in rollout/models.py, so that
# load_model opens adapter checkpoints without importing this module; it is re-exported here.
from rollout.models import DiffusionLM, load_merged  # noqa: F401

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def apply_lora(
    lm: DiffusionLM, r: int = 8, alpha: int = 16, dropout: float = 0.0, target_modules: list[str] | tuple[str, ...] = DEFAULT_TARGETS
) -> PeftModel:
    """Inject a LoRA adapter into lm.model in place; returns the peft handle (for saving,
    disabling the adapter and moving its state). Base weights are frozen."""
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), bias="none")
    peft_model = get_peft_model(lm.model, config)
    # get_peft_model wraps lm.model: its layers now hold the LoRA modules, so lm keeps working.
    return peft_model


def adapter_state(peft_model: PeftModel) -> dict[str, torch.Tensor]:
    """The adapter's tensors only (CPU copies): what weight sync ships instead of the full model."""
    return {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(peft_model).items()}


def load_adapter_state(peft_model: PeftModel, state: dict[str, torch.Tensor]) -> None:
    """Load adapter tensors produced by `adapter_state` (strict: every LoRA tensor must be present)."""
    result = set_peft_model_state_dict(peft_model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"adapter sync: unexpected keys {unexpected[:5]}")


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()
