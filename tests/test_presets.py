"""Paper presets: choosing an estimator gives its paper's defaults, read from the authors' code,
for every field a config leaves unset; the run's config.yaml spells each out with its source."""

import pytest
import yaml

from algorithms.estimators import ESTIMATORS, EstimatorUnit, one_step_estimate
from rl.config import (
    OPTION_FIELDS,
    PRESET_FIELDS,
    AlgorithmConfig,
    RunConfig,
    config_yaml,
    estimators_help,
    load_config,
)
from rl.data import load_source
from rl.trainer import Trainer

from .conftest import BASE_CKPT, ROOT

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
        "epochs": 1,  # configs/rl_sdar.yaml:58 num_train_epochs: 1, the loop over the rollout data at train/rl_sdar.py:769
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
        "epochs": 12,  # train.yaml:70 num_iterations: 12 (gsm_base.sbatch:24 NUM_ITER=12)
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
        "epochs": 2,  # recipes/config_coupled_code.yaml:20 num_iterations: 2
    },
    # unmask's own per-token ELBO (GDPO itself is the gdpo unit below): its own choices, no number of passes.
    "mc_elbo": {"zscore_std": "sample", "redraw_masks": False},
    # Gen-Verse/dLLM-RL's random_masking method
    "block_random": {
        "zscore_std": "population",  # reward/rl_reward.py:76, the reward script of every method
        "loss_norm": "sequence",  # train/rl_llada.py:591 a row's token mean, then / rows
        "eps_low": 0.2, "eps_high": 0.2, "beta": 0.0,  # configs/rl_sdar.yaml:68-69 (beta: partner differs)
        "redraw_masks": False,  # train/rl_sdar.py:457 masks drawn once per step
        "epochs": 1,  # configs/rl_sdar.yaml:58 num_train_epochs: 1
    },
    # xiaohangt/wd1 @ 0898985 (trainer_type wll_d1_neg)
    "wd1": {
        "advantage": "mean",  # wd1/trainers/rev_grpo_trainer.py:638 advantages = rewards - mean_grouped_rewards
        "zscore_std": "sample",  # rev_grpo_trainer.py:629 .std(dim=1), logged only
        "beta": 0.0,  # rev_grpo_trainer.py:160 loss = ce_loss + min_likeli_loss: no KL
        "redraw_masks": True,  # rev_grpo_trainer.py:550 a mask seed per iteration
        "p_mask_prompt": 0.15,  # wd1/train.yaml:69
        "epochs": 12,  # run/wll_NP_gsm8k.sh:22 NUM_ITER=12
    },
    # facebookresearch/SPG @ a1c7120
    "spg": {
        "advantage": "mean",  # spg/spg_trainer.py:720 advantages = rewards - mean
        "beta": 0.0,  # spg_mix sbatch --beta 0.0
        "redraw_masks": True,  # spg_trainer.py:655 a mask seed per iteration
        "p_mask_prompt": 0.15,  # slurm_scripts/train.yaml:67
        "epochs": 4,  # slurm_scripts/spg_mix/gsm_base_spg_mix_beta1.5_weight0.5.sbatch:28 NUM_ITER=4
    },
    # ML-GSAI/ESPO @ b5f2dac
    "espo": {
        "advantage": "loo",  # espo/espo_trainer.py:694-710 leave_one_out, scale_rewards false
        "zscore_std": "sample",  # espo_trainer.py:711 .std, logged only
        "eps_low": 0.2, "eps_high": 0.2,  # recipes/train.yaml:18 epsilon: 0.2
        "beta": 1e-3,  # recipes/run_gsm8k_llada.sh:28 --beta 1e-3
        "redraw_masks": True,  # espo_trainer.py:177-178 the mask seed of the inner iteration
        "epochs": 8,  # recipes/run_gsm8k_llada.sh:3 NUM_ITER=8 (train.yaml:24's 2 is overridden)
    },
    # yjyddq/EOSER-ASS-RL @ 5affb4e (cj-grpo/)
    "cj_grpo": {
        "advantage": "mean",  # cj_grpo_trainer_semiar.py:587 advantages = rewards - mean
        "zscore_std": "sample",  # cj_grpo_trainer_semiar.py:582 .std(dim=1), logged only
        "eps_low": 0.5, "eps_high": 0.5,  # slurm_scripts/train.yaml:71 epsilon: 0.5
        "beta": 0.04,  # slurm_scripts/train.yaml:70 beta: 0.04, k3 to the adapter-disabled base
        "redraw_masks": False,  # the replay is deterministic
        "epochs": 12,  # slurm_scripts/gsm_run.sh:29 NUM_ITER=12
    },
    # KevinRojas1499/GDPO @ 1918683
    "gdpo": {
        "advantage": "mean",  # gdpo/gdpo_trainer.py:479 advantages = rewards - mean_grouped_rewards
        "zscore_std": "sample",  # gdpo_trainer.py:474 .std(dim=1), logged only
        "eps_low": 0.5, "eps_high": 0.5,  # gdpo/slurm_scripts/train.yaml:72 epsilon: 0.5
        "beta": 0.0,  # train.yaml:71 beta: 0.00
        "redraw_masks": True,  # gdpo_trainer.py:376 a mask seed per iteration (train.yaml:69 random_masking: True)
        "epochs": 12,  # train.yaml:73 num_iterations: 12 (countdown_base.sbatch:23 NUM_ITER=12)
    },
    # LeapLabTHU/JustGRPO @ eebe50e
    "just_grpo": {
        "advantage": "mean",  # grpo.py:58-61 (r - mean) / (std + 1e-4): the std is applied by just_grpo_weights
        "zscore_std": "sample",  # grpo.py:60 .std (G - 1)
        "eps_low": 0.2, "eps_high": 0.2,  # grpo.py:25 eps=0.2
        "beta": 0.0,  # grpo.py:46-50 no KL
        "redraw_masks": False,  # the left-to-right replay is deterministic
        "epochs": 1,  # train.py:152-219 one optimizer step per rollout batch
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
            "redraw_masks": not PAPERS[name]["redraw_masks"], "zscore_std": "population" if PAPERS[name].get("zscore_std", "sample") == "sample" else "sample",
            "epochs": PAPERS[name].get("epochs", 1) + 1}  # fmt: skip
    unit = ESTIMATORS[name]
    if unit.objective is not None and not unit.objective_kl:
        del mine["beta"]  # a ratio-free objective without a KL term (wd1, SPG) takes no beta
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


