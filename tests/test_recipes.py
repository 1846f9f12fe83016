"""The published runs as recipes (configs/recipes/): each loads, says where its values come from, and
runs two steps on CPU when shrunk by rl.smoke (`unmask train RECIPE --smoke`)."""

import re
import subprocess
from pathlib import Path

import pytest

from rl.config import load_config
from rl.smoke import SMOKE_NEW_TOKENS, SMOKE_STEPS, smoke_config

from .conftest import ROOT

RECIPES = ROOT / "configs" / "recipes"
MIRROR = Path("/work/.mirror")

# recipe -> (authors' repository, commit, the files its comments cite, as repository paths). Verified by hand
# at that commit; where the mirror is present, test_provenance_files_exist_at_their_commit checks them again.
SOURCES = {
    "trado_8b_tracerl": ("Gen-Verse/dLLM-RL", "10b4fd1", (
        "configs/multinode_rl_trado.yaml", "configs/multinode_rl_sdar.yaml", "configs/rl_trado.yaml", "configs/rl_sdar.yaml",
        "data/download_data.py", "train/rl_sdar.py", "models/lr_schedulers.py", "assets/maintable.png", "sample/sdar_rl_rollout.py",
        "accelerate_configs/4_node_8_gpus_deepspeed_zero3.yaml", "configs/trado_eval.yaml")),
    "trado_4b_tracerl_value": ("Gen-Verse/dLLM-RL", "10b4fd1", (
        "configs/multinode_rl_sdar_with_value.yaml", "configs/rl_trado_with_value.yaml", "data/download_data.py", "train/rl_sdar.py",
        "assets/maintable.png")),
    "d1_diffu_grpo_gsm8k": ("dllm-reasoning/d1", "837888f", (
        "diffu-grpo/slurm_scripts/train.yaml", "diffu-grpo/slurm_scripts/gsm_sft.sbatch", "diffu-grpo/data_utils.py",
        "diffu-grpo/slurm_scripts/accelerate_a100.yaml", "diffu-grpo/diffu_grpo_train.py", "diffu-grpo/diffu_grpo_config.py",
        "diffu-grpo/diffu_grpo_trainer.py", "diffu-grpo/reward_func.py", "SFT/sft_train.py", "README.md", "media/sota.png",
        "eval/eval.py", "eval/run_eval.sh")),
    "diffucoder_coupled_grpo": ("apple/ml-diffucoder", "f735e01", (
        "recipes/config_coupled_code.yaml", "run.sh", "src/open_r1/coupled_grpo.py", "recipes/process_data.py", "README.md",
        "src/open_r1/rewards.py", "figs/teaser.png")),
    "dirl_8b": ("OpenMOSS/DiRL", "ec4bfb3", (
        "configs/rl.yaml", "examples/example-grpo.sh", "scripts/grpo.sh", "paper/DiRL.pdf", "download.sh", "examples/example-sft.sh",
        "README.md", "train/rollout_dapo_server.py", "train/grpo.py", "examples/example-eval.sh", "scripts/eval.sh")),
}

