"""logp_mismatch per model family: rollout log-probs vs the learner's TraceRL replay of the same tokens.

For each family (block = SDAR/TraDo, llada, dream, llada2 = LLaDA2.0/2.1 on Glm4Moe, sdar_moe =
SDAR-30B-A3B on Qwen3-MoE, fast_dllm_v2 = Fast-dLLM v2: block-causal with shifted logits, run here on
blocks of 4 so that most tokens sit next to a block boundary, stable_diffcoder = Stable-DiffCoder on Llama:
blocks of 4 and an exact budget, the last block cut mid-block) a tiny model of its architecture decodes the
same prompts with each cache setting; the learner's `trace_logprobs` then scores the sampled
tokens on the decoded trajectory. The mean and max |rollout - learner| per token is what the
metric `logp_mismatch` reports during training: ~1e-7 means the rollout's log-probs are the
policy's own (exact cache, or none), larger values come from an approximate cache (full-attention
prefix/dual caches, Fast-dLLM style), which is why rollout.overlap refuses them.

The models are the SFT-trained quickstart base (block) and tiny random models for the other
families, so the numbers show the size of the cache approximation, not a real model's.

    python benchmarks/families.py --json out.json
    python benchmarks/families.py --families llada2,sdar_moe,fast_dllm_v2,stable_diffcoder
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from algorithms import trace_logprobs  # noqa: E402
from rl.tasks import ArithmeticTask  # noqa: E402
from rollout import SamplingParams, build_char_tokenizer, generate, load_model  # noqa: E402
from rollout.models import build_tiny_lm  # noqa: E402

BASE = Path(__file__).resolve().parents[1] / "examples" / "checkpoints" / "arith3-base"
SETTINGS = {"block": [("kv_cache", {"kv_cache": True}), ("recompute", {"kv_cache": False})],
            "llada": [("prefix cache", {"kv_cache": True}), ("dual cache", {"kv_cache": True, "dual_cache": True}), ("recompute", {"kv_cache": False})]}  # fmt: skip
SETTINGS["dream"] = SETTINGS["llada"]
SETTINGS["llada2"] = SETTINGS["sdar_moe"] = SETTINGS["fast_dllm_v2"] = SETTINGS["stable_diffcoder"] = SETTINGS["block"]


def tiny_family_lm(family: str, tok, seed: int):
    """The model a family's rows decode with: the quickstart base, or a tiny random one of the family's architecture."""
    if family == "block":
        return load_model(BASE)
    if family in ("fast_dllm_v2", "stable_diffcoder"):
        return build_tiny_lm(tok, family=family, block_size=4, seed=seed)
    if family == "llada2":  # Glm4Moe, as rollout/convert_llada2.py maps LLaDA2.0-mini: routed + shared experts, first layer dense
        from transformers import Glm4MoeConfig, Glm4MoeForCausalLM

        from rollout.models import DiffusionLM

        torch.manual_seed(seed)
        config = Glm4MoeConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=16, moe_intermediate_size=32, n_routed_experts=8, n_shared_experts=1,
                               num_experts_per_tok=2, n_group=4, topk_group=2, first_k_dense_replace=1, norm_topk_prob=True, use_qk_norm=True,
                               pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)  # fmt: skip
        config.mask_token_id = tok.mask_token_id
        return DiffusionLM(Glm4MoeForCausalLM(config).eval(), tok, family="llada2", block_size=32)
    if family == "sdar_moe":  # Qwen3-MoE, as rollout/convert_sdar_moe.py maps SDAR-30B-A3B: every layer routed, top-k renormalised
        from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

        from rollout.models import DiffusionLM

        torch.manual_seed(seed)
        config = Qwen3MoeConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, head_dim=16, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
                                norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], output_router_logits=False,
                                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)  # fmt: skip
        config.mask_token_id = tok.mask_token_id
        return DiffusionLM(Qwen3MoeForCausalLM(config).eval(), tok, family="sdar_moe", block_size=4)  # SDAR-30B-A3B's blocks of 4
    return build_tiny_lm(tok, family=family, seed=seed)


def mismatch(lm, prompts, params, seed: int) -> tuple[float, float]:
    trajs = generate(lm, prompts, params, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        logp, mask, _ = trace_logprobs(lm, trajs, shrink=1)
    rollout = torch.zeros_like(logp)
    for i, t in enumerate(trajs):
        rollout[i, : len(t.logprobs)] = torch.tensor(t.logprobs, dtype=logp.dtype)
    diff = (logp - rollout).abs()[mask]
    return float(diff.mean()), float(diff.max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--families", default=",".join(SETTINGS), help="comma-separated subset of the families to run")
    args = ap.parse_args()
    families = args.families.split(",")
    if unknown := set(families) - set(SETTINGS):
        ap.error(f"unknown families {sorted(unknown)}; known: {list(SETTINGS)}")
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    task = ArithmeticTask(3)
    tok = build_char_tokenizer()
    rows = task.train_rows(args.samples, seed=args.seed, step=0)
    prompts = [tok(r["prompt"])["input_ids"] for r in rows]
    out = {}
    for family in families:
        settings = SETTINGS[family]
        lm = tiny_family_lm(family, tok, args.seed)
        for label, kw in settings:
            extra = {"block_length": 4} if lm.traits.full_attention else {}
            params = SamplingParams(max_new_tokens=8, temperature=1.0, **kw, **extra)
            mean, mx = mismatch(lm, prompts, params, args.seed)
            out[f"{family}/{label}"] = {"mean": mean, "max": mx}
            print(f"{family:12s} {label:13s} logp_mismatch mean {mean:.2e}  max {mx:.2e}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
