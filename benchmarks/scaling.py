"""Scaling: RL steps/hour with 1 vs 2 rollout workers (and 2 learner ranks, and one-step
overlap), and in-memory weight sync vs disk.

    python benchmarks/scaling.py [--steps 4] [--json out.json]
    python benchmarks/scaling.py --sync-only [--json out.json]   # the weight-sync part alone
    python benchmarks/scaling.py --sync-only --gpu --sync-layers 28   # on a GPU: ~330M params, bf16 workers

Both comparisons run in one process, baseline first:
- steps/hour of the full RL step (rollout, score, update, sync) on the quickstart's model with
  rollout.num_workers 1 and 2 (on a 2-core machine the two workers share the cores; the figure
  shows the overhead, on a multi-GPU machine it shows the speed-up);
- weight sync: learner `get_weights` -> object store -> worker `load_weights` (what the trainer
  does every step) vs. the learner's `save_pretrained` + the worker re-loading with
  `from_pretrained`, on a ~100M-parameter Qwen3-shaped block model with random weights built here
  (the headline figure) and on the 1M quickstart model (which measures only fixed costs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rl.config import load_config  # noqa: E402
from rl.learner import Learner  # noqa: E402
from rl.trainer import Trainer  # noqa: E402
from rollout.models import build_tiny_lm, load_model  # noqa: E402
from rollout.worker import RolloutWorker  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_MODEL = ROOT / "examples" / "checkpoints" / "arith3-base"  # configs/quickstart.yaml's model.path


def steps_per_hour(steps: int, overrides: list[str], stage_seconds: dict | None = None) -> float:
    """Full RL steps (rollout, score, advantages, update, sync) per hour through `Trainer.train`,
    from the stage timings it logs (held-out evaluation excluded); the first step warms up.
    `stage_seconds`, if given, receives the median seconds of each stage (with rollout.overlap,
    "rollout" is the wait the update did not hide)."""
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", [
        f"train.steps={steps + 1}", "train.save_every=1000", "eval.every=0", "eval.heldout_limit=1", "wandb.mode=disabled", *overrides,
    ])
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(cfg, d)
        try:
            trainer.train()
        finally:
            trainer.shutdown()
        rows = [json.loads(line) for line in (Path(d) / "metrics.jsonl").read_text().splitlines()]
    stages = ("rollout", "score", "advantages", "update", "sync_weights")
    rows = [r for r in rows if "timing_s/update" in r][1:]
    if stage_seconds is not None:
        stage_seconds.update({s: statistics.median(r[f"timing_s/{s}"] for r in rows) for s in stages})
    return 3600 / statistics.median(sum(r[f"timing_s/{s}"] for s in stages) for r in rows)


# ~100.8M parameters: Qwen3 layers (GQA 16/8 heads of 64, SwiGLU MLP) at 1024 wide, 8 deep. The
# quickstart's character vocabulary is tiny, so the size is in the blocks, not the embedding.
SYNC_SHAPE = {"hidden_size": 1024, "num_layers": 8, "num_heads": 16, "num_kv_heads": 8, "intermediate_size": 3072}


def build_sync_model(path: Path, num_layers: int) -> int:
    """Write a random-weight block model of SYNC_SHAPE (with `num_layers` layers) to `path`, with
    the quickstart's tokenizer; returns its parameter count."""
    tokenizer = load_model(QUICKSTART_MODEL).tokenizer
    lm = build_tiny_lm(tokenizer, family="block", **{**SYNC_SHAPE, "num_layers": num_layers})
    lm.save_pretrained(path)
    return sum(p.numel() for p in lm.model.parameters())


def sync_times(repeats: int, model_path: str | None = None, gpu: bool = False, dtype: str = "auto") -> tuple[float, float]:
    """Median seconds of one weight sync in memory and through disk (the first of repeats + 1
    rounds warms up). `model_path` replaces the quickstart's model; `gpu` puts the learner and the
    worker on one GPU (half each); `dtype` is the worker's rollout.dtype (auto: bf16 on a GPU)."""
    # beta=0: no frozen reference copy in the learner; it plays no part in sync and costs memory.
    overrides = ["wandb.mode=disabled", "algorithm.beta=0", f"rollout.dtype={dtype}"] + ([f"model.path={model_path}"] if model_path else [])
    overrides += ["cluster.gpus_per_bundle=0.5"] if gpu else []
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", overrides)
    learner = ray.remote(Learner).options(num_gpus=0.5 if gpu else 0).remote(cfg)
    worker = ray.remote(RolloutWorker).options(num_gpus=0.5 if gpu else 0).remote(cfg.model.path, dtype=cfg.rollout.dtype)
    cast = ray.get(worker.decoding_dtype.remote())  # what the trainer's sync casts to

    def reload(self, p):  # the worker's side of the disk path: a fresh model, where and as it decodes
        device = next(self.lm.model.parameters()).device
        self.lm = load_model(p, dtype=self.dtype)
        self.lm.model.to(device)

    def disk(d):  # the reference implementations' path: write the weights, reload them
        ray.get(learner.__ray_call__.remote(lambda self, p: self.lm.save_pretrained(p), d))
        ray.get(worker.__ray_call__.remote(reload, d))

    def memory():
        ray.get(worker.load_weights.remote(learner.get_weights.remote(cast)))

    mem, dsk = [], []
    with tempfile.TemporaryDirectory() as d:
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            memory()
            mem.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            disk(d)
            dsk.append(time.perf_counter() - t0)
    ray.kill(learner)
    ray.kill(worker)
    return statistics.median(mem[1:]), statistics.median(dsk[1:])


