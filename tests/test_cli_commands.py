"""README claims run the way a user runs them: `unmask ...` as a subprocess, checked by what it writes.

Guards (README lines): Ctrl-C finishes the step, checkpoints and exits 130, twice aborts at once ("Scale and
faults"); `unmask export CKPT OUT --code-from HUB_DIR` ("Model families"); `unmask plot DIR` (curves.png, eval's
accuracy vs NFE); `unmask config-help`; `--trust-remote-code` on eval/generate; `unmask train --address` with
`ray start`; `--compile` on eval/generate; `UNMASK_SANDBOX_WARM=0` ("Warm sandboxes"); every command's --help.

One interrupted training run (module fixture) serves the Ctrl-C, export, generate and plot tests. Its step is held
by a reward plugin (`held_reward` below) until the test has sent the signal, so the step the checkpoint holds is
known without timing anything.
"""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from .conftest import BASE_CKPT, ROOT

UNMASK = str(Path(sys.executable).parent / "unmask")  # the console script a user runs
RAY = str(Path(sys.executable).parent / "ray")
COMMANDS = ["train", "plan", "sft", "eval", "generate", "merge", "convert", "export", "plot", "config-help"]
PROMPTS = ["047+385=", "123+456="]


def held_reward(prompts, completions, **columns):
    """A reward plugin that holds the RL step it scores: it touches $UNMASK_TEST_HELD, then returns 0.0 for
    every sample only once $UNMASK_TEST_RELEASE exists (a 300 s cap keeps a broken test from hanging)."""
    held, release = Path(os.environ["UNMASK_TEST_HELD"]), Path(os.environ["UNMASK_TEST_RELEASE"])
    held.touch()
    deadline = time.monotonic() + 300
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return [0.0] * len(completions)


def unmask(*args, env=None, timeout=600, cwd=ROOT):
    """`unmask ARGS` as a user runs it (stdin closed: nothing may wait for an answer)."""
    env = {**os.environ, "COLUMNS": "200", "WANDB_MODE": "disabled", **(env or {})}
    return subprocess.run([UNMASK, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)  # fmt: skip


def ok(res):
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res


def decoded(res) -> list[str]:
    """The completion and step-map lines `unmask generate` prints (warnings go to stderr)."""
    return [line for line in ok(res).stdout.splitlines() if "nfe=" in line or "step map:" in line]


def assert_png(path: Path, min_size=(300, 200)):
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] >= min_size[0] and im.size[1] >= min_size[1], im.size
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 20, f"{path}: {len(colours)} colours, a blank figure"


def sdar_copy(dst: Path) -> Path:
    """The quickstart's base model as an SDAR/TraDo checkpoint in its hub layout (model_type sdar, auto_map, no
    block_size, Qwen3 tensor names, the family's *.py alongside), so a run trained from it can be exported."""
    cfg = json.loads((BASE_CKPT / "config.json").read_text())
    keep = ("attention_bias", "attention_dropout", "bos_token_id", "eos_token_id", "pad_token_id", "head_dim", "hidden_act", "hidden_size",
            "initializer_range", "intermediate_size", "max_position_embeddings", "num_attention_heads", "num_hidden_layers",
            "num_key_value_heads", "rms_norm_eps", "tie_word_embeddings", "vocab_size", "use_sliding_window")  # fmt: skip
    hub = {"architectures": ["SDARForCausalLM"], "model_type": "sdar",
           "auto_map": {"AutoConfig": "configuration_sdar.SDARConfig", "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM"},
           **{k: cfg[k] for k in keep}, "rope_theta": cfg["rope_parameters"]["rope_theta"], "rope_scaling": None, "torch_dtype": "float32"}  # fmt: skip
    dst.mkdir(parents=True)
    (dst / "config.json").write_text(json.dumps(hub, indent=2))
    for f in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(BASE_CKPT / f, dst / f)
    (dst / "configuration_sdar.py").write_text("# SDAR's own configuration code (never run by unmask)\n")
    (dst / "modeling_sdar.py").write_text("# SDAR's own modeling code (never run by unmask)\n")
    return dst


