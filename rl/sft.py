"""`unmask sft`: block-diffusion supervised training on a synthetic task."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from algorithms.sft import ar_sft_loss, pad_completion, sft_loss
from rl.config import SFTConfig
from rl.evaluate import evaluate_task, load_policy
from rl.tasks import make_task
from rollout.engine import SamplingParams
from rollout.autoregressive import ARModel
from rollout.models import build_tiny_lm
from rollout.tokenizer import build_char_tokenizer


def run_sft(cfg: SFTConfig, output_dir: str | Path | None = None) -> dict:
    """Train, evaluate greedily on held-out problems every `eval_every` steps, save the model.

    The run is a pure function of the config (seeded init, data and masks), so the
    quickstart's base checkpoint can be rebuilt bit-for-bit on the same torch build.
    """
    out = Path(output_dir or cfg.output_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    task = make_task(cfg.task.name, digits=cfg.task.digits)
    ar = cfg.objective == "ar"
    if cfg.init:
        lm = load_policy(cfg.init)
    else:
        a = cfg.arch
        lm = build_tiny_lm(
            build_char_tokenizer(), family=a.family, block_size=a.block_size, hidden_size=a.hidden_size, num_layers=a.num_layers,
            num_heads=a.num_heads, num_kv_heads=a.num_kv_heads, intermediate_size=a.intermediate_size, seed=cfg.seed,
        )
        if ar:  # same backbone, trained left to right with its stock causal mask
            lm = ARModel(lm.model, lm.tokenizer)
    if ar != isinstance(lm, ARModel):
        raise ValueError(f"objective={cfg.objective!r} does not match the checkpoint {cfg.init}")
    tok, bs = lm.tokenizer, getattr(lm, "block_size", None)
    opt = torch.optim.AdamW(lm.model.parameters(), lr=cfg.lr, weight_decay=0.0)
    warmup = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    gen = torch.Generator().manual_seed(cfg.seed)
    eval_rows = task.heldout_rows(cfg.eval_size, seed=1)
    greedy = SamplingParams(max_new_tokens=task.max_new_tokens, temperature=0.0)
    history, t0 = [], time.perf_counter()

    bar = tqdm(range(cfg.steps), desc="SFT", unit="step")
    for step in bar:
        lm.model.train()
        rows = task.train_rows(cfg.batch_size, cfg.seed, step)
        prompts = [tok(r["prompt"])["input_ids"] for r in rows]
        answers = [tok(r["answer"])["input_ids"] + [lm.eos_id] for r in rows]
        if ar:
            loss, m = ar_sft_loss(lm.model, prompts, answers, lm.pad_id)
        else:
            completions = [pad_completion(len(p), a, bs, task.max_new_tokens, lm.eos_id) for p, a in zip(prompts, answers)]
            loss, m = sft_loss(lm, prompts, completions, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{m['loss/sft']:.3f}", tok_acc=f"{m['masked_token_acc']:.2f}")
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            lm.model.eval()
            acc = evaluate_task(lm, task, eval_rows, greedy)["accuracy"]
            history.append({"step": step + 1, "loss": m["loss/sft"], "heldout_accuracy": acc})
            tqdm.write(f"step {step + 1}: loss {m['loss/sft']:.3f}, held-out greedy accuracy {acc:.3f}")
    lm.model.eval()
    out.mkdir(parents=True, exist_ok=True)
    lm.save_pretrained(out)
    summary = {"output_dir": str(out), "wall_seconds": round(time.perf_counter() - t0, 1), "history": history, "config": cfg.model_dump()}
    (out / "sft_summary.json").write_text(json.dumps(summary, indent=2))
    print(f"saved {out} (held-out greedy accuracy {history[-1]['heldout_accuracy']:.3f})")
    return summary
