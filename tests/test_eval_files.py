"""Benchmark files read with `datasets`: CSV, save_to_disk directories, splits, and errors that still name the line."""

import csv
import gzip
import json
from pathlib import Path

import pytest

from rl.data import BenchmarkError, load_benchmark, parse_benchmark, read_records

FIX = Path(__file__).parent / "fixtures" / "eval"
GSM_ROWS = [json.loads(line) for line in (FIX / "gsm8k.jsonl").read_text().splitlines()]


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_and_tsv_keep_every_cell_as_text(tmp_path):
    f = _csv(tmp_path / "aime.csv", 'ID,Problem,Answer\n2024-I-1,"Find 6 times 7, then add 0.",042\n2024-I-2,What is 1/2 + 1/2?,1\n')
    b = load_benchmark(parse_benchmark(f"math:{f},question=Problem,answer=Answer"))
    assert [(p["id"], p["answer"]) for p in b.problems] == [("2024-I-1", "042"), ("2024-I-2", "1")]  # "042" stays text
    assert b.problems[0]["prompt"].startswith("Find 6 times 7, then add 0.")  # a quoted comma is not a separator
    tsv = _csv(tmp_path / "gsm.tsv", "question\tanswer\n" + "".join(f"{r['question']}\t{r['answer'].replace(chr(10), ' ')}\n" for r in GSM_ROWS))
    assert [p["answer"] for p in load_benchmark("gsm8k", tsv).problems] == ["7", "1500", "36"]