def copy_floor(params: int, repeats: int) -> float:
    """Median seconds of one in-memory copy of `params` fp32 values between two buffers already
    paged in: a sync must copy the weights at least once (the learner keeps updating its own), so
    this is the least one can cost on this machine, what the in-memory figure is measured against."""
    src, dst = torch.randn(params), torch.empty(params)
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def sync_report(repeats: int, num_layers: int, gpu: bool = False, dtype: str = "auto") -> dict:
    """Weight sync at ~100M parameters (and on the 1M quickstart model): printed, and returned as
    the JSON fields `sync_speedup_vs_disk`, `sync_params`, `sync_ms` (memory, disk, and on the
    CPU copy_floor), `sync_1m` and `sync_device`."""
    small_params = sum(p.numel() for p in load_model(QUICKSTART_MODEL).model.parameters())
    small_mem, small_disk = sync_times(repeats, gpu=gpu, dtype=dtype)
    with tempfile.TemporaryDirectory() as d:
        params = build_sync_model(Path(d), num_layers)
        mem, disk = sync_times(repeats, d, gpu, dtype)
    where = f"{'GPU' if gpu else 'CPU'} learner and worker, rollout.dtype {dtype}"
    print(f"weight sync ({params / 1e6:.1f}M params, {where}): in memory {mem * 1e3:.0f} ms, "
          f"save_pretrained + from_pretrained {disk * 1e3:.0f} ms -> {disk / mem:.1f}x")
    ms = {"memory": mem * 1e3, "disk": disk * 1e3}
    if not gpu:
        floor = copy_floor(params, repeats)
        ms["copy_floor"] = floor * 1e3
        print(f"  one copy of the same {params * 4 / 1e6:.0f} MB (torch copy_, the least a sync can cost): {floor * 1e3:.0f} ms; "
              f"in-memory sync is {mem / floor:.2f}x that, disk {disk / floor:.1f}x")
    print(f"weight sync ({small_params / 1e6:.1f}M params, fixed costs): in memory {small_mem * 1e3:.1f} ms, "
          f"save_pretrained + from_pretrained {small_disk * 1e3:.1f} ms -> {small_disk / small_mem:.1f}x")
    return {"sync_speedup_vs_disk": disk / mem, "sync_params": params, "sync_ms": ms, "sync_device": where,
            "sync_1m": {"params": small_params, "speedup_vs_disk": small_disk / small_mem,
                        "ms": {"memory": small_mem * 1e3, "disk": small_disk * 1e3}}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--sync-only", action="store_true", help="measure weight sync only (no RL steps)")
    ap.add_argument("--sync-layers", type=int, default=SYNC_SHAPE["num_layers"],
                    help="decoder layers of the sync model (8: ~100M parameters; fewer for a smoke run)")
    ap.add_argument("--gpu", action="store_true", help="sync between a GPU learner and a GPU worker (one GPU, half each)")
    ap.add_argument("--sync-dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                    help="the worker's rollout.dtype (auto: bfloat16 on a GPU, float32 on the CPU)")
    args = ap.parse_args()
    ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    sync = sync_report(args.repeats, args.sync_layers, args.gpu, args.sync_dtype)
    if args.sync_only:
        if args.json:
            args.json.write_text(json.dumps(sync, indent=2))
        return
    base = ["rollout.prompts_per_step=32"]
    one = steps_per_hour(args.steps, base)
    two = steps_per_hour(args.steps, base + ["rollout.num_workers=2"])
    ranks = steps_per_hour(args.steps, base + ["learner.ranks=2"])
    overlap = steps_per_hour(args.steps, base + ["rollout.overlap=true"])
    # Overlap pays off when rollout and update run on different devices. Two cores shared by both
    # stages cannot show that (each stage gets half the cores), so also compare with every actor
    # on one core of its own, the CPU stand-in for separate GPU pools.
    one_core = base + ["train.threads=1"]
    seq_stages, ov_stages = {}, {}
    base_1 = steps_per_hour(args.steps, one_core, seq_stages)
    overlap_1 = steps_per_hour(args.steps, one_core + ["rollout.overlap=true"], ov_stages)
    hidden = 1 - ov_stages["rollout"] / seq_stages["rollout"]
    print(f"RL steps/hour vs 1 rollout worker + 1 learner rank ({one:.0f}):")
    print(f"  2 rollout workers {two:.0f} -> {two / one:.2f}x")
    print(f"  2 learner ranks (ddp) {ranks:.0f} -> {ranks / one:.2f}x")
    print(f"  one-step overlap, stages sharing the cores {overlap:.0f} -> {overlap / one:.2f}x")
    print(f"one-step overlap with one core per actor (separate pools): {base_1:.0f} -> {overlap_1:.0f} steps/hour -> {overlap_1 / base_1:.2f}x;\n"
          f"  rollout {seq_stages['rollout']:.2f}s of a {3600 / base_1:.2f}s step, {hidden:.0%} of it hidden behind the update "
          f"(the most overlap can save here is rollout / step = {seq_stages['rollout'] * base_1 / 3600:.0%})")
    out = {"rollout_scaling_2_workers": two / one, **sync,
           "learner_scaling_2_ranks": ranks / one, "overlap_speedup": overlap_1 / base_1, "overlap_speedup_shared_cores": overlap / one,
           "overlap_rollout_hidden": hidden,
           "steps_per_hour": {"baseline": one, "2_workers": two, "2_ranks": ranks, "overlap": overlap,
                              "baseline_1_core_per_actor": base_1, "overlap_1_core_per_actor": overlap_1}}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
