"""Issue 33: a first run on one's own data works as the README says, and says what it is doing.

Each test runs `unmask ...` as a user does (a subprocess, stdout to a file as a pipe or `| tee` would take it, no
PYTHONUNBUFFERED) on GSM8K-format rows unlike the demos' (`own_rows`). Progress is checked without timing anything:
the data generator (`held_rows`) and the first step's reward (`held_reward`) hold the run until the test has seen
the line that says what it is doing, so a line that only appears at exit (or never) fails the test.
"""

import hashlib
import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import ROOT
from .test_cli_commands import UNMASK, decoded, ok, unmask

DEMO_BASE = ROOT / "examples" / "checkpoints" / "demo-base"
SYSTEM = "You are a careful math tutor."

# Word problems in GSM8K format ({question, answer: "rationale\n#### N"}), phrased unlike the demos' rows.
STORIES = [
    ("A baker made {a} rolls and then {b} more. How many rolls in all?", "+"),
    ("Lena read {a} pages, then {b} pages. How many pages altogether?", "+"),
    ("A farm has {a} sheep and buys {b} more. How many sheep now?", "+"),
    ("A jar had {a} sweets and Omar ate {b}. How many are left?", "-"),
    ("A shop had {a} pies and sold {b}. How many pies are left?", "-"),
]


def own_rows(n: int, split: str, seed: int = 0) -> list[dict]:
    """`n` distinct rows of `split` ("train" or "test"); a problem is in "test" when a hash of its arithmetic says so."""
    rng, rows, seen = random.Random(f"own-{split}-{seed}"), [], set()
    while len(rows) < n:
        text, op = rng.choice(STORIES)
        a, b = rng.randint(10, 49), rng.randint(1, 9)
        held = hashlib.sha256(f"{op}{a},{b}".encode()).digest()[0] < 26
        if held != (split == "test") or (text, a, b) in seen:
            continue
        seen.add((text, a, b))
        c = a + b if op == "+" else a - b
        rows.append({"question": text.format(a=a, b=b), "answer": f"{a} {op} {b} = {c}\n#### {c}"})
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def held_rows(path):
    """A source `generator:` that holds the data loading: it touches $UNMASK_TEST_DATA_HELD, waits for
    $UNMASK_TEST_DATA_RELEASE (a 120 s cap keeps a broken test from hanging), then writes the rows of $UNMASK_TEST_ROWS."""
    held, release = Path(os.environ["UNMASK_TEST_DATA_HELD"]), Path(os.environ["UNMASK_TEST_DATA_RELEASE"])
    held.touch()
    deadline = time.monotonic() + 120
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    shutil.copy(os.environ["UNMASK_TEST_ROWS"], path)