# recipe -> {config field: the authors' value}, each checked by hand against the file named in the recipe's comment.
EXPECTED = {
    "trado_8b_tracerl": {
        "model.family": "block", "model.block_size": 4, "data.max_prompt_tokens": 784, "data.sources.0.max_new_tokens": 2000,
        "rollout.prompts_per_step": 128, "rollout.samples_per_prompt": 32, "rollout.sampling.strategy": "threshold",
        "rollout.sampling.threshold": 0.9, "rollout.sampling.temperature": 1.0, "rollout.sampling.top_k": None,
        "algorithm.estimator": "trace", "algorithm.shrink": 1, "algorithm.eps_low": 0.2, "algorithm.eps_high": 0.2,
        "algorithm.lr": 1e-6, "algorithm.grad_clip": 1.0, "algorithm.advantage": "zscore", "algorithm.zscore_std": "population",
        "algorithm.beta": 0.0, "train.steps": 80, "train.seed": 10086, "learner.ranks": 32,
    },
    "trado_4b_tracerl_value": {
        "model.family": "block", "rollout.prompts_per_step": 128, "rollout.samples_per_prompt": 32, "algorithm.estimator": "trace",
        "algorithm.lr": 1e-6, "algorithm.value.enabled": True, "algorithm.value.lr": 5e-6, "algorithm.value.gamma": 1.0,
        "algorithm.value.lam": 1.0, "data.sources.0.max_new_tokens": 2000, "train.steps": 80,
    },
    "d1_diffu_grpo_gsm8k": {
        "model.family": "llada", "model.lora.enabled": True, "model.lora.r": 128, "model.lora.alpha": 64, "model.lora.dropout": 0.05,
        "data.max_prompt_tokens": 200, "data.sources.0.max_new_tokens": 256, "data.sources.0.subset": "main",
        "rollout.prompts_per_step": 16, "rollout.samples_per_prompt": 6, "rollout.sampling.block_length": 32,
        "rollout.sampling.steps_per_block": 16, "rollout.sampling.temperature": 0.9, "algorithm.estimator": "one_step",
        "algorithm.p_mask_prompt": 0.15, "algorithm.beta": 0.04, "algorithm.eps_low": 0.5, "algorithm.advantage": "mean",
        "algorithm.lr": 3e-6, "algorithm.weight_decay": 0.1, "algorithm.grad_clip": 0.2, "algorithm.epochs": 12, "train.seed": 42,
    },
    "diffucoder_coupled_grpo": {
        "model.family": "dream", "data.max_prompt_tokens": 200, "data.sources.0.max_new_tokens": 256,
        "data.sources.0.system_prompt": "You are a helpful assistant.", "rollout.prompts_per_step": 8, "rollout.samples_per_prompt": 10,
        "rollout.sampling.steps_per_block": 256, "rollout.sampling.confidence": "entropy", "rollout.sampling.temperature": 1.0,
        "rollout.sampling.top_p": 0.95, "algorithm.estimator": "coupled", "algorithm.advantage": "loo", "algorithm.eps_low": 0.5,
        "algorithm.lr": 1e-6, "algorithm.weight_decay": 0.1, "algorithm.grad_clip": 0.2, "algorithm.epochs": 2, "train.seed": 42,
    },
    "dirl_8b": {
        "model.family": "block", "model.block_size": 4, "data.max_prompt_tokens": 1024, "data.sources.0.max_new_tokens": 8192,
        "rollout.prompts_per_step": 128, "rollout.samples_per_prompt": 32, "rollout.sampling.strategy": "threshold",
        "rollout.sampling.top_k": 50, "algorithm.estimator": "trace", "algorithm.drop_zero_std": True, "algorithm.beta": 0.0,
        "algorithm.lr": 1e-6, "train.steps": 40, "learner.ranks": 128,
    },
}

NAMES = sorted(EXPECTED)
CITED = re.compile(r"\b([\w.-]+(?:/[\w.-]+)*\.(?:yaml|py|sh|md|png|pdf|sbatch))\b(?::\d+)?")


