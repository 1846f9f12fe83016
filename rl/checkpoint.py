"""Where checkpoints live in a run directory and how the latest one is found."""

from __future__ import annotations

import json
import re
from pathlib import Path

_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:06d}"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest *complete* checkpoint (its trainer_state.json is written last)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / "trainer_state.json").exists()]
    return max(done, key=lambda p: int(_STEP_DIR.match(p.name).group(1)), default=None)


def write_trainer_state(ckpt: Path, state: dict) -> None:
    tmp = ckpt / "trainer_state.json.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(ckpt / "trainer_state.json")  # atomic: a killed run never leaves a half-written marker


def read_trainer_state(ckpt: Path) -> dict:
    return json.loads((ckpt / "trainer_state.json").read_text())


def resolve_model_path(path: str | Path) -> Path:
    """Accept a model (or LoRA adapter) directory, a checkpoint directory, or a run directory
    (its latest checkpoint)."""
    path = Path(path)
    if (path / "config.json").exists() or (path / "adapter_config.json").exists():
        return path
    for sub in ("model", "adapter"):
        if (path / sub / "config.json").exists() or (path / sub / "adapter_config.json").exists():
            return path / sub
    ckpt = latest_checkpoint(path)
    if ckpt is not None:
        return resolve_model_path(ckpt)
    raise FileNotFoundError(f"{path} is not a model directory, a checkpoint, or a run directory with checkpoints")
