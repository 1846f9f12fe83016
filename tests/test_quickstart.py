"""The README's quickstart, in full: the accuracy bar of the walking skeleton (slow)."""

import json
import subprocess
import sys

import pytest

from .conftest import ROOT


@pytest.mark.slow
def test_quickstart_raises_heldout_accuracy(tmp_path):
    res = subprocess.run(
        # eval.every=0: the bar reads the accuracy before and after only; the 5 evaluations in between change nothing
        # else (prompts and sampling seeds depend only on (train.seed, step), evaluation has its own seed).
        [sys.executable, "-m", "rl.cli", "train", "configs/quickstart.yaml", "--output-dir", str(tmp_path), "--set", "wandb.mode=disabled", "--set", "eval.every=0"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    gain = s["accuracy_after"] - s["accuracy_before"]
    halved = (1 - s["accuracy_after"]) <= 0.5 * (1 - s["accuracy_before"])
    assert s["heldout_size"] >= 500
    assert gain >= 0.10 or halved, s
    assert s["steps"] == 60, s  # the README's 60 steps; its time is a figure in the README, not a bar here
