"""Ablation: TraceRL vs. the other likelihood estimators for the same budget on the CPU task.

Every method RL-trains the committed base checkpoint on 3-digit addition from the same seed
(same prompts per step), for either the same wall time (`--seconds`, default 120) or the same
number of RL steps (`--steps`), and is scored on the same held-out problems with the same
greedy decoding before and after.

    python benchmarks/ablation.py [--seconds 120 | --steps 20] [--methods trace,one_step]
        [--heldout 500] [--out-dir DIR] [--json out.json] [--plot out.png] [--set key=value ...]

Example (~12 min on 2 cores): python benchmarks/ablation.py --seconds 120 --json ablation.json

Methods (`--methods`, comma-separated; default all):
    trace        TraceRL, shrink s=1          configs/quickstart.yaml
    trace_s2     TraceRL, shrink s=2          configs/quickstart.yaml + algorithm.shrink=2
    trace_value  TraceRL + value model (GAE)  configs/tracerl_value.yaml
    one_step     diffu-GRPO (d1)              configs/diffu_grpo.yaml
    coupled      coupled-GRPO (DiffuCoder)    configs/coupled_grpo.yaml
    wd1          wd1 (ratio-free)             configs/quickstart.yaml + algorithm.estimator=wd1, beta=0
    ebpo         TraceRL, EBPO advantages     configs/quickstart.yaml + algorithm.advantage=ebpo
    full_NAME    NAME on a full-attention base configs/quickstart_full.yaml + algorithm.estimator=NAME, for
                 NAME in trace, one_step, spg, espo, cj_grpo, gdpo, just_grpo, mdpo, d_tree_rpo (paper presets;
                 d_tree_rpo: 8 prompts x 16 tree leaves, its preset tree [4, 4, 2])

How the budget is enforced. The script drives the trainer's own stages in its own loop,
`Trainer.rollout -> score -> advantages -> Learner.update -> sync_weights`, i.e. one RL step
exactly as `Trainer.train` runs it, and checks the clock between steps: a step is started
only while the method's training time is below `--seconds` (and fewer than `--steps` steps
are done), so a run overshoots by at most one step and `wall_seconds` reports the real
training time (`--clock cpu` counts CPU seconds of the driver and the actors instead, which
other processes on a shared machine disturb less; `cpu_seconds` is reported either way). Ray
start-up, model loading and the two held-out evaluations are outside the
budget (they are identical for every method); `Trainer.train` is not used because it also
evaluates every `eval.every` steps and writes checkpoints inside the timed loop, and running
it with a step count estimated from a calibration run would make the budget inexact.

Forward passes per update: `algorithms.estimators.count_forward_passes` on the method's first
real rollout batch, i.e. the batched forwards one estimate (old, reference or current policy)
of the whole batch takes. `fwd_total` adds everything one learner update runs: per
minibatch the old, reference (beta > 0) and per-epoch current estimates, plus the value model's
replayed passes (old values and one per epoch) for TraceRL + value.

Each method gets a fresh run directory (config.yaml, metrics.jsonl: `unmask plot DIR` draws
it) under `--out-dir` (default: a temporary directory) and a fresh Ray: its actors are killed
and Ray is shut down before the next method starts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import ray  # noqa: E402

from algorithms.estimators import count_forward_passes  # noqa: E402
from rl.config import load_config  # noqa: E402
from rl.learner import estimator_options  # noqa: E402
from rl.tracking import MetricsLogger  # noqa: E402
from rl.trainer import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# name -> (label, config file, overrides)
METHODS: dict[str, tuple[str, str, list[str]]] = {
    "trace": ("TraceRL s=1", "quickstart.yaml", []),
    "trace_s2": ("TraceRL s=2", "quickstart.yaml", ["algorithm.shrink=2"]),
    "trace_value": ("TraceRL+value", "tracerl_value.yaml", []),
    "one_step": ("diffu-GRPO", "diffu_grpo.yaml", []),
    "coupled": ("coupled-GRPO", "coupled_grpo.yaml", []),
    # wd1's preset on the quickstart's task (its objective has no KL term).
    "wd1": ("wd1", "quickstart.yaml", ["algorithm.estimator=wd1", "algorithm.beta=0"]),
    # EBPO's shrunk group baseline (an advantage form) on the quickstart's TraceRL.
    "ebpo": ("TraceRL+EBPO", "quickstart.yaml", ["algorithm.advantage=ebpo"]),
    # Full attention: the methods defined for full-attention models only, on the LLaDA-style base of
    # configs/sft_quickstart_full.yaml, each with its paper preset (the config sets lr and minibatches
    # only); TraceRL and diffu-GRPO on the same base are the reference rows.
    "full_trace": ("TraceRL s=1 (full)", "quickstart_full.yaml", ["algorithm.estimator=trace"]),
    "full_one_step": ("diffu-GRPO (full)", "quickstart_full.yaml", ["algorithm.estimator=one_step"]),
    "full_spg": ("SPG (full)", "quickstart_full.yaml", ["algorithm.estimator=spg"]),
    "full_espo": ("ESPO (full)", "quickstart_full.yaml", ["algorithm.estimator=espo"]),
    "full_cj_grpo": ("CJ-GRPO (full)", "quickstart_full.yaml", ["algorithm.estimator=cj_grpo"]),
    "full_gdpo": ("GDPO (full)", "quickstart_full.yaml", ["algorithm.estimator=gdpo"]),
    "full_just_grpo": ("JustGRPO (full)", "quickstart_full.yaml", ["algorithm.estimator=just_grpo"]),
    "full_mdpo": ("MDPO (full)", "quickstart_full.yaml", ["algorithm.estimator=mdpo"]),
    # d-TreeRPO's preset tree [4, 4, 2] has 16 leaves per prompt: 8 prompts x 16 leaves keeps the batch at 128.
    "full_d_tree_rpo": ("d-TreeRPO (full)", "quickstart_full.yaml", ["algorithm.estimator=d_tree_rpo", "rollout.samples_per_prompt=16", "rollout.prompts_per_step=8"]),
}


def forward_passes(cfg, trajs) -> tuple[int, int]:
    """(passes per estimate of the batch, all batched forwards of one learner update)."""
    algo = cfg.algorithm
    per_estimate = count_forward_passes(algo.estimator, trajs, **estimator_options(algo))
    draws = algo.epochs if algo.redraw_masks and not algo.estimator_unit().replays_trace else 1  # old/ref per mask draw
    unit = algo.estimator_unit()
    old = 1 if unit.needs_old_logp else 0  # a ratio-free objective (wd1) takes no old pass
    calls = draws * (old + (1 if algo.beta > 0 else 0)) + algo.epochs  # old, reference, current per epoch
    # The learner's chunks: its minibatches, or the unit's segments (d-TreeRPO's parent positions), each scored
    # old/reference once and trained for `epochs` steps.
    segments = unit.segment_count(unit.check_options(estimator_options(algo)), cfg.rollout.sampling.tree)
    total = per_estimate * calls * (algo.minibatches if segments is None else segments)
    if algo.value.enabled:
        total += count_forward_passes("trace", trajs, shrink=algo.shrink) * (1 + algo.epochs) * algo.minibatches
    return per_estimate, total


class CPUClock:
    """CPU seconds (user + system, all threads) of the driver and of the trainer's Ray actors."""

    def __init__(self, trainer: Trainer):
        actors = [*trainer.learners, *trainer.workers]
        pids = ray.get([a.__ray_call__.remote(lambda self: os.getpid()) for a in actors])
        self.procs = [psutil.Process(), *(psutil.Process(p) for p in pids)]

    def __call__(self) -> float:
        return sum(t.user + t.system for t in (p.cpu_times() for p in self.procs))


