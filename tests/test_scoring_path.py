"""One scoring path: a completion of a source gets the same score as a training reward, as
held-out/benchmark accuracy during training, and in `unmask eval`."""

import json
import subprocess
import sys
from types import SimpleNamespace

from rewards import get_reward
from rl.config import SourceConfig
from rl.data import load_benchmark, load_source
from rl.evaluate import score_benchmark
from rl.batch import StepBatch
from rl.trainer import Trainer
from rollout.trajectory import Trajectory

from .conftest import ROOT

FIX = ROOT / "tests" / "fixtures" / "eval" / "humaneval.jsonl"
# A correct body followed by what a base model goes on to write: a new top-level function
# with a syntax error. HumanEval's raw template stops at "\ndef " (the human-eval harness's
# stop strings), so the scored text is the correct body alone.
CORRECT_THEN_JUNK = "    return a + b\n\ndef junk(:\n    pass\n"


def _trainer(src) -> Trainer:
    trainer = Trainer.__new__(Trainer)  # score needs only these
    trainer.sources = [src]
    trainer.reward_fns = {src.name: [get_reward(s.name, **s.kwargs) for s in src.rewards]}
    trainer.reward_weights = {src.name: [s.weight for s in src.rewards]}
    trainer.cfg = SimpleNamespace(scoring=SimpleNamespace(fail_fast=False, timeout_s=60.0, num_workers=None))
    return trainer


def test_humaneval_raw_template_scores_the_same_in_training_and_in_unmask_eval(tmp_path):
    src = load_source(SourceConfig(path=str(FIX), preset="humaneval", template="raw", name="he"))
    examples = src.train + src.heldout
    ex = next(e for e in examples if e.columns["entry_point"] == "add")
    assert src.template.cut(CORRECT_THEN_JUNK) == "    return a + b\n"
    batch = StepBatch([Trajectory([1], [2], [0], [0.0], None, 1.0, 1, "eos", text=CORRECT_THEN_JUNK, group=0)], [ex])
    _trainer(src).score(batch)
    train_scores = batch.rewards.tolist()

    bench = load_benchmark("humaneval", FIX, template="raw")
    problem = next(p for p in bench.problems if p["entry_point"] == "add")
    eval_scores, _ = score_benchmark(bench, [problem], [CORRECT_THEN_JUNK], timeout_s=60.0)

    completions = tmp_path / "completions.jsonl"
    completions.write_text("".join(json.dumps({"task_id": p["id"], "completion": CORRECT_THEN_JUNK}) + "\n" for p in bench.problems))
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "-m", "rl.cli", "eval", "--benchmark", f"humaneval:{FIX},template=raw", "--completions", str(completions), "--output", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in next(p for p in out.rglob("*.jsonl") if p.is_file()).read_text().splitlines()]
    cli_score = next(r["reward"] for r in records if r["id"] == problem["id"])

    assert train_scores == [1.0] and eval_scores == [1.0] and cli_score == 1.0
    # and the uncut text really fails: the cut is what makes the three agree on 1.0
    uncut = get_reward("code")([ex.prompt], [CORRECT_THEN_JUNK], **{k: [v] for k, v in ex.columns.items()})
    assert uncut == [0.0]
