"""Issue 33: help and README text that is true, read from the README as a user reads it."""

import re

import yaml

from .conftest import ROOT


def readme_section(title: str) -> str:
    """The README text under the heading `title` (any level), up to the next heading (lines in code blocks are not headings)."""
    out, inside, fence = None, False, False
    for line in (ROOT / "README.md").read_text().splitlines(keepends=True):
        if line.startswith("```"):
            fence = not fence
        elif not fence and re.match(r"#+ ", line):
            if inside:
                break
            inside = line.rstrip("\n").split(" ", 1)[1] == title
            out = "" if inside else out
            continue
        if inside:
            out += line
    assert out is not None, f"README has no section {title!r}"
    return out


def fenced(text: str, lang: str) -> list[str]:
    """The bodies of the ```lang blocks of `text`, in order."""
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def test_readme_says_beta_defaults_to_0_while_the_quickstart_sets_it():
    """Issue 33: `kl` shows 0 in every own-data run because beta defaults to 0; the README says so, truly."""
    from rl.config import RunConfig, load_config

    text = " ".join((ROOT / "README.md").read_text().split())
    assert "`kl` (0 unless `algorithm.beta` > 0: `beta` defaults to 0 for `trace`, while the quickstart and the demos set `beta: 0.01`)" in text
    minimal = RunConfig.model_validate({"model": {"path": "m"}, "data": {"sources": [{"path": "arithmetic"}]}, "algorithm": {"estimator": "trace"}})
    assert minimal.algorithm.beta == 0
    for name in ("quickstart", "math", "code", "mixed"):
        assert load_config(ROOT / "configs" / f"{name}.yaml").algorithm.beta == 0.01, name


def test_every_placeholder_of_the_readme_templates_is_a_column_of_its_preset():
    """Issue 33: `{tests_text}` was used in the README and (it seemed) defined nowhere. Every template in the README's
    data examples fills from the columns its preset gives a row of that format."""
    from rl.data import get_preset
    from rl.data.prompts import placeholders, render

    rows = {  # one row of each format the README's examples read
        "gsm8k": {"question": "Ann has 3 figs and finds 4 more. How many figs now?", "answer": "3 + 4 = 7\n#### 7"},
        "code": {
            "task_id": 1, "text": "Write a function f(x) that returns x + 1.", "code": "def f(x):\n    return x + 1",
            "test_list": ["assert f(1) == 2", "assert f(2) == 3"],
        },
    }
    rows["mbpp"] = rows["code"]
    seen = 0
    for block in fenced(readme_section("A first run on your own rows (CPU)") + readme_section("Sources"), "yaml"):
        cfg = yaml.safe_load(block)
        for src in (cfg.get("data") or {}).get("sources", []):
            if "template" not in src:
                continue
            preset = get_preset(src["preset"])
            row = preset.normalize(rows[src["preset"]], "README", 0)
            template = preset.templates.get(src["template"]) or None
            text = template.text if template else src["template"]
            assert set(placeholders(text)) <= set(row), f"{src['name']}: {text!r} vs columns {sorted(row)}"
            prompt = render(text, row, "README")
            seen += 1
            if "tests_text" in placeholders(text):
                assert "assert f(1) == 2\nassert f(2) == 3" in prompt
    assert seen >= 3  # the own-data SFT and RL sources and the MBPP example