def train_args(run: Path, model: Path | str, *extra: str) -> list[str]:
    """`unmask train` on the quickstart config, small and long (50 steps, no periodic checkpoint), with a held step."""
    sets = [f"model.path={model}", "train.steps=50", "train.save_every=100", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=4",
            "eval.heldout_limit=4", "eval.every=0", "wandb.mode=disabled", "scoring.timeout_s=600",
            'data.sources.0.rewards=[{name: arithmetic}, {name: "tests.test_cli_commands:held_reward"}]']  # fmt: skip
    return ["train", "configs/quickstart.yaml", "--output-dir", str(run), *[a for s in sets for a in ("--set", s)], *extra]


class HeldRun:
    """`unmask train` in its own process group (as a terminal's foreground job), its first RL step held."""

    def __init__(self, run: Path, model: Path | str, *extra: str):
        self.run, self.log = run, run.parent / f"{run.name}.log"
        self.held, self.release = run.parent / f"{run.name}.held", run.parent / f"{run.name}.release"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled", "UNMASK_TEST_HELD": str(self.held),
               "UNMASK_TEST_RELEASE": str(self.release)}  # fmt: skip
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([UNMASK, *train_args(run, model, *extra)], cwd=ROOT, env=env, start_new_session=True,
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, cond, what: str, limit: float = 600) -> None:
        deadline = time.monotonic() + limit  # a hang guard, not a timing assertion
        while not cond():
            if self.proc.poll() is not None:
                pytest.fail(f"unmask train exited {self.proc.returncode} before {what}:\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"no {what} within {limit} s:\n{self.text()[-3000:]}")
            time.sleep(0.05)

    def ctrl_c(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)  # what a terminal sends its foreground job's process group

    def wait(self, timeout: float = 600) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"unmask train still running {timeout} s after the signal:\n{self.text()[-3000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def hub_base(tmp_path_factory):
    return sdar_copy(tmp_path_factory.mktemp("hub") / "arith3-sdar")


@pytest.fixture(scope="module")
def interrupted(hub_base, tmp_path_factory):
    """A run from the hub-layout base, interrupted by one Ctrl-C while its first RL step is being scored."""
    job = HeldRun(tmp_path_factory.mktemp("ctrl_c") / "run", hub_base)
    try:
        job.wait_for(job.held.exists, "the first RL step's scoring")
        job.ctrl_c()
        job.wait_for(lambda: "finishing this step" in job.text(), "the trainer's answer to Ctrl-C")
        job.release.touch()  # the step may now finish
        job.returncode = job.wait()
        yield job
    finally:
        job.kill()


# --- Ctrl-C --------------------------------------------------------------------------------------------------


def test_ctrl_c_finishes_the_step_checkpoints_it_and_exits_130(interrupted, hub_base):
    """README: "SIGINT/SIGTERM finish the current step, write a checkpoint and exit (130/143)"."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = interrupted.text()
    assert interrupted.returncode == 130, out[-3000:]
    assert "stopped by signal 2 after step 1" in out and "--resume" in out, out[-3000:]
    run = interrupted.run
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_000001"]  # the held step, finished, then saved
    ckpt = run / "checkpoints" / "step_000001"
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 1
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss/policy" in r] == [1]
    saved = load_file(ckpt / "model" / "model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(ckpt / "model")  # README: loads with AutoModelForCausalLM
    state = model.state_dict()
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), name
    base = load_file(hub_base / "model.safetensors")
    assert any(not torch.equal(saved[n], base[n]) for n in base), "the checkpoint does not hold the finished step's update"


@pytest.mark.slow
def test_ctrl_c_twice_aborts_at_once(tmp_path):
    """README: "press Ctrl-C twice to abort at once": the second Ctrl-C ends the run while its step still cannot
    finish (the reward that scores it is held until the end of the test), so nothing is checkpointed."""
    job = HeldRun(tmp_path / "run", BASE_CKPT)
    try:
        job.wait_for(job.held.exists, "the first RL step's scoring")
        job.ctrl_c()
        job.wait_for(lambda: "finishing this step" in job.text(), "the trainer's answer to Ctrl-C")
        job.ctrl_c()
        rc = job.wait(timeout=240)
        out = job.text()
        assert not job.release.exists()  # the held step never could finish
        assert rc == 130, out[-3000:]
        assert "stopped by signal" not in out
        assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())
        assert "loss/policy" not in (tmp_path / "run" / "metrics.jsonl").read_text()
    finally:
        job.release.touch()
        job.kill()


# --- export, generate, plot on the trained run -----------------------------------------------------------------


def test_export_command_writes_the_hub_layout_with_the_trained_weights(interrupted, hub_base, tmp_path):
    """README: `unmask export CHECKPOINT OUT --code-from HUB_DIR` writes a checkpoint trained from a hub-layout one
    back in its original layout (config.json with model_type and auto_map, tensor names, tokenizer, *.py)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    run, out = interrupted.run, tmp_path / "exported"
    res = ok(unmask("export", run, out, "--code-from", hub_base))  # CHECKPOINT as a run directory: its latest checkpoint
    assert "block family" in res.stdout
    assert json.loads((out / "config.json").read_text()) == json.loads((hub_base / "config.json").read_text())
    exported, hub = load_file(out / "model.safetensors"), load_file(hub_base / "model.safetensors")
    trained = load_file(run / "checkpoints" / "step_000001" / "model" / "model.safetensors")
    assert set(exported) == set(hub)
    for name, tensor in exported.items():
        assert torch.equal(tensor, trained[name]), name
    assert any(not torch.equal(exported[n], hub[n]) for n in hub), "the export holds the base's weights, not the trained ones"
    assert sorted(p.name for p in out.glob("*.py")) == ["configuration_sdar.py", "modeling_sdar.py"]
    assert AutoTokenizer.from_pretrained(out)(PROMPTS[0])["input_ids"] == AutoTokenizer.from_pretrained(hub_base)(PROMPTS[0])["input_ids"]

    refused = unmask("export", BASE_CKPT, tmp_path / "nope")  # not trained from a hub-layout checkpoint
    assert refused.returncode == 2 and "not converted from a hub-layout checkpoint" in refused.stderr, refused.stderr[-2000:]

    # The exported copy decodes exactly like the run it came from (loaded again through the hub-layout path).
    # (the run prompts with its own budget unless told otherwise: the same budget for both)
    assert decoded(unmask("generate", out, *PROMPTS, "--max-new-tokens", "8")) == decoded(unmask("generate", run, *PROMPTS, "--max-new-tokens", "8"))


def test_plot_command_redraws_a_runs_curves(interrupted, tmp_path):
    """README: curves.png (`unmask plot RUN_DIR` redraws it); a directory with nothing to draw is refused."""
    run = interrupted.run
    (run / "curves.png").unlink(missing_ok=True)  # an interrupted run has not drawn it yet
    res = ok(unmask("plot", run))
    assert "curves.png" in res.stdout
    assert_png(run / "curves.png")
    empty = unmask("plot", tmp_path)
    assert empty.returncode == 2 and "neither metrics.jsonl nor results.json" in empty.stderr


# --- --trust-remote-code ---------------------------------------------------------------------------------------

TOY_CONFIG = """from transformers import Qwen3Config


class ToyConfig(Qwen3Config):
    model_type = "toyblock"
"""
TOY_MODEL = """import os

from transformers import Qwen3ForCausalLM

from .configuration_toy import ToyConfig


class ToyBlockForCausalLM(Qwen3ForCausalLM):
    config_class = ToyConfig

    def __init__(self, config):
        super().__init__(config)
        with open(os.environ["TOY_MARKER"], "a") as f:  # proof that this file, the checkpoint's own code, ran
            f.write(type(self).__name__ + "\\n")
"""


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The quickstart base as a checkpoint with its own modeling code (a model_type transformers does not know)."""
    path = tmp_path_factory.mktemp("remote") / "toy"
    path.mkdir()
    cfg = json.loads((BASE_CKPT / "config.json").read_text())
    cfg.update(model_type="toyblock", architectures=["ToyBlockForCausalLM"],
               auto_map={"AutoConfig": "configuration_toy.ToyConfig", "AutoModelForCausalLM": "modeling_toy.ToyBlockForCausalLM"})  # fmt: skip
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    for f in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(BASE_CKPT / f, path / f)
    (path / "configuration_toy.py").write_text(TOY_CONFIG)
    (path / "modeling_toy.py").write_text(TOY_MODEL)
    env = {"TOY_MARKER": str(path.parent / "marker"), "HF_MODULES_CACHE": str(path.parent / "modules")}
    return path, env


@pytest.fixture(scope="module")
def remote_eval(toy, tmp_path_factory):
    """`unmask eval BASE TOY --trust-remote-code -b arithmetic`: both checkpoints in one results.json."""
    path, env = toy
    out = tmp_path_factory.mktemp("eval") / "eval"
    Path(env["TOY_MARKER"]).unlink(missing_ok=True)
    res = unmask("eval", BASE_CKPT, path, "--trust-remote-code", "-b", "arithmetic", "--limit", "8", "--strategy", "static",
                 "--strategy", "threshold:0.9", "-o", out, env=env)  # fmt: skip
    return ok(res), out, Path(env["TOY_MARKER"]).read_text().split() if Path(env["TOY_MARKER"]).exists() else []


def test_trust_remote_code_runs_the_checkpoints_own_code_in_generate(toy):
    """README: `--trust-remote-code` on eval and generate runs a checkpoint's own code (the class its auto_map
    names); without it such a checkpoint is refused with the flag named, and its code never runs."""
    path, env = toy
    marker = Path(env["TOY_MARKER"])
    marker.unlink(missing_ok=True)
    refused = unmask("generate", path, *PROMPTS, env=env)
    assert refused.returncode == 2 and "--trust-remote-code" in refused.stderr and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert not marker.exists()
    mine = decoded(unmask("generate", path, *PROMPTS, "--trust-remote-code", env=env))
    assert marker.read_text().split() == ["ToyBlockForCausalLM"]
    assert mine == decoded(unmask("generate", BASE_CKPT, *PROMPTS))  # the same weights: the same tokens and step maps


def test_trust_remote_code_in_eval_scores_like_the_stock_class(remote_eval, toy):
    _, out, marker = remote_eval
    assert marker == ["ToyBlockForCausalLM"]
    results = json.loads((out / "results.json").read_text())["arithmetic"]
    assert len(results) == 2
    mine = results[str(toy[0])]
    base = next(v for k, v in results.items() if k != str(toy[0]))
    for strategy in ("static", "threshold:0.9"):
        assert mine[strategy]["n"] == base[strategy]["n"] == 8
        assert mine[strategy]["pass@1"] == base[strategy]["pass@1"]
        samples = [[json.loads(line)["completion"] for line in (out / e[strategy]["samples_file"]).read_text().splitlines()] for e in (base, mine)]
        assert samples[0] == samples[1]


def test_plot_command_redraws_an_evals_accuracy_vs_nfe(remote_eval):
    """README: `unmask plot DIR` redraws an eval's accuracy vs NFE."""
    _, out, _ = remote_eval
    (out / "accuracy_vs_nfe.png").unlink()
    res = ok(unmask("plot", out))
    assert "accuracy_vs_nfe.png" in res.stdout
    assert_png(out / "accuracy_vs_nfe.png")


