"""A character-level tokenizer built locally with the `tokenizers` library.

The tiny CPU models need a tokenizer that exists without any download. Every
printable character of the synthetic tasks is one token, plus the special
tokens a diffusion LM needs (pad, eos, mask). The result is a stock
`PreTrainedTokenizerFast`, so `save_pretrained` / `from_pretrained` work as for
any Hugging Face model.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, EOS, MASK = "<|pad|>", "<|eos|>", "<|mask|>"
SPECIAL_TOKENS = [PAD, EOS, MASK]
# Digits first so small tasks use low ids; then operators and letters for
# prompts that carry a little text (e.g. "Q:" / "A:" templates).
DEFAULT_CHARS = string.digits + "+-*/=()<>,.:; ?!" + string.ascii_letters + "\n"


def build_char_tokenizer(chars: str = DEFAULT_CHARS) -> PreTrainedTokenizerFast:
    """Build a character-level fast tokenizer with pad/eos/mask special tokens.

    >>> tok = build_char_tokenizer()
    >>> tok("047+385=")["input_ids"][:3]
    [3, 7, 10]
    >>> tok.decode(tok("0432")["input_ids"])
    '0432'
    """
    if len(set(chars)) != len(chars):
        raise ValueError("build_char_tokenizer: `chars` contains duplicates")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in chars:
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    # Split every character into its own pre-token; WordLevel then maps it to an id.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # "." would skip newlines
    backend.decoder = decoders.Fuse()  # join characters without spaces
    backend.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        eos_token=EOS,
        mask_token=MASK,
        padding_side="right",
    )
