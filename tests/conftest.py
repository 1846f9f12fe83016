import os
from pathlib import Path

import pytest
import torch

from rollout import build_char_tokenizer, build_tiny_block_lm

ROOT = Path(__file__).resolve().parents[1]
BASE_CKPT = ROOT / "examples" / "checkpoints" / "arith3-base"

os.environ.setdefault("WANDB_MODE", "disabled")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tokenizer():
    return build_char_tokenizer()


def tiny_lm(tokenizer, block_size=4, double=True, seed=0):
    """A random tiny block LM; float64 so token-identity tests are not at the mercy of 1e-7 ties."""
    lm = build_tiny_block_lm(tokenizer, block_size=block_size, hidden_size=64, num_layers=2, intermediate_size=128, seed=seed)
    if double:
        lm.model.double()
    return lm


@pytest.fixture
def lm(tokenizer):
    return tiny_lm(tokenizer)


@pytest.fixture(scope="session")
def ar_ckpt(tmp_path_factory):
    """A tiny random autoregressive baseline checkpoint (saved by ARModel)."""
    from rollout.models import build_tiny_lm
    from rollout.autoregressive import ARModel

    torch.manual_seed(0)
    tok = build_char_tokenizer()
    path = tmp_path_factory.mktemp("ar")
    ARModel(build_tiny_lm(tok, hidden_size=32, num_layers=1, intermediate_size=64).model, tok).save_pretrained(path)
    return path


@pytest.fixture
def shared_tmp():
    """A temp dir every uid can search (pytest's tmp_path is private to its owner): for files the
    sandbox's uid 65534 must reach, such as a stand-in bwrap executable."""
    import shutil
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp(prefix="unmask-test-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
