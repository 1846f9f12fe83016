"""Where checkpoints live and how the latest complete one is found.

A checkpoint is a directory ``step_NNNNNN`` holding the learner's files (``model/`` or
``adapter/`` in transformers/peft format, ``learner.pt``) and ``trainer_state.json``, which is
written last: a checkpoint without it is incomplete and ignored (a run killed while saving
never leaves a checkpoint that looks whole).

The driver writes checkpoints from bytes the learner hands over through the Ray object
store, so the learner may run on another node without a shared filesystem. The root is a
local directory or any fsspec URL (``s3://bucket/run``, ``gs://...``, ``memory://`` in tests).
"""

from __future__ import annotations

import json
import posixpath
import re
from pathlib import Path

import fsspec

_STEP_DIR = re.compile(r"^step_(\d+)$")
STATE_FILE = "trainer_state.json"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest *complete* checkpoint under RUN_DIR/checkpoints (local runs)."""
    latest = CheckpointStore(Path(run_dir) / "checkpoints").latest()
    return Path(latest) if latest is not None else None


class CheckpointStore:
    """Checkpoints under one root (a directory or an fsspec URL)."""

    def __init__(self, root: str | Path):
        self.root = str(root)
        self.fs, self.path = fsspec.core.url_to_fs(self.root)
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def step_path(self, step: int) -> str:
        """Where step `step` is (or will be) written, in the store's own spelling."""
        return self._url(posixpath.join(self.path, f"step_{step:06d}"))

    def write(self, step: int, files: dict[str, bytes], state: dict) -> str:
        """Write the learner's files, then trainer_state.json (the completeness marker)."""
        base = posixpath.join(self.path, f"step_{step:06d}")
        for rel, data in files.items():
            target = posixpath.join(base, rel)
            self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
            with self.fs.open(target, "wb") as f:
                f.write(data)
        marker = posixpath.join(base, STATE_FILE)
        text = json.dumps(state, indent=2).encode()
        if self.local:  # rename is atomic on a local filesystem; an object-store put is atomic already
            with self.fs.open(marker + ".tmp", "wb") as f:
                f.write(text)
            self.fs.mv(marker + ".tmp", marker)
        else:
            with self.fs.open(marker, "wb") as f:
                f.write(text)
        return self._url(base)

    def latest(self) -> str | None:
        """The newest complete checkpoint, or None."""
        if not self.fs.isdir(self.path):
            return None
        steps = []
        for entry in self.fs.ls(self.path, detail=False):
            m = _STEP_DIR.match(posixpath.basename(entry.rstrip("/")))
            if m and self.fs.exists(posixpath.join(entry, STATE_FILE)):
                steps.append((int(m.group(1)), entry))
        return self._url(max(steps)[1]) if steps else None

    def read(self, ckpt: str) -> tuple[dict[str, bytes], dict]:
        """(learner files, trainer state) of a checkpoint written by `write`."""
        _, base = fsspec.core.url_to_fs(ckpt)
        base = base.rstrip("/")
        files = {}
        for entry in self.fs.find(base):
            rel = posixpath.relpath(entry, base)
            if rel != STATE_FILE:
                files[rel] = self.fs.cat_file(entry)
        return files, json.loads(self.fs.cat_file(posixpath.join(base, STATE_FILE)))

    def _url(self, path: str) -> str:
        return path if self.local else self.fs.unstrip_protocol(path)


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


def resolve_model_ref(ref: str | Path) -> str:
    """`resolve_model_path` for a config's model reference (`model.path`, SFT's `init`): a local
    directory becomes its model directory (a run's latest checkpoint, `step_N/model`); anything
    that is not a local directory (a hub id) is handed on unchanged for the loader to fetch."""
    return str(resolve_model_path(ref)) if Path(ref).is_dir() else str(ref)


def run_config_of(path: str | Path) -> Path | None:
    """The config a checkpoint was trained with, for a run directory, one of its `checkpoints/step_N`
    directories or their `model/`: RUN/config.yaml (`unmask train`) or RUN/sft_summary.json
    (`unmask sft`); None for a bare model directory."""
    p = Path(path).resolve()
    places = [p]
    if p.name in ("model", "adapter"):
        p = p.parent
        places.append(p)
    if _STEP_DIR.match(p.name) and p.parent.name == "checkpoints":
        places.append(p.parent.parent)
    for place in places:
        for name in ("config.yaml", "sft_summary.json"):
            if (place / name).is_file():
                return place / name
    return None
