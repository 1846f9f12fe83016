"""The data layer (rl/data): every source kind, presets, templates, held-out splits, the prompt stream, errors.

Fixtures are tiny files written under tmp_path; CPU only, no network.
"""

import gzip
import json
import re
from collections import Counter

import pytest
from pydantic import ValidationError

from rl.config import DataConfig, HeldoutConfig, RewardSpec, SourceConfig
from rl.data import DataError, PromptStream, load_source
from rollout import build_bpe_tokenizer, build_char_tokenizer

GSM_ROWS = [{"question": f"Tom has {i} apples and buys {i + 1} more. How many now?", "answer": f"{i} + {i + 1} = {2 * i + 1}.\n#### {2 * i + 1}"}
            for i in range(1, 6)]  # fmt: skip
GSM_INSTRUCTION = "\nPlease reason step by step, and put your final answer within \\boxed{}."


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def bpe():
    return build_bpe_tokenizer(["You are terse. What is 1 plus 1?", "Hi there, hello back.", *(r["question"] for r in GSM_ROWS)] * 4, vocab_size=300)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def summary(src):
    return [(e.id, e.prompt, e.columns, e.response) for e in src.train]


def sums_rows(n, start=0):
    """Rows whose answer is derivable from the question, so a misaligned column shows."""
    return [{"id": f"r{i}", "question": f"What is {i} plus {3 * i}?", "answer": str(4 * i)} for i in range(start, start + n)]


def none_source(path, **kw):
    return SourceConfig(path=str(path), preset="none", prompt="question", columns=["answer"], **kw)


# --- 1. every source kind ----------------------------------------------------------------------


def _write_kind(kind, d):
    import datasets

    if kind == "jsonl":
        return {"path": write_jsonl(d / "g.jsonl", GSM_ROWS)}
    if kind == "jsonl.gz":
        with gzip.open(d / "g.jsonl.gz", "wt", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in GSM_ROWS))
        return {"path": str(d / "g.jsonl.gz")}
    if kind == "parquet":
        datasets.Dataset.from_list(GSM_ROWS).to_parquet(str(d / "g.parquet"))
        return {"path": str(d / "g.parquet")}
    if kind == "csv":
        datasets.Dataset.from_list(GSM_ROWS).to_csv(str(d / "g.csv"), index=False)
        return {"path": str(d / "g.csv")}
    if kind == "glob":  # written second shard first: rows follow the sorted file names, not creation order
        write_jsonl(d / "part-00001.jsonl", GSM_ROWS[3:])
        write_jsonl(d / "part-00000.jsonl", GSM_ROWS[:3])
        return {"path": str(d / "part-*.jsonl")}
    if kind == "save_to_disk":
        dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(GSM_ROWS), "test": datasets.Dataset.from_list(GSM_ROWS[:2])})
        dd.save_to_disk(str(d / "dd"))
        return {"path": str(d / "dd"), "split": "train"}
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "parquet", "csv", "glob", "save_to_disk"])
def test_every_file_kind_loads_the_same_rows(tmp_path, kind):
    src = load_source(SourceConfig(preset="gsm8k", **_write_kind(kind, tmp_path)))
    expected = [(str(i), r["question"] + GSM_INSTRUCTION, {"answer": str(2 * i + 3)},
                 f"{i + 1} + {i + 2} = {2 * i + 3}.\nThe answer is \\boxed{{{2 * i + 3}}}.") for i, r in enumerate(GSM_ROWS)]  # fmt: skip
    assert summary(src) == expected
    assert src.name == "gsm8k" and src.heldout == [] and src.rewards[0].name == "math"


def test_row_locations_name_file_and_line(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps(GSM_ROWS[0]) + "\n\n" + json.dumps(GSM_ROWS[1]) + "\n")  # a blank line: row 1 is line 3
    src = load_source(SourceConfig(path=str(path), preset="gsm8k"))
    assert [e.loc for e in src.train] == [f"{path}:line 1", f"{path}:line 3"]


