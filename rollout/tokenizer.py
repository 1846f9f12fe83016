"""Tokenizers built locally with the `tokenizers` library (nothing is downloaded).

The tiny CPU models need a tokenizer that exists without any download.

- `build_char_tokenizer`: every printable character of the synthetic tasks is one token,
  plus the special tokens a diffusion LM needs (pad, eos, mask).
- `build_bpe_tokenizer`: a byte-level BPE trained on the user's own texts, with the special
  tokens named as Qwen/SDAR name them and a ChatML chat template (`CHATML_TEMPLATE`), so a
  tiny model can start from scratch on real data and tests exercise a real chat template.

Both return a stock `PreTrainedTokenizerFast`, so `save_pretrained` / `from_pretrained` work
as for any Hugging Face model.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
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


# --- Byte-level BPE with Qwen/SDAR-style special tokens -----------------------------------

ENDOFTEXT, IM_START, IM_END, BPE_MASK = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|MASK|>"
BPE_SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END, BPE_MASK]  # ids 0, 1, 2, 3

# Qwen's ChatML layout: "<|im_start|>{role}\n{content}<|im_end|>\n" per message, then
# "<|im_start|>assistant\n" when a generation prompt is asked for. A system message may
# only come first (unlike Qwen2.5's template, no default system prompt is inserted).
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' and not loop.first %}"
    "{{- raise_exception('a system message may only be the first message') }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)


def build_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 512,
    chat_template: str | None = CHATML_TEMPLATE,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts`, locally, with Qwen/SDAR special tokens.

    Any text encodes (the 256 byte symbols are in the vocabulary, so there is no unk) and
    `decode(encode(text)) == text` exactly. Digits are always split one per token, as in
    Qwen. Special tokens get the lowest ids: `<|endoftext|>` 0 (pad), `<|im_start|>` 1,
    `<|im_end|>` 2 (eos: chat turns end with it), `<|MASK|>` 3 (mask). `chat_template`
    (ChatML by default; None for none) becomes `tokenizer.chat_template`.
    `vocab_size` includes the 4 special tokens and the 256 byte symbols.

    >>> tok = build_bpe_tokenizer(["the cat sat on the mat"] * 4, vocab_size=300)
    >>> tok.pad_token_id, tok.eos_token, tok.mask_token_id
    (0, '<|im_end|>', 3)
    >>> text = "The answer is \\\\boxed{12}.\\n"
    >>> tok.decode(tok(text)["input_ids"]) == text
    True
    >>> tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    '<|im_start|>user\\nhi<|im_end|>\\n<|im_start|>assistant\\n'
    """
    if vocab_size < len(BPE_SPECIAL_TOKENS) + 256:
        raise ValueError(f"build_bpe_tokenizer: vocab_size must be >= {len(BPE_SPECIAL_TOKENS) + 256} (specials + bytes)")
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=BPE_SPECIAL_TOKENS,  # trained first, so they take ids 0..3 in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    for i, token in enumerate(BPE_SPECIAL_TOKENS):
        assert backend.token_to_id(token) == i, (token, backend.token_to_id(token))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=ENDOFTEXT,
        eos_token=IM_END,
        mask_token=BPE_MASK,
        extra_special_tokens=[IM_START],  # transformers 5.x name (4.x: additional_special_tokens)
        padding_side="right",
        clean_up_tokenization_spaces=False,  # " ." must decode as " .", not "."
    )
    tok.chat_template = chat_template
    return tok
