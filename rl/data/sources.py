"""Loading one data source: rows -> canonical fields (preset) -> examples (prompt, reward columns, SFT target).

Everything a source can get wrong is found here, before any training: a missing file, an
unknown preset, a malformed row, a missing column, a template placeholder no column fills, an
empty source. Errors name the file, the row (the line, for text formats), the field and the
columns the row has.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rewards.registry import import_user_module
from rl.data.files import DataError, read_where
from rl.data.names import source_name
from rl.data.presets import Preset, Template, get_preset, present, row_id
from rl.data.prompts import is_messages, render


@dataclass
class Example:
    """One problem, ready to prompt, score and (for SFT) answer."""

    id: str
    source: str
    """Name of the source it came from."""
    prompt: str
    """The rendered prompt text (what reward functions receive as `prompts`)."""
    messages: list[dict[str, str]]
    """The chat turns before the answer (system prompt, user prompt; or the row's own messages)."""
    columns: dict[str, Any]
    """Reward keyword columns (TRL convention)."""
    response: str | None = None
    """SFT target, when the source has one."""
    loc: str = ""
    """Where the row came from ("file:line N"), for messages."""
    prompt_ids: list[int] | None = None
    """Token ids of the prompt once encoded for a tokenizer (data/stream.py)."""
    response_ids: list[int] | None = None
    """Token ids of the response once encoded (SFT), EOS not included."""
    chosen: str | None = None
    """Preference pairs (VRPO): the preferred response, when the source has pairs."""
    rejected: str | None = None
    """Preference pairs: the dispreferred response."""


@dataclass
class Source:
    """A loaded source: its training and held-out examples and how to score them."""

    name: str
    cfg: Any
    """The SourceConfig it was loaded from."""
    preset: Preset
    template_name: str
    template: Template
    rewards: list[Any]
    """RewardSpec list scoring this source (its own, else the preset's, else the run's)."""
    column_map: dict[str, str]
    """Reward keyword -> row column: the preset's columns, then the source's own."""
    max_new_tokens: int
    chat: bool
    """Whether a chat template may wrap its prompts (chat_template: auto and the preset allows it)."""
    origin: str
    """What was read: the file, the glob, or a description of the generator."""
    train: list[Example] = field(default_factory=list)
    heldout: list[Example] = field(default_factory=list)
    task: Any = None
    """Endless generated sources (arithmetic): the task that draws fresh training rows."""

    @property
    def columns(self) -> tuple[str, ...]:
        """The reward keyword columns every example carries."""
        return tuple(self.column_map)

    @property
    def infinite(self) -> bool:
        return self.task is not None

    def draw(self, k: int, seed: int, step: int) -> list[Example]:
        """`k` fresh training examples of an endless source for RL/SFT step `step` (a pure function of seed and step)."""
        rows = self.task.train_rows(k, seed, step)
        return [self._example({"id": r["prompt"], **r}, f"{self.origin}:step {step}") for r in rows]

    def accuracy_reward(self) -> Any:
        """The reward that decides accuracy (1.0 = correct): the preset's, else the first listed."""
        for spec in self.rewards:
            if spec.name == self.preset.reward:
                return spec
        return self.rewards[0] if self.rewards else None

    def _example(self, row: dict[str, Any], loc: str) -> Example:
        cfg = self.cfg
        messages = None
        prompt_col = cfg.prompt if cfg.prompt is not None else ("prompt" if self.preset.pairs else None)  # a pair's prompt may be chat turns
        if prompt_col is not None and is_messages(row.get(prompt_col)):
            turns = [{"role": str(m["role"]), "content": str(m["content"])} for m in row[prompt_col]]
            response = None
            if turns[-1]["role"] == "assistant":
                response = turns.pop()["content"]
            if not turns:
                raise DataError(f"{loc}: column {prompt_col!r} holds only an assistant message; there is no prompt")
            if cfg.system_prompt and turns[0]["role"] != "system":
                turns.insert(0, {"role": "system", "content": cfg.system_prompt})
            users = [m["content"] for m in turns if m["role"] == "user"]
            prompt, messages = (users[-1] if users else turns[-1]["content"]), turns
        else:
            prompt = render(self.template.text, row, loc)
            response = None
        if messages is None:
            messages = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []) + [{"role": "user", "content": prompt}]
        if cfg.response is not None:
            if cfg.response not in row:
                raise DataError(f"{loc}: missing response column {cfg.response!r} (columns: {', '.join(sorted(row))})")
            response = str(row[cfg.response]) if present(row[cfg.response]) else None
        elif response is None and self.preset.response is not None:
            response = self.preset.response(row)
        columns = {}
        for kwarg, col in self.column_map.items():
            if col not in row:
                raise DataError(f"{loc}: missing column {col!r} for the rewards (columns: {', '.join(sorted(row))})")
            columns[kwarg] = row[col]
        chosen, rejected = self._pair(row, loc)
        return Example(id=str(row["id"]), source=self.name, prompt=prompt, messages=messages, columns=columns, response=response, loc=loc,
                       chosen=chosen, rejected=rejected)  # fmt: skip

    def _pair(self, row: dict[str, Any], loc: str) -> tuple[str | None, str | None]:
        """(chosen, rejected) response texts of a preference row; (None, None) for a source without pairs.
        A column may hold text or chat turns ending in the assistant's answer (its text is the response)."""
        cfg = self.cfg
        if (cfg.chosen is None) != (cfg.rejected is None):
            raise DataError(f"source {self.name!r}: preference pairs need both chosen: and rejected: columns (only {'chosen' if cfg.chosen else 'rejected'} is set)")
        if cfg.chosen is None and not self.preset.pairs:
            return None, None
        out = []
        for role, col in (("chosen", cfg.chosen or "chosen"), ("rejected", cfg.rejected or "rejected")):
            if col not in row:
                raise DataError(f"{loc}: missing {role} response column {col!r} (columns: {', '.join(sorted(k for k in row if k != '_loc'))})")
            value = row[col]
            if is_messages(value):
                if str(value[-1]["role"]) != "assistant":
                    raise DataError(f"{loc}: column {col!r} is a conversation whose last turn is {value[-1]['role']!r}, not the assistant's answer")
                value = value[-1]["content"]
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = str(value)  # a typed reader (parquet, datasets' inference) may hand over "42" as a number
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{loc}: {role} response column {col!r} is {'empty' if isinstance(value, str) or value is None else type(value).__name__}; "
                                "it must hold the response text or chat turns ending in the assistant's answer")  # fmt: skip
            out.append(value)
        if out[0] == out[1]:
            raise DataError(f"{loc}: the chosen and rejected responses are identical; a pair must prefer one response to another")
        return out[0], out[1]