def test_gym_source(tmp_path):
    cfg = SourceConfig(path="gym:basic_arithmetic", options={"size": 5, "seed": 1})
    src = load_source(cfg)
    assert src.name == "basic_arithmetic" and src.preset.name == "gym" and not src.infinite
    assert src.origin.startswith("gym:basic_arithmetic(seed=1, size=5; reasoning-gym ")
    assert [e.id for e in src.train] == ["0", "1", "2", "3", "4"]
    for e in src.train:
        entry = e.columns["entry"]
        assert e.prompt.startswith(entry["question"] + "\n\nWork it out") and e.prompt.endswith("between <answer> and </answer>.")
        assert e.response == f"<answer>{entry['answer']}</answer>"
    again = load_source(cfg)
    assert summary(again) == summary(src)  # generated from the seed: the same problems every time
    other = load_source(SourceConfig(path="gym:basic_arithmetic", options={"size": 5, "seed": 2}))
    assert [e.prompt for e in other.train] != [e.prompt for e in src.train]


def test_arithmetic_source_is_endless_and_pure():
    src = load_source(SourceConfig(path="arithmetic"))
    assert src.infinite and src.train == [] and src.heldout == [] and src.name == "arithmetic" and src.max_new_tokens == 5
    rows = src.draw(6, seed=3, step=7)
    assert [e.id for e in rows] == [e.id for e in src.draw(6, seed=3, step=7)]
    assert [e.id for e in rows] != [e.id for e in src.draw(6, seed=3, step=8)]
    assert [e.id for e in rows] != [e.id for e in src.draw(6, seed=4, step=7)]
    for e in rows:
        a, b = re.fullmatch(r"(\d{3})\+(\d{3})=", e.prompt).groups()
        assert e.id == e.prompt and e.columns == {"answer": f"{int(a) + int(b):04d}"} and e.response == e.columns["answer"]
        assert not src.task.is_heldout(int(a), int(b))
    held = load_source(SourceConfig(path="arithmetic", options={"digits": 2}, heldout=HeldoutConfig(size=4))).heldout
    assert len(held) == 4 and len({e.id for e in held}) == 4
    assert all(re.fullmatch(r"\d{2}\+\d{2}=", e.prompt) for e in held)


def test_hub_offline_says_so_and_how_to_use_a_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as e:
        load_source(SourceConfig(path="hub:openai/gsm8k", subset="main", preset="gsm8k"))
    msg = str(e.value)
    assert msg.startswith("hub:openai/gsm8k: this machine is offline (HF_HUB_OFFLINE is set)")
    assert "datasets.load_dataset('openai/gsm8k', 'main', split='train').to_json('FILE.jsonl')" in msg and "set path: FILE.jsonl" in msg


# --- 2. presets --------------------------------------------------------------------------------


def test_gsm8k_preset_answer_and_sft_response(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "Q?", "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips.\n48+24 = 72\n#### 72"}])
    (ex,) = load_source(SourceConfig(path=path, preset="gsm8k")).train
    assert ex.columns == {"answer": "72"}
    assert ex.response == "Natalia sold 48/2 = <<48/2=24>>24 clips.\n48+24 = 72\nThe answer is \\boxed{72}."


def test_math_preset_takes_the_last_boxed_of_the_solution(tmp_path):
    rows = [{"problem": "Compute 1+1.", "solution": "First $\\boxed{1}$, then really $\\boxed{\\frac{4}{2}}$."},
            {"problem": "Name it.", "answer": "(1, 2)"}]  # fmt: skip
    src = load_source(SourceConfig(path=write_jsonl(tmp_path / "m.jsonl", rows), preset="math"))
    (a, b) = src.train
    assert (a.id, a.columns, a.response) == ("0", {"answer": "\\frac{4}{2}"}, rows[0]["solution"])
    assert (b.id, b.columns, b.response) == ("1", {"answer": "(1, 2)"}, "\\boxed{(1, 2)}")  # commas kept: not GSM8K's "1,200"
    assert a.prompt == "Compute 1+1.\nPlease reason step by step, and put your final answer within \\boxed{}."


CODE = "def add(a, b):\n    return a + b\n"