def _get(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def test_the_table_covers_every_recipe():
    assert sorted(p.stem for p in RECIPES.glob("*.yaml")) == NAMES == sorted(SOURCES)


@pytest.mark.parametrize("name", NAMES)
def test_recipe_loads_with_the_authors_values(name):
    cfg = load_config(RECIPES / f"{name}.yaml")
    wrong = {k: (_get(cfg, k), v) for k, v in EXPECTED[name].items() if _get(cfg, k) != v}
    assert not wrong, f"{name}: field -> (recipe, authors'): {wrong}"


@pytest.mark.parametrize("name", NAMES)
def test_every_cited_file_is_one_of_the_authors_files(name):
    """Each file a comment names (by path or by basename) is in the table of that repository's files."""
    repo, commit, files = SOURCES[name]
    text = (RECIPES / f"{name}.yaml").read_text()
    assert f"{repo} @ {commit}" in text, f"{name} must name its source repository and commit"
    comments = "\n".join(line.partition("#")[2] for line in text.splitlines() if "#" in line)
    basenames = {f.rsplit("/", 1)[-1] for f in files}
    # unmask's own files, and one cross-repository citation (the SDAR hub id, from OpenMOSS/DiRL's download.sh)
    unmask_files = {"DESIGN.md", "trado_8b_tracerl.yaml", "rl/config.py", "download.sh"}
    cited = {m.group(1) for m in CITED.finditer(comments)} - unmask_files
    unknown = {c for c in cited if c not in files and c.rsplit("/", 1)[-1] not in basenames}
    assert not unknown, f"{name} cites files not in {repo}@{commit}'s table: {sorted(unknown)}"


@pytest.mark.skipif(not MIRROR.is_dir(), reason="the authors' repositories are not mirrored here")
@pytest.mark.parametrize("name", NAMES)
def test_provenance_files_exist_at_their_commit(name):
    repo, commit, files = SOURCES[name]
    git = MIRROR / repo.replace("/", "+") / "repo"
    if not git.is_dir():
        pytest.skip(f"{repo} not mirrored")
    for f in files:
        res = subprocess.run(["git", "--git-dir", str(git), "cat-file", "-e", f"{commit}:{f}"], capture_output=True)
        assert res.returncode == 0, f"{repo}@{commit} has no {f}"


@pytest.mark.parametrize("name", NAMES)
def test_smoke_config_keeps_the_recipe_and_shrinks_the_rest(name, tmp_path):
    from rollout.models import checkpoint_family

    cfg = load_config(RECIPES / f"{name}.yaml")
    smoke = smoke_config(load_config(RECIPES / f"{name}.yaml"), tmp_path)
    assert smoke.algorithm.model_dump(exclude={"minibatches"}) == cfg.algorithm.model_dump(exclude={"minibatches"})
    assert smoke.model.lora == cfg.model.lora and smoke.model.family == cfg.model.family
    assert checkpoint_family(smoke.model.path) == (cfg.model.family or "block")
    for a, b in zip(smoke.data.sources, cfg.data.sources):
        assert (a.preset, a.template, a.prompt, a.system_prompt, a.columns, a.rewards) == (b.preset, b.template, b.prompt, b.system_prompt, b.columns, b.rewards)
        assert Path(a.path).is_file() and a.max_new_tokens == SMOKE_NEW_TOKENS
    keep = {"strategy", "threshold", "confidence", "temperature", "top_k", "top_p", "kv_cache", "dual_cache", "eos_guard", "schedule"}
    for s, c in ((smoke.rollout.sampling, cfg.rollout.sampling), (smoke.eval.sampling, cfg.eval.sampling)):
        assert {k: getattr(s, k) for k in keep} == {k: getattr(c, k) for k in keep}
        if c.block_length is not None:  # full attention blocks shrink with their steps: the same tokens per step
            assert s.block_length / s.steps_per_block == c.block_length / c.steps_per_block
        elif c.steps_per_block is not None and c.steps_per_block > SMOKE_NEW_TOKENS:
            assert s.steps_per_block == SMOKE_NEW_TOKENS  # one token per step stays one token per step
        else:
            assert s.steps_per_block == c.steps_per_block
    assert smoke.train.steps == SMOKE_STEPS and smoke.rollout.num_workers == 1 and smoke.learner.ranks == 1
    assert smoke.cluster.gpus_per_bundle == 0 and not smoke.eval.benchmarks


def test_every_recipe_smoke_runs_two_steps_and_checkpoints(tmp_path):
    """All recipes in one Ray session: the in-process path `unmask train` takes (rl.trainer.Trainer)."""
    import json

    from rl.trainer import Trainer

    for name in NAMES:
        cfg = smoke_config(load_config(RECIPES / f"{name}.yaml"), tmp_path / name)
        trainer = Trainer(cfg, cfg.train.output_dir)
        try:
            trainer.train()
        finally:
            trainer.shutdown()
        run = Path(cfg.train.output_dir)
        ckpt = run / "checkpoints" / f"step_{SMOKE_STEPS:06d}"
        assert (ckpt / "trainer_state.json").exists(), f"{name}: no checkpoint"
        weights = "adapter" if cfg.model.lora.enabled else "model"  # a LoRA run checkpoints its adapter
        assert any((ckpt / weights).glob("*.safetensors")), f"{name}: no weights in the checkpoint"
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records if "frac_reward_zero_std" in r] == [1, 2], f"{name}: two RL steps"
        if not cfg.algorithm.drop_zero_std:  # DiRL drops zero-variance groups: a random model's all-zero rewards leave no update
            assert [r["step"] for r in records if "loss/policy" in r] == [1, 2], f"{name}: two updates"