def _column_map(preset: Preset, cfg: Any) -> dict[str, str]:
    """Reward kwarg -> row column: the preset's columns, then the source's own."""
    out = {c: c for c in preset.columns}
    extra = cfg.columns
    out.update({c: c for c in extra} if isinstance(extra, list) else dict(extra))
    return out


def infer_preset(path: str) -> str:
    """The preset a path implies: gym:NAME -> gym, arithmetic -> arithmetic, else none."""
    if path.startswith("gym:"):
        return "gym"
    if path == "arithmetic":
        return "arithmetic"
    return "none"


def _template(preset: Preset, cfg: Any, name: str) -> tuple[str, Template]:
    t = cfg.template
    if t is None:
        if cfg.prompt is not None:
            return "prompt column", Template("{" + cfg.prompt + "}")
        if "default" in preset.templates:
            return "default", preset.templates["default"]
        raise DataError(f"source {name!r} (preset none): set prompt: COLUMN or template: 'text with {{column}} placeholders'")
    if t in preset.templates:
        return t, preset.templates[t]
    if "{" in t:
        return "custom", Template(t)
    p = Path(t)
    if p.is_file():
        return str(p), Template(p.read_text())
    names = ", ".join(preset.templates) or "none"
    raise DataError(f"source {name!r}: template {t!r} is neither a template name of preset {preset.name!r} ({names}), nor a text with {{column}} placeholders, nor a file")


def _call_generator(spec: str, path: str) -> None:
    """Run a source's `generator` ('module:function') to write `path` when it is missing."""
    module, _, fn = spec.partition(":")
    try:
        getattr(import_user_module(module), fn)(path)
    except (ImportError, AttributeError) as e:
        raise DataError(f"generator {spec!r}: {e}") from None
    if not Path(path).exists():
        raise DataError(f"generator {spec!r} ran but did not write {path}")


def _rows(preset: Preset, where: str, cfg: Any, split: str | None, subset: str | None, options: dict, limit: int | None) -> tuple[list[dict], str]:
    """Canonical rows of one place (a file/glob/dir/hub id, or a generator) and a description of it."""
    if preset.generate is not None:
        if preset.name == "gym":
            if not where.startswith("gym:") or not where[4:]:
                raise DataError(f"preset gym needs path: gym:DATASET (e.g. gym:countdown), got {where!r}")
            gen = where[4:]
            rows = [{**r, "_loc": f"{where}:row {i}"} for i, r in enumerate(preset.generate(gen, limit=limit, **options)[:limit])]
            return rows, preset.describe(gen, options) if preset.describe else where
        rows = [{**r, "_loc": f"{where}:row {i}"} for i, r in enumerate(preset.generate(where, limit=limit, **options)[:limit])]
        return rows, f"{preset.name}(" + ", ".join(f"{k}={v}" for k, v in sorted(options.items())) + ")"
    if cfg.generator and not where.startswith("hub:") and not Path(where).exists():
        _call_generator(cfg.generator, where)
    from rl.data.files import is_saved_dataset

    root = Path(where) if not where.startswith("hub:") and not is_saved_dataset(Path(where)) else None  # MATH directories name rows by file
    rows = []
    for i, (loc, rec) in enumerate(read_where(where, split, subset)):
        if limit is not None and i >= limit:
            break
        if not isinstance(rec, dict):
            raise DataError(f"{loc}: expected a row of named fields, got {type(rec).__name__}")
        if preset.normalize is not None:
            row = preset.normalize(rec, loc, i, root, **options)
        else:
            row = {**rec, "id": row_id(rec, i)}
        row["_loc"] = loc
        rows.append(row)
    return rows, where


