"""Paper presets: choosing an estimator gives its paper's defaults, read from the authors' code,
for every field a config leaves unset; the run's config.yaml spells each out with its source."""

import pytest
import yaml

from algorithms.estimators import ESTIMATORS, EstimatorUnit, one_step_estimate
from rl.config import OPTION_FIELDS, PRESET_FIELDS, AlgorithmConfig, RunConfig, config_yaml, estimators_help, load_config
from rl.data import load_source
from rl.trainer import Trainer

from .conftest import BASE_CKPT

BASE = {"data": {"sources": [{"path": "arithmetic"}]}, "model": {"path": str(BASE_CKPT)}, "wandb": {"mode": "disabled"}}

# Each paper's values, by hand, with the line of the authors' code they come from.
PAPERS = {
    # Gen-Verse/dLLM-RL (TraceRL) @ 10b4fd1
    "trace": {
        "advantage": "zscore",  # reward/rl_reward.py:105 rewards = z_score_normalize(correctness)
        "zscore_std": "population",  # reward/rl_reward.py:76 std = (sum((x - mean) ** 2) / len(lst)) ** 0.5
        "loss_norm": "pass",  # train/rl_llada.py:591, rl_dream.py:621 surrogate.sum(1) / num_mask per pass row, then / B
        "eps_low": 0.2, "eps_high": 0.2,  # configs/rl_sdar.yaml:68 eps: 0.20 (symmetric clamp, train/rl_sdar.py:734)
        "beta": 0.0,  # configs/rl_sdar.yaml:69 beta 0.01 is k3 to logp_old (train/rl_sdar.py:749), not the initial policy
        "redraw_masks": False,  # the replay is deterministic
        "shrink": 1,  # configs/rl_sdar.yaml:62, rl_trado.yaml:62 shrink: 1
    },
    # dllm-reasoning/d1 (diffu-GRPO) @ 837888f
    "one_step": {
        "advantage": "mean",  # diffu-grpo/diffu_grpo_trainer.py:539 advantages = rewards - mean_grouped_rewards
        "zscore_std": "sample",  # diffu_grpo_trainer.py:534 .std(dim=1), logged only
        "loss_norm": "token",  # diffu_grpo_trainer.py:121 (per_token_loss * completion_mask).sum() / completion_mask.sum()
        "eps_low": 0.5, "eps_high": 0.5,  # diffu-grpo/slurm_scripts/train.yaml:69 epsilon: 0.5
        "beta": 0.04,  # train.yaml:68 beta: 0.04; k3 to the adapter-disabled base (diffu_grpo_trainer.py:104, :474)
        "redraw_masks": True,  # diffu_grpo_trainer.py:451 a mask seed per iteration (train.yaml:66 random_masking: True)
        "p_mask_prompt": 0.15,  # train.yaml:67 p_mask_prompt: 0.15
    },
    # apple/ml-diffucoder (coupled-GRPO) @ f735e01
    "coupled": {
        "advantage": "loo",  # src/open_r1/coupled_grpo.py:545-561 leave_one_out = True (scale_rewards: false)
        "zscore_std": "sample",  # coupled_grpo.py:562 .std, logged only
        "loss_norm": "token",  # coupled_grpo.py:224 (loss * completion_mask).sum() / completion_mask.sum()
        "eps_low": 0.5, "eps_high": 0.5,  # recipes/config_coupled_code.yaml:14 epsilon: 0.5
        "beta": 0.0,  # recipe beta 0.01 is k3 to a reference re-synced every 64 steps, not the initial policy
        "redraw_masks": True,  # coupled_grpo.py:458 a mask seed per iteration (recipe random_masking: True)
        "coupled_t_min": 0.2, "coupled_t_max": 0.8,  # coupled_grpo.py:259 random.uniform(0.2, 0.8)
        "coupled_weighted": True,  # coupled_grpo.py:279 weights [1, 1/t, 1/(1-t)]
        "coupled_full_mask_pass": True,  # coupled_grpo.py:122 (p0 + weighted) / 2
    },
    # GDPO's code was not found: unmask's own choices, kept as they were.
    "mc_elbo": {"zscore_std": "sample", "redraw_masks": False},
    # Gen-Verse/dLLM-RL's random_masking method
    "block_random": {
        "zscore_std": "population",  # reward/rl_reward.py:76, the reward script of every method
        "loss_norm": "sequence",  # train/rl_llada.py:591 a row's token mean, then / rows
        "eps_low": 0.2, "eps_high": 0.2, "beta": 0.0,  # configs/rl_sdar.yaml:68-69 (beta: partner differs)
        "redraw_masks": False,  # train/rl_sdar.py:457 masks drawn once per step
    },
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PAPERS))
def test_each_unit_derives_its_papers_values_with_a_source_for_each(name):
    unit = ESTIMATORS[name]
    assert dict(unit.config_defaults) == PAPERS[name]
    assert set(unit.provenance) == set(unit.config_defaults), "every preset value names its source"
    algo = RunConfig.model_validate({**BASE, "algorithm": {"estimator": name}}).algorithm
    for field in PRESET_FIELDS:
        want = PAPERS[name].get(field, AlgorithmConfig.model_fields[field].default)
        assert getattr(algo, field) == want, field
    assert set(PAPERS[name]) <= set(PRESET_FIELDS)


