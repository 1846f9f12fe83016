"""What the loader refuses before it loads anything, with a message that says what it found and what to do.

`resolve_model_dir` turns `model.path` into a local directory (a hub id through the hub cache, then the
network) and refuses a file, a missing local path (never sent to the hub), and a directory without a
model; `check_loadable` refuses a family's remote code where it cannot run. Every command loads through
`rollout.models.load_model`, which calls both first; `check_model_path` is both in one call, for a
driver that wants the refusal before it starts workers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# owner/name as the hub spells repository ids (no leading dot, one slash).
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_WEIGHTS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "*.pt")
_MODEL_FILES = ("config.json", "adapter_config.json")


class NotAModel(FileNotFoundError):
    """`model.path` names something that holds no model the loader can read."""


def _looks_local(path: str) -> bool:
    """True when `path` can only mean a local path: absolute, ./ ../ ~, more than one slash, or a
    first component that exists here (`runs/no-such-model` with a `runs/` directory)."""
    if not _HUB_ID.match(path):
        return True
    return Path(path.split("/", 1)[0]).exists()


def _listing(path: Path, n: int = 8) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    return ", ".join(names[:n]) + (f", ... ({len(names)} entries)" if len(names) > n else "") if names else "nothing"


def check_model_dir(path: Path) -> None:
    """Refuse a local path that is not a model directory (a file; no config.json; no weights)."""
    if path.is_file():
        raise NotAModel(f"{path} is a file, not a model directory: point model.path at the directory that holds config.json and the weights")
    if not any((path / f).is_file() for f in _MODEL_FILES):
        raise NotAModel(
            f"{path} is not a model directory: it has no config.json (it holds {_listing(path)}); point model.path at a "
            "checkpoint's model/ directory, a run's checkpoint, or a hub id"
        )
    if (path / "config.json").is_file() and not any(next(path.glob(g), None) for g in _WEIGHTS):
        raise NotAModel(f"{path} has a config.json but no weights (*.safetensors or pytorch_model*.bin; it holds {_listing(path)})")


def resolve_model_dir(path: str | Path) -> Path:
    """A local model directory for `path`: the directory itself, or a hub id's snapshot (the hub
    cache first, then the network where there is one). Refuses before any download what cannot be one."""
    p = Path(path).expanduser()
    if p.exists():
        check_model_dir(p)
        return p
    text = str(path)
    if _looks_local(text):
        raise NotAModel(f"{text}: no such file or directory (relative paths are taken from {Path.cwd()}); nothing was looked up on the hub")
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(text, local_files_only=True)  # the hub cache: no network, no retries
    except Exception:  # noqa: BLE001 - not cached
        try:
            local = snapshot_download(text)
        except Exception as e:  # noqa: BLE001 - offline, no such repo, gated
            raise FileNotFoundError(f"{text}: not a local directory, and the hub could not provide it ({type(e).__name__}: {e})") from None
    check_model_dir(Path(local))
    return Path(local)


# Families whose own modeling code runs on transformers 5: Stable-DiffCoder's class is transformers'
# LlamaForCausalLM plus a generate() (updated for 5.3), so `trust_remote_code: true` loads it and
# unmask's masks drive its stock forward.
REMOTE_CODE_ON_5 = frozenset({"stable_diffcoder"})


def check_loadable(path: str | Path, config: dict[str, Any], trust_remote_code: bool) -> None:
    """Refuse `trust_remote_code=True` for a hub family whose own modeling code does not run on the
    installed transformers (written for 4.4x-4.52), where unmask loads it without remote code."""
    import transformers

    from rollout.convert import hub_family

    family = hub_family(config)
    if not trust_remote_code or family is None or family in REMOTE_CODE_ON_5 or int(transformers.__version__.split(".")[0]) < 5:
        return
    arch = ", ".join(config.get("architectures") or []) or str(config.get("model_type"))
    raise ValueError(
        f"{path}: trust_remote_code=True asks for {arch}'s own modeling code, which was written for transformers 4.4x-4.52 "
        f"and does not run on the installed transformers {transformers.__version__}. unmask loads this checkpoint without remote "
        f"code, converted onto the stock class (family {family!r}): set model.trust_remote_code: false (or drop --trust-remote-code)"
    )


def check_model_path(path: str | Path, trust_remote_code: bool = False) -> Path:
    """Everything the loader refuses, without loading weights: the local directory it would load from."""
    from rollout.convert import read_config, stock_config, hub_family

    local = resolve_model_dir(path)
    config = read_config(local)
    check_loadable(path, config, trust_remote_code)
    if hub_family(config) is not None and not trust_remote_code:
        stock_config(config)  # a refused flag or architecture, named, before any tensor is read
    return local
