"""Tokenizers of hub checkpoints, built from their files with stock classes (no remote code).

Dream and DiffuCoder ship their own tokenizer class (`tokenizer_config.json`: `tokenizer_class:
DreamTokenizer`, `auto_map` to `tokenization_dream.py`), which `AutoTokenizer` refuses to build
without `trust_remote_code=True`. That class is the slow Qwen2 byte-level BPE (same pre-tokenizer
regex, NFC normalisation, no prefix space) with the added tokens of `added_tokens_decoder`; the stock
fast `Qwen2Tokenizer` built from the same vocab.json/merges.txt, with the added tokens appended in
id order, gives the same ids.

Decoding is where the two could differ. A slow tokenizer's `decode(skip_special_tokens=True)` drops
only its *named* special tokens (bos, eos, unk, sep, pad, cls, mask and `additional_special_tokens`
of tokenizer_config.json), so Dream keeps `<|im_start|>`/`<|im_end|>`, which its config marks
`special: true` but names nowhere; a fast tokenizer drops every added token flagged special. So only
the named ones are flagged special here, and DreamTokenizer's `spaces_between_special_tokens=False`
and `clean_up_tokenization_spaces=False` are what the fast decode does anyway.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Slow tokenizers' named special tokens (transformers 4.x SPECIAL_TOKENS_ATTRIBUTES, less the list).
_NAMED_SPECIALS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

# tokenizer_class of a checkpoint's own tokenizer code -> how its files load with a stock class.
REMOTE_TOKENIZERS = {"DreamTokenizer": "qwen2_bpe"}


def tokenizer_config(path: str | Path) -> dict[str, Any]:
    """tokenizer_config.json of a checkpoint directory ({} if there is none)."""
    f = Path(path) / "tokenizer_config.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _content(token) -> str | None:
    """A special-token entry of tokenizer_config.json (a string or an AddedToken dict) as text."""
    if isinstance(token, dict):
        return token.get("content")
    return token


def named_special_tokens(cfg: dict[str, Any]) -> dict[str, str]:
    """{attribute: text} of the special tokens tokenizer_config.json names (what a slow tokenizer skips)."""
    out = {k: _content(cfg[k]) for k in _NAMED_SPECIALS if _content(cfg.get(k))}
    if cfg.get("tokenizer_class") == "DreamTokenizer":
        # DreamTokenizer.__init__ defaults: unk and eos and pad <|endoftext|> unless the file says otherwise.
        for k in ("unk_token", "eos_token", "pad_token"):
            if k not in cfg:
                out[k] = "<|endoftext|>"
    return out


def qwen2_bpe_tokenizer(path: str | Path, cfg: dict[str, Any]):
    """The stock fast Qwen2 tokenizer of a slow Qwen2-style tokenizer's files (vocab.json, merges.txt,
    tokenizer_config.json), with the slow class's ids, special tokens and decode."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    path = Path(path)
    missing = [f for f in ("vocab.json", "merges.txt") if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{path}: {cfg.get('tokenizer_class')} needs {' and '.join(missing)}, which the directory lacks")
    vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
    lines = (path / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
    named = named_special_tokens(cfg)
    extra = [_content(t) for t in cfg.get("additional_special_tokens") or []]
    skipped = set(named.values()) | set(extra)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token=None, pad_token=None,
                         clean_up_tokenization_spaces=False, model_max_length=cfg.get("model_max_length", 131072))  # fmt: skip
    decoder = {int(i): entry for i, entry in (cfg.get("added_tokens_decoder") or {}).items()}
    for i in sorted(decoder):  # in id order: each added token takes the next id
        entry = decoder[i]
        if i < len(tok) and tok.convert_ids_to_tokens(i) == entry["content"]:
            continue  # already there (a token of vocab.json)
        added = AddedToken(entry["content"], special=entry["content"] in skipped, normalized=False,
                           lstrip=entry.get("lstrip", False), rstrip=entry.get("rstrip", False), single_word=entry.get("single_word", False))  # fmt: skip
        tok.add_tokens([added], special_tokens=added.special)
        got = tok.convert_tokens_to_ids(entry["content"])
        if got != i:
            raise ValueError(f"{path}: added token {entry['content']!r} is id {i} in tokenizer_config.json but lands at {got} "
                             f"after vocab.json's {len(vocab)} tokens; the stock tokenizer would not give the family's ids")  # fmt: skip
    for attr, text in named.items():
        if tok.convert_tokens_to_ids(text) is None:
            raise ValueError(f"{path}: {attr} {text!r} is neither in vocab.json nor an added token")
        setattr(tok, attr, text)
    if extra:
        tok.add_special_tokens({"additional_special_tokens": extra}, replace_extra_special_tokens=False)
    if cfg.get("chat_template"):
        tok.chat_template = cfg["chat_template"]
    tok.padding_side = cfg.get("padding_side", "right")
    return tok


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    """The tokenizer of a checkpoint directory: its own class where it ships one we rebuild from its
    files (REMOTE_TOKENIZERS), else `AutoTokenizer` (remote code only with trust_remote_code)."""
    from transformers import AutoTokenizer

    cfg = tokenizer_config(path)
    if not trust_remote_code and REMOTE_TOKENIZERS.get(cfg.get("tokenizer_class")) == "qwen2_bpe":
        return qwen2_bpe_tokenizer(path, cfg)
    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
