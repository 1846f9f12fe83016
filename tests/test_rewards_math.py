"""math-verify against a table of (answer, ground truth, verdict) written for this project.

tests/fixtures/rewards/math_cases.csv records what math-verify (0.9) actually
decides, including where it is more lenient than a strict grader would be (a
percentage matches its bare number; "1,2,3" matches the set {1,2,3}) or stricter
(e^{i pi} is not simplified to -1); the ``note`` column says so. A change in
math-verify's behaviour shows up here as a failing row.
"""

import csv
from pathlib import Path

import pytest

from rewards import math_reward

CASES = Path(__file__).resolve().parent / "fixtures" / "rewards" / "math_cases.csv"


def load_cases():
    with CASES.open(newline="") as f:
        return [(row["answer"], row["ground_truth"], float(row["expected"]), row["note"]) for row in csv.DictReader(f)]


def test_table_is_big_and_covers_the_cases():
    rows = load_cases()
    assert len(rows) >= 50
    text = " ".join(a + " " + g for a, g, _, _ in rows)
    for needle in (r"\frac", r"\%", r"\{", "[0,1)", r"\cup", r"\sqrt", r"\pi", "pmatrix", r"\text"):
        assert needle in text, needle
    verdicts = [v for _, _, v, _ in rows]
    assert verdicts.count(0.0) >= 15 and verdicts.count(1.0) >= 30  # wrong answers are well represented


def test_math_verify_table():
    rows = load_cases()
    completions = [f"Let me think step by step. So the answer is $\\boxed{{{a}}}$." for a, _, _, _ in rows]
    got = math_reward(["q"] * len(rows), completions, answer=[g for _, g, _, _ in rows], timeout_s=10.0)
    mismatches = [
        (a, g, want, have, note) for (a, g, want, note), have in zip(rows, got) if have != want
    ]
    assert mismatches == []


@pytest.mark.parametrize("wrap", ["{}", "$ {} $", "\\boxed{{{}}}"])
def test_ground_truth_in_any_wrapper(wrap):
    # The dataset's answer column may be bare, in $...$ or already boxed.
    gold = wrap.format(r"\frac{3}{4}")
    assert math_reward(["q"] * 2, [r"\boxed{0.75}", r"\boxed{0.7}"], answer=[gold] * 2) == [1.0, 0.0]
