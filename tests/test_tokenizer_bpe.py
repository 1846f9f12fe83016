"""The locally trained byte-level BPE tokenizer: round trips, digits, special ids, ChatML,
save/load through AutoTokenizer, and a tiny model built and reloaded on it."""

import pytest
import torch
from transformers import AutoTokenizer

from rollout import CHATML_TEMPLATE, SamplingParams, build_bpe_tokenizer, generate
from rollout.models import build_tiny_lm, load_model

CORPUS = [
    "The quick brown fox jumps over the lazy dog.\n",
    "Question: what is 1234 + 5678? Answer: the answer is \\boxed{6912}.\n",
    "We compute 12345 * 2 = 24690, so the result is \\boxed{24690}.\n",
    "def add(a, b):\n    return a + b\n\nprint(add(12, 30))\n",
    "```python\nfor i in range(100):\n    print(i)\n```\n",
    "Numbers: 100 200 300 1000 2000 12345 12345 12345 99999 2024 2025\n",
] * 20

TRICKY = [
    "The answer is \\boxed{0432}.",
    "```python\ndef f(x):\n    if x > 0:\n        return {'a': [x, `y`]}\n    return None\n```\n",
    "café – 5°",
    "  leading spaces, trailing  \n\n\ttab and \\frac{1}{2} \\\\ done ",
    "emoji 🙂 and 中文 and a . b , c",
]

CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 2+3?"},
]
CHAT_TEXT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
    "<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def tok():
    return build_bpe_tokenizer(CORPUS, vocab_size=400)


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.unk_token_id is None and len(ids) > 0


def test_merges_learned_and_vocab_bounded(tok):
    # 4 specials + 256 bytes + learned merges; a frequent word becomes one token.
    assert 4 + 256 < len(tok) <= 400
    assert tok.tokenize(" quick") == ["Ġquick"]


def test_digits_are_single_tokens(tok):
    # "12345" is frequent in the corpus, yet never merges: one token per digit.
    assert tok.tokenize("12345") == list("12345")
    assert len(tok("12345", add_special_tokens=False)["input_ids"]) == 5
    assert tok.tokenize(" 2024") == ["Ġ", "2", "0", "2", "4"]


def test_special_ids(tok):
    names = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|MASK|>"]
    assert tok.convert_tokens_to_ids(names) == [0, 1, 2, 3]
    assert (tok.pad_token, tok.pad_token_id) == ("<|endoftext|>", 0)
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    assert (tok.mask_token, tok.mask_token_id) == ("<|MASK|>", 3)
    assert tok.padding_side == "right"
    assert set(tok.all_special_ids) == {0, 1, 2, 3}
    # No bos/eos is added around plain text, and ordinary text never encodes to a special id.
    for text in TRICKY + CORPUS[:6] + ["MASK <MASK> |MASK| im_end endoftext"]:
        ids = tok(text)["input_ids"]
        assert not set(ids) & {0, 1, 2, 3}, text
    # The special strings themselves encode as one special id each.
    assert tok("<|MASK|>")["input_ids"] == [3]


def test_chat_template(tok):
    assert tok.chat_template == CHATML_TEMPLATE
    text = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert text == CHAT_TEXT
    no_prompt = tok.apply_chat_template(CHAT[1:], add_generation_prompt=False, tokenize=False)
    assert no_prompt == "<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(1) == 3 and ids.count(2) == 2  # each marker is one special id
    assert ids[0] == 1 and tok.decode(ids) == text
    last_start = len(ids) - 1 - ids[::-1].index(1)
    assert tok.decode(ids[last_start + 1 :]) == "assistant\n"  # the generation prompt
    first_turn = ids[: ids.index(2) + 1]
    assert tok.decode(first_turn[1:-1]) == "system\nYou are a helpful assistant."
    with pytest.raises(Exception, match="system message"):
        tok.apply_chat_template(CHAT[::-1], tokenize=False)


def test_no_chat_template():
    tok = build_bpe_tokenizer(CORPUS[:6], vocab_size=300, chat_template=None)
    assert tok.chat_template is None


def test_vocab_size_too_small():
    with pytest.raises(ValueError, match="vocab_size"):
        build_bpe_tokenizer(CORPUS, vocab_size=100)


def test_save_and_auto_load(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in TRICKY + [CHAT_TEXT]:
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.chat_template == tok.chat_template
    assert loaded.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False) == CHAT_TEXT
    assert (loaded.mask_token, loaded.mask_token_id) == ("<|MASK|>", 3)
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.padding_side) == (0, 2, "right")
    assert len(loaded) == len(tok)


def test_tiny_model_generates_and_reloads(tok, tmp_path):
    lm = build_tiny_lm(tok, hidden_size=32, num_layers=1, intermediate_size=64)
    assert lm.mask_id == tok.mask_token_id == 3 and lm.eos_id == 2 and lm.pad_id == 0
    prompts = [
        tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=False),
        tok("The answer is \\boxed{", add_special_tokens=False)["input_ids"],
    ]
    assert prompts[0] == tok(CHAT_TEXT, add_special_tokens=False)["input_ids"]
    params = SamplingParams(max_new_tokens=8, temperature=0.0)
    with torch.no_grad():
        before = generate(lm, prompts, params)
    for traj in before:
        assert len(traj.completion_ids) > 0
        assert tok.mask_token_id not in traj.completion_ids
        assert all(0 <= t < len(tok) for t in traj.completion_ids)
        tok.decode(traj.completion_ids)  # every sampled id is a real token

    lm.save_pretrained(tmp_path)
    reloaded = load_model(tmp_path)
    assert reloaded.mask_id == reloaded.tokenizer.mask_token_id == tok.mask_token_id
    assert reloaded.tokenizer.chat_template == CHATML_TEMPLATE
    with torch.no_grad():
        after = generate(reloaded, prompts, params)
    assert [t.completion_ids for t in after] == [t.completion_ids for t in before]
