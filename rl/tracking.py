"""Metrics: metrics.jsonl (the source of truth), wandb (offline by default), and plots."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Append one JSON line per step to RUN_DIR/metrics.jsonl and mirror it to wandb.

    wandb runs offline under RUN_DIR/wandb unless the config asks for online; `wandb sync`
    uploads an offline run later.
    """

    def __init__(self, run_dir: Path, wandb_mode: str = "offline", project: str = "unmask", config: dict | None = None, resume_step: int | None = None):
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            # Drop lines past the checkpoint we resume from, so a crashed run leaves no duplicates.
            keep = [line for line in self.path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in keep))
        self._wandb = None
        if wandb_mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            self._wandb = wandb.init(
                project=project, mode=wandb_mode, dir=str(run_dir), config=config, name=run_dir.name, reinit="finish_previous"
            )

    def log(self, metrics: dict[str, Any], step: int) -> None:
        record = {"step": step, **metrics}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of RUN_DIR/metrics.jsonl, in order."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """PNG of reward, accuracy (train and held-out), loss and KL against the RL step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    out = Path(out) if out else Path(run_dir) / "curves.png"
    keys = {k for r in records for k in r}
    per_source = sorted(k for k in keys if k.count("/") == 2 and k.startswith("reward/") and k.endswith("/mean"))
    source_acc = sorted(k for k in keys if k.count("/") == 2 and k.startswith("accuracy/") and k.endswith("/heldout"))
    several = len(per_source) > 1  # one curve per source only when there is more than one
    panels = [
        ("reward", ["reward/mean", *(per_source if several else [])]),
        ("accuracy", ["accuracy/train", "accuracy/heldout", *(source_acc if several else []),
                      *sorted(k for k in keys if k.startswith("eval/") and k.endswith("/pass@1"))]),
        ("loss", ["loss/policy"]),
        ("KL / entropy", ["kl", "entropy"]),
        ("response length (tokens)", ["rollout/response_length"]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            pts = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if key.endswith(("heldout", "pass@1")) else None, label=key)
        ax.set_title(title)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
        if any(k in r for r in records for k in keys):
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_eval(results: str | Path | dict, out: str | Path) -> Path:
    """PNG of accuracy (pass@1) against NFE from an `unmask eval` results.json: one panel per
    benchmark, one line per checkpoint through its decoding strategies (sorted by NFE), each
    point labelled with its strategy. Entries without NFE (scored completions) are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(Path(results).read_text()) if not isinstance(results, dict) else results
    out = Path(out)
    benches = list(data) or ["(no results)"]
    fig, axes = plt.subplots(1, len(benches), figsize=(4.8 * len(benches), 3.8), squeeze=False)
    for ax, bench in zip(axes[0], benches):
        for ckpt, strategies in data.get(bench, {}).items():
            pts = sorted(
                (e["nfe"], e["pass@1"], strategy) for strategy, e in strategies.items()
                if e.get("nfe") is not None and e.get("pass@1") is not None
            )  # fmt: skip
            if not pts:
                continue
            xs, ys, names = zip(*pts)
            line = ax.plot(xs, ys, marker="o", label=ckpt if len(ckpt) <= 40 else "..." + ckpt[-37:])[0]
            for x, y, name in pts:
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=line.get_color())
        ax.set_title(bench)
        ax.margins(x=0.15, y=0.1)  # room for the strategy labels
        ax.set_xlabel("NFE per sample")
        ax.set_ylabel("pass@1")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