def test_code_preset_on_mbpp_and_dllm_rl_rows(tmp_path):
    rows = [
        {"task_id": 11, "text": "Write add.", "code": CODE, "test_list": ["assert add(1, 2) == 3", "assert add(2, 2) == 4"],
         "test_setup_code": "import math"},
        {"question": "Write sub.", "test_list": ["assert sub(3, 1) == 2"]},
        {"question": "Read two ints, print their sum.", "test_input": ["1 2\n", "3 4\n"], "test_output": ["3\n", "7\n"]},
    ]  # fmt: skip
    paths = [write_jsonl(tmp_path / f"c{i}.jsonl", [r]) for i, r in enumerate(rows)]  # one layout per file
    (mbpp,), (tl,), (io_,) = (load_source(SourceConfig(path=p, preset="code")).train for p in paths)
    instruction = "\n\nReply with the complete Python solution in one ```python code block."
    assert mbpp.id == "11" and mbpp.prompt == "Write add." + instruction
    assert mbpp.columns == {"tests": ["assert add(1, 2) == 3", "assert add(2, 2) == 4"], "inputs_outputs": None, "entry_point": None, "prefix": "import math"}
    assert mbpp.response == "```python\ndef add(a, b):\n    return a + b\n```"
    assert tl.prompt == "Write sub." + instruction and tl.response is None
    assert tl.columns == {"tests": ["assert sub(3, 1) == 2"], "inputs_outputs": None, "entry_point": None, "prefix": ""}
    assert io_.columns == {"tests": None, "inputs_outputs": {"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]}, "entry_point": None, "prefix": ""}
    # the three layouts in one file read the same
    mixed = load_source(SourceConfig(path=write_jsonl(tmp_path / "mixed.jsonl", rows), preset="code")).train
    assert [(e.prompt, e.columns, e.response) for e in mixed] == [(e.prompt, e.columns, e.response) for e in (mbpp, tl, io_)]


def test_preset_none_prompt_columns_response(tmp_path):
    path = write_jsonl(tmp_path / "raw.jsonl", [{"q": "Say hi", "a": "1", "b": "2", "resp": "hi"}, {"q": "Say yo", "a": "3", "b": "4", "resp": "yo"}])
    src = load_source(SourceConfig(path=path, prompt="q", columns=["a"], response="resp"))
    assert src.preset.name == "none" and src.name == "raw" and src.rewards == [] and src.template_name == "prompt column"
    assert summary(src) == [("0", "Say hi", {"a": "1"}, "hi"), ("1", "Say yo", {"a": "3"}, "yo")]
    run_rewards = [RewardSpec(name="my.module:score")]
    src = load_source(SourceConfig(path=path, prompt="q", columns={"gold": "b", "other": "a"}), default_rewards=run_rewards)
    assert summary(src) == [("0", "Say hi", {"gold": "2", "other": "1"}, None), ("1", "Say yo", {"gold": "4", "other": "3"}, None)]
    assert src.rewards == run_rewards and src.columns == ("gold", "other")


# --- 3. templates and chat -----------------------------------------------------------------------


def test_template_with_literal_braces(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", GSM_ROWS[:1])
    (ex,) = load_source(SourceConfig(path=path, preset="gsm8k", template="Q: {question}\nPut it in \\boxed{{}}; {{question}} stays.")).train
    assert ex.prompt == f"Q: {GSM_ROWS[0]['question']}\nPut it in \\boxed{{}}; {{question}} stays."


def test_named_and_file_templates(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", GSM_ROWS[:1])
    (ex,) = load_source(SourceConfig(path=path, preset="gsm8k", template="raw")).train
    assert ex.prompt == f"Question: {GSM_ROWS[0]['question']}\nAnswer:"
    (tmp_path / "t.txt").write_text("<<{question}>>")
    (ex,) = load_source(SourceConfig(path=path, preset="gsm8k", template=str(tmp_path / "t.txt"))).train
    assert ex.prompt == f"<<{GSM_ROWS[0]['question']}>>"


def test_system_prompt_in_chat_template(tmp_path, bpe):
    path = write_jsonl(tmp_path / "s.jsonl", [{"question": "What is 1 plus 1?", "answer": "2"}])
    src = load_source(none_source(path, system_prompt="You are terse."))
    stream = PromptStream([src], bpe, seed=0)
    (ex,) = stream.batch(0, 1)
    assert ex.messages == [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 1 plus 1?"}]
    assert bpe.decode(ex.prompt_ids) == ("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 1 plus 1?<|im_end|>\n"
                                         "<|im_start|>assistant\n")  # fmt: skip
    raw = load_source(none_source(path, system_prompt="You are terse.", chat_template="none"))
    (ex,) = PromptStream([raw], bpe, seed=0).batch(0, 1)
    assert not raw.chat and bpe.decode(ex.prompt_ids) == "You are terse.\n\nWhat is 1 plus 1?"


def test_messages_column_becomes_turns_and_response(tmp_path, bpe):
    convo = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "hello back"}]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"id": "c1", "messages": convo}])
    src = load_source(SourceConfig(path=path, prompt="messages"))
    (ex,) = PromptStream([src], bpe, seed=0).batch(0, 1)
    assert (ex.id, ex.prompt, ex.messages, ex.response) == ("c1", "Hi there", convo[:2], "hello back")
    assert bpe.decode(ex.prompt_ids) == "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"


