"""LoRA adapters (peft) on a DiffusionLM: inject, ship the delta, merge.

peft injects the low-rank layers into the model's modules in place, so `DiffusionLM`
keeps calling the same transformers model and every family works unchanged. Only the
adapter's tensors travel from the learner to the rollout workers each step.

Mixture-of-experts families (llada2 on Glm4Moe, sdar_moe on Qwen3-MoE). Their routed experts are
not nn.Linear modules but two stacked parameters of one `mlp.experts` module (`gate_up_proj`
[E, 2I, H], `down_proj` [E, H, I]), which `target_modules` cannot reach; peft adapts them through
`target_parameters`, each expert with its own low-rank pair. peft (0.21) maps the expert projection
names of `target_modules` onto them itself: `gate_proj` + `up_proj` adapt the fused
`experts.gate_up_proj` (rank 2r per expert, as two rank-r adapters would), `down_proj`
`experts.down_proj` (rank r); `apply_lora` checks that it did (an older peft leaves the experts
bare: refused, not silently attention-only). Dense MLP layers and LLaDA2's shared expert are
nn.Linear and match by name as in any model. The router (`mlp.gate`) stays frozen: it is not an adapter target (naming `gate` is
refused), so a LoRA update leaves every expert choice a function of the frozen router and the adapted
hidden states, and a merged adapter routes as the adapter model did. Full fine-tuning (no LoRA) does
train the router, through the routing weights of the experts it picked (the top-k choice itself has
no gradient). DARE's SDAR-30B-A3B LoRA SFT recipe targets all-linear on the model's own code, which
does include its nn.Linear router; unmask does not follow it there (choose full fine-tuning to move
the router). Neither way adds a load-balancing loss (rollout/convert_sdar_moe.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

# load_merged (an adapter directory merged onto its base) lives in rollout/models.py, so that
# load_model opens adapter checkpoints without importing this module; it is re-exported here.
from rollout.models import DiffusionLM, load_merged  # noqa: F401

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

EXPERT_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")  # names whose routed-expert tensors peft adapts
ROUTER = "gate"  # the MoE router's module name (`mlp.gate`) in Qwen3-MoE and Glm4Moe


def moe_experts(model: torch.nn.Module) -> list[str]:
    """Names of the modules that hold routed experts as stacked parameters (`...mlp.experts`); [] for a dense model."""
    return [n for n, m in model.named_modules() if n.endswith("mlp.experts") and isinstance(getattr(m, "gate_up_proj", None), torch.nn.Parameter)]


def check_moe_targets(model: torch.nn.Module, target_modules: list[str] | tuple[str, ...]) -> None:
    """Refuse the router of a mixture of experts as a LoRA target (see the module docstring)."""
    if moe_experts(model) and ROUTER in target_modules:
        raise ValueError(
            f"model.lora.target_modules names {ROUTER!r}, the mixture-of-experts router (mlp.gate): unmask keeps the router frozen "
            "under LoRA (a merged adapter must route as the base does); drop it, or train without LoRA to move the router"
        )


def apply_lora(
    lm: DiffusionLM, r: int = 8, alpha: int = 16, dropout: float = 0.0, target_modules: list[str] | tuple[str, ...] = DEFAULT_TARGETS
) -> PeftModel:
    """Inject a LoRA adapter into lm.model in place; returns the peft handle (for saving,
    disabling the adapter and moving its state). Base weights are frozen (a MoE router included);
    a MoE's routed experts get adapters where `target_modules` names their projections (module docstring)."""
    check_moe_targets(lm.model, target_modules)
    experts = moe_experts(lm.model)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), bias="none")
    peft_model = get_peft_model(lm.model, config)
    adapted = {n for n, p in peft_model.named_parameters() if p.requires_grad and ".mlp.experts." in n}
    if experts and any(t in EXPERT_PROJECTIONS for t in target_modules) and not adapted:
        raise ValueError(
            f"model.lora.target_modules names expert projections, but this peft left the {len(experts)} stacked expert modules "
            "without adapters (peft 0.21 adapts them through target_parameters): upgrade peft, or drop gate_proj/up_proj/down_proj"
        )
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
