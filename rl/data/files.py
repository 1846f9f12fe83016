"""Reading data files into rows, with errors that name the file and the row.

Files are read with the `datasets` library (``load_dataset("json" | "parquet" | "csv" |
"arrow", data_files=...)``, or ``load_from_disk`` for a directory written by
``save_to_disk``), so every format `datasets` reads gives the same plain dict rows. Nothing is
downloaded and nothing is cached in the user's home: each load builds in a temporary cache
directory and keeps the table in memory.

`datasets` reports a malformed file as a pyarrow or pandas error without the file's line;
when it fails, the file is scanned by hand to name the bad line ("file:line N: not valid
JSON"). A JSON file that is valid but that `datasets` cannot put in one table (it happens
with some mixes of value types) is read by hand instead, as before `datasets` was used.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Data that cannot be loaded: unknown source or preset, missing file, malformed row, missing field, bad option."""


BenchmarkError = DataError  # the name `unmask eval` code and plugins know


Row = tuple[str, dict[str, Any]]
"""(location, record): the location ("file:line N", "file:row N", a MATH file path) names the row in errors."""

# File suffix (after an optional .gz) -> the `datasets` builder that reads it.
BUILDERS = {".jsonl": "json", ".ndjson": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "csv", ".arrow": "arrow"}
LINE_FORMATS = (".jsonl", ".ndjson")


def read_records(path: str | Path, split: str | None = None) -> Iterator[Row]:
    """Yield (location, record) for every row of a local benchmark file.

    Reads JSONL (optionally .gz), a JSON list (or an object holding one list of rows), Parquet,
    CSV/TSV, Arrow, a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``
    (``split`` picks the split of a DatasetDict; default: its only split, else "test"), or a
    directory of one-problem .json files (the original MATH layout).
    """
    path = Path(path)
    if is_saved_dataset(path):
        yield from _read_saved(path, split)
        return
    if split is not None:
        raise DataError(f"{path}: split={split} selects a split of a directory written by DatasetDict.save_to_disk; this is not one")
    if path.is_dir():
        yield from _read_problem_dir(path)
        return
    if not path.exists():
        raise DataError(f"{path}: no such file")
    suffix = file_suffix(path)
    if suffix not in BUILDERS:
        known = ", ".join(sorted({*BUILDERS, *(s + ".gz" for s in BUILDERS if s not in (".parquet", ".arrow"))}))
        raise DataError(f"{path}: unknown file type {suffix or '(no suffix)'!r}; benchmark files are {known}, or a save_to_disk directory")
    yield from _read_file(path, suffix)