# --- 4. held-out splits ----------------------------------------------------------------------------


def test_heldout_size_is_disjoint_and_fixed(tmp_path, tok):
    path = write_jsonl(tmp_path / "s.jsonl", sums_rows(10))
    cfg = none_source(path, heldout=HeldoutConfig(size=3))
    src = load_source(cfg)
    train, held = [e.id for e in src.train], [e.id for e in src.heldout]
    assert len(held) == 3 and len(train) == 7 and not set(train) & set(held) and set(train) | set(held) == {f"r{i}" for i in range(10)}
    assert train == sorted(train, key=lambda s: int(s[1:])) and held == sorted(held, key=lambda s: int(s[1:]))  # file order kept
    for seed in (0, 1, 99):  # the run's seed shuffles training order, never the split
        stream = PromptStream([load_source(cfg)], tok, seed=seed)
        assert [e.id for e in stream.heldout()["s"]] == held
    assert all(e.columns["answer"] == str(4 * int(e.id[1:])) for e in src.heldout)


def test_heldout_fraction(tmp_path):
    src = load_source(none_source(write_jsonl(tmp_path / "s.jsonl", sums_rows(10)), heldout=HeldoutConfig(fraction=0.2)))
    assert (len(src.train), len(src.heldout)) == (8, 2) and not {e.id for e in src.train} & {e.id for e in src.heldout}


