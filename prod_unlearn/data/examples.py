"""Forget/retain sets: one schema, five on-disk formats, strict validation.

The schema: ``prompt`` (str, may be empty), ``completion`` (str, the code to forget), optional
``id`` (str) and ``meta`` (object). It is read from JSONL (one object a line), Parquet, CSV, or a
Hugging Face ``datasets`` folder (``save_to_disk``) with those columns (``use_columns`` maps
others, the CLI's ``--prompt-column`` / ``--completion-column``), or from a folder of source
files (each file one example with an empty prompt: the copyright setting). The same set in any
format has the same ``examples_hash``. Anything malformed is an error that names the file and
line (or row); nothing is skipped silently.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from prod_unlearn.io import files_under

SOURCE_SUFFIXES = {
    ".py",
    ".js",
    ".ts",
    ".java",
    ".c",
    ".h",
    ".cc",
    ".cpp",
    ".hpp",
    ".cs",
    ".go",
    ".rs",
    ".rb",
    ".php",
    ".kt",
    ".swift",
    ".scala",
    ".sh",
    ".lua",
    ".r",
    ".jl",
}


class DataError(ValueError):
    """A user-facing data problem; the message is one line naming the file (and line)."""


@dataclass(frozen=True)
class Example:
    prompt: str
    completion: str
    id: str
    meta: dict = field(default_factory=dict, hash=False, compare=False)


TABULAR_SUFFIXES = (".parquet", ".csv")
STANDARD = {"prompt": "prompt", "completion": "completion"}
_COLUMNS = dict(STANDARD)
_PACKAGE = Path(__file__).resolve().parents[1]


def use_columns(prompt: str = "prompt", completion: str = "completion") -> None:
    """Read the prompt and completion from these fields/columns (every format but source folders).
    A process-wide setting because every loader of a command (its tasks, attacks, controls) must
    agree; the CLI sets it once per command. A file that holds the standard names and not the
    mapped ones (a held-out or control set beside a user's table) and the shipped sets keep the
    standard names."""
    if not prompt or not completion or prompt == completion:
        raise DataError(
            f"--prompt-column {prompt!r} / --completion-column {completion!r}: expected two "
            f"different, non-empty column names"
        )
    _COLUMNS.update(prompt=prompt, completion=completion)


def load_examples(path: str | Path) -> list[Example]:
    """Load any of the formats above; raise DataError on anything malformed."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        saved = any((path / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json"))
        examples = _load_saved_dataset(path) if saved else _load_folder(path)
    elif not path.is_file():
        raise DataError(f"{path}: a FIFO, socket or device, not a regular file (reading it would block)")
    elif path.suffix.lower() in TABULAR_SUFFIXES:
        examples = _load_table(path)
    else:
        examples = _load_jsonl(path)
    if not examples:
        raise DataError(f"{path}: the set is empty (expected at least one example)")
    ids = [e.id for e in examples]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{path}: duplicate id {dup!r}")
    return examples


def _load_jsonl(path: Path) -> list[Example]:
    raw = path.read_bytes()
    examples = []
    for lineno, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{where}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        examples.append(_example(obj, where, f"{path.stem}:{lineno}", _columns(path, obj)))
    return examples


def _columns(path: Path, available) -> dict:
    """The user's mapping, or the standard names where the file has those and not the mapped ones."""
    if _PACKAGE in path.resolve().parents or (
        _COLUMNS["completion"] not in available and STANDARD["completion"] in available
    ):
        return STANDARD
    return _COLUMNS