RECIPE_ESTIMATORS = {"d1_diffu_grpo_gsm8k": "one_step", "diffucoder_coupled_grpo": "coupled", "trado_8b_tracerl": "trace", "trado_4b_tracerl_value": "trace"}


@pytest.mark.parametrize("recipe", sorted(RECIPE_ESTIMATORS))
def test_each_recipe_agrees_with_its_estimators_preset_on_the_passes(recipe):
    algo = load_config(ROOT / "configs" / "recipes" / f"{recipe}.yaml").algorithm
    assert algo.estimator == RECIPE_ESTIMATORS[recipe]
    assert algo.epochs == PAPERS[algo.estimator]["epochs"]  # the recipe spells out what the preset gives


def test_the_passes_are_a_preset_field_with_their_source_in_the_run_config():
    assert "epochs" in PRESET_FIELDS
    algo = AlgorithmConfig(estimator="coupled")
    assert algo.epochs == 2 and algo.preset()["epochs"] == (2, "coupled preset: apple/ml-diffucoder recipes/config_coupled_code.yaml:20 num_iterations 2")
    assert AlgorithmConfig(estimator="mc_elbo").preset()["epochs"] == (1, None)  # no paper: the field's default
    assert AlgorithmConfig(estimator="one_step", epochs=3).epochs == 3
