"""Dream and DiffuCoder's tokenizer as published, loaded without remote code.

Their tokenizer_config.json says `tokenizer_class: DreamTokenizer` with an `auto_map` to
tokenization_dream.py (the slow Qwen2 BPE plus special tokens). The files here are tiny but laid out
as the hub repositories are, from facts: vocab.json with Qwen2's 151643 regular tokens (byte symbols,
a few merges, fillers), merges.txt, and the added tokens at their real ids (<|endoftext|> 151643,
<|im_start|> 151644, <|im_end|> 151645, Qwen's other added tokens up to 151664, <|beginoftext|>
151665 as bos, <|mask|> 151666), every one flagged `special: true` as Qwen's files flag them.
DreamTokenizer's own behaviour (run outside the repository, see the closing note of issue 31): ids as
the stock Qwen2 BPE gives them; `decode(skip_special_tokens=True)` drops only the tokens it names
(bos, eos, pad, mask) and keeps <|im_start|>/<|im_end|>.
"""

import json
import re

import pytest

from rollout.hub_tokenizer import load_tokenizer

QWEN2_REGULAR = 151643  # vocab.json entries of Qwen2 (ids 0..151642)
DREAM_ADDED = {151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>",
               **{i: f"<|qwen_added_{i}|>" for i in range(151646, 151665)},  # Qwen2.5's tool/vision tokens (text immaterial here)
               151665: "<|beginoftext|>", 151666: "<|mask|>"}  # fmt: skip


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (byte-level BPE symbols)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_dream_tokenizer(path, **over) -> None:
    """Dream's tokenizer files (vocab.json, merges.txt, tokenizer_config.json) at the real ids."""
    path.mkdir(parents=True, exist_ok=True)
    vocab = {c: i for i, c in enumerate(_bytes_to_unicode().values())}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("c", "a"), ("ca", "f")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    while len(vocab) < QWEN2_REGULAR:
        vocab[f"<filler{len(vocab)}>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
             for i, t in DREAM_ADDED.items()}  # fmt: skip
    config = {
        "added_tokens_decoder": added, "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
        "bos_token": "<|beginoftext|>", "chat_template": "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
        "clean_up_tokenization_spaces": False, "eos_token": "<|endoftext|>", "errors": "replace", "mask_token": "<|mask|>",
        "model_max_length": 131072, "pad_token": "<|endoftext|>", "split_special_tokens": False, "tokenizer_class": "DreamTokenizer",
        "unk_token": None, **over,
    }  # fmt: skip
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


TEXT = "<|im_start|>user\nthe 12 cafés<|im_end|>\n<|im_start|>assistant\n the cat<|mask|><|endoftext|>"


def test_dream_tokenizer_loads_without_remote_code_with_its_ids_and_special_tokens(tmp_path):
    write_dream_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path)  # AutoTokenizer would ask for trust_remote_code
    assert len(tok) == 151667
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.mask_token_id) == (151665, 151643, 151643, 151666)
    assert tok.unk_token is None
    for i, t in DREAM_ADDED.items():
        assert tok.convert_tokens_to_ids(t) == i and tok.convert_ids_to_tokens(i) == t
    # Ids as DreamTokenizer gives them (measured with its own code on these files): digits split one by one,
    # byte-level BPE, added tokens whole.
    ids = tok(TEXT)["input_ids"]
    assert ids == [151644, 84, 82, 68, 81, 198, 83, 257, 220, 16, 17, 220, 260, 127, 102, 82, 151645, 198, 151644, 64, 82, 82, 72, 82, 83,
                   64, 77, 83, 198, 258, 220, 259, 83, 151666, 151643]  # fmt: skip
    assert tok.decode(ids) == TEXT
    # skip_special_tokens drops the named specials only: DreamTokenizer keeps the chat markers.
    assert tok.decode(ids, skip_special_tokens=True) == "<|im_start|>user\nthe 12 cafés<|im_end|>\n<|im_start|>assistant\n the cat"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_saved_copy_loads_with_the_stock_autotokenizer_and_decodes_the_same(tmp_path):
    from transformers import AutoTokenizer

    write_dream_tokenizer(tmp_path / "hub")
    tok = load_tokenizer(tmp_path / "hub")
    tok.save_pretrained(tmp_path / "saved")  # what unmask's checkpoints hold
    again = AutoTokenizer.from_pretrained(tmp_path / "saved")
    ids = tok(TEXT)["input_ids"]
    assert again(TEXT)["input_ids"] == ids and again.mask_token_id == 151666
    assert again.decode(ids, skip_special_tokens=True) == tok.decode(ids, skip_special_tokens=True)


def test_named_additional_special_tokens_are_skipped_like_the_slow_tokenizer(tmp_path):
    """A DiffuCoder-style file that names <|im_end|> in additional_special_tokens: then it is skipped too."""
    write_dream_tokenizer(tmp_path, additional_special_tokens=["<|im_end|>"])
    tok = load_tokenizer(tmp_path)
    ids = tok(TEXT)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "<|im_start|>user\nthe 12 cafés\n<|im_start|>assistant\n the cat"


def test_added_tokens_off_their_ids_are_refused(tmp_path):
    write_dream_tokenizer(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg["added_tokens_decoder"]["151700"] = cfg["added_tokens_decoder"].pop("151666")  # a gap: the stock class cannot place it
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=re.escape("'<|mask|>' is id 151700")):
        load_tokenizer(tmp_path)
