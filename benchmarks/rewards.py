"""Reward scoring speed: math-verify checks/s, sandboxed code programs/s, sandbox overhead.

Everything runs in one process with a fixed seed and a warm-up; the baseline for the
sandbox overhead (a bare ``python -I -S -B`` subprocess running the same program)
is measured in the same run, interleaved with the sandboxed runs.

    python benchmarks/rewards.py [--workers 2] [--math-n 600] [--code-n 200] [--json out.json]

``--json PATH`` writes ``math_checks_per_s``, ``code_programs_per_s`` (samples of
three assert tests each, scored by ``code_reward``) and ``sandbox_overhead_ratio``
(time per program in a warm sandbox / a bare subprocess, for the backend in use;
``cold_ratio`` in the details: a sandbox started for the run), plus the details.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewards import code_reward, sandbox_info  # noqa: E402
from rewards import sandbox as sb  # noqa: E402
from rewards.math import shutdown_workers, verify_answers  # noqa: E402


def math_pairs(n: int, rng: random.Random) -> list[tuple[str, str]]:
    """Numeric answers in the forms a model writes them: integers, fractions, decimals, percentages; ~half wrong."""
    pairs = []
    for _ in range(n):
        p, q = rng.randint(1, 99), rng.randint(2, 99)
        right = rng.random() < 0.5
        kind = rng.randrange(4)
        if kind == 0:
            gold, pred = str(p * q), str(p * q if right else p * q + 1)
        elif kind == 1:
            gold, pred = f"\\frac{{{p}}}{{{q}}}", f"\\frac{{{2 * p}}}{{{2 * q}}}" if right else f"\\frac{{{p + 1}}}{{{q}}}"
        elif kind == 2:
            gold, pred = f"{p / 4:g}", f"\\frac{{{p}}}{{4}}" if right else f"{p / 4 + 0.5:g}"
        else:
            gold, pred = f"{p}\\%", f"{p / 100:g}" if right else f"{(p + 1) / 100:g}"
        pairs.append((pred, gold))
    return pairs


PROBLEMS = [
    ("def add(a, b):\n    return a + b", "def add(a, b):\n    return a - b",
     ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(10, 5) == 15"]),
    ("def rev(s):\n    return s[::-1]", "def rev(s):\n    return s",
     ["assert rev('abc') == 'cba'", "assert rev('') == ''", "assert rev('ab') == 'ba'"]),
    ("def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
     "def fib(n):\n    return n",
     ["assert fib(10) == 55", "assert fib(1) == 1", "assert fib(20) == 6765"]),
    ("from collections import Counter\ndef mode(xs):\n    return Counter(xs).most_common(1)[0][0]",
     "def mode(xs):\n    return xs[0]",
     ["assert mode([1, 2, 2]) == 2", "assert mode([3]) == 3", "assert mode([5, 4, 4, 4]) == 4"]),
]  # fmt: skip


def code_samples(n: int, rng: random.Random) -> tuple[list[str], list[list[str]]]:
    completions, tests = [], []
    for _ in range(n):
        good, bad, t = rng.choice(PROBLEMS)
        completions.append(f"Here you go:\n```python\n{good if rng.random() < 0.5 else bad}\n```")
        tests.append(t)
    return completions, tests


def bench_math(n: int, workers: int, rng: random.Random) -> dict:
    pairs = math_pairs(n, rng)
    ints = [(str(i), str(i + i % 2)) for i in range(n)]  # plain integers: the cheapest checks
    shutdown_workers()
    verify_answers(pairs[:50], num_workers=workers)  # warm-up: start the workers, import sympy
    t0 = time.perf_counter()
    got = verify_answers(pairs, timeout_s=5.0, num_workers=workers)
    dt = time.perf_counter() - t0
    t0 = time.perf_counter()
    verify_answers(ints, timeout_s=5.0, num_workers=workers)
    dt_int = time.perf_counter() - t0
    return {"checks": n, "seconds": dt, "per_s": n / dt, "accepted": sum(got), "integer_per_s": n / dt_int}


def bench_code(n: int, workers: int, rng: random.Random, backend: str | None) -> dict:
    completions, tests = code_samples(n, rng)
    code_reward(["q"] * 8, completions[:8], tests=tests[:8], num_workers=workers, backend=backend)  # warm-up
    t0 = time.perf_counter()
    got = code_reward(["q"] * n, completions, tests=tests, num_workers=workers, backend=backend, mode="fraction")
    dt = time.perf_counter() - t0
    return {"programs": n, "tests": sum(len(t) for t in tests), "seconds": dt, "per_s": n / dt, "mean_reward": sum(got) / max(n, 1)}


def bench_overhead(rounds: int, per_round: int, backend: str) -> dict:
    program = "print(sum(i * i for i in range(1000)))"
    python = sb._python()

    def bare() -> None:
        out = subprocess.run([python, "-I", "-S", "-B", "-c", program], capture_output=True)
        assert out.returncode == 0

    def sandboxed(warm: bool) -> None:
        r = sb.run_programs([sb.Program(program, kind="script", stdout="capture")], backend=backend, warm=warm)
        assert r.passed and r.units[0].output == b"332833500\n", r

    for _ in range(5):  # warm-up (and the one-time probe, and the warm sandbox's start)
        bare()
        sandboxed(True)
        sandboxed(False)
    times: dict[str, list[float]] = {"bare": [], "warm": [], "cold": []}
    runs = {"bare": bare, "warm": lambda: sandboxed(True), "cold": lambda: sandboxed(False)}
    for _ in range(rounds):  # interleaved so drift hits all alike
        for name, fn in runs.items():
            t0 = time.perf_counter()
            for _ in range(per_round):
                fn()
            times[name].append((time.perf_counter() - t0) / per_round)
    b, w, c = (statistics.median(times[k]) for k in ("bare", "warm", "cold"))
    return {"bare_ms": b * 1e3, "sandbox_ms": w * 1e3, "ratio": w / b, "cold_ms": c * 1e3, "cold_ratio": c / b}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2, help="parallel workers (math processes, code sandboxes)")
    ap.add_argument("--math-n", type=int, default=600)
    ap.add_argument("--code-n", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", default=None, help="sandbox backend: auto (default), bwrap or rlimit")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    info = sandbox_info(args.backend)
    backend = info["backend"]
    rng = random.Random(args.seed)
    print(f"cores: {os.cpu_count()}, workers: {args.workers}, sandbox: {backend}"
          + (f" (fell back: {info['fallback_reason']})" if info.get("fallback_reason") else ""))  # fmt: skip
    m = bench_math(args.math_n, args.workers, rng)
    c = bench_code(args.code_n, args.workers, rng, backend)
    overheads = {backend: bench_overhead(args.rounds, args.per_round, backend)}
    other = "rlimit" if backend == "bwrap" else None
    if other:
        overheads[other] = bench_overhead(args.rounds, args.per_round, other)

    rows = [
        ("math-verify checks", f"{m['per_s']:.0f} /s", f"{m['checks']} checks (fractions, decimals, %) in {m['seconds']:.2f}s"),
        ("  integers only", f"{m['integer_per_s']:.0f} /s", ""),
        ("code programs", f"{c['per_s']:.1f} /s", f"{c['programs']} programs, {c['tests']} tests in {c['seconds']:.2f}s"),
    ]
    for name, o in overheads.items():
        rows.append((f"sandbox ({name}) / bare", f"{o['ratio']:.2f}x", f"{o['sandbox_ms']:.1f} ms vs {o['bare_ms']:.1f} ms per program (warm sandbox)"))
        rows.append((f"  a sandbox per run", f"{o['cold_ratio']:.2f}x", f"{o['cold_ms']:.1f} ms per program"))
    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  {'rate':>10}  detail")
    for name, rate, detail in rows:
        print(f"{name:{width}}  {rate:>10}  {detail}")

    if args.json:
        out = {
            "math_checks_per_s": m["per_s"],
            "code_programs_per_s": c["per_s"],
            "sandbox_overhead_ratio": overheads[backend]["ratio"],
            "sandbox_backend": backend,
            "workers": args.workers,
            "cores": os.cpu_count(),
            "math": m,
            "code": c,
            "overhead": overheads,
            "sandbox_info": info,
        }
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    shutdown_workers()


if __name__ == "__main__":
    main()