def test_heldout_from_its_own_file(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", sums_rows(4))
    other = write_jsonl(tmp_path / "test.jsonl", sums_rows(2, start=50))
    src = load_source(none_source(path, heldout=HeldoutConfig(path=other)))
    assert [e.id for e in src.train] == ["r0", "r1", "r2", "r3"]
    assert [(e.id, e.prompt, e.columns) for e in src.heldout] == [("r50", "What is 50 plus 150?", {"answer": "200"}),
                                                                 ("r51", "What is 51 plus 153?", {"answer": "204"})]  # fmt: skip
    assert src.heldout[0].loc == f"{other}:line 1"


def test_heldout_as_large_as_the_source_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", sums_rows(4))
    with pytest.raises(DataError, match=r"source 's': heldout of 4 rows leaves nothing to train on \(4 rows in .*s\.jsonl\)"):
        load_source(none_source(path, heldout=HeldoutConfig(size=4)))


# --- 5. the prompt stream -----------------------------------------------------------------------------


def two_sources(tmp_path, n_a=10, n_b=10, w_a=1.0, w_b=3.0):
    a = write_jsonl(tmp_path / "a.jsonl", [{**r, "id": f"a{i}"} for i, r in enumerate(sums_rows(n_a))])
    b = write_jsonl(tmp_path / "b.jsonl", [{**r, "id": f"b{i}"} for i, r in enumerate(sums_rows(n_b, start=100))])
    return [load_source(none_source(a, weight=w_a)), load_source(none_source(b, weight=w_b))]


def ids(batch):
    return [e.id for e in batch]


def test_batch_is_a_pure_function_of_seed_and_step(tmp_path, tok):
    s1 = PromptStream(two_sources(tmp_path), tok, seed=5)
    walked = [ids(s1.batch(step, 6)) for step in range(8)]
    s2 = PromptStream(two_sources(tmp_path), tok, seed=5)
    assert ids(s2.batch(7, 6)) == walked[7]  # no steps 0-6 computed first
    assert ids(s2.batch(3, 6)) == walked[3] and ids(s2.batch(7, 6)) == walked[7]  # and asked again, out of order
    s3 = PromptStream(two_sources(tmp_path), tok, seed=6)
    assert [ids(s3.batch(step, 6)) for step in range(8)] != walked


def test_every_row_once_per_epoch_and_epochs_reshuffle(tmp_path, tok):
    path = write_jsonl(tmp_path / "s.jsonl", sums_rows(10))
    stream = PromptStream([load_source(none_source(path))], tok, seed=0)
    draws = [i for step in range(5) for i in ids(stream.batch(step, 4))]  # 20 draws; epoch 1 starts mid-step 2
    everything = sorted(f"r{i}" for i in range(10))
    assert sorted(draws[:10]) == everything and sorted(draws[10:]) == everything
    assert draws[:10] != draws[10:] and draws[:10] != everything
    again = PromptStream([load_source(none_source(path))], tok, seed=0)
    assert [i for step in range(5) for i in ids(again.batch(step, 4))] == draws
    other = PromptStream([load_source(none_source(path))], tok, seed=1)
    assert ids(other.batch(0, 10)) != draws[:10] and sorted(ids(other.batch(0, 10))) == everything


def test_weights_mix_by_low_discrepancy(tmp_path, tok):
    stream = PromptStream(two_sources(tmp_path), tok, seed=0)
    per_step, total = [], 0
    for step in range(1000):
        batch = stream.batch(step, 16)
        assert len(batch) == 16
        k = sum(e.source == "a" for e in batch)
        assert ids(batch)[:k] == [e.id for e in batch if e.source == "a"]  # source by source
        per_step.append(k)
        total += k
        if step == 24:  # 400 slots: exactly 100 / 300
            assert total == 100 and 16 * 25 - total == 300
        assert abs(total - 4 * (step + 1)) <= 4  # the prefix discrepancy stays small (it grows like log n, it is not 0)
    assert set(per_step) == {3, 4, 5} and Counter(per_step)[4] > 600  # each step: 4 +- 1


def test_cursor_matches_batches(tmp_path, tok):
    stream = PromptStream(two_sources(tmp_path, n_a=7, n_b=5), tok, seed=0)
    seen = Counter()
    for step in range(6):
        assert stream.cursor(step, 8) == {
            "a": {"draws": seen["a"], "rows": 7, "epoch": seen["a"] // 7, "position": seen["a"] % 7},
            "b": {"draws": seen["b"], "rows": 5, "epoch": seen["b"] // 5, "position": seen["b"] % 5},
        }
        seen.update(e.source for e in stream.batch(step, 8))
    assert sum(seen.values()) == 48
    fresh = PromptStream(two_sources(tmp_path, n_a=7, n_b=5), tok, seed=0)
    assert fresh.cursor(6, 8) == {"a": {"draws": seen["a"], "rows": 7, "epoch": seen["a"] // 7, "position": seen["a"] % 7},
                                  "b": {"draws": seen["b"], "rows": 5, "epoch": seen["b"] // 5, "position": seen["b"] % 5}}  # fmt: skip
    assert fresh.epoch(6, 8) == pytest.approx((seen["a"] / 7 + seen["b"] / 5) / 2)


def test_endless_source_in_the_stream(tmp_path, tok):
    src = load_source(SourceConfig(path="arithmetic"))
    stream = PromptStream([src], tok, seed=2)
    assert ids(stream.batch(3, 4)) == ids(src.draw(4, 2, 3))
    assert stream.cursor(4, 4) == {"arithmetic": {"draws": 16, "rows": None, "epoch": None, "position": None}}
    assert stream.epoch(4, 4) == 0.0


def test_no_shuffle_keeps_file_order(tmp_path, tok):
    path = write_jsonl(tmp_path / "s.jsonl", sums_rows(6))
    stream = PromptStream([load_source(none_source(path))], tok, seed=3, shuffle=False)
    assert ids(stream.batch(0, 4)) + ids(stream.batch(1, 4)) + ids(stream.batch(2, 4)) == [f"r{i}" for i in (0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5)]


# --- 6. max_prompt_tokens ------------------------------------------------------------------------------


def test_long_prompts_are_dropped_and_the_rest_stay_aligned(tmp_path, tok):
    rows = []
    for i in range(12):
        q = f"What is {i} plus {3 * i}?" + (" Think very hard about it." if i % 3 == 1 else "")
        rows.append({"id": f"r{i}", "question": q, "answer": str(4 * i)})
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    src = load_source(none_source(path, heldout=HeldoutConfig(path=write_jsonl(tmp_path / "h.jsonl", rows[:4]))))
    stream = PromptStream([src], tok, seed=0, max_prompt_tokens=25)  # "What is 10 plus 30?" is 19 chars; +26 is too long
    assert stream.dropped == {"s": 4} and stream.heldout_dropped == {"s": 1}
    kept = {f"r{i}" for i in range(12) if i % 3 != 1}
    assert {e.id for e in src.train} == kept and [e.id for e in stream.heldout()["s"]] == ["r0", "r2", "r3"]
    epoch = stream.batch(0, 8)
    assert {e.id for e in epoch} == kept
    for e in epoch + stream.heldout()["s"]:
        a, b = map(int, re.fullmatch(r"What is (\d+) plus (\d+)\?", e.prompt).groups())
        assert e.id == f"r{a}" and e.columns == {"answer": str(a + b)} and e.loc == f"{path if e in epoch else tmp_path / 'h.jsonl'}:line {a + 1}"
        assert len(e.prompt_ids) <= 25 and tok.decode(e.prompt_ids) == e.prompt


def test_all_prompts_too_long_is_an_error(tmp_path, tok):
    src = load_source(none_source(write_jsonl(tmp_path / "s.jsonl", sums_rows(3))))
    with pytest.raises(DataError, match=r"source 's': every one of its prompts is longer than data.max_prompt_tokens=5"):
        PromptStream([src], tok, seed=0, max_prompt_tokens=5)


# --- 7. error messages ----------------------------------------------------------------------------------


def test_error_malformed_jsonl_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "a", "answer": "1"}\n{"question": "b", \n{"question": "c", "answer": "3"}\n')
    with pytest.raises(DataError, match=re.escape(f"{path}:line 2: not valid JSON")):
        load_source(none_source(path))


def test_error_row_missing_the_prompt_column(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"question": "a", "answer": "1"}, {"answer": "2"}])
    with pytest.raises(DataError) as e:
        load_source(none_source(path))
    assert str(e.value) == f"{path}:line 2: template placeholder {{question}} is not a column of this row (columns: answer, id)"


def test_error_row_missing_a_preset_field(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [GSM_ROWS[0], {"answer": "#### 2"}])
    with pytest.raises(DataError, match=re.escape(f"{path}:line 2: missing field 'question' (gsm8k rows need a question and an answer")) as e:
        load_source(SourceConfig(path=str(path), preset="gsm8k"))
    assert str(e.value).endswith("fields present: answer)")


def test_error_row_missing_a_reward_column(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"question": "a", "answer": "1"}, {"question": "b"}])
    with pytest.raises(DataError) as e:
        load_source(none_source(path))
    assert str(e.value) == f"{path}:line 2: missing column 'answer' for the rewards (columns: id, question)"


def test_error_template_placeholder_no_column_fills(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", GSM_ROWS[:2])
    with pytest.raises(DataError) as e:
        load_source(SourceConfig(path=path, preset="gsm8k", template="Q: {questoin}"))
    assert str(e.value) == f"{path}:line 1: template placeholder {{questoin}} is not a column of this row (columns: answer, id, question, solution)"


def test_error_empty_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match=re.escape(f"source 'empty': {tmp_path / 'empty.jsonl'} has no rows")):
        load_source(none_source(tmp_path / "empty.jsonl"))


def test_error_unknown_preset(tmp_path):
    with pytest.raises(DataError, match=r"unknown preset 'gsm8kk'; did you mean 'gsm8k'\? Presets: arithmetic, code, gsm8k, gym, humaneval, math, mbpp, none"):
        load_source(SourceConfig(path=write_jsonl(tmp_path / "g.jsonl", GSM_ROWS), preset="gsm8kk"))


def test_error_unknown_preset_option(tmp_path):
    with pytest.raises(DataError, match=r"^preset 'gsm8k': unknown option 'questoin'; options: question, answer$"):
        load_source(SourceConfig(path=write_jsonl(tmp_path / "g.jsonl", GSM_ROWS), preset="gsm8k", options={"questoin": "q"}))


def test_error_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"^" + re.escape(f"{tmp_path / 'nope.jsonl'}: no such file") + "$"):
        load_source(SourceConfig(path=str(tmp_path / "nope.jsonl"), preset="gsm8k"))


def test_error_duplicate_ids(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "x", "question": "a", "answer": "1"}, {"id": "y", "question": "b", "answer": "2"},
                                              {"id": "x", "question": "c", "answer": "3"}])  # fmt: skip
    with pytest.raises(DataError) as e:
        load_source(none_source(path))
    assert str(e.value) == f"{path}:line 3: id 'x' repeats {path}:line 1 (ids must be distinct within {path})"


