"""`unmask plan` (rl/plan.py): memory and FLOPs from a config alone, checked against the real thing."""

import subprocess
import sys

import pytest
import torch

from benchmarks.plan_check import ActivationBytes
from rl.batch import learner_batch
from rl.config import load_config
from rl.learner import Learner
from rl.plan import HEADROOM, activation_bytes, model_shape, packed_length, parameter_count, plan, update_peak
from rollout import Trajectory

from .conftest import BASE_CKPT, ROOT


def test_parameter_count_and_shape_come_from_the_config_alone():
    shape = model_shape(str(BASE_CKPT))
    real = sum(p.numel() for p in Learner(load_config(ROOT / "configs" / "quickstart.yaml", ["wandb.mode=disabled"])).lm.model.parameters())
    assert parameter_count(shape) == real
    assert shape.family == "block" and shape.block_size == 4
    # A hub id with a published shape needs no download: SDAR-8B is Qwen3-8B's 8.19B.
    assert abs(parameter_count(model_shape("JetLM/SDAR-8B-Chat")) - 8.19e9) < 0.01e9
    with pytest.raises(ValueError, match="no config.json there and not a known hub id"):
        model_shape("someone/unknown-model")


def _trajs(prompt_len, gen, n, vocab, block):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        steps, step, c = [], 0, 0
        while c < gen:
            end = min(((prompt_len + c) // block + 1) * block - prompt_len, gen)
            steps += [step + o for o in torch.randperm(end - c, generator=g).tolist()]
            step, c = step + end - c, end
        ids = torch.randint(4, vocab, (prompt_len + gen,), generator=g).tolist()
        out.append(Trajectory(ids[:prompt_len], ids[prompt_len:], steps, [0.0] * gen, block, 1.0, step, "length", group=0))
    return out


@pytest.mark.parametrize("estimator, gen", [("one_step", 96), ("trace", 24)])
def test_predicted_activations_match_a_real_update(estimator, gen):
    # The learner's real update on the quickstart model, bytes saved for backward counted by autograd's
    # hooks (parameters excluded): the plan's meta-device count of the same shape is within 15%.
    cfg = load_config(ROOT / "configs" / "quickstart.yaml",
                      ["wandb.mode=disabled", "algorithm.beta=0", "algorithm.minibatches=1", "algorithm.epochs=1", f"algorithm.estimator={estimator}"])  # fmt: skip
    learner = Learner(cfg)
    prompt, rows = 12, 4  # one_step's long rows: attention's L x L terms would show
    trajs = _trajs(prompt, gen, rows, learner.lm.num_tokens, learner.lm.block_size)
    batch = learner_batch(cfg.algorithm, trajs, [1.0, -1.0, 1.0, -1.0], rewards=[1.0, 0.0, 1.0, 0.0])
    meter = ActivationBytes(learner.lm.model.parameters())
    from benchmarks.memory import counting_backward

    with counting_backward(meter), torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda t: t):
        learner.update(batch)
    shape = model_shape(str(BASE_CKPT))
    predicted, _ = update_peak(shape, parameter_count(shape), rows, prompt, gen)
    assert 0.85 < predicted / meter.peak < 1.15, (predicted, meter.peak)


def test_activations_scale_with_rows_and_length_and_shrink_with_checkpointing():
    shape = model_shape(str(BASE_CKPT))
    one = activation_bytes(shape, 1, 64, bf16=False, checkpointing=False)
    assert activation_bytes(shape, 3, 64, bf16=False, checkpointing=False) == 3 * one
    assert activation_bytes(shape, 1, 128, bf16=False, checkpointing=False) > 1.9 * one
    assert activation_bytes(shape, 1, 64, bf16=False, checkpointing=True) < one / 3
    assert activation_bytes(shape, 1, 64, bf16=True, checkpointing=False) < 0.7 * one
    assert packed_length("block", 10, 20) == 50 and packed_length("llada", 10, 20) == 30


def test_plan_adds_up_and_answers_what_fits():
    cfg = load_config(ROOT / "configs" / "quickstart.yaml")
    n = parameter_count(model_shape(str(BASE_CKPT)))
    r = plan(cfg, gpus=1, gpu_memory_gb=80)
    assert r.learner["weights (fp32)"] == 4 * n and r.learner["gradients (fp32)"] == 4 * n and r.learner["AdamW state (fp32)"] == 8 * n
    assert r.fits and r.learner_peak < r.gpu_memory
    # The largest micro-batch is the one whose peak still fits the usable memory (activations are linear in rows).
    small = plan(cfg, gpus=1, gpu_memory_gb=0.05)
    budget = small.gpu_memory * (1 - HEADROOM)
    acts = small.learner["activations of the largest pass"]
    per_row, fixed = acts / small.micro_batch_rows, small.learner_peak - acts
    k = small.max_micro_batch_rows
    assert k >= 1 and fixed + k * per_row <= budget < fixed + (k + 1) * per_row
    assert small.fits == (small.learner_peak <= budget and small.rollout_peak <= budget)
    # FSDP2 shards the fp32 state over the ranks; LoRA trains only the adapter.
    sharded = plan(load_config(ROOT / "configs" / "quickstart.yaml", ["learner.parallel=fsdp2"]), gpus=4)
    assert sharded.learner["AdamW state (fp32)"] == 8 * n // 4
    lora = plan(load_config(ROOT / "configs" / "quickstart.yaml", ["model.lora.enabled=true"]), gpus=1)
    assert lora.learner["AdamW state (fp32)"] < r.learner["AdamW state (fp32)"] / 4
    # The reference model only with beta > 0 and no LoRA; the value model when enabled.
    assert "reference model (fp32)" in r.learner
    assert "reference model (fp32)" not in plan(load_config(ROOT / "configs" / "quickstart.yaml", ["algorithm.beta=0"])).learner
    assert "value model: weights, gradients, AdamW" in plan(load_config(ROOT / "configs" / "tracerl_value.yaml")).learner


def test_plan_command_on_a_recipe_at_its_hardware():
    out = subprocess.run([sys.executable, "-m", "rl.cli", "plan", str(ROOT / "configs" / "recipes" / "trado_8b_tracerl.yaml"),
                          "--gpus", "8", "--gpu-memory", "80"], capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "8.19B parameters" in text and "largest micro-batch that fits" in text and "largest rollout batch that fits" in text
    assert "FLOPs per RL step" in text and "Warning" not in out.stderr
    bad = subprocess.run([sys.executable, "-m", "rl.cli", "plan", str(ROOT / "configs" / "quickstart.yaml"), "--set", "model.path=nobody/nothing"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert bad.returncode == 2 and "not a known hub id" in bad.stderr


@pytest.mark.parametrize("family, rows, prompt, gen, kv_cache, block_length", [
    ("block", 16, 64, 32, True, None),  # the prompt's prefill is most of the decode's own memory
    pytest.param("llada", 8, 32, 64, True, 16, marks=pytest.mark.slow),  # the whole-canvas forward beside the prefix cache
    pytest.param("llada", 8, 32, 64, False, None, marks=pytest.mark.slow),
])
def test_predicted_rollout_peak_matches_the_allocator(family, rows, prompt, gen, kv_cache, block_length):
    # unmask's sampler decodes the prompts to the full budget; the CPU allocator's peak (torch.profiler memory
    # events) plus the weights is within 15% of rollout_memory's weights + KV cache + largest working set.
    from benchmarks.plan_check import rollout_rows

    (row,) = rollout_rows([(family, 1024, 128, 2, rows, prompt, gen, kv_cache, block_length)])
    assert 0.85 < row["ratio"] < 1.15, row
    assert ("KV cache" in row["parts_mib"]) and (row["parts_mib"]["KV cache"] > 0) == (kv_cache or family == "block")


@pytest.mark.slow  # a minute on 2 busy cores: a 157k vocabulary's embedding and LM head
def test_a_mixture_of_experts_is_planned_and_matches_a_real_update(tmp_path):
    # LLaDA2's hub layout (Glm4Moe: 8 experts, top 2, one shared, first layer dense). Its weights are counted with
    # every expert resident, exactly; its expert loop runs on meta tensors with the routing replaced by its size
    # (rl.plan._expert_loop), and the saved activations agree with a real learner update within 15%.
    from .test_moe_family import llada2_checkpoint

    llada2_checkpoint(tmp_path / "ck")
    cfg = load_config(ROOT / "configs" / "quickstart.yaml",
                      ["wandb.mode=disabled", "algorithm.beta=0", "algorithm.minibatches=1", f"model.path={tmp_path / 'ck'}",
                       "model.block_size=null"])  # fmt: skip
    learner = Learner(cfg)
    shape = model_shape(str(tmp_path / "ck"))
    assert parameter_count(shape) == sum(p.numel() for p in learner.lm.model.parameters())
    prompt, gen, rows = 12, 64, 2
    trajs = _trajs(prompt, gen, rows, learner.lm.num_tokens, learner.lm.block_size)
    batch = learner_batch(cfg.algorithm, trajs, [1.0, -1.0], rewards=[1.0, 0.0])
    meter = ActivationBytes(learner.lm.model.parameters())
    from benchmarks.memory import counting_backward

    with counting_backward(meter), torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda t: t):
        learner.update(batch)
    predicted, _ = update_peak(shape, parameter_count(shape), rows, prompt, gen)
    assert 0.85 < predicted / meter.peak < 1.15, (predicted, meter.peak)
    # The routed experts' share is what a dense stand-in would miss: tokens x top_k rows through gate/up/down.
    r = plan(cfg, gpus=1)
    assert r.parameters == parameter_count(shape) and r.learner_peak > 0 and r.rollout_peak > 0


@pytest.mark.parametrize("family, block_length, steps_per_block, prompt_len, gen", [
    ("block", None, None, 6, 13),  # a first block the prompt shares, one token per step
    ("block", None, 2, 8, 12),
    ("llada", None, None, 5, 9),   # full attention, one block
    ("llada", 4, 2, 5, 12),        # LLaDA's semi-autoregressive blocks
    ("llada", 8, 3, 5, 16),
])  # fmt: skip
def test_planned_passes_are_the_units_own_count_on_a_real_decode(tokenizer, family, block_length, steps_per_block, prompt_len, gen):
    """`unmask plan` counts each estimate's forward passes with the unit's own count on a stand-in trajectory of the
    planned decode: its steps per decode block, and so every registered unit's pass count (trace with shrink 1 and 2,
    cj_grpo, just_grpo, spg, espo, ...), equal those of a real static decode of the same lengths."""
    from algorithms.estimators import ESTIMATORS
    from rl.plan import Shape, _passes, planned_trajectory
    from rollout import SamplingParams, generate
    from rollout.models import build_tiny_lm

    lm = build_tiny_lm(tokenizer, family=family, block_size=4, hidden_size=32, num_layers=1, intermediate_size=64)
    params = SamplingParams(max_new_tokens=gen, temperature=1.0, steps_per_block=steps_per_block, block_length=block_length, stop_at_eos=False)
    prompts = [[tokenizer.bos_token_id or 1] * prompt_len] * 2
    real = generate(lm, prompts, params, torch.Generator().manual_seed(0))
    cfg = load_config(ROOT / "configs" / "quickstart.yaml",
                      ["wandb.mode=disabled", f"data.max_prompt_tokens={prompt_len}", f"rollout.sampling.block_length={block_length or 'null'}",
                       f"rollout.sampling.steps_per_block={steps_per_block or 'null'}"])  # fmt: skip
    shape = Shape(lm.model.config, family, lm.block_size, "test")
    planned = planned_trajectory(cfg, shape, prompt_len, gen)
    assert len(planned.step_map) == len(real[0].step_map) and planned.nfe == real[0].nfe
    decode_block = lm.block_size or block_length or gen
    for traj in real:  # the same distinct steps in every decode block (which token took which step differs)
        blocks = lambda t: [sorted({s for c, s in enumerate(t.step_map) if (c + (prompt_len if lm.block_size else 0)) // decode_block == b})
                            for b in range((prompt_len + gen) // decode_block + 1)]  # fmt: skip
        assert blocks(planned) == blocks(traj)
    counted = 0
    for name, unit in ESTIMATORS.items():
        if unit.offline_pairs or ("block_causal" if lm.block_size else "full") not in unit.attention:
            continue
        for shrink in ((1, 2) if name == "trace" else (None,)):
            opts = {} if shrink is None else {"shrink": shrink}
            with_cfg = cfg.model_copy(update={"algorithm": cfg.algorithm.model_copy(update={"estimator": name, **opts})})
            assert _passes(unit, with_cfg, gen, shape) == max(1, unit.passes(real, **with_cfg.algorithm.estimator_options())), name
            counted += 1
    assert counted >= 5