def _check_options(preset: Preset, options: dict) -> None:
    if preset.options is None:
        return
    for key in options:
        if key not in preset.options:
            raise DataError(f"preset {preset.name!r}: unknown option {key!r}; options: {', '.join(preset.options) or 'none'}")


def prompting(cfg: Any) -> tuple[str, Template, int, bool]:
    """How a SourceConfig prompts, read without its rows: (template name, template, generation
    budget, whether a chat template may wrap the prompt). `unmask generate RUN` prompts as the run did
    from this and the run's config."""
    name = source_name(cfg)
    preset = get_preset(cfg.preset or infer_preset(cfg.path))
    tname, template = _template(preset, cfg, name)
    options = dict(cfg.options)
    budget = cfg.max_new_tokens or (preset.max_new_tokens(**options) if callable(preset.max_new_tokens) else preset.max_new_tokens)
    return tname, template, budget, cfg.chat_template == "auto" and preset.chat


def load_source(cfg: Any, default_rewards: list[Any] | None = None) -> Source:
    """Load a SourceConfig: read (or generate) its rows, carve or read its held-out split, and
    build every example now, so any problem with the data stops the run before it starts."""
    name = source_name(cfg)
    preset = get_preset(cfg.preset or infer_preset(cfg.path))
    options = dict(cfg.options)
    _check_options(preset, options)
    tname, template, budget, chat = prompting(cfg)
    if preset.name == "none" and cfg.template is None and cfg.prompt is None:
        raise DataError(f"source {name!r}: set prompt: COLUMN or template:, or a preset")
    rewards = list(cfg.rewards) or _preset_rewards(preset) or list(default_rewards or [])
    src = Source(name=name, cfg=cfg, preset=preset, template_name=tname, template=template, rewards=rewards,
                 column_map=_column_map(preset, cfg), max_new_tokens=budget, chat=chat, origin=cfg.path)  # fmt: skip
    ho = cfg.heldout
    if preset.infinite:  # the arithmetic task: fresh rows every step, held-out rows from its own split
        from rl.data.presets import arithmetic_task

        src.task = arithmetic_task(options.get("digits", 3))
        src.origin = f"arithmetic(digits={src.task.digits})"
        if ho.path is None and ho.size is None:
            held = []
        elif ho.path is not None:
            held, _ = _rows(get_preset("none"), ho.path, cfg, ho.split, None, {}, None)
        else:
            held, _ = _rows(preset, cfg.path, cfg, None, None, options, ho.size)
        src.heldout = _examples(src, held)
        return src
    rows, src.origin = _rows(preset, cfg.path, cfg, cfg.split, cfg.subset, options, cfg.limit)
    if not rows:
        raise DataError(f"source {name!r}: {src.origin} has no rows")
    _check_ids(rows, src.origin)
    held: list[dict] = []
    if ho.path is not None:
        held, _ = _rows(preset, ho.path, cfg, ho.split, None, options, None)
        if not held:
            raise DataError(f"source {name!r}: held-out {ho.path} has no rows")
    elif ho.size is not None or ho.fraction is not None:
        m = ho.size if ho.size is not None else max(1, round(ho.fraction * len(rows)))
        if m >= len(rows):
            raise DataError(f"source {name!r}: heldout of {m} rows leaves nothing to train on ({len(rows)} rows in {src.origin})")
        # The rows whose ids hash lowest (not the run's seed, the source's name or the file order):
        # every run of this file holds out the same rows.
        order = sorted(range(len(rows)), key=lambda i: hashlib.sha256(f"heldout:{rows[i]['id']}".encode()).digest())
        out = set(order[:m])
        held = [r for i, r in enumerate(rows) if i in out]
        rows = [r for i, r in enumerate(rows) if i not in out]
    src.train = _examples(src, rows)
    src.heldout = _examples(src, held)
    return src


def _preset_rewards(preset: Preset) -> list[Any]:
    if preset.reward is None:
        return []
    from rl.config import RewardSpec

    return [RewardSpec(name=preset.reward, kwargs=dict(preset.reward_kwargs))]


def _check_ids(rows: list[dict], origin: str) -> None:
    seen: dict[str, str] = {}
    for r in rows:
        if r["id"] in seen:
            raise DataError(f"{r['_loc']}: id {r['id']!r} repeats {seen[r['id']]} (ids must be distinct within {origin})")
        seen[r["id"]] = r["_loc"]


def _examples(src: Source, rows: list[dict]) -> list[Example]:
    out = []
    for r in rows:
        loc = r.pop("_loc", src.origin)
        out.append(src._example(r, loc))
    return out