def test_error_two_sources_with_one_name(tmp_path):
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValidationError, match=r"data.sources\[0\] and data.sources\[1\] are both named 'train'; give one of them name: OTHER"):
        DataConfig(sources=[{"path": str(tmp_path / "train.jsonl")}, {"path": str(tmp_path / "sub" / "train.jsonl.gz")}])
    DataConfig(sources=[{"path": str(tmp_path / "train.jsonl")}, {"path": str(tmp_path / "sub" / "train.jsonl.gz"), "name": "other"}])


def test_error_preset_none_without_prompt_or_template(tmp_path):
    with pytest.raises(DataError, match=r"^source 'g' \(preset none\): set prompt: COLUMN or template: 'text with \{column\} placeholders'$"):
        load_source(SourceConfig(path=write_jsonl(tmp_path / "g.jsonl", GSM_ROWS)))


def test_generator_writes_missing_demo_data_on_first_use(tmp_path):
    from rl.config import SourceConfig
    from rl.data import load_source

    path = tmp_path / "math_train.jsonl"
    cfg = SourceConfig(path=str(path), generator="examples.demo_data:ensure", preset="gsm8k", template="{question}",
                       heldout={"path": str(tmp_path / "math_heldout.jsonl")})  # fmt: skip
    src = load_source(cfg)
    assert path.exists() and len(src.train) == 5000 and len(src.heldout) == 300
    ex = src.heldout[0]
    assert ex.response == f"\\boxed{{{ex.columns['answer']}}}" and ex.prompt.endswith("now?")
    assert not {e.prompt for e in src.train} & {e.prompt for e in src.heldout}  # held-out problems are never trained on
    with pytest.raises(DataError, match="generator 'examples.demo_data:nope'"):
        load_source(SourceConfig(path=str(tmp_path / "x.jsonl"), generator="examples.demo_data:nope", prompt="q"))


def test_batched_encoding_gives_the_ids_of_one_prompt_at_a_time():
    from rl.data.prompts import encode_many, encode_messages

    tok = build_bpe_tokenizer(["What is 12 plus 30?", "Write a function f(x)."] * 20, vocab_size=300)
    convs = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"What is {i} plus {i}?"}] for i in range(7)]
    for chat in (True, False):
        assert encode_many(tok, convs, chat, batch_size=3) == [encode_messages(tok, m, chat)[0] for m in convs]
    char = build_char_tokenizer()
    assert encode_many(char, [[{"role": "user", "content": "1+1="}]], True) == [char("1+1=")["input_ids"]]
