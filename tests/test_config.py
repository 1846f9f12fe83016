import subprocess
import sys

import pytest

from rl.config import ConfigError, RunConfig, SFTConfig, config_help, load_config

from .conftest import ROOT


def write(tmp_path, text):
    p = tmp_path / "run.yaml"
    if "data:" not in text:  # every run config names its data; these tests are about other sections
        text = "data: {sources: [{path: arithmetic}]}\n" + text
    p.write_text(text)
    return p


def test_shipped_configs_validate():
    cfg = load_config(ROOT / "configs" / "quickstart.yaml")
    assert cfg.rollout.samples_per_prompt == 8 and cfg.algorithm.estimator == "trace"
    assert load_config(ROOT / "configs" / "sft_quickstart.yaml", schema=SFTConfig).arch.block_size == 4
    # The ablation's full-attention base: a LLaDA-style model the full-attention-only units accept,
    # each taking its paper preset (only lr and minibatches are set there).
    assert load_config(ROOT / "configs" / "sft_quickstart_full.yaml", schema=SFTConfig).arch.family == "llada"
    full = load_config(ROOT / "configs" / "quickstart_full.yaml", overrides=["algorithm.estimator=gdpo"])
    assert (full.algorithm.epochs, full.algorithm.advantage) == (12, "mean")
    from rollout.models import checkpoint_family

    assert checkpoint_family(ROOT / full.model.path) == "llada"


def test_unknown_key_names_file_key_and_suggestion(tmp_path):
    p = write(tmp_path, "model: {path: x}\nalgorithm:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "algorithm.lrr" in msg and "did you mean 'lr'" in msg


def test_wrong_type_and_range(tmp_path):
    p = write(tmp_path, "model: {path: x}\nrollout:\n  samples_per_prompt: many\ntrain:\n  steps: 0\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "rollout.samples_per_prompt" in msg and "'many'" in msg
    assert "train.steps" in msg and "greater than or equal to 1" in msg and "2 problems" in msg


def test_missing_required_and_bad_literal(tmp_path):
    with pytest.raises(ConfigError, match=r"model: Field required"):
        load_config(write(tmp_path, "train: {steps: 3}\n"))
    with pytest.raises(ConfigError, match=r"algorithm.advantage: Input should be"):
        load_config(write(tmp_path, "model: {path: x}\nalgorithm: {advantage: max}\n"))


def test_overrides_and_cross_field_rule(tmp_path):
    p = write(tmp_path, "model: {path: x}\n")
    cfg = load_config(p, ["algorithm.lr=5e-5", "rollout.sampling.strategy=threshold"])
    assert cfg.algorithm.lr == 5e-5 and cfg.rollout.sampling.strategy == "threshold"
    with pytest.raises(ConfigError, match="temperature is 0"):
        load_config(p, ["rollout.sampling.temperature=0"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(p, ["algorithm.lr"])


def test_every_field_is_documented():
    text = config_help(RunConfig) + config_help(SFTConfig)
    assert "algorithm.shrink" in text and "rollout.sampling.threshold" in text
    for line in text.splitlines():
        if line.startswith("    "):
            assert line.strip(), "a config field without a description"


def test_cli_reports_config_errors_with_exit_code_2(tmp_path):
    p = write(tmp_path, "model: {path: x}\nrolout: {}\n")
    res = subprocess.run([sys.executable, "-m", "rl.cli", "train", str(p)], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2
    assert "rolout: unknown key; did you mean 'rollout'?" in res.stderr


def test_experiment_configs_override_only_what_differs():
    base = load_config(ROOT / "configs" / "quickstart.yaml")
    for name, check in {
        # TraceRL's value configs ship lambda 1.0 and its per-token form
        "tracerl_value": lambda c: c.algorithm.value.enabled and c.algorithm.value.lam == 1.0 and c.algorithm.value.form == "tracerl",
        "diffu_grpo": lambda c: c.algorithm.estimator == "one_step" and c.algorithm.redraw_masks,  # d1 redraws
        # DiffuCoder's weighted form with its fully masked pass
        "coupled_grpo": lambda c: c.algorithm.estimator == "coupled" and c.algorithm.coupled_weighted and c.algorithm.coupled_full_mask_pass,
    }.items():
        cfg = load_config(ROOT / "configs" / f"{name}.yaml")
        assert check(cfg), name
        assert cfg.rollout == base.rollout and cfg.model == base.model and cfg.algorithm.lr == base.algorithm.lr
    nodes = load_config(ROOT / "configs" / "two_nodes.yaml")
    assert (nodes.rollout.num_workers, nodes.learner.ranks, nodes.cluster.strategy) == (2, 2, "SPREAD")
    assert nodes.algorithm == base.algorithm


def test_scale_rules(tmp_path):
    p = write(tmp_path, "model: {path: x}\n")
    with pytest.raises(ConfigError, match="rollout.overlap needs algorithm.estimator: trace"):
        load_config(p, ["rollout.overlap=true", "algorithm.estimator=one_step"])
    with pytest.raises(ConfigError, match="rollout.overlap needs cluster.placement: separate"):
        load_config(p, ["rollout.overlap=true", "cluster.placement=colocated"])
    assert load_config(p, ["learner.parallel=fsdp2", "learner.ranks=2", "model.lora.enabled=true"]).model.lora.enabled  # sharded base, gathered adapter
    with pytest.raises(ConfigError, match="did you mean 'micro_batches'"):
        load_config(p, ["learner.micro_batch=2"])


def test_base_chain_errors(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(a)
    b = tmp_path / "b.yaml"
    b.write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="not found"):
        load_config(b)
    c = tmp_path / "c.yaml"
    c.write_text("model: {path: x}\nalgorithm: {loss_norm: constant}\n")
    with pytest.raises(ConfigError, match="norm_constant"):
        load_config(c)
