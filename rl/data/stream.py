"""The prompt stream: which examples each RL or SFT step trains on, mixed from the sources by weight.

The stream is a pure function of (seed, step): source i's rows are shuffled once per epoch
with a generator seeded by (seed, source, epoch), and the prompts of a step are assigned to
sources by a low-discrepancy sequence over their weights (global slot j goes to the source
whose share of [0, 1) holds frac(j * phi)), so every source gets its share of each step's
prompts within one or two, and its share of all prompts so far within a few. A resumed run therefore sees the
same prompts in the same order as an uninterrupted one; the cursor saved in checkpoints
(`cursor`) records where each source stands and is checked on resume.

Prompts longer than `max_prompt_tokens` (after the template and chat template) are dropped
when the stream is built, before any rollout, and counted per source.
"""

from __future__ import annotations

import bisect
import math
import random
from typing import Any

from rl.data.files import DataError
from rl.data.prompts import encode_many, encode_messages
from rl.data.sources import Example, Source

_PHI = (math.sqrt(5) - 1) / 2


class PromptStream:
    """Training examples per step, and each source's held-out examples, encoded for one tokenizer."""

    def __init__(self, sources: list[Source], tokenizer, seed: int, shuffle: bool = True, max_prompt_tokens: int | None = None):
        self.sources, self.tokenizer, self.seed, self.shuffle = sources, tokenizer, seed, shuffle
        self.max_prompt_tokens = max_prompt_tokens
        self.dropped: dict[str, int] = {}
        self.heldout_dropped: dict[str, int] = {}
        for s in sources:
            s.train, self.dropped[s.name] = self._encode(s, s.train)
            s.heldout, self.heldout_dropped[s.name] = self._encode(s, s.heldout)
            if not s.infinite and not s.train:
                raise DataError(
                    f"source {s.name!r}: every one of its prompts is longer than data.max_prompt_tokens={max_prompt_tokens}"
                    if self.dropped[s.name] else f"source {s.name!r}: no training rows (all held out?)"
                )  # fmt: skip
        total = sum(s.cfg.weight for s in sources)
        self._bounds = [sum(s.cfg.weight for s in sources[: i + 1]) / total for i in range(len(sources))]
        self._counts_at: dict[int, list[int]] = {0: [0] * len(sources)}  # slot -> draws per source before it
        self._orders: dict[int, tuple[int, list[int]]] = {}  # source -> (epoch, its shuffled order): one live epoch each

    # -- encoding ----------------------------------------------------------------------------
    def encode(self, source: Source, ex: Example) -> list[int]:
        """The prompt's token ids as the model sees them (chat template where the source allows)."""
        if ex.prompt_ids is None:
            ex.prompt_ids = encode_messages(self.tokenizer, ex.messages, source.chat)[0]
        return ex.prompt_ids

    def _encode(self, source: Source, examples: list[Example]) -> tuple[list[Example], int]:
        todo = [ex for ex in examples if ex.prompt_ids is None]
        if len(todo) > 1:  # batched: a large file is tokenised in seconds, with a bar when it takes a while
            from tqdm.auto import tqdm

            step = 4096
            with tqdm(total=len(todo), desc=f"encoding {source.name}", unit="prompt", disable=len(todo) < 20_000 or None, leave=False) as bar:
                for i in range(0, len(todo), step):
                    part = todo[i : i + step]
                    for ex, ids in zip(part, encode_many(self.tokenizer, [e.messages for e in part], source.chat, step)):
                        ex.prompt_ids = ids
                    bar.update(len(part))
        kept = [ex for ex in examples if self._fits(source, ex)]
        return kept, len(examples) - len(kept)

    def _fits(self, source: Source, ex: Example) -> bool:
        n = len(self.encode(source, ex))  # every prompt is encoded once, here
        return self.max_prompt_tokens is None or n <= self.max_prompt_tokens

    # -- mixing ------------------------------------------------------------------------------
    def _source_of(self, slot: int) -> int:
        if len(self.sources) == 1:
            return 0
        return min(bisect.bisect_right(self._bounds, (slot * _PHI) % 1.0), len(self.sources) - 1)

    def _counts(self, slot: int) -> list[int]:
        """Draws per source among global slots [0, slot) (cached, so a run costs O(steps x prompts) once)."""
        if slot in self._counts_at:
            return list(self._counts_at[slot])
        start = max(k for k in self._counts_at if k <= slot)
        counts = list(self._counts_at[start])
        for j in range(start, slot):
            counts[self._source_of(j)] += 1
        self._counts_at[slot] = list(counts)
        return counts

    def _row(self, s: int, position: int) -> Example:
        """The `position`-th draw from finite source s: epoch position // n, shuffled once per epoch."""
        src = self.sources[s]
        n = len(src.train)
        epoch, k = divmod(position, n)
        return src.train[self._order(s, epoch)[k] if self.shuffle else k]

    def _order(self, s: int, epoch: int) -> list[int]:
        if self._orders.get(s, (None,))[0] != epoch:
            order = list(range(len(self.sources[s].train)))
            random.Random(f"{self.seed}-{self.sources[s].name}-{epoch}").shuffle(order)
            self._orders[s] = (epoch, order)
        return self._orders[s][1]

    def batch(self, step: int, n: int) -> list[Example]:
        """The `n` examples of step `step` (0-based), source by source in slot order.

        Endless sources (arithmetic) draw their share fresh from (seed, step); prompts of theirs
        over max_prompt_tokens are dropped from the step and counted in `dropped`."""
        first = step * n
        counts = self._counts(first)
        picks = [self._source_of(j) for j in range(first, first + n)]
        self._counts_at[first + n] = [c + picks.count(i) for i, c in enumerate(counts)]
        out: list[Example] = []
        for i, src in enumerate(self.sources):
            k = picks.count(i)
            if not k:
                continue
            if src.infinite:
                fresh = src.draw(k, self.seed, step)
                kept, dropped = self._encode(src, fresh)
                self.dropped[src.name] += dropped
                out += kept
            else:
                out += [self._row(i, counts[i] + j) for j in range(k)]
        return out

    def cursor(self, steps_done: int, n: int) -> dict[str, Any]:
        """Where each source stands after `steps_done` steps of `n` prompts: draws, epoch, position (saved in checkpoints)."""
        counts = self._counts(steps_done * n)
        out = {}
        for src, c in zip(self.sources, counts):
            size = None if src.infinite else len(src.train)
            out[src.name] = {"draws": c, "rows": size, "epoch": None if size is None else c // size, "position": None if size is None else c % size}
        return out

    def epoch(self, steps_done: int, n: int) -> float:
        """Passes over the finite sources' training rows so far (the mean over sources; 0 when all are endless)."""
        cur = [v for v in self.cursor(steps_done, n).values() if v["rows"]]
        return sum(v["draws"] / v["rows"] for v in cur) / len(cur) if cur else 0.0

    def heldout(self) -> dict[str, list[Example]]:
        """Each source's held-out examples (encoded; over-long ones dropped and counted)."""
        return {s.name: s.heldout for s in self.sources if s.heldout}