# --- config-help and --help ------------------------------------------------------------------------------------


def _leaves(obj, prefix=""):
    """(key, expected default text) for every field of a validated config, read from the instance itself."""
    from pydantic import BaseModel

    for name, field in type(obj).model_fields.items():
        value = getattr(obj, name)
        if isinstance(value, BaseModel):
            yield from _leaves(value, f"{prefix}{name}.")
        elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
            yield from _leaves(value[0], f"{prefix}{name}[].")
        else:
            yield f"{prefix}{name}", "required" if field.is_required() else repr(value)


@pytest.mark.parametrize("kind", ["train", "sft"])
def test_config_help_prints_every_key_with_its_real_default(kind):
    """README: `unmask config-help [train|sft]`: every config key, its default and meaning."""
    from rl.config import RunConfig, SFTConfig

    text = ok(unmask("config-help", kind)).stdout
    assert "PydanticUndefined" not in text
    # train ends with the estimator menu (each estimator, its paper, options and preset): keys come before it
    text, _, estimators = text.partition("\n\nalgorithm.estimator: the registered estimators")
    assert ("trace: TraceRL" in estimators) == (kind == "train")
    shown = dict(line.split(" = ", 1) for line in text.splitlines() if line and not line.startswith(" "))
    minimal = {"data": {"sources": [{"path": "arithmetic"}]}}
    cfg = RunConfig.model_validate({"model": {"path": "m"}, **minimal}) if kind == "train" else SFTConfig.model_validate(minimal)
    expected = dict(_leaves(cfg))
    assert {k.split(".")[0].split("[")[0] for k in expected} == set(type(cfg).model_fields)
    for key, default in expected.items():
        assert key in shown, f"{key} missing from `unmask config-help {kind}`"
        assert shown[key] == default, f"{key}: help says {shown[key]}, the config's default is {default}"
    lines = text.splitlines()
    for i, line in enumerate(lines[:-1]):  # each key is followed by its meaning
        if line and not line.startswith(" "):
            assert lines[i + 1].startswith("    ") and lines[i + 1].strip(), f"{line}: no description"
    bad = unmask("config-help", "trian")
    assert bad.returncode == 2 and "train" in bad.stderr