def run_method(name: str, run_dir: Path, args) -> dict:
    label, config_file, overrides = METHODS[name]
    cfg = load_config(
        CONFIGS / config_file,
        overrides
        + [
            f"eval.heldout_limit={args.heldout}",
            f"train.seed={args.seed}",
            f"train.output_dir={run_dir}",
            "eval.every=0",
            "wandb.mode=disabled",
        ]
        + list(args.set),
    )
    trainer = None
    try:
        trainer = Trainer(cfg, run_dir)
        logger = MetricsLogger(run_dir, "disabled")
        trainer.sync_weights(version=0)
        before = trainer.evaluate(step=0)
        logger.log(before, step=0)
        print(f"[{name}] held-out accuracy before: {before['accuracy/heldout']:.3f}", flush=True)

        curve, fwd, fwd_total, stage_s = [], None, None, {"rollout": 0.0, "update": 0.0}
        cpu = CPUClock(trainer)
        step, t_start, cpu_start = 0, time.perf_counter(), cpu()
        used = (lambda: time.perf_counter() - t_start) if args.clock == "wall" else (lambda: cpu() - cpu_start)
        while (args.steps is None or step < args.steps) and (args.seconds is None or used() < args.seconds):
            # One RL step, stage for stage as Trainer.train runs it (minus periodic eval/checkpoints).
            t0 = time.perf_counter()
            batch = trainer.rollout(step)
            t1 = time.perf_counter()
            if fwd is None:
                fwd, fwd_total = forward_passes(cfg, batch.trajs)
            metrics = trainer.score(batch)
            kept, adv_metrics = trainer.advantages(batch)
            metrics.update(adv_metrics)
            t2 = time.perf_counter()
            if len(kept):
                metrics.update(trainer.update(kept))
            t3 = time.perf_counter()
            trainer.sync_weights(version=step + 1)
            step += 1
            elapsed = time.perf_counter() - t_start
            stage_s["rollout"] += t1 - t0
            stage_s["update"] += t3 - t2
            metrics.update({"reward/mean": float(batch.rewards.mean()), "elapsed_s": elapsed, "timing_s/rollout": t1 - t0, "timing_s/update": t3 - t2})
            logger.log(metrics, step=step)
            curve.append({"step": step, "elapsed_s": elapsed, "reward": metrics["reward/mean"], "accuracy_train": metrics["accuracy/train"]})
            print(f"[{name}] step {step:3d}  {elapsed:6.1f}s  reward {metrics['reward/mean']:.3f}  update {t3 - t2:5.2f}s", flush=True)
        wall, cpu_seconds = time.perf_counter() - t_start, cpu() - cpu_start

        after = trainer.evaluate(step=step)
        logger.log(after, step=step)
        logger.close()
        print(f"[{name}] held-out accuracy: {before['accuracy/heldout']:.3f} -> {after['accuracy/heldout']:.3f} ({step} steps, {wall:.0f}s)", flush=True)
        result = {
            "label": label,
            "accuracy_before": before["accuracy/heldout"],
            "accuracy_after": after["accuracy/heldout"],
            "wall_seconds": round(wall, 1),
            "cpu_seconds": round(cpu_seconds, 1),
            "steps": step,
            "forward_passes_per_update": fwd,
            "forward_passes_per_update_total": fwd_total,
            "rollout_seconds_per_step": stage_s["rollout"] / max(1, step),
            "update_seconds_per_step": stage_s["update"] / max(1, step),
            "final_reward_mean5": float(np.mean([c["reward"] for c in curve[-5:]])) if curve else float("nan"),
            "heldout_size": args.heldout,
            "run_dir": str(run_dir),
            "curve": curve,
        }
        (run_dir / "ablation.json").write_text(json.dumps(result, indent=2))
        return result
    finally:
        if trainer is not None:
            trainer.shutdown()  # kill this method's actors ...
        ray.shutdown()  # ... and Ray itself, so the next method starts clean


