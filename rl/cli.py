"""The `unmask` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from rl.config import ConfigError, RunConfig, SFTConfig, config_help, load_config
from rollout.sampling import STRATEGIES, STRATEGY_SPECS, SamplingParams, parse_strategy, sampling_error

app = typer.Typer(add_completion=False, no_args_is_help=True, help="RL post-training for diffusion language models.")

SetOpt = typer.Option(None, "--set", help="Override a config key, e.g. --set algorithm.lr=5e-5 (repeatable).")
SFTSetOpt = typer.Option(None, "--set", help="Override a config key, e.g. --set lr=5e-4 or --set steps=100 (repeatable).")
STRATEGY_HELP = " | ".join(STRATEGY_SPECS[s] for s in STRATEGIES)


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
    address: Optional[str] = typer.Option(
        None, "--address", help="Join an existing Ray cluster: auto (started here with `ray start`), HOST:6379 or ray://HOST:10001 (sets cluster.address)."
    ),
    smoke: bool = typer.Option(
        False, "--smoke", help="Run the config shrunk to two CPU steps: a tiny model of its family, a few local rows in its data "
        "format, everything that defines the method kept (rl/smoke.py). Checks a recipe end to end before a real run."
    ),
    overrides: Optional[List[str]] = SetOpt,
) -> None:
    """RL-train a diffusion LM (rollout workers + learner ranks on Ray)."""
    cfg = _load(config, overrides, RunConfig)
    if smoke:
        from rl.smoke import smoke_config

        workdir = Path(output_dir or cfg.train.output_dir) / "smoke"
        cfg = smoke_config(cfg, workdir)
        output_dir = workdir / "run"
        typer.echo(f"smoke run of {config}: tiny model and rows under {workdir}, run directory {output_dir}")
    if address is not None:
        cfg.cluster.address = address  # not through --set: YAML would read some HOST:PORT spellings as numbers
    if cfg.cluster.address is not None:
        _ray_auth_for_joining()
    from rl.data import DataError
    from rl.trainer import LearnerDied, trainer_class

    try:
        trainer = trainer_class(cfg)(cfg, output_dir, resume=resume)  # the unit says: rollouts (Trainer) or offline pairs
    except DataError as e:
        typer.echo(f"{config}: data: {e}", err=True)
        raise typer.Exit(2) from None
    except (ValueError, FileNotFoundError) as e:  # a setting the checkpoint cannot run with; no model or checkpoint there
        typer.echo(f"{config}: {e}", err=True)
        raise typer.Exit(2) from None
    try:
        trainer.train()
    except LearnerDied as e:
        typer.echo(f"\nrun stopped: {e}", err=True)
        raise typer.Exit(1) from None


@app.command()
def plan(
    config: Path = typer.Argument(..., help="Run config (YAML), e.g. configs/recipes/trado_8b_tracerl.yaml."),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="GPUs: learner ranks and rollout workers both become this (default: the config's)."),
    gpu_memory: float = typer.Option(80.0, "--gpu-memory", help="Memory of one GPU in GB (GiB)."),
    overrides: Optional[List[str]] = SetOpt,
) -> None:
    """Memory per GPU (learner and rollout worker), whether it fits, the largest micro-batch and rollout batch that do,
    and FLOPs per RL step, from the config alone (no weights loaded; rl/plan.py)."""
    cfg = _load(config, overrides, RunConfig)
    from rl.plan import format_plan
    from rl.plan import plan as make_plan

    try:
        report = make_plan(cfg, gpus=gpus, gpu_memory_gb=gpu_memory)
    except ValueError as e:
        typer.echo(f"{config}: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(format_plan(report))


@app.command()
def sft(
    config: Path = typer.Argument(..., help="SFT config (YAML), e.g. configs/sft_quickstart.yaml or configs/sft_demo.yaml."),
    output_dir: Optional[Path] = typer.Option(None, help="Where to write the model (default: output_dir in the config)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint under OUTPUT_DIR/checkpoints (needs save_every)."),
    overrides: Optional[List[str]] = SFTSetOpt,
) -> None:
    """Supervised training on prompt/response data (block diffusion, random masking, or AR), loss on response tokens only."""
    cfg = _load(config, overrides, SFTConfig)
    from rl.data import DataError
    from rl.sft import run_sft

    try:
        run_sft(cfg, output_dir, resume=resume)
    except (DataError, FileNotFoundError) as e:
        typer.echo(f"{config}: {e}", err=True)
        raise typer.Exit(2) from None


@app.command("eval")
def evaluate(
    checkpoints: Optional[List[Path]] = typer.Argument(None, help="Model dirs, checkpoint dirs (step_N) or run dirs (latest checkpoint); diffusion or AR."),
    benchmarks: Optional[List[str]] = typer.Option(
        None, "--benchmark", "-b",
        help="NAME[:PATH][,KEY=VALUE...] (repeatable). Names: arithmetic (synthetic, no file), gsm8k, math, humaneval, mbpp "
        "(PATH: .jsonl[.gz], .json, .parquet, .csv, .arrow or a save_to_disk directory), gym:DATASET (reasoning-gym, e.g. gym:countdown). "
        "Keys: label, template (default | raw | a text file with {field} placeholders), max_new_tokens, limit; files: split; "
        "math/gsm8k: question=FIELD, answer=FIELD; arithmetic: digits, seed; gym: size, seed and the dataset's config. Default: --task.",
    ),
    data_config: Optional[Path] = typer.Option(
        None, "--data", help="A train or SFT config: score the held-out split of every source of its data section, with the "
        "prompts, templates and rewards the run used (repeat -b to add benchmarks).",
    ),
    eval_config: Optional[Path] = typer.Option(
        None, "--config", help="A run config (e.g. a recipe): run its eval.table (else eval.benchmarks with eval.sampling): benchmarks, "
        "strategies, samples, decoding and lengths from the file; -b, --strategy, --threshold, --steps-per-block, --temperature, -k and "
        "--max-new-tokens given here win.",
    ),
    task: str = typer.Option("arithmetic", help="Synthetic task to score when neither --benchmark nor --data is given."),
    digits: int = typer.Option(3, help="Operand width of the arithmetic task."),
    limit: Optional[int] = typer.Option(None, "--limit", "--n", help="First N problems of each benchmark (synthetic tasks: N held-out problems, default 500)."),
    strategies: Optional[List[str]] = typer.Option(
        None, "--strategy", help=f"{STRATEGY_HELP} (repeat to compare; AR checkpoints decode left to right). Default: static."
    ),
    threshold: Optional[float] = typer.Option(None, help="Confidence threshold for --strategy threshold. Default: 0.9."),
    steps_per_block: Optional[int] = typer.Option(None, help="Static steps per block (default block size)."),
    temperature: Optional[float] = typer.Option(None, help="0 = greedy. Default: 0."),
    samples: Optional[int] = typer.Option(
        None, "--samples", "-k", help="Samples per problem: pass@k and avg@k with k = samples (use a temperature > 0). Default: 1."
    ),
    max_new_tokens: Optional[int] = typer.Option(None, help="Generation budget for every benchmark (default: per benchmark)."),
    batch_size: int = typer.Option(64, help="Samples decoded together."),
    seed: int = typer.Option(0, help="Sampling seed."),
    chat_template: str = typer.Option("auto", help="auto: wrap prompts in the tokenizer's chat template when it has one (not synthetic tasks); none: never."),
    completions: Optional[List[Path]] = typer.Option(
        None, "--completions", help="Score the completions in this JSONL ({task_id or id, completion} rows, several per id for pass@k) "
        "instead of decoding; one row of the table per file (repeatable; needs exactly one --benchmark).",
    ),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write DIR/results.json, results.md, accuracy_vs_nfe.png and samples/."),
    resume: bool = typer.Option(False, "--resume", help="Skip entries already in DIR/results.json with the same settings."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    engine: str = typer.Option("auto", help="Engine for AR checkpoints: auto (vLLM on a CUDA GPU when installed, else hf) | hf (transformers generate) | vllm."),
    dtype: str = typer.Option("auto", help="auto (bfloat16 on a GPU, float32 on the CPU) | float32 | bfloat16 | float16."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="For checkpoints with their own modeling code."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile diffusion checkpoints' backbones (paid once, in the warm-up; helps small batches)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write {checkpoint: {strategy: metrics}} as JSON here (one benchmark; else the results.json schema)."),
    sandbox: Optional[str] = typer.Option(
        None, "--sandbox", help="Code sandbox for code benchmarks: auto (bubblewrap where it works, else rlimits + Landlock + seccomp) | bwrap | "
        "rlimit; as a run's scoring.sandbox. Default: the UNMASK_SANDBOX environment variable, else auto.",
    ),
) -> None:
    """Score checkpoints (diffusion or AR) on benchmarks: pass@1, pass@k, avg@k, NFE, tokens/s, as one table.

    Examples:

    unmask eval runs/quickstart examples/checkpoints/arith3-base --strategy static --strategy threshold:0.9 -o eval/

    unmask eval CKPT AR_CKPT -b gsm8k:gsm8k_test.jsonl -b humaneval:HumanEval.jsonl.gz -k 8 --temperature 0.7 -o eval/ --resume

    unmask eval -b humaneval:HumanEval.jsonl.gz --completions samples.jsonl

    unmask eval CKPT -b gym:countdown,size=200 -b gym:gsm_symbolic,size=200 -o eval/   (pip install ".\\[gym]")

    results.json: {benchmark: {checkpoint: {strategy: {pass@1, pass@k, avg@k, k, accuracy, n, nfe, tokens_per_forward,
    tokens_per_s, kind, settings, ...}}}}; results.md holds the tables printed at the end.
    """
    from rl.data import BenchmarkError, load_benchmark, parse_benchmark
    from rl.data.presets import PRESETS
    from rl.evaluate import EvalOptions, Results, results_markdown, run_eval

    if not checkpoints and not completions:
        typer.echo("nothing to evaluate: give checkpoints and/or --completions FILE", err=True)
        raise typer.Exit(2)
    from rollout.models import DTYPES

    file_base, file_strategies, file_samples, file_benchmarks, file_max_new = None, None, None, None, None
    if eval_config is not None:
        table = _load(eval_config, [], RunConfig).eval.table_settings()
        file_base, file_strategies, file_samples = table.sampling.params(8), table.strategies or [table.sampling.strategy], table.samples
        file_benchmarks, file_max_new = table.benchmarks or None, table.sampling.max_new_tokens
    benchmarks = benchmarks or file_benchmarks
    strategies = strategies or file_strategies or ["static"]
    samples = samples if samples is not None else (file_samples or 1)
    max_new_tokens = max_new_tokens or file_max_new
    if (chat_template not in ("auto", "none") or dtype not in ("auto", *DTYPES) or engine not in ("auto", "hf", "vllm") or samples < 1
            or sandbox not in (None, "auto", "bwrap", "rlimit")):  # fmt: skip
        typer.echo("bad option: --chat-template auto|none, --dtype auto|float32|bfloat16|float16, --engine auto|hf|vllm, --samples >= 1, "
                   "--sandbox auto|bwrap|rlimit", err=True)  # fmt: skip
        raise typer.Exit(2)
    if resume and output is None:
        typer.echo("--resume needs --output DIR (the results.json to resume)", err=True)
        raise typer.Exit(2)
    try:
        benches = _data_benchmarks(data_config, limit, max_new_tokens) if data_config else []
        default = [] if benches else [parse_benchmark(f"{task},digits={digits}")]
        requests = [parse_benchmark(b) for b in benchmarks] if benchmarks else default
        for r in requests:
            typer.echo(f"loading benchmark {r.name}" + (f" from {r.path}" if r.path else "") + " ...", err=True)
        benches += [load_benchmark(r, limit=limit, max_new_tokens=max_new_tokens, **({"digits": digits} if r.name in PRESETS and PRESETS[r.name].infinite else {})) for r in requests]
        if completions and len(benches) != 1:
            raise BenchmarkError("--completions needs exactly one --benchmark (the completions' problems)")
    except (BenchmarkError, ValueError) as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    base = _params(8, "static", threshold, steps_per_block, temperature, file_base)
    opts = EvalOptions(
        strategies=list(strategies), base=base, samples=samples, batch_size=batch_size, seed=seed, chat_template=chat_template,
        device=device, engine=engine, dtype=dtype, trust_remote_code=trust_remote_code, resume=resume, compile=compile, sandbox=sandbox,
    )
    ran: dict = {}
    try:
        ran = run_eval(checkpoints or [], benches, opts, output, completions or [], echo=typer.echo)
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted: finished entries are in {output / 'results.json'}; rerun with --resume to continue" if output else "\ninterrupted", err=True)
        raise typer.Exit(130) from None
    except (FileNotFoundError, OSError, ValueError) as e:
        hint = "; to run a checkpoint's own modeling code, pass --trust-remote-code" if "trust_remote_code" in str(e) and not trust_remote_code else ""
        typer.echo(f"eval failed: {e}{hint}", err=True)
        raise typer.Exit(2) from None
    finally:
        if output is not None and (output / "results.json").exists():
            from rl.tracking import plot_eval

            plot_eval(output / "results.json", output / "accuracy_vs_nfe.png")
    typer.echo("\n" + results_markdown(Results(output).data if output else ran))
    last = next((e for ck in reversed(list(ran.values())) for ss in reversed(list(ck.values())) for e in reversed(list(ss.values()))), None)
    if last and last.get("examples"):
        typer.echo("Examples from the last row:")
        for ex in last["examples"]:
            line = f"{ex['prompt']}{ex['completion']}"
            line = line if len(line) <= 100 and "\n" not in line else f"[{ex['id']}] " + repr(ex["completion"])[:90]
            typer.echo(f"  {line}   (reward {ex['reward']})")
    if output:
        typer.echo(f"results: {output / 'results.json'}, {output / 'results.md'}, {output / 'accuracy_vs_nfe.png'}")
    if json_out:
        data = next(iter(ran.values())) if len(ran) == 1 else ran
        json_out.write_text(json.dumps(data, indent=2))


@app.command()
def generate(
    checkpoint: Path = typer.Argument(..., help="Model dir, checkpoint dir (RUN/checkpoints/step_N) or run dir (its latest checkpoint)."),
    prompts: List[str] = typer.Argument(..., help="Prompt strings; from a run, each fills the run's template (its first {placeholder})."),
    strategy: str = typer.Option("static", help=STRATEGY_HELP),
    threshold: float = typer.Option(0.9),
    steps_per_block: Optional[int] = typer.Option(None),
    temperature: float = typer.Option(0.0),
    max_new_tokens: Optional[int] = typer.Option(None, help="Generation budget (default: the run's, else 8)."),
    seed: int = typer.Option(0),
    template: Optional[str] = typer.Option(None, help="Prompt template with one {placeholder} the prompt fills, e.g. 'Question: {q}\nAnswer:' (default: the run's, else the prompt as is)."),
    source: Optional[str] = typer.Option(None, help="Which source of the run's data section to prompt as (default: its first)."),
    chat_template: Optional[str] = typer.Option(None, help="auto: wrap each prompt in the tokenizer's chat template when it has one; none: raw text (default: the run's, else auto)."),
    system_prompt: Optional[str] = typer.Option(None, help="System message (the chat template's system turn, else prepended; default: the run's; '' for none)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run the checkpoint's own modeling code (other architectures)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the backbone first (pays off over many prompts)."),
    device: str = typer.Option("auto", help="auto (a CUDA GPU when there is one) | cpu | cuda | cuda:N."),
    dtype: str = typer.Option("auto", help="auto (bfloat16 on a GPU, float32 on the CPU, as rollout.dtype) | float32 | bfloat16 | float16."),
) -> None:
    """Decode prompts and print each completion with its step map.

    Given a run (its directory or one of its checkpoints), each prompt is prompted as the run's training prompts
    were: its template, system prompt, chat template and generation budget, read from RUN/config.yaml (unmask
    train) or RUN/sft_summary.json (unmask sft); the options above override them.
    """
    import torch

    from rl.checkpoint import resolve_model_path
    from rl.data import encode_prompt
    from rl.evaluate import resolve_device
    from rollout.engine import generate as gen
    from rollout.models import DTYPES, load_model
    from rollout.worker import decoding_dtype

    try:
        dev = resolve_device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("no CUDA GPU here")
        torch.empty(0, device=dev)  # an unknown device or GPU index fails here, before the model loads
    except (ValueError, RuntimeError, AssertionError) as e:
        typer.echo(f"bad option --device {device}: {e}", err=True)
        raise typer.Exit(2) from None
    if dtype != "auto" and dtype not in DTYPES:
        typer.echo(f"bad option --dtype {dtype}: expected auto, {', '.join(DTYPES)}", err=True)
        raise typer.Exit(2)
    if chat_template not in (None, "auto", "none"):
        typer.echo(f"bad option --chat-template {chat_template}: expected auto or none", err=True)
        raise typer.Exit(2)
    try:
        path = resolve_model_path(checkpoint)
    except FileNotFoundError as e:
        typer.echo(f"generate failed: {e}", err=True)
        raise typer.Exit(2) from None
    run = _run_prompting(checkpoint, source)
    if run is not None:
        overridden = [o for o, v in (("--template", template), ("--system-prompt", system_prompt), ("--chat-template", chat_template),
                                     ("--max-new-tokens", max_new_tokens)) if v is not None]  # fmt: skip
        typer.echo(f"prompting as {run['where']} (source {run['source']!r}): template {run['template']!r}, system prompt {run['system_prompt']!r}, "
                   f"chat template {run['chat_template']}, max_new_tokens {run['max_new_tokens']}"
                   + (f"; overridden: {', '.join(overridden)}" if overridden else ""), err=True)  # fmt: skip
        template = run["template"] if template is None else template
        system_prompt = run["system_prompt"] if system_prompt is None else system_prompt
        chat_template = run["chat_template"] if chat_template is None else chat_template
        max_new_tokens = run["max_new_tokens"] if max_new_tokens is None else max_new_tokens
    try:
        texts = [_fill(template, p) for p in prompts] if template else list(prompts)
    except ValueError as e:
        typer.echo(f"bad option --template: {e}", err=True)
        raise typer.Exit(2) from None
    try:
        lm = load_model(path, dtype=decoding_dtype(dtype, dev), trust_remote_code=trust_remote_code)
    except (ValueError, OSError) as e:  # e.g. a checkpoint with its own modeling code, without --trust-remote-code
        hint = "; to run the checkpoint's own modeling code, pass --trust-remote-code" if "trust_remote_code" in str(e) and not trust_remote_code else ""
        typer.echo(f"generate failed: {path}: {e}{hint}", err=True)
        raise typer.Exit(2) from None
    lm.model.to(dev)
    if compile:
        lm.compile()
    params = _params(max_new_tokens or 8, strategy, threshold, steps_per_block, temperature)
    ids = [encode_prompt(lm.tokenizer, t, (chat_template or "auto") == "auto", system_prompt or None)[0] for t in texts]
    for p, t in zip(texts, gen(lm, ids, params, torch.Generator().manual_seed(seed))):
        toks = lm.tokenizer.convert_ids_to_tokens(t.completion_ids)
        typer.echo(f"{p}{t.text}    [{t.finish_reason}, nfe={t.nfe}]")
        typer.echo("  step map: " + " ".join(f"{tok}@{s}" for tok, s in zip(toks, t.step_map)))


def _fill(template: str, prompt: str) -> str:
    """The template with its first {placeholder} filled by the prompt (any others left empty)."""
    from rl.data import DataError, render
    from rl.data.prompts import placeholders

    names = placeholders(template)
    if not names:
        raise ValueError(f"{template!r} has no {{placeholder}} for the prompt")
    try:
        return render(template, {n: prompt if n == names[0] else "" for n in names})
    except DataError as e:
        raise ValueError(str(e)) from None


def _run_prompting(checkpoint: Path, source: Optional[str]) -> Optional[dict]:
    """How the run a checkpoint belongs to prompted its source (template, system prompt, chat template,
    budget), from its config.yaml or sft_summary.json; None for a bare model (or a summary without data)."""
    import yaml
    from pydantic import ValidationError

    from rl.checkpoint import run_config_of
    from rl.config import DataConfig
    from rl.data import DataError
    from rl.data.names import source_name
    from rl.data.sources import prompting

    where = run_config_of(checkpoint)
    if where is None:
        return None
    try:
        raw = yaml.safe_load(where.read_text()) if where.suffix == ".yaml" else json.loads(where.read_text()).get("config", {})
        if not isinstance(raw, dict) or "data" not in raw:
            return None  # an SFT summary from before the data layer: nothing to prompt as
        data = DataConfig.model_validate(raw["data"])
        names = [source_name(s) for s in data.sources]
        if source is not None and source not in names:
            typer.echo(f"bad option --source {source}: {where} has sources {', '.join(names)}", err=True)
            raise typer.Exit(2)
        cfg = data.sources[names.index(source) if source is not None else 0]
        _, tmpl, budget, chat = prompting(cfg)
    except (yaml.YAMLError, json.JSONDecodeError, ValidationError, DataError, OSError) as e:
        typer.echo(f"warning: cannot read the run's prompt settings from {where} ({str(e).splitlines()[0]}); prompting with the options given", err=True)
        return None
    return {"where": where, "source": source_name(cfg), "template": tmpl.text, "system_prompt": cfg.system_prompt or "",
            "chat_template": "auto" if chat else "none", "max_new_tokens": budget}


@app.command()
def merge(
    checkpoint: Path = typer.Argument(..., help="A LoRA checkpoint: its adapter dir, a step_N dir or a run dir."),
    output: Path = typer.Argument(..., help="Where to write the merged transformers checkpoint."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="The base model runs its own modeling code."),
) -> None:
    """Merge a LoRA adapter into its base model and save a plain transformers checkpoint."""
    from rl.checkpoint import resolve_model_path
    from rollout.lora import is_adapter_dir
    from rollout.models import load_model

    path = resolve_model_path(checkpoint)
    if not is_adapter_dir(path):
        typer.echo(f"{path} is not a LoRA adapter (no adapter_config.json); nothing to merge", err=True)
        raise typer.Exit(2)
    load_model(path, trust_remote_code=trust_remote_code).save_pretrained(output)
    typer.echo(f"merged {path} into {output} (loads with AutoModelForCausalLM.from_pretrained)")


@app.command()
def convert(
    source: Path = typer.Argument(..., help="A checkpoint in its family's hub layout (SDAR/TraDo, Dream, LLaDA)."),
    output: Path = typer.Argument(..., help="Where to write the plain transformers checkpoint (Qwen3 / Qwen2 / Llama)."),
) -> None:
    """Convert a hub-layout diffusion checkpoint onto its stock transformers class (exactly, or refused)."""
    from rollout.convert import UnsupportedCheckpoint, convert_checkpoint

    try:
        family = convert_checkpoint(source, output)
    except (UnsupportedCheckpoint, FileNotFoundError) as e:
        typer.echo(f"cannot convert {source}: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"converted {source} ({family} family) into {output} (loads with AutoModelForCausalLM.from_pretrained)")


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="A model, step_N or run directory whose base was a hub-layout checkpoint."),
    output: Path = typer.Argument(..., help="Where to write the checkpoint in its family's original layout."),
    code_from: Optional[Path] = typer.Option(None, help="The original checkpoint directory: its *.py modeling files are copied along."),
) -> None:
    """Write a trained checkpoint in its family's original hub layout (config, tensor names, tokenizer)."""
    from rl.checkpoint import resolve_model_path
    from rollout.convert import UnsupportedCheckpoint, export_original

    try:
        family = export_original(resolve_model_path(checkpoint), output, code_from)
    except (UnsupportedCheckpoint, FileNotFoundError) as e:
        typer.echo(f"cannot export {checkpoint}: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"exported {checkpoint} ({family} family) to {output} in its original layout")


@app.command()
def plot(run_dir: Path = typer.Argument(..., help="Run directory with metrics.jsonl, or an eval output dir with results.json.")) -> None:
    """Write the PNGs of a run (reward / accuracy / loss / KL curves) or of eval results (accuracy vs NFE)."""
    from rl.tracking import plot_eval, plot_run

    wrote = False
    if (run_dir / "metrics.jsonl").exists():
        typer.echo(plot_run(run_dir))
        wrote = True
    if (run_dir / "results.json").exists():
        typer.echo(plot_eval(run_dir / "results.json", run_dir / "accuracy_vs_nfe.png"))
        wrote = True
    if not wrote:
        typer.echo(f"{run_dir} has neither metrics.jsonl nor results.json", err=True)
        raise typer.Exit(2)


@app.command("config-help")
def config_help_cmd(kind: str = typer.Argument("train", help="train | sft")) -> None:
    """Every config key with its default and meaning."""
    if kind not in ("train", "sft"):
        typer.echo(f"unknown config kind {kind!r}: train (unmask train) or sft (unmask sft)", err=True)
        raise typer.Exit(2)
    typer.echo(config_help(RunConfig if kind == "train" else SFTConfig))
    if kind == "train":
        from rl.config import estimators_help

        typer.echo("\n" + estimators_help())


def _ray_auth_for_joining() -> None:
    """Send the token of a cluster started with `ray start`. Since Ray 2.5x `ray start` turns token authentication
    on and writes the token to ~/.ray/auth_token, but a driver sends it only under RAY_AUTH_MODE=token; without
    it joining fails (InvalidAuthToken). A token does no harm to a cluster without authentication. A
    RAY_AUTH_MODE the user set is left alone."""
    import os

    if "RAY_AUTH_MODE" in os.environ:
        return
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def _data_benchmarks(path: Path, limit, max_new_tokens) -> list:
    """Benchmarks from a config's data section: each source's held-out split (or, without one, all its rows)."""
    import yaml
    from pydantic import ValidationError

    from rl.config import ConfigError, DataConfig, _read_yaml
    from rl.data import Benchmark, load_source

    try:
        data = DataConfig.model_validate(_read_yaml(path).get("data") or {})
    except ValidationError as e:
        raise ConfigError(f"{path}: data section: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: {e}") from None
    out = []
    for cfg in data.sources:
        if max_new_tokens:
            cfg = cfg.model_copy(update={"max_new_tokens": max_new_tokens})
        typer.echo(f"loading the held-out split of {cfg.name or cfg.path} ({path}) ...", err=True)
        out.append(Benchmark.from_source(load_source(cfg)).head(limit))
    return out


def _params(max_new, strategy, threshold, steps_per_block, temperature, file_base: SamplingParams | None = None):
    """The decoding the strategies start from: `file_base` (a config's eval settings) or the defaults, with the flags given on top."""
    from dataclasses import replace

    given = {k: v for k, v in {"threshold": threshold, "steps_per_block": steps_per_block, "temperature": temperature}.items() if v is not None}
    try:
        if file_base is not None:
            return replace(file_base, max_new_tokens=max_new, **given)
        base = SamplingParams(max_new_tokens=max_new, **{"threshold": 0.9, "temperature": 0.0, **given})
        return parse_strategy(strategy, base)[1]
    except ValueError as e:
        typer.echo(f"bad decoding option: {sampling_error(e)}", err=True)
        raise typer.Exit(2) from None


def main() -> None:
    # Progress lines reach a pipe or a log file as they are printed, not when a buffer fills.
    sys.stdout.reconfigure(line_buffering=True)
    app()


if __name__ == "__main__":
    sys.exit(main())