def test_every_command_named_in_the_readme_exists_and_its_help_names_real_files():
    readme = (ROOT / "README.md").read_text()
    table = set(re.findall(r"^\| `unmask ([a-z-]+)", readme, flags=re.MULTILINE))
    assert table == set(COMMANDS)
    top = ok(unmask("--help")).stdout
    for cmd in COMMANDS:
        assert cmd in top
        text = ok(unmask(cmd, "--help")).stdout
        for ref in re.findall(r"(?:configs|examples)/[\w./-]*\w", text):
            assert (ROOT / ref).exists(), f"`unmask {cmd} --help` names {ref}, which does not exist"


def test_help_examples_work_and_errors_name_the_override():
    """Issue 33: the --set examples of train and sft --help are valid for that command's config; a bad --set is
    blamed, not the YAML file; eval's gym install line is the README's."""
    from rl.config import RunConfig, SFTConfig, load_config

    for cmd, config, schema in (("train", "configs/quickstart.yaml", RunConfig), ("sft", "configs/sft_quickstart.yaml", SFTConfig)):
        text = ok(unmask(cmd, "--help")).stdout
        examples = re.findall(r"--set ([\w.]+=[\w.+-]+)", text)
        assert examples, text
        for example in examples:
            load_config(ROOT / config, [example], schema)  # raises if the example is not a key of this command
    res = unmask("sft", "configs/sft_quickstart.yaml", "--set", "algorithm.lr=5e-5")
    assert res.returncode == 2 and "--set algorithm.lr=5e-5: algorithm: unknown key" in res.stderr, res.stderr
    assert "configs/sft_quickstart.yaml: algorithm" not in res.stderr
    install = 'pip install ".[gym]"'
    assert install in ok(unmask("eval", "--help")).stdout and install in (ROOT / "README.md").read_text()
    assert re.search(r'^gym = \[', (ROOT / "pyproject.toml").read_text(), flags=re.MULTILINE)