def plot(results: dict[str, dict], out: Path, smooth: int = 5) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, r in results.items():
        curve = r["curve"]
        if not curve:
            continue
        rewards = np.array([c["reward"] for c in curve])
        smoothed = np.array([rewards[max(0, i - smooth + 1) : i + 1].mean() for i in range(len(rewards))])  # trailing mean
        label = f"{r['label']} ({r['accuracy_before']:.2f}->{r['accuracy_after']:.2f})"
        for ax, key in zip(axes, ("elapsed_s", "step")):
            xs = np.array([c[key] for c in curve])
            (line,) = ax.plot(xs, smoothed, label=label)
            ax.plot(xs, rewards, color=line.get_color(), alpha=0.2, linewidth=0.8)
    axes[0].set_xlabel("training wall time (s)")
    axes[1].set_xlabel("RL step")
    for ax in axes:
        ax.set_ylabel(f"train reward (trailing {smooth}-step mean)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, title="method (held-out acc.)", title_fontsize=8)
    fig.suptitle("reward curves, tiny block-diffusion LM on 3-digit addition (CPU)", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, help="training wall time per method (default 120 unless --steps is given)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="what --seconds counts: wall time, or CPU seconds of the driver and actors (fairer on a loaded machine)")
    ap.add_argument("--steps", type=int, help="RL steps per method (with --seconds: whichever comes first)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    ap.add_argument("--heldout", type=int, default=500, help="held-out problems (greedy, before and after)")
    ap.add_argument("--seed", type=int, default=0, help="train.seed of every method (same prompts per step)")
    ap.add_argument("--out-dir", type=Path, help="parent of the per-method run directories (default: a temp dir)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override applied to every method")
    ap.add_argument("--json", type=Path, help="write {method: {accuracy_before, accuracy_after, wall_seconds, forward_passes_per_update, ...}}")
    ap.add_argument("--plot", type=Path, help="PNG of reward curves (default: OUT_DIR/ablation_rewards.png)")
    args = ap.parse_args(argv)
    if args.seconds is None and args.steps is None:
        args.seconds = 120.0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        ap.error(f"unknown method(s) {unknown}; choose from {','.join(METHODS)}")

    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="unmask-ablation-"))
    args.plot = args.plot or out_dir / "ablation_rewards.png"
    budget = " and ".join(x for x in (f"{args.seconds:g} {args.clock} s" if args.seconds else "", f"{args.steps} steps" if args.steps else "") if x)
    print(f"ablation: {', '.join(methods)}; budget {budget} per method; run dirs under {out_dir}", flush=True)
    results = {}
    for name in methods:
        run_dir = out_dir / name
        if run_dir.exists() and any(run_dir.iterdir()):
            raise SystemExit(f"{run_dir} is not empty; pick another --out-dir")
        results[name] = run_method(name, run_dir, args)

    print(f"\nablation on 3-digit addition, budget {budget} per method, held-out {args.heldout} problems (greedy static decoding)")
    head = f"{'method':20s} {'acc before':>10s} {'acc after':>9s} {'delta':>7s} {'wall s':>7s} {'cpu s':>6s} {'steps':>6s} {'s/step':>7s} {'update s':>9s} {'fwd/est':>8s} {'fwd/update':>10s} {'reward(last5)':>13s}"
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        print(
            f"{r['label']:20s} {r['accuracy_before']:10.3f} {r['accuracy_after']:9.3f} {r['accuracy_after'] - r['accuracy_before']:+7.3f} "
            f"{r['wall_seconds']:7.1f} {r['cpu_seconds']:6.0f} {r['steps']:6d} {r['wall_seconds'] / max(1, r['steps']):7.2f} {r['update_seconds_per_step']:9.2f} "
            f"{r['forward_passes_per_update'] if r['forward_passes_per_update'] is not None else '-':>8} "
            f"{r['forward_passes_per_update_total'] if r['forward_passes_per_update_total'] is not None else '-':>10} "
            f"{r['final_reward_mean5']:13.3f}"
        )
    print("wall s / cpu s: training time (no eval); cpu s = CPU seconds of driver + actors (all threads)")
    print("update s: learner seconds per step; fwd/est: batched forwards per estimate of a rollout batch (count_forward_passes);")
    print("fwd/update: all learner forwards of one update; reward(last5): mean train reward of the last 5 steps")
    plot(results, args.plot)
    print(f"plot: {args.plot}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"json: {args.json}")
    return results


if __name__ == "__main__":
    main()
