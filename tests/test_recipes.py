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
        "assets/maintable.png", "configs/trado_eval.yaml", "configs/multinode_rl_trado.yaml")),
    "d1_diffu_grpo_gsm8k": ("dllm-reasoning/d1", "837888f", (
        "diffu-grpo/slurm_scripts/train.yaml", "diffu-grpo/slurm_scripts/gsm_sft.sbatch", "diffu-grpo/data_utils.py",
        "diffu-grpo/slurm_scripts/accelerate_a100.yaml", "diffu-grpo/diffu_grpo_train.py", "diffu-grpo/diffu_grpo_config.py",
        "diffu-grpo/diffu_grpo_trainer.py", "diffu-grpo/reward_func.py", "SFT/sft_train.py", "README.md", "media/sota.png",
        "eval/eval.py", "eval/run_eval.sh", "eval/gsm8k.py", "eval/math500.py")),
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


@pytest.mark.parametrize("name", NAMES)
def test_each_recipe_has_a_paper_table_that_validates(name):
    # `unmask eval --config RECIPE` runs eval.table: benchmarks in the -b syntax, strategies that parse against its decoding.
    from rl.data import parse_benchmark
    from rollout.sampling import parse_strategy

    table = load_config(RECIPES / f"{name}.yaml").eval.table
    assert table is not None and table.benchmarks and table.strategies, f"{name}: no eval.table"
    base = table.sampling.params(8)
    for spec in table.strategies:
        parse_strategy(spec, base)
    assert all(parse_benchmark(b).name in ("math", "gsm8k", "humaneval", "mbpp") for b in table.benchmarks)
    assert table.sampling.max_new_tokens and (table.samples == 1 or table.sampling.temperature > 0)


# Hand-checked against the authors' evaluation files named in each recipe's eval.table comments.
TABLES = {
    "trado_8b_tracerl": (3, ["threshold:0.9", "static:4"], 1.0, 2000),       # configs/trado_eval.yaml:24-32
    "trado_4b_tracerl_value": (3, ["threshold:0.9", "static:4"], 1.0, 2000),
    "d1_diffu_grpo_gsm8k": (1, ["static:16"], 0.0, 256),                     # eval/eval.py:55,187,195
    "diffucoder_coupled_grpo": (1, ["static:256"], 0.4, 256),                # README.md:222-228
    "dirl_8b": (16, ["threshold:0.9", "static:4"], 1.0, 8192),               # scripts/eval.sh:1-14
}


@pytest.mark.parametrize("name", NAMES)
def test_paper_table_values(name):
    t = load_config(RECIPES / f"{name}.yaml").eval.table
    assert (t.samples, t.strategies, t.sampling.temperature, t.sampling.max_new_tokens) == TABLES[name]


def test_eval_table_refuses_what_cannot_run(tmp_path):
    import yaml

    from rl.config import ConfigError

    base = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    for table, msg in [({"strategies": ["fastest"]}, "unknown strategy 'fastest'"), ({"samples": 4}, "samples 4 with temperature 0"),
                       ({"benchmarks": ["nosuch:file.jsonl"]}, "unknown name 'nosuch'")]:  # fmt: skip
        cfg = {**base, "eval": {**base["eval"], "table": table}}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        with pytest.raises(ConfigError, match=msg):
            load_config(tmp_path / "c.yaml")


def test_unmask_eval_config_hands_the_files_settings_to_the_evaluator_and_flags_win(tmp_path, monkeypatch):
    import yaml
    from typer.testing import CliRunner

    import rl.evaluate as ev
    from rl.cli import app

    seen = []
    monkeypatch.setattr(ev, "run_eval", lambda checkpoints, benches, opts, *a, **k: seen.append((benches, opts)) or {})
    cfg = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    cfg["eval"]["table"] = {"benchmarks": ["arithmetic,digits=2,limit=5,label=add2"], "strategies": ["threshold:0.8", "static:2"], "samples": 3,
                            "sampling": {"temperature": 0.7, "top_k": 5, "block_length": 8, "max_new_tokens": 12}}  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = CliRunner().invoke
    res = run(app, ["eval", "ckpt", "--config", str(path)])
    assert res.exit_code == 0, res.output
    benches, opts = seen[-1]
    assert [b.label for b in benches] == ["add2"] and benches[0].max_new_tokens == 12 and len(benches[0].problems) == 5
    assert opts.strategies == ["threshold:0.8", "static:2"] and opts.samples == 3
    assert (opts.base.temperature, opts.base.top_k, opts.base.block_length) == (0.7, 5, 8)
    # Flags on the command line win, the rest still comes from the file.
    res = run(app, ["eval", "ckpt", "--config", str(path), "--strategy", "static", "--temperature", "0.5", "-k", "2", "--max-new-tokens", "9",
                    "-b", "arithmetic,digits=3,limit=4,label=add3"])  # fmt: skip
    assert res.exit_code == 0, res.output
    benches, opts = seen[-1]
    assert [b.label for b in benches] == ["add3"] and benches[0].max_new_tokens == 9
    assert opts.strategies == ["static"] and opts.samples == 2 and opts.base.temperature == 0.5 and opts.base.top_k == 5
    # Without a table, the in-training benchmarks and decoding are the table.
    del cfg["eval"]["table"]
    cfg["eval"]["benchmarks"] = ["arithmetic,digits=2,limit=3,label=plain"]
    path.write_text(yaml.safe_dump(cfg))
    assert run(app, ["eval", "ckpt", "--config", str(path)]).exit_code == 0
    benches, opts = seen[-1]
    assert [b.label for b in benches] == ["plain"] and opts.strategies == ["static"] and opts.samples == 1 and opts.base.temperature == 0.0