# --- UNMASK_SANDBOX_WARM=0 -------------------------------------------------------------------------------------

RIGHT = "```python\ndef list_product(xs):\n    p = 1\n    for x in xs:\n        p *= x\n    return p\n```"
WRONG = "```python\ndef reverse_words(s):\n    return s\n```"
CHILDREN = """import glob, json, os
from rewards import code_reward

good, bad = "```python\\ndef f(x):\\n    return 2 * x\\n```", "```python\\ndef f(x):\\n    return x\\n```"
out = []
for _ in range(2):
    scores = code_reward(["q"] * 2, [good, bad], tests=[["assert f(2) == 4"]] * 2, num_workers=1)
    kids = sorted(int(c) for p in glob.glob(f"/proc/{os.getpid()}/task/*/children") for c in open(p).read().split())
    out.append({"scores": scores, "children": kids})
print(json.dumps(out))
"""


def test_sandbox_warm_0_scores_code_with_a_sandbox_per_sample(tmp_path):
    """README: `UNMASK_SANDBOX_WARM=0` starts a sandbox per sample instead of keeping one running between samples."""
    comp = tmp_path / "completions.jsonl"
    comp.write_text("\n".join(json.dumps(r) for r in [{"task_id": 901, "completion": RIGHT}, {"task_id": 902, "completion": WRONG}]))
    res = ok(unmask("eval", "-b", "mbpp:tests/fixtures/eval/mbpp.jsonl", "--limit", "2", "--completions", comp, "-o", tmp_path / "ev",
                    env={"UNMASK_SANDBOX_WARM": "0"}))  # fmt: skip
    entry = next(iter(json.loads((tmp_path / "ev" / "results.json").read_text())["mbpp"].values()))["completions"]
    rewards = {json.loads(line)["id"]: json.loads(line)["reward"] for line in (tmp_path / "ev" / entry["samples_file"]).read_text().splitlines()}
    assert rewards == {"901": 1.0, "902": 0.0} and entry["pass@1"] == 0.5, res.stdout[-2000:]

    # The cold path is observable: a warm scorer keeps its sandbox as a child process between calls (the same one
    # serves the next call); with UNMASK_SANDBOX_WARM=0 nothing outlives a call.
    script = tmp_path / "score.py"
    script.write_text(CHILDREN)
    runs = {}
    for warm in ("0", "1"):
        p = subprocess.run([sys.executable, str(script)], cwd=ROOT, env={**os.environ, "UNMASK_SANDBOX_WARM": warm, "PYTHONPATH": str(ROOT)},
                           capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
        assert p.returncode == 0, p.stderr[-2000:]
        runs[warm] = json.loads(p.stdout.splitlines()[-1])
    assert [r["scores"] for r in runs["0"]] == [r["scores"] for r in runs["1"]] == [[1.0, 0.0]] * 2
    assert [r["children"] for r in runs["0"]] == [[], []]
    assert runs["1"][0]["children"] and runs["1"][0]["children"] == runs["1"][1]["children"]


# --- slow: a `ray start` cluster, --compile --------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_train_joins_a_cluster_started_with_ray_start(tmp_path):
    """README: `ray start --head --port=... --num-cpus=2 && unmask train CONFIG --address HOST:PORT`. The head runs
    with --block in its own process group, so the test stops exactly the processes it started (never `ray stop`,
    which would stop every Ray instance on the machine)."""
    port, temp = _free_port(), tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}  # Ray's own default: `ray start` turns token auth on
    log = Path(temp) / "head.log"
    with open(log, "w") as f:
        head = subprocess.Popen([RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                                 "--object-store-memory=100000000", f"--temp-dir={temp}", "--block"],
                                env=env, start_new_session=True, stdout=f, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 300  # a hang guard
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        run = tmp_path / "run"
        res = unmask("train", "configs/quickstart.yaml", "--output-dir", run, "--address", f"127.0.0.1:{port}", "--set", "train.steps=2",
                     "--set", "rollout.prompts_per_step=2", "--set", "rollout.samples_per_prompt=4", "--set", "eval.heldout_limit=4",
                     "--set", "eval.every=0", env=env)  # fmt: skip
        ok(res)
        assert json.loads((run / "summary.json").read_text())["steps"] == 2
        assert max(p.name for p in (run / "checkpoints").iterdir()) == "step_000002"
        actors = [p for p in glob.glob(f"{temp}/session_*/logs/worker-*") if "LearnerActor" in Path(p).read_text(errors="replace")]
        assert actors, "the run's learner did not run on the cluster started with `ray start`"
    finally:
        if head.poll() is None:
            head.terminate()  # --block: SIGTERM stops the head's processes
            try:
                head.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # whatever of its group is left
        except ProcessLookupError:
            pass
        head.wait()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_compile_flag_decodes_the_same_tokens(tmp_path):
    """README: `unmask generate --compile` (and `unmask eval --compile`, the same `rollout.compile` path):
    the backbone compiled with torch.compile, identical tokens. One compile only (a minute of CPU);
    tests/test_compile.py covers weight syncs into a compiled worker."""
    cache = tmp_path / "inductor"
    env = {"TORCHINDUCTOR_CACHE_DIR": str(cache)}
    eager = decoded(unmask("generate", BASE_CKPT, *PROMPTS, env=env))
    assert not cache.exists() or not any(cache.rglob("*.py")), "eager decoding compiled something"
    assert decoded(unmask("generate", BASE_CKPT, *PROMPTS, "--compile", env=env)) == eager
    assert any(cache.rglob("*.py")), "--compile compiled nothing"