def file_suffix(path: Path) -> str:
    """The format suffix of a file name, looking through .gz ("x.jsonl.gz" -> ".jsonl").

    >>> file_suffix(Path("HumanEval.jsonl.gz")), file_suffix(Path("test-00000-of-00001.parquet"))
    ('.jsonl', '.parquet')
    """
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def is_saved_dataset(path: Path) -> bool:
    """Whether `path` is a directory written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


# --- datasets --------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_datasets():
    """`datasets` with no progress bars and no log lines (its errors become ours), restored after."""
    import datasets

    bars = datasets.is_progress_bar_enabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield datasets
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()


def _load(builder: str, path: Path, **config: Any):
    """One file as an in-memory `datasets.Dataset`; the build cache lives in a temporary directory."""
    with _quiet_datasets() as datasets, tempfile.TemporaryDirectory(prefix="unmask-datasets-") as cache:
        return datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache, keep_in_memory=True, **config)


def _read_file(path: Path, suffix: str) -> Iterator[Row]:
    builder = BUILDERS[suffix]
    config: dict[str, Any] = {}
    if builder == "csv":
        config = _csv_config(path, sep="\t" if suffix == ".tsv" else ",")
    try:
        ds = _load(builder, path, **config)
        if builder == "json" and suffix == ".json":
            ds = _unwrap_rows_field(path, ds)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow/pandas/datasets errors alike: find the bad line
        if builder == "json":
            yield from _read_json_by_hand(path, suffix)
            return
        if builder == "csv":
            _locate_csv_error(path, config["sep"])
        raise DataError(f"{path}: not readable as {builder} ({_cause(e)})") from None
    if builder == "json" and any(ds.data.column(c).null_count for c in ds.column_names):
        # `datasets` gives every row every key of the file, None where the row lacks it: read by
        # hand so a field a row does not have stays missing (and its error names that row).
        yield from _read_json_by_hand(path, suffix)
        return
    yield from zip(_locations(path, suffix, len(ds)), ds)


def _unwrap_rows_field(path: Path, ds):
    """A .json file that is one object holding the rows under one key ({"data": [...]}) loads as a
    single row; load it again with ``field=`` that key. A single problem (MATH) stays one row."""
    if len(ds) != 1:
        return ds
    lists = [name for name, feat in ds.features.items() if _is_list_of_records(feat)]
    if len(lists) != 1:
        return ds
    return _load("json", path, field=lists[0])


def _is_list_of_records(feature: Any) -> bool:
    inner = getattr(feature, "feature", None)  # datasets.List / Sequence / LargeList
    return isinstance(inner, dict) or type(inner).__name__ == "Features"


def _csv_config(path: Path, sep: str) -> dict[str, Any]:
    """Read every CSV column as text: benchmark answers like "007", or ints in a column with an
    empty cell, must not become 7 or 72.0. Empty cells stay "" (missing, for the loaders)."""
    import datasets

    with _open_text(path) as f:
        header = next(csv.reader(f, delimiter=sep), None)
    if not header:
        raise DataError(f"{path}:line 1: the CSV file has no header row")
    features = datasets.Features({name: datasets.Value("string") for name in header})
    return {"sep": sep, "features": features, "keep_default_na": False}


def _read_saved(path: Path, split: str | None) -> Iterator[Row]:
    with _quiet_datasets() as datasets:
        try:
            data = datasets.load_from_disk(str(path), keep_in_memory=True)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{path}: not readable as a save_to_disk directory ({_cause(e)})") from None
    if isinstance(data, datasets.DatasetDict):
        split = _pick_split(path, list(data), split)
        yield from ((f"{path / split}:row {i}", rec) for i, rec in enumerate(data[split]))
        return
    if split is not None and split != str(data.split):
        raise DataError(f"{path}: holds one dataset (split {data.split}), not a DatasetDict; drop split={split}")
    yield from ((f"{path}:row {i}", rec) for i, rec in enumerate(data))


def _pick_split(path: Path, splits: list[str], split: str | None) -> str:
    """The requested split, else the only one, else "test" (benchmarks are scored on test)."""
    if split is not None:
        if split not in splits:
            raise DataError(f"{path}: no split {split!r}; splits: {', '.join(splits)}")
        return split
    if len(splits) == 1:
        return splits[0]
    if "test" in splits:
        return "test"
    raise DataError(f"{path}: holds splits {', '.join(splits)}; pick one with split=NAME")


def _cause(e: BaseException) -> str:
    """The innermost error `datasets` wrapped (its own message only says generation failed)."""
    while e.__cause__ is not None:
        e = e.__cause__
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


# --- locations and hand reading --------------------------------------------------------------


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.name.lower().endswith(".gz") else open(path, encoding="utf-8")


def _locations(path: Path, suffix: str, n: int) -> list[str]:
    """Row locations: the line of each non-blank line of a JSONL file (`datasets` skips blank
    lines, so row i is not line i + 1), else the row's 0-based index."""
    if suffix in LINE_FORMATS:
        with _open_text(path) as f:
            lines = [k for k, line in enumerate(f, 1) if line.strip()]
        if len(lines) == n:
            return [f"{path}:line {k}" for k in lines]
    return [f"{path}:row {i}" for i in range(n)]


