r"""Deterministic, locally generated demo datasets in real public formats, for CPU RL demos.

Two tasks a ~1M-parameter diffusion LM learns in minutes on a CPU:

- math word problems in GSM8K format (``question``, ``answer`` = a rationale line then
  ``#### N``), answered as ``\boxed{N}`` and checked with math-verify (the ``math`` reward,
  with the number after ``#### `` as its ``answer`` column);
- MBPP-format code problems (``task_id``, ``text``, ``code``, ``test_list``,
  ``test_setup_code``): a function that adds two constants named in the text, answered with a
  fenced python block and checked by running the asserts in the sandbox (the ``code`` reward,
  with ``test_list`` as its ``tests`` column).

Every row also has ``solution``: the exact response the model is trained to write (SFT).

Numbers in math questions and answers are zero-padded to a fixed width ("Ann has 047
apples ... #### 0085"): a tiny model learns padded arithmetic far faster, and math-verify
compares numerically, so "0085" equals 85. The operation (+ or -) is only in the words
("buys ... more", "gives away ..."); differences never go negative.

Splits: a problem is held out when a fixed hash of it (sha256, never the sampling seed)
falls in a 5% bucket, so "train" and "heldout" are disjoint for every seed. For math the
hash is of the arithmetic (operation and operands), so held-out problems are arithmetic
the model has never seen, whatever the names. Within a split, rows are distinct (by
question / text) where the problem space allows. Same (n, split, seed) -> identical rows.

Run ``python examples/demo_data.py`` to write the four jsonl files under examples/data/.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

HELDOUT_BUCKETS = 20  # 1 in 20 problems (5%) is held out
DEFAULT_DIR = Path(__file__).resolve().parent / "data"
SIZES = {"math_train.jsonl": 5000, "math_heldout.jsonl": 300, "code_train.jsonl": 5000, "code_heldout.jsonl": 300}

# ---- math ------------------------------------------------------------------------------

MATH_DIGITS = 2  # operand width; the answer is written with MATH_DIGITS + 1 digits

# Every name has 3 letters, every object 4 and every verb 5, so the operands and the verb
# sit at fixed character positions: a tiny model then learns the task in a few hundred
# steps (with names, objects and verbs of varying length it barely learns in 800).
NAMES = ["Ann", "Bob", "Cal", "Dee", "Eve", "Fay", "Gus", "Hal", "Ivy", "Kim", "Lou", "Max", "Ned", "Pam", "Ray", "Sam", "Tom", "Uma", "Zoe", "Ada"]
FOODS = ["figs", "buns", "eggs", "nuts", "pies", "yams"]
THINGS = ["pens", "cups", "toys", "hats", "keys", "cans", "bags", "mugs"]
# (phrase, operation, fits food only): "{b}" is the second operand.
VERBS = [
    ("finds {b} more", "+", False),
    ("earns {b} more", "+", False),
    ("picks {b} more", "+", False),
    ("grabs {b} more", "+", False),
    ("sells {b}", "-", False),
    ("loses {b}", "-", False),
    ("drops {b}", "-", False),
    ("gives {b} away", "-", False),
]


def _bucket(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % HELDOUT_BUCKETS


def _check_split(split: str) -> bool:
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    return split == "heldout"


def math_is_heldout(op: str, a: int, b: int, digits: int = MATH_DIGITS) -> bool:
    """Whether the arithmetic `a op b` belongs to the held-out split (a fixed hash)."""
    return _bucket(f"math/{digits}/{op}/{a}/{b}") == 0


def math_row(name: str, obj: str, verb: str, a: int, b: int, digits: int = MATH_DIGITS) -> dict:
    """One GSM8K-format row; `verb` is a VERBS phrase ("buys {b} more")."""
    op = next(o for p, o, _ in VERBS if p == verb)
    w = digits
    n = a + b if op == "+" else a - b
    if n < 0:
        raise ValueError(f"{a} - {b} is negative")
    pa, pb, pn = f"{a:0{w}d}", f"{b:0{w}d}", f"{n:0{w + 1}d}"
    act = verb.format(b=pb)
    question = f"{name} has {pa} {obj} and {act}. How many {obj} now?"
    answer = f"{name} has {pa} {obj} and {act}: {pa} {op} {pb} = {pn}.\n#### {pn}"
    return {"question": question, "answer": answer, "solution": "\\boxed{" + pn + "}"}


def _math_sample(rng: random.Random, digits: int) -> tuple[tuple, str]:
    name = rng.choice(NAMES)
    verb, op, food_only = rng.choice(VERBS)
    obj = rng.choice(FOODS if food_only else FOODS + THINGS)
    hi = 10**digits - 1
    a, b = rng.randint(0, hi), rng.randint(0, hi)
    if op == "-" and b > a:
        a, b = b, a
    return (name, obj, verb, a, b), op


def math_rows(n: int, split: str, seed: int = 0, digits: int = MATH_DIGITS) -> list[dict]:
    """`n` GSM8K-format word problems of `split` ("train" or "heldout").

    >>> row = math_rows(1, "train")[0]
    >>> sorted(row), row["answer"].split("#### ")[1] == row["solution"][7:-1]
    (['answer', 'question', 'solution'], True)
    """
    heldout = _check_split(split)
    rng = random.Random(f"demo-math-{digits}-{split}-{seed}")
    return _distinct(n, rng, lambda: _math_draw(rng, digits, heldout), key="question")


def _math_draw(rng: random.Random, digits: int, heldout: bool) -> dict:
    while True:
        (name, obj, verb, a, b), op = _math_sample(rng, digits)
        if math_is_heldout(op, a, b, digits) == heldout:
            return math_row(name, obj, verb, a, b, digits)


# ---- code ------------------------------------------------------------------------------

# The code task needs the same skill as the math one (two-digit addition), so a base model
# reaches both in the same SFT run: the function adds the sum of two constants named in the text
# ("returns x plus 57 plus 68" -> "return x + 125"). Both constants are 50..99, so the sum always
# has three digits (a fixed width is what a tiny model learns fast); a pure copy task saturates
# in a hundred steps, long before the math task is learnt.
CODE_LOW, CODE_HIGH = 50, 99
ARGS = ["x", "n", "a"]
PREFIXES = ["add", "plus", "inc"]


def code_is_heldout(a: int, b: int) -> bool:
    """Whether a code problem belongs to the held-out split: a fixed hash of its arithmetic, so
    held-out problems need sums the model has never been shown."""
    return _bucket(f"code/{a}/{b}") == 0


def _task_id(prefix: str, arg: str, a: int, b: int) -> int:
    # A stable id from the problem itself (unique across splits and seeds).
    return ((PREFIXES.index(prefix) * 10 + ARGS.index(arg)) * 100 + a) * 100 + b


def code_row(prefix: str, arg: str, a: int, b: int) -> dict:
    """One MBPP-format row: "Write a function add_57_68(x) that returns x plus 57 plus 68."."""
    fname = f"{prefix}_{a}_{b}"
    text = f"Write a function {fname}({arg}) that returns {arg} plus {a} plus {b}."
    code = f"def {fname}({arg}):\n    return {arg} + {a + b}"
    # Inputs from a per-problem rng (not the seed), so the tests are fixed per problem.
    rng = random.Random(f"demo-code-tests/{prefix}/{arg}/{a}/{b}")
    xs = [rng.randint(1, 9), rng.randint(10, 99), rng.randint(100, 999)]
    tests = [f"assert {fname}({x}) == {x + a + b}" for x in xs]
    return {
        "task_id": _task_id(prefix, arg, a, b),
        "text": text,
        "code": code,
        "test_list": tests,
        "test_setup_code": "",
        "solution": "```python\n" + code + "\n```",
    }


def code_rows(n: int, split: str, seed: int = 0) -> list[dict]:
    """`n` MBPP-format problems of `split` ("train" or "heldout").

    >>> row = code_rows(1, "heldout")[0]
    >>> sorted(row)
    ['code', 'solution', 'task_id', 'test_list', 'test_setup_code', 'text']
    """
    heldout = _check_split(split)
    rng = random.Random(f"demo-code-sum-{split}-{seed}")

    def draw() -> dict:
        while True:
            prefix, arg = rng.choice(PREFIXES), rng.choice(ARGS)
            a, b = rng.randint(CODE_LOW, CODE_HIGH), rng.randint(CODE_LOW, CODE_HIGH)
            if code_is_heldout(a, b) == heldout:
                return code_row(prefix, arg, a, b)

    return _distinct(n, rng, draw, key="text")


# ---- shared ----------------------------------------------------------------------------


def _distinct(n: int, rng: random.Random, draw, key: str) -> list[dict]:
    """`n` rows from `draw`, distinct by `key` until the space looks exhausted (then repeats)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rows, seen, misses = [], set(), 0
    while len(rows) < n:
        row = draw()
        if row[key] in seen and misses < 1000:
            misses += 1
            continue
        misses = 0
        seen.add(row[key])
        rows.append(row)
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a file


def write_demo_data(out_dir: str | Path = DEFAULT_DIR) -> list[Path]:
    """Write math_/code_ train (5000 rows) and heldout (300 rows) jsonl files if missing."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fname, n in SIZES.items():
        path = out / fname
        if not path.exists():
            task, split = fname.removesuffix(".jsonl").split("_")
            rows = (math_rows if task == "math" else code_rows)(n, split)
            _write_jsonl(path, rows)
        paths.append(path)
    return paths


def ensure(path: str) -> None:
    """Generator hook: write the demo files into `path`'s folder if `path` is missing."""
    p = Path(path)
    if p.name not in SIZES:
        raise ValueError(f"ensure: {path!r} is not one of the demo files {sorted(SIZES)}")
    if not p.exists():
        write_demo_data(p.parent)


if __name__ == "__main__":
    for p in write_demo_data():
        print(p)
