"""One sampling config: the engine's SamplingParams and the run config's sampling sections are one
definition (fields, defaults, descriptions, ranges), and the strategy names live in one place."""

import dataclasses
import re
import subprocess
import sys

import pytest

from rl.config import ConfigError, RunConfig, SamplingConfig, load_config
from rl.evaluate import parse_strategy
from rollout.engine import SamplingParams

from .conftest import ROOT

ENGINE_ONLY = {"stop_at_eos"}  # rollouts always stop at EOS; benchmarks and tests turn it off


def test_every_engine_field_is_a_config_key_with_the_same_default_and_description():
    engine = {f.name: f for f in dataclasses.fields(SamplingParams)}
    defaults = SamplingParams()
    config = SamplingConfig.model_fields
    assert list(config) == [name for name in engine if name not in ENGINE_ONLY]  # same keys, same order
    for name, f in config.items():
        described = SamplingParams.__pydantic_fields__[name]
        if name == "max_new_tokens":  # a config may leave it unset: each source's own budget
            assert f.default is None and f.description.startswith(described.description)
            continue
        assert f.default == getattr(defaults, name), name
        assert f.description == described.description, name
        assert f.annotation == described.annotation and f.metadata == described.metadata, name


def test_the_config_section_hands_the_engine_its_settings():
    section = SamplingConfig(strategy="adaptive", factor=2.0, max_tokens_per_step=3, temperature=0.5)
    assert section.params(12) == SamplingParams(strategy="adaptive", factor=2.0, max_tokens_per_step=3, temperature=0.5, max_new_tokens=12)
    assert SamplingConfig(max_new_tokens=5).params(12).max_new_tokens == 5  # a set budget wins over the task's
    cfg = RunConfig.model_validate({"model": {"path": "m"}, "data": {"sources": [{"path": "arithmetic"}]}})
    assert cfg.eval.sampling.params(4) == SamplingParams(temperature=0.0, max_new_tokens=4)


BAD = [
    ("strategy", "fastest"),
    ("steps_per_block", 0),
    ("schedule", "descending"),
    ("threshold", 0.0),
    ("threshold", 1.5),
    ("factor", 0.0),
    ("max_tokens_per_step", 0),
    ("prophet_gaps", [1.0, -1.0, 1.0]),
    ("prophet_gaps", [1.0, 2.0]),
    ("confidence", "vibes"),
    ("temperature", -0.5),
    ("top_k", 0),
    ("top_p", 0.0),
    ("top_p", 1.5),
    ("max_new_tokens", 0),
    ("kv_cache", "sometimes"),
    ("block_length", 0),
    ("eos_guard", 0.0),
    ("eos_guard", 2.0),
    ("max_batch", 0),
]


@pytest.mark.parametrize("section", ["rollout", "eval"])
@pytest.mark.parametrize("name,value", BAD, ids=[f"{n}={v}" for n, v in BAD])
def test_a_bad_value_is_refused_with_the_same_message_from_a_config_file_and_from_the_engine(tmp_path, section, name, value):
    p = tmp_path / "run.yaml"
    p.write_text(f"model: {{path: x}}\ndata: {{sources: [{{path: arithmetic}}]}}\n{section}:\n  sampling:\n    {name}: {value!r}\n")
    with pytest.raises(ConfigError) as from_config:
        load_config(p)
    found = re.search(rf"{section}\.sampling\.{name}(\.\d)?: (.*?)( \(got .*)?$", str(from_config.value), flags=re.MULTILINE)
    assert found, str(from_config.value)
    with pytest.raises(ValueError) as from_engine:
        SamplingParams(**{name: value})
    assert found.group(2) in str(from_engine.value) and name in str(from_engine.value)


def test_strategy_names_live_in_one_place():
    from rl.cli import STRATEGY_HELP
    from rollout import engine
    from rollout.sampling import STRATEGIES, STRATEGY_SPECS

    assert set(STRATEGY_SPECS) == set(STRATEGIES)
    for name in STRATEGIES:
        assert parse_strategy(name, SamplingParams())[1].strategy == name  # every name parses, bare
        assert STRATEGY_SPECS[name].startswith(name) and STRATEGY_SPECS[name] in STRATEGY_HELP
        assert f'"{name}"' in engine.__doc__  # the decoders' own documentation covers it
        SamplingConfig(strategy=name)
    with pytest.raises(ValueError, match="unknown strategy 'fastest': static"):
        parse_strategy("fastest", SamplingParams())


def test_the_config_imports_the_sampling_definition_without_torch():
    code = "import sys, rl.config, rl.cli; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