def _example(row: dict, where: str, default_id: str, cols: dict, tabular: bool = False) -> Example:
    """One validated example from a JSON object or a table row (named fields mapped by use_columns)."""
    p_col, c_col = cols["prompt"], cols["completion"]
    kind = "column" if tabular else "field"
    if tabular:  # a table has every column in every row: a null is a missing value
        row = {k: v for k, v in row.items() if v is not None}
    if c_col not in row:
        raise DataError(f"{where}: missing {kind} '{c_col}' (the code to forget)")
    for key in (p_col, c_col):
        if key in row and not isinstance(row[key], str):
            raise DataError(f"{where}: {kind} '{key}' must be a string, got {type(row[key]).__name__}")
    if not row[c_col].strip():
        raise DataError(f"{where}: {kind} '{c_col}' is empty")
    meta = row.get("meta", {})
    if tabular and isinstance(meta, str):  # CSV holds objects as JSON text
        try:
            meta = json.loads(meta) if meta.strip() else {}
        except json.JSONDecodeError:
            raise DataError(f"{where}: column 'meta' must hold a JSON object") from None
    if not isinstance(meta, dict):
        raise DataError(f"{where}: {kind} 'meta' must be an object")
    if tabular:  # struct columns fill the keys other rows have with nulls
        meta = {k: v for k, v in meta.items() if v is not None}
    if "id" in row and not isinstance(row["id"], (str, int)) or isinstance(row.get("id"), bool):
        raise DataError(f"{where}: {kind} 'id' must be a string")
    unknown = set(row) - {p_col, c_col, "id", "meta"}
    if unknown and not tabular:
        raise DataError(f"{where}: unknown field(s) {sorted(unknown)} (expected {p_col}, {c_col}, id, meta)")
    return Example(row.get(p_col, ""), row[c_col], str(row.get("id", default_id)), meta)


def _table_columns(path: Path, columns) -> dict:
    """A table must hold the completion column: a wrong mapping is one error, not one per row."""
    cols = _columns(path, columns)
    if cols["completion"] not in columns:
        raise DataError(
            f"{path}: no column '{cols['completion']}' (columns: {', '.join(map(str, columns))}; "
            f"map yours with --prompt-column / --completion-column)"
        )
    return cols


def _load_table(path: Path) -> list[Example]:
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(f"{path}: not a readable Parquet file ({why})") from None
        cols = _table_columns(path, table.column_names)
        rows = table.to_pylist()
    else:
        csv.field_size_limit(sys.maxsize)  # a source file is often longer than csv's 128 KiB default
        try:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f, strict=True)
                cols = _table_columns(path, reader.fieldnames or [])
                rows = [{k: v for k, v in r.items() if k is not None} for r in reader]
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        except csv.Error as e:
            raise DataError(f"{path}: not valid CSV ({e})") from None
    # row 1 is the first data row (a CSV's header is line 1 of the file)
    return [_example(r, f"{path}: row {i}", f"{path.stem}:{i}", cols, tabular=True) for i, r in enumerate(rows, 1)]


def _load_saved_dataset(path: Path) -> list[Example]:
    """A ``datasets`` folder from ``save_to_disk``: a Dataset, or a DatasetDict with one split."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"{path}: a Hugging Face datasets folder; install the `datasets` package to read it") from None
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: not a readable datasets folder ({why})") from None
    if isinstance(ds, datasets.DatasetDict):
        if len(ds) != 1:
            raise DataError(
                f"{path}: a DatasetDict with splits {', '.join(ds)}; pass one split's folder, "
                f"e.g. {path / next(iter(ds))}"
            )
        ds = next(iter(ds.values()))
    cols = _table_columns(path, ds.column_names)
    return [_example(r, f"{path}: row {i}", f"{path.name}:{i}", cols, tabular=True) for i, r in enumerate(ds, 1)]


def _load_folder(path: Path) -> list[Example]:
    files = files_under(
        path,
        lambda p: (
            p.suffix.lower() in SOURCE_SUFFIXES and not any(part.startswith(".") for part in p.relative_to(path).parts)
        ),
    )
    if not files:
        raise DataError(f"{path}: folder holds no source files (looked for {', '.join(sorted(SOURCE_SUFFIXES))})")
    examples = []
    for f in files:
        try:
            text = f.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{f}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        if not text.strip():
            raise DataError(f"{f}: file is empty")
        rel = f.relative_to(path).as_posix()
        examples.append(Example("", text, rel, {"path": rel}))
    return examples


def write_jsonl(examples: list[Example], path: str | Path) -> None:
    from prod_unlearn.io import atomic_write_text

    lines = [
        json.dumps({"id": e.id, "prompt": e.prompt, "completion": e.completion, "meta": e.meta}, ensure_ascii=False)
        for e in examples
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")


def examples_hash(examples: list[Example]) -> str:
    """Content hash of a set (order-sensitive): keys caches and is recorded in run.json."""
    h = hashlib.sha256()
    for e in examples:
        for part in (e.id, e.prompt, e.completion):
            h.update(part.encode("utf-8"))
            h.update(b"\x00")
    return h.hexdigest()