def _read_json_by_hand(path: Path, suffix: str) -> list[Row]:
    """Rows of a JSON/JSONL file read with the json module; a BenchmarkError names the first bad line."""
    with _open_text(path) as f:
        if suffix in LINE_FORMATS:
            return list(_json_lines(path, f))
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        # Some .json files are JSON lines: read them so if every line parses.
        if e.msg == "Extra data":
            return list(_json_lines(path, io.StringIO(text)))
        raise DataError(f"{path}:line {e.lineno}: not valid JSON ({e.msg})") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)]
        if len(lists) != 1:
            return [(str(path), data)]  # one problem per file (MATH)
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of rows, got {type(data).__name__}")
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise DataError(f"{path}:row {i}: expected a JSON object, got {type(rec).__name__}")
    return [(f"{path}:row {i}", rec) for i, rec in enumerate(data)]


def _json_lines(path: Path, lines) -> Iterator[Row]:
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:line {lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}:line {lineno}: expected a JSON object, got {type(rec).__name__}")
        yield f"{path}:line {lineno}", rec


def _locate_csv_error(path: Path, sep: str) -> None:
    """Raise a BenchmarkError at the first CSV record whose field count differs from the header's."""
    with _open_text(path) as f:
        reader = csv.reader(f, delimiter=sep)
        try:
            header = next(reader, [])
            for row in reader:
                if row and len(row) != len(header):
                    raise DataError(f"{path}:line {reader.line_num}: {len(row)} fields, the header has {len(header)}")
        except csv.Error as e:
            raise DataError(f"{path}:line {reader.line_num}: not valid CSV ({e})") from None


def _read_problem_dir(path: Path) -> Iterator[Row]:
    """A directory of one-problem .json files (MATH's layout), read by hand: thousands of tiny
    files would cost a `datasets` build each."""
    files = sorted(path.rglob("*.json"))
    if not files:
        raise DataError(f"{path}: directory has no .json files (nor is it a save_to_disk directory)")
    for f in files:
        try:
            rec = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{f}:line {e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{f}: expected one JSON object (a problem), got {type(rec).__name__}")
        yield str(f), rec


# --- where a source lives: a file, a glob, a directory, or the hub -----------------------------

GLOB_CHARS = "*?["


def read_where(where: str, split: str | None = None, subset: str | None = None) -> Iterator[Row]:
    """Rows of a source's ``path``: a local file or directory (see `read_records`), a glob of
    files (``data/train-*.parquet``, read in sorted order), or ``hub:OWNER/NAME`` (a hub dataset
    with ``split`` and ``subset``, loaded with `datasets` where the machine has network)."""
    if where.startswith("hub:"):
        yield from read_hub(where[4:], split, subset)
        return
    if subset is not None:
        raise DataError(f"{where}: subset={subset!r} selects a configuration of a hub dataset (path: hub:OWNER/NAME); this is a local path")
    if any(c in where for c in GLOB_CHARS) and not Path(where).exists():
        import glob

        files = sorted(glob.glob(where, recursive=True))
        if not files:
            raise DataError(f"{where}: no file matches this pattern")
        for f in files:
            yield from read_records(f, split)
        return
    yield from read_records(where, split)


def read_hub(name: str, split: str | None, subset: str | None) -> Iterator[Row]:
    """Rows of a hub dataset. Offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE, or no network), a
    DataError says so and how to bring the data here as a local file instead."""
    import os

    if not name or "/" not in name and not name.replace("_", "").replace("-", "").isalnum():
        raise DataError(f"hub:{name}: not a hub dataset id (hub:OWNER/NAME)")
    split = split or "train"
    offline = any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    how = (f"download it where you have network (datasets.load_dataset({name!r}{', ' + repr(subset) if subset else ''}, split={split!r})"
           ".to_json('FILE.jsonl')) and set path: FILE.jsonl")  # fmt: skip
    if offline:
        raise DataError(f"hub:{name}: this machine is offline (HF_HUB_OFFLINE is set), so hub datasets cannot load; {how}")
    with _quiet_datasets() as datasets:
        try:
            ds = datasets.load_dataset(name, subset, split=split)
        except Exception as e:  # noqa: BLE001 - no network, no such dataset, no such split
            raise DataError(f"hub:{name}: could not load split {split!r} ({_cause(e)}); offline machines: {how}") from None
    yield from ((f"hub:{name}[{split}]:row {i}", rec) for i, rec in enumerate(ds))