@pytest.mark.parametrize("name", sorted(PAPERS))
def test_a_field_the_user_sets_beats_the_preset(name):
    mine = {"advantage": "loo" if PAPERS[name].get("advantage") != "loo" else "mean", "eps_low": 0.3, "eps_high": 0.25, "beta": 0.02,
            "redraw_masks": not PAPERS[name]["redraw_masks"], "zscore_std": "population" if PAPERS[name]["zscore_std"] == "sample" else "sample"}  # fmt: skip
    algo = RunConfig.model_validate({**BASE, "algorithm": {"estimator": name, **mine}}).algorithm
    assert {k: getattr(algo, k) for k in mine} == mine
    # the fields left unset still get the preset
    assert all(getattr(algo, k) == v for k, v in PAPERS[name].items() if k not in mine)


def test_gspo_defaults_beat_the_units_and_say_so():
    algo = AlgorithmConfig(estimator="one_step", loss="gspo")
    assert (algo.eps_low, algo.eps_high, algo.loss_norm, algo.beta) == (3e-4, 4e-4, "sequence", 0.04)
    assert algo.preset()["eps_low"][1].startswith("loss gspo: GSPO") and algo.preset()["beta"][1].startswith("one_step preset: dllm-reasoning/d1")


def test_a_plugin_unit_without_provenance_still_presets():
    unit = EstimatorUnit("no_source", one_step_estimate, type(ESTIMATORS["one_step"].options()), lambda trajs, o: 1, config_defaults={"zscore_std": "population"})
    algo = AlgorithmConfig()
    assert algo.preset(unit)["zscore_std"] == ("population", "no_source preset")
    assert algo.preset(unit)["advantage"] == ("zscore", None)


def _resolved_yaml(cfg: RunConfig) -> str:
    """What Trainer.__init__ writes to the run's config.yaml, without Ray or a model."""
    trainer = Trainer.__new__(Trainer)
    trainer.cfg = cfg
    trainer.sources = [load_source(s, cfg.rewards) for s in cfg.data.sources]
    return config_yaml(trainer._resolved_config(), cfg.algorithm)


def test_config_yaml_names_each_presets_source_and_loads_back_to_the_same_config(tmp_path):
    cfg = RunConfig.model_validate({**BASE, "algorithm": {"estimator": "one_step", "eps_high": 0.28}})
    text = _resolved_yaml(cfg)
    lines = {line.split(":")[0].strip(): line for line in text.split("\nalgorithm:\n")[1].split("\n") if line.startswith("  ") and not line.startswith("   ")}
    assert lines["advantage"] == "  advantage: mean  # one_step preset: dllm-reasoning/d1 diffu-grpo/diffu_grpo_trainer.py:539: advantages = rewards - mean (the std, :534, is only logged)"
    assert lines["beta"].startswith("  beta: 0.04  # one_step preset: dllm-reasoning/d1 diffu-grpo/slurm_scripts/train.yaml:68")
    assert lines["eps_high"] == "  eps_high: 0.28  # set in your config (one_step preset: 0.5)"
    assert lines["p_mask_prompt"].startswith("  p_mask_prompt: 0.15  # one_step preset: dllm-reasoning/d1")
    assert "#" not in lines["shrink"] and "#" not in lines["coupled_t_min"]  # other estimators' options: no comment
    assert "#" not in lines["lr"] and "#" not in lines["value"]
    assert {k for k, line in lines.items() if "#" in line} == set(PRESET_FIELDS) - set(OPTION_FIELDS) | {"p_mask_prompt"}
    mc = _resolved_yaml(RunConfig.model_validate({**BASE, "algorithm": {"estimator": "mc_elbo"}}))
    assert "  loss_norm: token  # unmask default\n" in mc and "  mc_samples: 4  # unmask default\n" in mc  # no paper source
    path = tmp_path / "config.yaml"
    path.write_text(text)
    back = load_config(path)  # what --resume reads
    assert back.algorithm.model_dump() == cfg.algorithm.model_dump()
    assert back.model_dump(mode="json") == yaml.safe_load(text)
    # written again from the reloaded config (every field now set), the sources stay: same values as the preset
    assert _resolved_yaml(back) == text


def test_config_help_shows_each_presets_field_on_its_own_line_with_its_source():
    text = estimators_help()
    assert "      loss_norm: pass  # Gen-Verse/dLLM-RL train/rl_llada.py:591" in text
    assert "      beta: 0.04  # dllm-reasoning/d1 diffu-grpo/slurm_scripts/train.yaml:68" in text
    sections, name = {}, None
    for line in text.splitlines()[1:]:
        if not line.startswith("   "):
            name = line.strip().split(":")[0]
        sections.setdefault(name, []).append(line)
    for name, unit in ESTIMATORS.items():
        for field, value in unit.config_defaults.items():
            [line] = [x for x in sections[name] if x.startswith(f"      {field}: ")]
            assert line.startswith(f"      {field}: {yaml.safe_dump(value).split(chr(10))[0]}  # {unit.provenance[field]}")
