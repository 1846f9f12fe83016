"""Rollout speed at a real shape on a GPU: the block sampler vs HF generate() (and vLLM when
the `gpu` extra is installed) on one Qwen3-shaped block model with random weights.

One short run, prepared for a lent GPU (about 2-4 minutes at the defaults on an H100/H200):

    python benchmarks/rollout_gpu.py --json gpu.json                     # Qwen3-0.6B shape, bf16, 64 x 256
    python benchmarks/rollout_gpu.py --layers 28 --hidden 2048 --intermediate 6144 --batch 128 --gen 512
    python benchmarks/rollout_gpu.py --tiny                              # CPU smoke run, tiny shape

Random weights decode random tokens, so only speed is measured: static decoding at one token
per step (equal forwards with AR), at two tokens per step, and at one token per step with the LM
head at every block position (`masked_head_speedup`: what predicting only the masked positions
saves), with `stop_at_eos` off so every engine decodes exactly `--gen` tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rollout import SamplingParams, build_char_tokenizer, generate  # noqa: E402
from rollout.engine import _Decoder  # noqa: E402
from rollout.models import DiffusionLM  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int):
    fn()  # warm-up (allocator, kernels)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--intermediate", type=int, default=3072)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--block-size", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--gen", type=int, default=256)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="a tiny shape on CPU (smoke run)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.tiny:
        args.hidden, args.layers, args.heads, args.kv_heads, args.intermediate, args.vocab = 64, 2, 4, 2, 128, 512
        args.batch, args.prompt_len, args.gen, args.dtype, args.repeats, args.no_vllm = 2, 8, 16, "fp32", 1, True
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]

    tok = build_char_tokenizer()
    config = Qwen3Config(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, head_dim=args.hidden // args.heads,
        max_position_embeddings=args.prompt_len + args.gen + 64, tie_word_embeddings=True, attn_implementation="sdpa",
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
    )
    config.mask_token_id, config.block_size = tok.mask_token_id, args.block_size
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(config).to(dtype).eval()
    lm = DiffusionLM(model, tok, family="block", block_size=args.block_size)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    low = max(tok.mask_token_id, tok.eos_token_id, tok.pad_token_id) + 1
    prompts = torch.randint(low, len(tok), (args.batch, args.prompt_len), generator=torch.Generator().manual_seed(0)).tolist()
    n_tok = args.batch * args.gen

    results = {}
    runs = (("unmask static, 1 token/step", {}, True), ("unmask static, 2 tokens/step", {"steps_per_block": args.block_size // 2 or 1}, True),
            ("unmask static, 1 token/step, every position", {}, False))  # the LM head at every block position: what masked-only saves
    for label, kw, masked_only in runs:
        p = SamplingParams(max_new_tokens=args.gen, temperature=0.0, stop_at_eos=False, **kw)
        _Decoder.masked_logits = masked_only
        try:
            secs = timed(lambda p=p: generate(lm, prompts, p), device, args.repeats)
        finally:
            _Decoder.masked_logits = True
        results[label] = n_tok / secs
    ids = torch.tensor(prompts, device=device)
    hf = lambda: model.generate(ids, max_new_tokens=args.gen, min_new_tokens=args.gen, do_sample=False, pad_token_id=tok.pad_token_id)  # noqa: E731
    results["HF generate"] = n_tok / timed(hf, device, args.repeats)

    if not args.no_vllm and device.type == "cuda":
        try:
            from vllm import LLM, SamplingParams as VSP

            with tempfile.TemporaryDirectory() as d:
                model.save_pretrained(d)
                llm = LLM(model=d, skip_tokenizer_init=True, dtype=args.dtype.replace("bf16", "bfloat16").replace("fp16", "float16"), gpu_memory_utilization=0.5)
                vsp = VSP(max_tokens=args.gen, min_tokens=args.gen, temperature=0.0, ignore_eos=True, detokenize=False)
                run = lambda: llm.generate([{"prompt_token_ids": p} for p in prompts], vsp, use_tqdm=False)  # noqa: E731
                results["vLLM"] = n_tok / timed(run, device, args.repeats)
        except Exception as e:  # noqa: BLE001 - vLLM missing or unable to start: report, keep the other figures
            print(f"vLLM skipped: {type(e).__name__}: {e}")

    ar = results["HF generate"]
    print(f"\nrollout on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}): Qwen3 block model {params_m:.0f}M params, "
          f"{args.dtype}, batch {args.batch}, prompt {args.prompt_len}, gen {args.gen}, block {args.block_size}")
    for k, v in results.items():
        print(f"  {k:44s} {v:9.0f} tok/s  {v / ar:5.2f}x HF generate")
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "params_m": params_m, "tokens_per_s": results,
                                         "equal_forwards_vs_ar": results["unmask static, 1 token/step"] / ar,
                                         "masked_head_speedup": results["unmask static, 1 token/step"] / results["unmask static, 1 token/step, every position"], **vars(args) | {"json": str(args.json)}}, indent=2))


if __name__ == "__main__":
    main()
