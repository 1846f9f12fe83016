"""Checkpoints the loader cannot serve are refused first, by name, with what to do (issue 31).

Every command loads through `rollout.models.load_model`; these are its refusals, each before any weight
is read: a directory without a model, a file, a relative path that does not exist (never sent to the
hub), the `trust_remote_code=True` habit for a family whose own code cannot run on transformers 5, and
LLaDA-MoE (model_type `llada`, but a mixture of experts).
"""

import json

import huggingface_hub
import pytest

from rollout.checkpoint_checks import NotAModel, check_model_path
from rollout.convert import UnsupportedCheckpoint
from rollout.models import load_model

from .test_hub_checkpoints import sdar_checkpoint


@pytest.fixture
def no_hub(monkeypatch):
    """Any hub lookup fails the test: a local path must never be sent there."""

    def refuse(*a, **k):
        raise AssertionError(f"the hub was asked for {a} {k}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)


def test_a_directory_without_a_model_is_named_with_what_it_holds(tmp_path, no_hub):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(NotAModel, match=r"is not a model directory: it has no config.json \(it holds notes.txt\)"):
        load_model(tmp_path)


def test_a_config_without_weights_is_refused(tmp_path, no_hub):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    with pytest.raises(NotAModel, match="has a config.json but no weights"):
        load_model(tmp_path)


def test_a_file_is_not_a_model_directory(tmp_path, no_hub):
    sdar_checkpoint(tmp_path / "m")
    with pytest.raises(NotAModel, match="model.safetensors is a file, not a model directory"):
        load_model(tmp_path / "m" / "model.safetensors")


@pytest.mark.parametrize("path", ["runs/no-such-model", "./no-such-model", "a/b/c"])
def test_a_missing_relative_path_never_goes_to_the_hub(tmp_path, monkeypatch, no_hub, path):
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NotAModel, match=rf"{path}: no such file or directory .*nothing was looked up on the hub"):
        load_model(path)


@pytest.mark.parametrize("flag", [False, True])
def test_trust_remote_code_on_a_converted_family_says_what_unmask_does_instead(tmp_path, flag):
    sdar_checkpoint(tmp_path / "sdar")
    if not flag:
        assert check_model_path(tmp_path / "sdar") == tmp_path / "sdar"
        return
    with pytest.raises(ValueError, match=r"SDARForCausalLM's own modeling code, .* does not run on the installed transformers 5\.") as e:
        load_model(tmp_path / "sdar", trust_remote_code=True)
    assert "unmask loads this checkpoint without remote code" in str(e.value) and "model.trust_remote_code: false" in str(e.value)


def test_llada_moe_is_refused_by_its_architecture(tmp_path):
    """LLaDA-MoE-7B-A1B's config.json fields (its LLaDAMoEConfig): model_type llada, no n_heads."""
    path = tmp_path / "llada-moe"
    path.mkdir()
    config = {
        "architectures": ["LLaDAMoEModelLM"], "model_type": "llada",
        "auto_map": {"AutoConfig": "configuration_lladamoe.LLaDAConfig", "AutoModel": "modeling_lladamoe.LLaDAMoEModelLM"},
        "vocab_size": 157184, "hidden_size": 32, "dense_intermediate_size": 64, "expert_intermediate_size": 16,
        "shared_expert_intermediate_size": 0, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
        "num_experts": 8, "num_experts_per_tok": 2, "qk_layernorm": True, "moe_layer_freq": [1, 1], "rope_theta": 50000,
        "partial_rotary_factor": 1, "mask_token_id": 156895, "eos_token_id": 156892, "pad_token_id": 156892,
    }  # fmt: skip
    (path / "config.json").write_text(json.dumps(config))
    (path / "model.safetensors").write_bytes(b"")  # never read: refused from config.json alone
    with pytest.raises(UnsupportedCheckpoint, match=r"architecture LLaDAMoEModelLM with model_type 'llada' is LLaDA-MoE, a mixture-of-experts"):
        check_model_path(path)
    with pytest.raises(UnsupportedCheckpoint, match="LLaDAMoEModelLM"):
        load_model(path)
