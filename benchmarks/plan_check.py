"""`unmask plan` against measurement: predicted vs measured activations of a learner update.

At shapes that run on this CPU (model widths and depths, generation lengths, estimators), one real
learner update per setting (rl.learner.Learner on a synthetic batch, benchmarks/shape.py's random
block LM) is measured with autograd's saved-tensor hooks: the bytes saved for backward between two
backward passes, parameters excluded (they exist before and after the update), each storage once,
the largest over the update's passes. That is what the update adds to the weights and optimizer
state, and it is exact, where the process's resident memory is not (freed heap pages are reused
without raising it). rl.plan.update_peak predicts the same from the model's config alone (its
backbone run on meta tensors). The peak of the update also has the gradients, a known size
(4 bytes x parameters). Prints the table and the largest relative error of the activations.

    python benchmarks/plan_check.py [--shapes N] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.memory import SavedBytes, counting_backward  # noqa: E402
from benchmarks.shape import SHAPE_METHODS, add_shape_args, build_shape_checkpoint, synthetic_batch  # noqa: E402
from rl.batch import learner_batch  # noqa: E402
from rl.config import load_config  # noqa: E402
from rl.learner import Learner  # noqa: E402
from rl.plan import model_shape, parameter_count, update_peak  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# (vocab, hidden, layers, prompt, gen, batch)
SHAPES = [(4096, 256, 4, 32, 64, 4), (4096, 512, 4, 32, 64, 4), (8192, 256, 6, 64, 128, 2), (16384, 384, 2, 16, 128, 6)]
METHODS = {"trace s=1": lambda gen, block: gen // block, "one_step": lambda gen, block: 1, "coupled": lambda gen, block: 3}


class ActivationBytes(SavedBytes):
    """SavedBytes without the parameters' storages."""

    def __init__(self, params) -> None:
        super().__init__()
        self.params = {p.untyped_storage().data_ptr() for p in params}

    def pack(self, t: torch.Tensor):
        return t if t.untyped_storage().data_ptr() in self.params else super().pack(t)


def measure(ckpt: Path, trajs, method: str) -> int:
    cfg = load_config(ROOT / "configs" / "quickstart.yaml",
                      [f"model.path={ckpt}", "algorithm.beta=0", "algorithm.minibatches=1", "algorithm.epochs=1",
                       "wandb.mode=disabled", *SHAPE_METHODS[method]])  # fmt: skip
    learner = Learner(cfg)
    adv = [1.0 if i % 2 == 0 else -1.0 for i in range(len(trajs))]
    rewards = [float(i % 2 == 0) for i in range(len(trajs))]
    batch = learner_batch(learner.cfg.algorithm, trajs, adv, rewards=rewards)
    meter = ActivationBytes(learner.lm.model.parameters())
    with counting_backward(meter), torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda t: t):
        learner.update(batch)
    del learner
    gc.collect()
    return meter.peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--shapes", type=int, default=len(SHAPES), help="the first N shapes")
    opts = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    for vocab, hidden, layers, prompt, gen, batch in SHAPES[: opts.shapes]:
        sp = argparse.ArgumentParser()
        add_shape_args(sp)
        args = sp.parse_args(["--vocab", str(vocab), "--hidden", str(hidden), "--layers", str(layers), "--prompt-len", str(prompt),
                              "--gen", str(gen), "--batch", str(batch)])  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp)
            build_shape_checkpoint(ckpt, args)
            shape = model_shape(str(ckpt))
            n = parameter_count(shape)
            trajs = synthetic_batch(args, vocab)
            for method, passes in METHODS.items():
                got = measure(ckpt, trajs, method)
                acts, peak = update_peak(shape, n, batch, prompt, gen, passes=passes(gen, args.block))
                rows.append({"vocab": vocab, "hidden": hidden, "layers": layers, "prompt": prompt, "gen": gen, "batch": batch,
                             "method": method, "predicted_mib": acts / 2**20, "measured_mib": got / 2**20, "ratio": acts / got,
                             "predicted_peak_mib": peak / 2**20})  # fmt: skip
                r = rows[-1]
                print(f"{vocab:6d} {hidden:6d} {layers:6d} {prompt:6d} {gen:5d} {batch:5d} {method:10} "
                      f"{r['predicted_mib']:8.1f}Mi {r['measured_mib']:8.1f}Mi {r['ratio']:6.3f}", flush=True)
    worst = max(abs(r["ratio"] - 1) for r in rows)
    print(f"largest relative error of the activations: {worst:.1%}")
    if opts.json:
        opts.json.write_text(json.dumps({"rows": rows, "largest_relative_error": worst}, indent=1))


if __name__ == "__main__":
    main()