class Job:
    """`unmask ARGS` with stdout and stderr in one log file, held at the points the test releases."""

    def __init__(self, tmp: Path, name: str, *args):
        self.log = tmp / f"{name}.log"
        self.files = {k: tmp / f"{name}.{k}" for k in ("data_held", "data_release", "held", "release")}
        env = {**os.environ, "COLUMNS": "200", "WANDB_MODE": "disabled", "UNMASK_TEST_ROWS": str(tmp / "data" / "gsm8k_train.jsonl"),
               "UNMASK_TEST_DATA_HELD": str(self.files["data_held"]), "UNMASK_TEST_DATA_RELEASE": str(self.files["data_release"]),
               "UNMASK_TEST_HELD": str(self.files["held"]), "UNMASK_TEST_RELEASE": str(self.files["release"])}  # fmt: skip
        env.pop("PYTHONUNBUFFERED", None)  # the command itself must make its lines visible
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([UNMASK, *map(str, args)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, cond, what: str, limit: float = 300) -> str:
        """The log once `cond(log)` holds; fails if the command ends first or `limit` s pass (a hang guard)."""
        deadline = time.monotonic() + limit
        while not cond(self.text()):
            if self.proc.poll() is not None:
                pytest.fail(f"exited {self.proc.returncode} before {what}:\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"no {what} within {limit} s:\n{self.text()[-3000:]}")
            time.sleep(0.05)
        return self.text()

    def release(self, what: str) -> None:
        self.files[what].touch()

    def finish(self, timeout: float = 600) -> str:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            self.kill()
        assert self.proc.returncode == 0, f"exit {self.proc.returncode}\n{self.text()[-3000:]}"
        return self.text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("own")
    write_rows(root / "data" / "gsm8k_train.jsonl", own_rows(300, "train"))
    write_rows(root / "data" / "gsm8k_test.jsonl", own_rows(40, "test"))
    return root


@pytest.fixture(scope="module")
def base_run(data) -> Path:
    """A run directory whose checkpoint step_000003 holds the demo base (the layout `unmask train` writes)."""
    step = data / "base-run" / "checkpoints" / "step_000003"
    shutil.copytree(DEMO_BASE, step / "model")
    (step / "trainer_state.json").write_text(json.dumps({"step": 3}))
    return data / "base-run"


@pytest.fixture(scope="module")
def own_run(data, base_run):
    """`unmask train configs/math.yaml` on own rows from `model.path: RUN/checkpoints/step_N`, with a system prompt and a
    2-token budget (no answer fits: held-out accuracy is 0 before RL, whatever the model). What it printed while its
    data loading and its first step's scoring were held is kept."""
    run = data / "run"
    sets = [f"model.path={base_run / 'checkpoints' / 'step_000003'}", f"data.sources.0.path={data / 'data' / 'late_train.jsonl'}",
            "data.sources.0.generator=tests.test_own_data:held_rows", f"data.sources.0.heldout.path={data / 'data' / 'gsm8k_test.jsonl'}",
            f"data.sources.0.system_prompt={SYSTEM}", "data.sources.0.max_new_tokens=2", "train.steps=1", "train.save_every=1",
            "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2", "eval.heldout_limit=4", "eval.every=0", "wandb.mode=disabled",
            "scoring.timeout_s=600", 'data.sources.0.rewards=[{name: math}, {name: "tests.test_cli_commands:held_reward"}]']  # fmt: skip
    job = Job(data, "train", "train", "configs/math.yaml", "--output-dir", run, *[a for s in sets for a in ("--set", s)])
    try:
        seen = {}
        seen["data"] = job.wait_for(lambda t: job.files["data_held"].exists() and "reading and checking" in t, "line before the data is read")
        job.release("data_release")
        seen["step"] = job.wait_for(lambda t: job.files["held"].exists() and "rolling out" in t, "line before the first rollout")
        job.release("release")
        seen["end"] = job.finish()
        yield run, seen
    finally:
        job.kill()


def test_train_accepts_a_step_n_checkpoint_as_model_path(own_run, base_run):
    """README: CHECKPOINT (here `model.path`) may be a model directory, a `checkpoints/step_N` directory or a run directory."""
    run, _ = own_run
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["path"] == str(base_run / "checkpoints" / "step_000003" / "model")
    assert (run / "checkpoints" / "step_000001" / "trainer_state.json").exists()
    res = unmask("train", "configs/math.yaml", "--output-dir", run.parent / "nothing", "--set", f"model.path={run.parent / 'data'}")
    assert res.returncode == 2 and "is not a model directory, a checkpoint, or a run directory" in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr


def test_train_says_what_it_is_doing_before_each_slow_stage(own_run):
    """Issue 33: each data error came after 15-20 s of silence, and the first RL step sat at 0/40 with no sign of
    what was running. The data line is visible while the data is still being read, the rollout line while the first
    step is still running."""
    _, seen = own_run
    assert "data math: reading and checking" in seen["data"] and "train rows" not in seen["data"]
    step = seen["step"]
    assert "data: encoding" in step and "starting Ray" in step and "held-out accuracy before RL: decoding 4 problems" in step
    assert "step 1: rolling out 2 prompts x 2 samples (up to 2 new tokens each)" in step


def test_train_warns_when_the_base_has_no_reward_signal(own_run):
    """Issue 33: held-out accuracy 0 before RL means RL has nothing to learn from; the trainer says so, and what to do."""
    _, seen = own_run
    assert "held-out accuracy before RL: 0.000" in seen["step"]
    assert "no reward signal" in seen["step"] and "run `unmask sft` on these rows first" in seen["step"]


def test_generate_prompts_as_the_run_did(own_run, tmp_path):
    """Issue 33: `unmask generate RUN` (or one of its checkpoints) uses the run's template, system prompt and budget,
    unless told otherwise: the same tokens as the bare model given them as options."""
    run, _ = own_run
    question = own_rows(1, "test", seed=1)[0]["question"]
    bare = tmp_path / "bare"
    shutil.copytree(run / "checkpoints" / "step_000001" / "model", bare)
    told = decoded(unmask("generate", bare, question, "--template", "{question}", "--system-prompt", SYSTEM, "--max-new-tokens", "2"))
    for where in (run, run / "checkpoints" / "step_000001", run / "checkpoints" / "step_000001" / "model"):
        res = unmask("generate", where, question)
        assert decoded(res) == told, where
        assert f"prompting as {run / 'config.yaml'} (source 'math')" in res.stderr and repr(SYSTEM) in res.stderr
    steps = decoded(unmask("generate", bare, question, "--template", "{question}", "--system-prompt", SYSTEM))[1].split()
    assert len(steps) > 4  # the bare model's default budget (8) is not the run's (2)
    longer = unmask("generate", run, question, "--max-new-tokens", "8", "--system-prompt", "")
    assert "overridden: --system-prompt, --max-new-tokens" in longer.stderr
    assert decoded(longer) == decoded(unmask("generate", bare, question, "--template", "{question}"))


def test_sft_and_eval_accept_a_step_n_checkpoint_and_say_what_they_do(data, base_run):
    """`init:` (SFT) and `unmask eval CKPT` take RUN/checkpoints/step_N; SFT says what it is doing before its bar starts."""
    ckpt = base_run / "checkpoints" / "step_000003"
    late = data / "data" / "sft_late.jsonl"
    config = data / "sft.yaml"
    config.write_text(json.dumps({
        "init": str(ckpt), "steps": 2, "batch_size": 4, "eval_every": 100, "eval_size": 2, "output_dir": str(data / "sft"),
        "data": {"sources": [{"name": "gsm8k", "path": str(late), "preset": "gsm8k", "template": "{question}", "max_new_tokens": 4,
                              "generator": "tests.test_own_data:held_rows", "heldout": {"path": str(data / "data" / "gsm8k_test.jsonl")}}]},
    }))  # fmt: skip
    job = Job(data, "sft", "sft", config)
    try:
        first = job.wait_for(lambda t: job.files["data_held"].exists() and "SFT data gsm8k: reading and checking" in t, "line before the data is read")
        assert "SFT:" not in first.replace("SFT data", "")
        job.release("data_release")
        text = job.finish()
    finally:
        job.kill()
    assert f"SFT: loading {ckpt} ..." in text and "SFT: 2 steps of 4 examples; held-out greedy accuracy every 100 steps on 2 problems" in text
    assert (data / "sft" / "model.safetensors").exists()
    res = ok(unmask("eval", ckpt, "-b", f"gsm8k:{data / 'data' / 'gsm8k_test.jsonl'}", "--limit", "2", "--max-new-tokens", "2"))
    assert f"loading benchmark gsm8k from {data / 'data' / 'gsm8k_test.jsonl'} ..." in res.stderr
    assert f"loading {ckpt} ({ckpt / 'model'}) ..." in res.stdout
