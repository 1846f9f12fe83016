"""Estimators as units: a new one is one module, named in a config, asked (never name-compared)
by the config and the learner."""

import ast
import re
import textwrap

import pytest
import torch

from algorithms.estimators import ESTIMATORS, EstimatorUnit, get_estimator
from rl.config import ConfigError, RunConfig, load_config
from rl.batch import learner_batch
from rl.learner import Learner
from rollout import SamplingParams
from rollout.worker import RolloutWorker

from .conftest import BASE_CKPT

BASE = {"data": {"sources": [{"path": "arithmetic"}]}, "model": {"path": str(BASE_CKPT)}}

# A whole new estimator, as a user would write it: its options, its estimate, its pass count.
# It scores only the first completion token, with the completion fully masked and the prompt
# clean, and multiplies the log-prob by `weight` (so an option that arrives changes the loss).
TOY = '''
from dataclasses import dataclass

from algorithms.estimators import EstimatorUnit, one_step_estimate


@dataclass(frozen=True)
class FirstTokenOptions:
    weight: float = 1.0
    """Factor on the log-prob."""


CALLS = []


def first_token_estimate(lm, trajs, generator=None, *, weight=1.0, seed=None, occurrences=None, with_entropy=False):
    CALLS.append(weight)
    logp, mask, *rest = one_step_estimate(lm, trajs, generator, p_mask_prompt=0.0, seed=seed, occurrences=occurrences, with_entropy=with_entropy)
    first = mask.clone()
    first[:, 1:] = False
    out = (weight * logp * first, first)
    return out + ((rest[0] * first,) if with_entropy else ())


UNIT = EstimatorUnit(
    "first_token", first_token_estimate, FirstTokenOptions, lambda trajs, options: 1,
    paper="a toy for the tests",
)
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    pkg = tmp_path / "toy_algos"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "first_token.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "toy_algos.first_token:UNIT"
    ESTIMATORS.pop("first_token", None)


def _cfg(tmp_path, algorithm: str):
    p = tmp_path / "run.yaml"
    p.write_text(
        f"data: {{sources: [{{path: arithmetic}}]}}\nmodel: {{path: {BASE_CKPT}}}\nwandb: {{mode: disabled}}\n"
        f"algorithm: {{lr: 1.0e-3, minibatches: 1, {algorithm}}}\n"
    )
    return load_config(p)


def test_a_toy_estimator_module_trains_one_step_through_the_normal_config(toy, tmp_path):
    cfg = _cfg(tmp_path, f"estimator: '{toy}', options: {{weight: 0.5}}")
    unit = cfg.algorithm.estimator_unit()
    assert isinstance(unit, EstimatorUnit) and unit.name == "first_token" and ESTIMATORS["first_token"] is unit
    # The config asked the unit for its paper defaults: none, so the fields' own defaults apply.
    assert cfg.algorithm.zscore_std == "population" and cfg.algorithm.redraw_masks is False

    import toy_algos.first_token as mod

    learner = Learner(cfg)
    worker = RolloutWorker(str(BASE_CKPT))
    tok = worker.lm.tokenizer
    trajs = worker.generate([tok("123+456=")["input_ids"], tok("507+045=")["input_ids"]] * 4,
                            SamplingParams(max_new_tokens=5, temperature=1.0), seed=0, groups=[0, 1] * 4)  # fmt: skip
    start = {k: v.clone() for k, v in learner.lm.model.named_parameters()}
    adv = [0.25, 0.75] * 4
    m = learner.update(learner_batch(learner.cfg.algorithm, trajs, adv))
    assert mod.CALLS and set(mod.CALLS) == {0.5}  # the option reached the estimate
    # One loss token per sample (the first), ratio 1 before the step, norm "token":
    # loss = mean over the 8 tokens of -A = -(4 * 0.25 + 4 * 0.75) / 8 = -0.5.
    assert m["loss/policy"] == pytest.approx(-0.5, abs=1e-6)
    assert "logp_mismatch" not in m  # it does not replay the trace
    changed = [n for n, p in learner.lm.model.named_parameters() if not torch.equal(p, start[n])]
    assert changed


def test_an_option_the_estimator_does_not_take_is_an_error_naming_it(toy, tmp_path):
    with pytest.raises(ConfigError, match=r"estimator 'first_token' has no option 'wieght'; its options: \['weight'\]"):
        _cfg(tmp_path, f"estimator: '{toy}', options: {{wieght: 0.5}}")
    with pytest.raises(ConfigError, match=r"estimator 'trace' has no option 'n'; its options: \['shrink'\]"):
        _cfg(tmp_path, "estimator: trace, options: {n: 2}")
    with pytest.raises(ValueError, match="has no option 'n'"):  # the function itself no longer swallows it
        get_estimator("trace").passes([], n=2)


def test_unknown_estimators_are_refused_with_the_known_names(tmp_path):
    # Every paper's unit is registered on import of `algorithms` (a new unit joins this set).
    shipped = {"block_random", "cj_grpo", "coupled", "espo", "gdpo", "just_grpo", "mc_elbo", "mdpo", "one_step", "spg", "trace", "vrpo", "wd1"}
    with pytest.raises(ConfigError, match=r"unknown estimator 'tracer'; known: \[") as e:
        _cfg(tmp_path, "estimator: tracer")
    listed = re.search(r"known: (\[[^\]]*\])", str(e.value)).group(1)
    names = ast.literal_eval(listed)
    assert names == sorted(names) and shipped <= set(names), names
    with pytest.raises(ConfigError, match="cannot import 'no_such_pkg.mod': No module named 'no_such_pkg'"):
        _cfg(tmp_path, "estimator: 'no_such_pkg.mod:UNIT'")


@pytest.mark.parametrize(
    "name, advantage, zscore_std, redraw",
    [
        ("trace", "zscore", "population", False),  # dLLM-RL: z-score with torch std(unbiased=False)
        ("one_step", "mean", "sample", True),  # d1's trainer: A = r - mean (std only logged); a mask seed per inner iteration
        ("coupled", "loo", "sample", True),  # DiffuCoder: leave-one-out, no std scaling; a mask seed per inner iteration (coupled_grpo.py:458)
        ("mc_elbo", "zscore", "sample", False),
    ],
)
def test_each_unit_brings_its_papers_defaults(name, advantage, zscore_std, redraw):
    algo = RunConfig.model_validate({**BASE, "algorithm": {"estimator": name}}).algorithm
    assert (algo.advantage, algo.zscore_std, algo.redraw_masks) == (advantage, zscore_std, redraw)
    explicit = RunConfig.model_validate({**BASE, "algorithm": {"estimator": name, "advantage": "zscore" if advantage != "zscore" else "mean"}}).algorithm
    assert explicit.advantage != advantage
    # an explicit value always wins over the unit's default
    algo = RunConfig.model_validate({**BASE, "algorithm": {"estimator": name, "zscore_std": "sample" if zscore_std == "population" else "population"}}).algorithm
    assert algo.zscore_std != zscore_std


def test_trace_only_settings_ask_the_unit_whether_it_replays_the_trace(toy, tmp_path):
    for estimator in ("one_step", toy):
        with pytest.raises(ConfigError, match="does not replay the trace"):
            _cfg(tmp_path, f"estimator: '{estimator}', loss_norm: pass")
        with pytest.raises(ConfigError, match="does not replay"):
            _cfg(tmp_path, f"estimator: '{estimator}', value: {{enabled: true}}")
    assert _cfg(tmp_path, "estimator: trace, loss_norm: pass").algorithm.loss_norm == "pass"


def test_coupled_options_arrive_under_the_estimators_own_names():
    algo = RunConfig.model_validate({**BASE, "algorithm": {"estimator": "coupled", "coupled_t_min": 0.3}}).algorithm
    assert algo.estimator_options() == {"t_min": 0.3, "t_max": 0.8, "weighted": True, "full_mask_pass": True}
    assert get_estimator("coupled").passes([], **algo.estimator_options()) == 3


@pytest.mark.parametrize(
    "name, want",
    [
        # rewards [1, 0, 0, 0] in one group of 4 (mean 0.25, population std sqrt(3)/4):
        ("one_step", [0.75, -0.25, -0.25, -0.25]),  # d1: r - mean
        ("coupled", [1.0, -1 / 3, -1 / 3, -1 / 3]),  # DiffuCoder: r - mean of the other three
        ("trace", [3 ** 0.5, -(3 ** -0.5), -(3 ** -0.5), -(3 ** -0.5)]),  # TraceRL: (r - mean) / population std
    ],
)
def test_each_presets_advantages_equal_its_papers_formula_by_hand(name, want):
    from algorithms.advantages import group_advantages

    algo = RunConfig.model_validate({**BASE, "algorithm": {"estimator": name}}).algorithm
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0, 0, 0, 0]), algo.advantage, std=algo.zscore_std)
    assert adv.tolist() == pytest.approx(want, abs=1e-5)


def test_config_help_lists_every_estimator_with_its_paper_and_preset():
    from rl.config import estimators_help

    text = estimators_help()
    for name, unit in ESTIMATORS.items():
        assert f"  {name}: {unit.paper}" in text
    # coupled's options show the run config's defaults (DiffuCoder's weighted form), not the function's
    assert "weighted=True (algorithm.coupled_weighted)" in text
    assert "      advantage: mean  # dllm-reasoning/d1 diffu-grpo/diffu_grpo_trainer.py:539" in text  # one_step: d1's, one line per field


def test_a_plugin_estimator_loads_from_the_directory_unmask_runs_in(tmp_path):
    """As reward plugins do: `unmask train` started in the user's project finds `my_algos/...`,
    although the console script puts its own directory, not the project, first on sys.path."""
    import subprocess
    import sys

    from .conftest import ROOT

    (tmp_path / "toy_algos").mkdir()
    (tmp_path / "toy_algos" / "__init__.py").write_text("")
    (tmp_path / "toy_algos" / "first_token.py").write_text(textwrap.dedent(TOY))
    (tmp_path / "run.yaml").write_text(
        f"data: {{sources: [{{path: arithmetic}}]}}\nmodel: {{path: {BASE_CKPT}}}\nalgorithm: {{estimator: 'toy_algos.first_token:UNIT'}}\n"
    )
    script = tmp_path / "bin" / "check.py"  # sys.path[0] is bin/, as for a console script
    script.parent.mkdir()
    script.write_text("from rl.config import load_config\nprint(load_config('run.yaml').algorithm.estimator_unit().name)\n")
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": ""}, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "first_token", out.stderr[-2000:]
