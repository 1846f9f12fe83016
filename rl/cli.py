"""The `unmask` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from rl.config import ConfigError, RunConfig, SFTConfig, config_help, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help="RL post-training for diffusion language models.")

SetOpt = typer.Option(None, "--set", help="Override a config key, e.g. --set algorithm.lr=5e-5 (repeatable).")


def _load(path: Path, overrides, schema):
    try:
        return load_config(path, overrides, schema)
    except ConfigError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None


@app.command()
def train(
    config: Path = typer.Argument(..., help="Run config (YAML), e.g. configs/quickstart.yaml."),
    output_dir: Optional[Path] = typer.Option(None, help="Run directory (default: train.output_dir)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in the run directory."),
    overrides: Optional[List[str]] = SetOpt,
) -> None:
    """RL-train a diffusion LM (rollout workers + learner on Ray)."""
    cfg = _load(config, overrides, RunConfig)
    from rl.trainer import Trainer

    trainer = Trainer(cfg, output_dir, resume=resume)
    trainer.train()


@app.command()
def sft(
    config: Path = typer.Argument(..., help="SFT config (YAML), e.g. configs/sft_quickstart.yaml."),
    output_dir: Optional[Path] = typer.Option(None, help="Where to write the model (default: output_dir in the config)."),
    overrides: Optional[List[str]] = SetOpt,
) -> None:
    """Block-diffusion SFT of a tiny model on a synthetic task."""
    cfg = _load(config, overrides, SFTConfig)
    from rl.sft import run_sft

    run_sft(cfg, output_dir)


@app.command("eval")
def evaluate(
    checkpoints: List[Path] = typer.Argument(..., help="Model dirs, checkpoint dirs (step_N) or run dirs (latest checkpoint); diffusion or AR."),
    task: str = typer.Option("arithmetic", help="Task whose held-out split to score."),
    digits: int = typer.Option(3, help="Operand width of the arithmetic task."),
    n: int = typer.Option(500, help="Held-out problems."),
    strategies: List[str] = typer.Option(["static"], "--strategy", help="static | threshold (repeat to compare both)."),
    threshold: float = typer.Option(0.9, help="Confidence threshold for --strategy threshold."),
    steps_per_block: Optional[int] = typer.Option(None, help="Static steps per block (default block size)."),
    temperature: float = typer.Option(0.0, help="0 = greedy."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write {checkpoint: {strategy: metrics}} as JSON here."),
) -> None:
    """Accuracy, NFE and tokens/s of checkpoints on a held-out split, as one table."""
    from rl.checkpoint import resolve_model_path
    from rl.evaluate import evaluate_task, load_policy
    from rollout.autoregressive import ARModel

    t = _task(task, digits)
    rows, results = t.heldout_rows(n), {}
    typer.echo(f"| checkpoint | decoding | accuracy | NFE | tokens/forward | tokens/s |\n|---|---|---|---|---|---|")
    for ckpt in checkpoints:
        try:
            policy = load_policy(resolve_model_path(ckpt))
        except (FileNotFoundError, OSError, ValueError) as e:
            typer.echo(f"cannot load {ckpt}: {e}", err=True)
            raise typer.Exit(2) from None
        kinds = ["autoregressive"] if isinstance(policy, ARModel) else strategies
        for strategy in kinds:
            params = _params(t.max_new_tokens, "static" if strategy == "autoregressive" else strategy, threshold, steps_per_block, temperature)
            res = evaluate_task(policy, t, rows, params)
            results.setdefault(str(ckpt), {})[strategy] = res
            typer.echo(f"| {ckpt} | {strategy} T={temperature} | {res['accuracy']:.3f} | {res['nfe_mean']:.2f} | "
                       f"{res['tokens_per_forward']:.2f} | {res['tokens_per_s']:.0f} |")
    typer.echo(f"\n{n} held-out {task} problems. Examples from the last row:")
    for ex in res["examples"]:
        typer.echo(f"  {ex['prompt']}{ex['completion']}   (answer {ex['answer']})")
    if json_out:
        json_out.write_text(json.dumps(results, indent=2))


@app.command()
def generate(
    checkpoint: Path = typer.Argument(..., help="Model dir, checkpoint dir or run dir."),
    prompts: List[str] = typer.Argument(..., help="Prompt strings."),
    strategy: str = typer.Option("static", help="static | threshold"),
    threshold: float = typer.Option(0.9),
    steps_per_block: Optional[int] = typer.Option(None),
    temperature: float = typer.Option(0.0),
    max_new_tokens: int = typer.Option(8),
    seed: int = typer.Option(0),
) -> None:
    """Decode prompts and print each completion with its step map."""
    import torch

    from rl.checkpoint import resolve_model_path
    from rollout.engine import generate as gen
    from rollout.models import load_model

    lm = load_model(resolve_model_path(checkpoint))
    params = _params(max_new_tokens, strategy, threshold, steps_per_block, temperature)
    ids = [lm.tokenizer(p)["input_ids"] for p in prompts]
    for p, t in zip(prompts, gen(lm, ids, params, torch.Generator().manual_seed(seed))):
        toks = lm.tokenizer.convert_ids_to_tokens(t.completion_ids)
        typer.echo(f"{p}{t.text}    [{t.finish_reason}, nfe={t.nfe}]")
        typer.echo("  step map: " + " ".join(f"{tok}@{s}" for tok, s in zip(toks, t.step_map)))


@app.command()
def merge(
    checkpoint: Path = typer.Argument(..., help="A LoRA checkpoint: its adapter dir, a step_N dir or a run dir."),
    output: Path = typer.Argument(..., help="Where to write the merged transformers checkpoint."),
) -> None:
    """Merge a LoRA adapter into its base model and save a plain transformers checkpoint."""
    from rl.checkpoint import resolve_model_path
    from rollout.lora import is_adapter_dir
    from rollout.models import load_model

    path = resolve_model_path(checkpoint)
    if not is_adapter_dir(path):
        typer.echo(f"{path} is not a LoRA adapter (no adapter_config.json); nothing to merge", err=True)
        raise typer.Exit(2)
    load_model(path).save_pretrained(output)
    typer.echo(f"merged {path} into {output} (loads with AutoModelForCausalLM.from_pretrained)")


@app.command()
def plot(run_dir: Path = typer.Argument(..., help="Run directory with metrics.jsonl.")) -> None:
    """Write the PNG of reward / accuracy / loss / KL curves for a run."""
    from rl.tracking import plot_run

    typer.echo(plot_run(run_dir))


@app.command("config-help")
def config_help_cmd(kind: str = typer.Argument("train", help="train | sft")) -> None:
    """Every config key with its default and meaning."""
    typer.echo(config_help(RunConfig if kind == "train" else SFTConfig))


def _task(name: str, digits: int):
    from rl.tasks import make_task

    try:
        return make_task(name, digits=digits)
    except ValueError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None


def _params(max_new, strategy, threshold, steps_per_block, temperature):
    from rollout.engine import SamplingParams

    try:
        return SamplingParams(max_new_tokens=max_new, strategy=strategy, threshold=threshold, steps_per_block=steps_per_block, temperature=temperature)
    except ValueError as e:
        typer.echo(f"bad decoding option: {e}", err=True)
        raise typer.Exit(2) from None


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
