"""Shrink a published-run recipe (configs/recipes/) to a two-step CPU run: `unmask train RECIPE --smoke`.

`smoke_config(cfg, workdir)` keeps everything that makes the recipe that recipe and shrinks only what
needs a GPU, the hub, or hours:

| kept as the recipe says | shrunk or replaced |
|---|---|
| model family and block size, LoRA (r, alpha, dropout, targets) | the base: a random tiny model of the same family (Qwen3 for block, Llama for llada, Qwen2 for dream), ~50k parameters, BPE tokenizer with ChatML, written to WORKDIR/model |
| each source's name, preset, template, prompt column, system prompt, columns, rewards and weights | its rows: a few local rows in the source's own format (math, GSM8K or code rows with tests), written to WORKDIR/data/NAME.jsonl; no held-out split |
| the algorithm section entirely: estimator, preset fields, loss, clip, KL, advantage, filters, epochs, lr, value model | minibatches: at most 2 (the step has 4 samples) |
| the decoding strategy, threshold, confidence, temperature, top-k/top-p, cache, and tokens per step | lengths: 8 new tokens; a full-attention block_length and steps_per_block scaled down together (same tokens per step) |
| | 2 prompts x 2 samples per step, 2 steps, a checkpoint at step 2 |
| | one rollout worker and one CPU learner rank (ddp, no bf16, separate placement); eval only the final summary (no benchmarks: they are hub data); wandb disabled |

Nothing here downloads anything: the model, tokenizer and rows are built locally.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rl.config import RunConfig, SourceConfig

SMOKE_STEPS = 2
SMOKE_NEW_TOKENS = 8
SMOKE_PROMPTS, SMOKE_SAMPLES = 2, 2
MAX_SMOKE_MINIBATCHES = 2

# A few problems per row format; the tiny random model will not solve them, which the smoke run does not need.
_MATH = [("What is 2 + 3?", "5"), ("What is 7 - 4?", "3"), ("Compute 6 / 2.", "3"), ("What is 3 * 3?", "9")]
_CODE = [
    ("Write a function add(a, b) that returns a + b.", ["assert add(1, 2) == 3", "assert add(0, 0) == 0"], "def add(a, b):\n    return a + b\n"),
    ("Write a function neg(x) that returns -x.", ["assert neg(2) == -2"], "def neg(x):\n    return -x\n"),
    ("Write a function sq(x) that returns x * x.", ["assert sq(3) == 9"], "def sq(x):\n    return x * x\n"),
    ("Write a function one() that returns 1.", ["assert one() == 1"], "def one():\n    return 1\n"),
]


def smoke_config(cfg: RunConfig, workdir: str | Path) -> RunConfig:
    """`cfg` shrunk to a two-step CPU run in `workdir` (model, rows and run directory are written there).

    The returned config is validated again (RunConfig), so a recipe's cross-field rules still hold."""
    workdir = Path(workdir)
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    data = cfg.model_dump()
    texts: list[str] = []
    for i, src in enumerate(cfg.data.sources):
        rows = _rows(src)
        name = src.name or f"source{i}"
        path = workdir / "data" / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        texts += [json.dumps(r) for r in rows]
        data["data"]["sources"][i].update(path=str(path), name=name, split=None, subset=None, limit=None, generator=None,
                                          heldout={"path": None, "split": None, "size": None, "fraction": None},
                                          max_new_tokens=SMOKE_NEW_TOKENS)  # fmt: skip
    data["model"]["path"] = str(_tiny_model(cfg, workdir / "model", texts))
    data["model"]["trust_remote_code"] = False
    data["rollout"].update(num_workers=1, prompts_per_step=SMOKE_PROMPTS, samples_per_prompt=SMOKE_SAMPLES, compile=False, overlap=False, dtype="float32")
    data["rollout"]["sampling"] = _shrink_sampling(data["rollout"]["sampling"])
    data["eval"].update(every=0, benchmarks=[], heldout_limit=None)
    data["eval"]["sampling"] = _shrink_sampling(data["eval"]["sampling"])
    data["algorithm"]["minibatches"] = min(cfg.algorithm.minibatches, MAX_SMOKE_MINIBATCHES)
    data["learner"].update(ranks=1, parallel="ddp", micro_batches=1, bf16=False, attention="sdpa", backend="auto")
    data["cluster"] = {"address": None, "placement": "separate", "gpus_per_bundle": 0.0, "cpus_per_bundle": None, "strategy": "PACK"}
    data["train"].update(steps=SMOKE_STEPS, save_every=SMOKE_STEPS, output_dir=str(workdir / "run"), checkpoint_dir=None, threads=1)
    data["wandb"]["mode"] = "disabled"
    return RunConfig.model_validate(data)


def _rows(src: SourceConfig) -> list[dict[str, Any]]:
    """A few rows in the format the source reads: its preset's, or (preset none) the columns it names."""
    preset = src.preset or "none"
    rewards = {r.name for r in src.rewards}
    if preset == "gsm8k":
        return [{"question": q, "answer": f"{q.split()[-1]} #### {a}"} for q, a in _MATH]
    if preset == "math":
        return [{"question": q, "ground_truth_answer": a} for q, a in _MATH]
    if preset in ("code", "mbpp"):
        return [{"task_id": i, "text": q, "code": c, "test_list": t} for i, (q, t, c) in enumerate(_CODE)]
    if preset == "none":
        # A row with every column the source reads: its prompt column, and each {kwarg: column} reward column.
        prompt = src.prompt or "prompt"
        cols = src.columns if isinstance(src.columns, dict) else {c: c for c in src.columns}
        if "code" in rewards:
            return [{"id": i, prompt: q, **{col: (t if kw == "tests" else c) for kw, col in cols.items()}} for i, (q, t, c) in enumerate(_CODE)]
        return [{prompt: q, **{col: a for col in cols.values()}} for q, a in _MATH]
    raise ValueError(f"smoke: no local rows for preset {preset!r} (source {src.name!r}); known: math, gsm8k, code, mbpp, none")


def _tiny_model(cfg: RunConfig, path: Path, texts: list[str]) -> Path:
    """A random tiny model of the recipe's family, with a BPE tokenizer (ChatML, <|MASK|>) trained on the rows."""
    from rollout.models import build_tiny_lm
    from rollout.tokenizer import build_bpe_tokenizer

    family = cfg.model.family or "block"
    tok = build_bpe_tokenizer(texts * 4, vocab_size=320)
    lm = build_tiny_lm(tok, family=family, block_size=cfg.model.block_size or 4, hidden_size=32, num_layers=2, num_heads=2,
                       num_kv_heads=1, intermediate_size=64, max_positions=1024)  # fmt: skip
    lm.save_pretrained(path)
    return path


def _shrink_sampling(sampling: dict[str, Any]) -> dict[str, Any]:
    """Decoding with a smoke-sized budget; a full-attention decoding block and its steps shrink together."""
    out = dict(sampling, max_new_tokens=SMOKE_NEW_TOKENS, max_batch=None)
    old_block = sampling.get("block_length")
    steps = sampling.get("steps_per_block")
    if old_block is not None:
        out["block_length"] = min(old_block, SMOKE_NEW_TOKENS)
    if steps is not None and old_block is not None:  # the same tokens per step on the smaller block
        out["steps_per_block"] = max(1, round(steps * out["block_length"] / old_block))
    elif steps is not None and steps > SMOKE_NEW_TOKENS:  # one block over the whole budget (DiffuCoder: 256 steps for 256 tokens)
        out["steps_per_block"] = SMOKE_NEW_TOKENS
    return out
