"""The import layers of DESIGN.md, read from the source with `ast`: every import counts, at module top
or inside a function (a lazy import is still a dependency, and a circle through one is still a circle).

- inside rewards/ and inside rollout/, the modules import each other without a circle;
- rewards/ and rollout/ never import algorithms/ or rl/ (they sit below them), and neither imports
  the other (both are leaves);
- the sandbox's supervisor (rewards/sandbox/_sandbox_child.py) imports nothing of unmask: it is
  compiled from its path and run alone in the sandbox.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .conftest import ROOT

PACKAGES = ("rewards", "rollout")
ABOVE = {"rewards": ("algorithms", "rl", "rollout"), "rollout": ("algorithms", "rl", "rewards")}


def modules(package: str) -> dict[str, Path]:
    """Dotted name -> file, for every module of `package` (a package's __init__ is the package)."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported(name: str, path: Path, known: set[str] | frozenset[str] = frozenset()) -> set[str]:
    """Every module `name` (at `path`) imports, anywhere in it, as absolute dotted names.

    `from P import x` counts as importing P.x when that is one of the `known` modules, else P.
    """
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                out.add(sub if sub in known else source)
    return out


def graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports."""
    mods = modules(package)
    return {name: {m for m in imported(name, path, set(mods)) if m in mods and m != name} for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of a graph: one path per strongly connected group of two or more modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return groups


def test_the_cycle_finder_sees_a_lazy_import():
    # The finder on a made-up package: b imports a inside a function, a imports b at the top.
    assert cycles({"p.a": {"p.b"}, "p.b": {"p.a"}, "p.c": {"p.a"}}) == [["p.a", "p.b"]]
    assert cycles({"p.a": {"p.b"}, "p.b": set()}) == []


def test_relative_imports_resolve_to_modules(tmp_path):
    f = tmp_path / "mod.py"
    f.write_text("from . import sandbox\nfrom .base import x\n\ndef g():\n    from ..other import y\n")
    assert imported("rewards.code", f, {"rewards.sandbox", "rewards.base"}) == {"rewards.sandbox", "rewards.base", "other"}
    init = tmp_path / "__init__.py"  # in a package's __init__, "." is the package itself
    init.write_text(f.read_text() + "from .steps import StepReward\n")
    got = imported("rewards", init, {"rewards.sandbox", "rewards.base"})
    assert got == {"rewards.sandbox", "rewards.base", "rewards.steps", "other"}  # StepReward is no module: .steps counts


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circles_inside_the_package(package):
    found = cycles(graph(package))
    assert found == [], f"import circles in {package}/ (top-level and function-level imports): {found}"


@pytest.mark.parametrize("package", PACKAGES)
def test_the_leaves_import_nothing_above_them(package):
    bad = []
    for name, path in modules(package).items():
        for m in sorted(imported(name, path)):
            if m.split(".")[0] in ABOVE[package]:
                bad.append(f"{path.relative_to(ROOT)} imports {m}")
    assert bad == [], "\n".join(bad)


def test_the_sandbox_supervisor_stands_alone():
    child = ROOT / "rewards" / "sandbox" / "_sandbox_child.py"
    tree = ast.parse(child.read_text())
    relative = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
    ours = {m.split(".")[0] for m in imported("rewards.sandbox._sandbox_child", child)} & {"rewards", "rollout", "rl", "algorithms"}
    assert relative == [] and ours == set()