def test_csv_mbpp_reads_test_list_from_a_json_cell(tmp_path):
    rows = [json.loads(line) for line in (FIX / "mbpp.jsonl").read_text().splitlines()]
    with open(tmp_path / "mbpp.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["task_id", "text", "test_list", "test_setup_code"])
        w.writeheader()
        for r in rows:
            w.writerow({"task_id": r["task_id"], "text": r["text"], "test_list": json.dumps(r["test_list"]), "test_setup_code": r.get("test_setup_code", "")})
    assert load_benchmark("mbpp", tmp_path / "mbpp.csv").problems == load_benchmark("mbpp", FIX / "mbpp.jsonl").problems


def test_csv_errors_name_the_line_and_the_row(tmp_path):
    bad = _csv(tmp_path / "bad.csv", "question,answer\nq1,#### 1\nq2,#### 2,extra\n")
    with pytest.raises(BenchmarkError, match=r"bad.csv:line 3: 3 fields, the header has 2"):
        load_benchmark("gsm8k", bad)
    empty_cell = _csv(tmp_path / "gap.csv", "question,answer\nq1,#### 1\nq2,\n")
    with pytest.raises(BenchmarkError, match=r"gap.csv:row 1: missing field 'answer'"):
        load_benchmark("gsm8k", empty_cell)


@pytest.fixture
def saved(tmp_path):
    """A Dataset and a DatasetDict written by save_to_disk."""
    import datasets

    one = tmp_path / "gsm8k_test"
    datasets.Dataset.from_list(GSM_ROWS).save_to_disk(str(one))
    both = tmp_path / "gsm8k_dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(GSM_ROWS[:1]), "test": datasets.Dataset.from_list(GSM_ROWS)}).save_to_disk(str(both))
    return one, both


def test_save_to_disk_directories_and_splits(saved):
    one, both = saved
    want = load_benchmark("gsm8k", FIX / "gsm8k.jsonl").problems
    assert load_benchmark("gsm8k", one).problems == want
    assert load_benchmark("gsm8k", both).problems == want  # several splits: "test" by default
    train = load_benchmark(parse_benchmark(f"gsm8k:{both},split=train"))
    assert [p["answer"] for p in train.problems] == ["7"]
    assert [loc for loc, _ in read_records(both, "train")] == [f"{both / 'train'}:row 0"]
    with pytest.raises(BenchmarkError, match=r"no split 'validation'; splits: train, test"):
        load_benchmark(parse_benchmark(f"gsm8k:{both},split=validation"))
    with pytest.raises(BenchmarkError, match=r"gsm8k.jsonl: split=test selects a split of a directory written by DatasetDict.save_to_disk"):
        load_benchmark(parse_benchmark(f"gsm8k:{FIX / 'gsm8k.jsonl'},split=test"))


def test_save_to_disk_rows_are_named_in_errors(tmp_path):
    import datasets

    d = tmp_path / "saved"
    datasets.DatasetDict({"test": datasets.Dataset.from_list([{"question": "q", "answer": "#### 1"}, {"question": "q2", "answer": None}])}).save_to_disk(str(d))
    with pytest.raises(BenchmarkError, match=rf"{d / 'test'}:row 1: missing field 'answer'"):
        load_benchmark("gsm8k", d)


def test_json_shapes_blank_lines_and_mixed_types(tmp_path):
    (tmp_path / "wrapped.json").write_text(json.dumps({"version": "1.0", "data": GSM_ROWS}, indent=1))
    assert [p["answer"] for p in load_benchmark("gsm8k", tmp_path / "wrapped.json").problems] == ["7", "1500", "36"]
    with gzip.open(tmp_path / "gsm8k.jsonl.gz", "wt") as f:
        f.write((FIX / "gsm8k.jsonl").read_text())
    assert load_benchmark("gsm8k", tmp_path / "gsm8k.jsonl.gz").problems == load_benchmark("gsm8k", FIX / "gsm8k.jsonl").problems
    (tmp_path / "list.json").write_text(json.dumps(GSM_ROWS))
    assert [loc for loc, _ in read_records(tmp_path / "list.json")][2].endswith("list.json:row 2")
    (tmp_path / "one.json").write_text(json.dumps({"problem": "What is 2+3?", "solution": "It is \\boxed{5}."}, indent=2))
    assert load_benchmark("math", tmp_path / "one.json").problems[0]["answer"] == "5"  # one problem per file, as in MATH
    # Blank lines: the rows keep their file lines; an int answer next to a string one still loads.
    (tmp_path / "gaps.jsonl").write_text('{"question": "a", "answer": 72}\n\n{"question": "b", "answer": "1,500"}\n')
    recs = list(read_records(tmp_path / "gaps.jsonl"))
    assert [(loc.rsplit(":", 1)[1], r["answer"]) for loc, r in recs] == [("line 1", 72), ("line 3", "1,500")]
    (tmp_path / "gaps2.jsonl").write_text('{"question": "a", "answer": "1"}\n\n{"question": "b"}\n')
    with pytest.raises(BenchmarkError, match=r"gaps2.jsonl:line 3: missing field 'answer'"):
        load_benchmark("gsm8k", tmp_path / "gaps2.jsonl")


def test_malformed_files_still_name_file_and_line(tmp_path):
    (tmp_path / "list_line.jsonl").write_text('{"question": "q", "answer": "1"}\n[1, 2]\n')
    with pytest.raises(BenchmarkError, match=r"list_line.jsonl:line 2: expected a JSON object, got list"):
        load_benchmark("gsm8k", tmp_path / "list_line.jsonl")
    (tmp_path / "bad.json").write_text('[\n  {"question": "q", "answer": "1"},\n  {"question": "q2" "answer": "2"}\n]')
    with pytest.raises(BenchmarkError, match=r"bad.json:line 3: not valid JSON"):
        load_benchmark("gsm8k", tmp_path / "bad.json")
    with gzip.open(tmp_path / "bad.jsonl.gz", "wt") as f:
        f.write('{"question": "q", "answer": "1"}\n{"question": \n')
    with pytest.raises(BenchmarkError, match=r"bad.jsonl.gz:line 2: not valid JSON"):
        load_benchmark("gsm8k", tmp_path / "bad.jsonl.gz")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(BenchmarkError, match=r"broken.parquet: not readable as parquet"):
        load_benchmark("gsm8k", tmp_path / "broken.parquet")
    (tmp_path / "notes.txt").write_text("q\n")
    with pytest.raises(BenchmarkError, match=r"notes.txt: unknown file type '.txt'"):
        load_benchmark("gsm8k", tmp_path / "notes.txt")


def test_reading_leaves_no_datasets_cache_behind(tmp_path, monkeypatch):
    import datasets

    home_cache = tmp_path / "home-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home_cache)
    _csv(tmp_path / "t.csv", "question,answer\nq,#### 1\n")
    load_benchmark("gsm8k", tmp_path / "t.csv")
    load_benchmark("gsm8k", FIX / "gsm8k.jsonl")
    assert not home_cache.exists()
    assert datasets.is_progress_bar_enabled()  # the caller's setting is restored
