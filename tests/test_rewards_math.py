"""math-verify against a table of (boxed answer, ground truth, verdict) written by hand from mathematics.

Each verdict says whether the two are the same mathematical object (number, set, interval,
tuple, matrix, expression), decided without running any checker; nothing here was recorded
from math-verify's output. Rows are grouped by form: integers and signs, fractions, roots and
expressions, percentages, sets/intervals/tuples, equations/text/units, matrices. The
"wrong but close" rows (5.00001 vs 5, 22/7 vs pi, 0.24 vs 1/4, an open vs a closed interval
end, a transposed matrix) must score 0.

Left out, because math-verify's convention is not the mathematical verdict (so a row would
only record the tool): e^{i pi} vs -1 (equal, math-verify says no), 1e3 vs 1000 (equal,
e-notation not parsed), 1/3 vs 0.3333333333 (not equal, math-verify's numeric tolerance says
yes), 50% vs 50 and the bare list 1,2,3 vs the set {1,2,3} (conventions, not mathematics).
"""

import pytest

from rewards import math_reward

# (boxed answer, ground truth, verdict: 1 the same mathematical object, 0 not)
CASES = [
    # integers and signs
    ("42", "42", 1), ("42", "43", 0), ("-7", "-7", 1), ("7", "-7", 0), ("+5", "5", 1), ("0", "-0", 1),
    ("1000", "1{,}000", 1), ("10^{3}", "1000", 1), ("2^{10}", "1024", 1), ("2^{10}", "1023", 0),
    ("1.5\\times10^{3}", "1500", 1), ("1.5\\times10^{3}", "150", 0),
    ("5.0", "5", 1), ("5.00001", "5", 0), ("999999", "1000000", 0),
    # fractions
    ("\\frac{1}{2}", "0.5", 1), ("\\dfrac{3}{4}", "0.75", 1), ("\\tfrac{2}{3}", "\\frac{2}{3}", 1),
    ("2/3", "\\frac{2}{3}", 1), ("\\frac{2}{4}", "\\frac{1}{2}", 1), ("\\frac{6}{8}", "\\frac{3}{4}", 1),
    ("\\frac{1}{2}", "\\frac{1}{3}", 0), ("\\frac{3}{4}", "\\frac{4}{3}", 0), ("-\\frac{1}{2}", "\\frac{-1}{2}", 1),
    ("\\frac{1}{2}", "-\\frac{1}{2}", 0), ("\\frac{22}{7}", "\\pi", 0), ("\\frac{1}{3}", "0.333", 0),
    ("0.25", "\\frac{1}{4}", 1), ("0.24", "\\frac{1}{4}", 0), ("1\\frac{1}{2}", "\\frac{3}{2}", 1),
    # roots, pi, expressions
    ("2\\sqrt{2}", "\\sqrt{8}", 1), ("\\sqrt{2}/2", "\\frac{1}{\\sqrt{2}}", 1), ("\\sqrt{3}", "\\sqrt{2}", 0),
    ("2\\sqrt{3}", "\\sqrt{6}", 0), ("3\\pi", "3\\pi", 1), ("\\pi", "3.14159", 0), ("\\frac{\\pi}{2}", "\\frac{1}{2}\\pi", 1),
    ("x^2+2x+1", "(x+1)^2", 1), ("x^2+1", "(x+1)^2", 0), ("2x+3", "3+2x", 1), ("2x+3", "2x-3", 0),
    ("\\log_2 8", "3", 1), ("\\sin^2 x + \\cos^2 x", "1", 1),
    # percentages
    ("50\\%", "0.5", 1), ("25\\%", "\\frac{1}{4}", 1), ("30\\%", "0.4", 0),
    # sets, intervals, tuples
    ("\\{1,2,3\\}", "\\{3,2,1\\}", 1), ("\\{1,2\\}", "\\{1,2,3\\}", 0), ("\\{-1, 1\\}", "\\pm 1", 1),
    ("[0,1)", "[0,1)", 1), ("(0,1)", "[0,1]", 0), ("(-\\infty, 2]", "(-\\infty,2]", 1), ("(-\\infty, 2)", "(-\\infty,2]", 0),
    ("[1,2] \\cup [3,4]", "[3,4]\\cup[1,2]", 1), ("[1,2] \\cup [3,4]", "[1,4]", 0),
    ("(1,2)", "(1,2)", 1), ("(1,2)", "(2,1)", 0), ("(3, -4)", "(3,-4)", 1),
    # equations, text, units
    ("x=3", "3", 1), ("x=3", "4", 0), ("y = 2x+1", "2x+1", 1), ("\\text{yes}", "yes", 1), ("\\text{no}", "yes", 0),
    ("12\\text{ cm}", "12", 1), ("12^\\circ", "12", 1), ("\\$5", "5", 1), ("7", "seven", 0), ("x", "y", 0),
    # matrices, infinity
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", 1),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&5\\end{pmatrix}", 0),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix}1&3\\\\2&4\\end{pmatrix}", 0),
    ("\\infty", "\\infty", 1), ("-\\infty", "\\infty", 0), ("\\frac{1}{0}", "0", 0),
]


def test_table_is_big_and_covers_the_cases():
    assert len(CASES) >= 60
    text = " ".join(a + " " + g for a, g, _ in CASES)
    for needle in (r"\frac", r"\%", r"\{", "[0,1)", r"\cup", r"\sqrt", r"\pi", "pmatrix", r"\text", r"\times", "^"):
        assert needle in text, needle
    verdicts = [v for _, _, v in CASES]
    assert verdicts.count(0) >= 25 and verdicts.count(1) >= 35  # wrong answers are well represented


def test_math_verify_table():
    completions = [f"Let me think step by step. So the answer is $\\boxed{{{a}}}$." for a, _, _ in CASES]
    got = math_reward(["q"] * len(CASES), completions, answer=[g for _, g, _ in CASES], timeout_s=10.0)
    mismatches = [(a, g, want, have) for (a, g, want), have in zip(CASES, got) if have != float(want)]
    assert mismatches == []


@pytest.mark.parametrize("wrap", ["{}", "$ {} $", "\\boxed{{{}}}"])
def test_ground_truth_in_any_wrapper(wrap):
    # The dataset's answer column may be bare, in $...$ or already boxed.
    gold = wrap.format(r"\frac{3}{4}")
    assert math_reward(["q"] * 2, [r"\boxed{0.75}", r"\boxed{0.7}"], answer=[gold] * 2) == [1.0, 0.0]
