"""Forget/retain sets: one schema, two on-disk formats, strict validation.

JSONL: one object a line, ``prompt`` (str, may be empty), ``completion`` (str, the code to
forget), optional ``id`` (str) and ``meta`` (object). A folder: every source file under it is
one example with an empty prompt (the copyright setting). Anything malformed is an error that
names the file and line; nothing is skipped silently.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

SOURCE_SUFFIXES = {".py", ".js", ".ts", ".java", ".c", ".h", ".cc", ".cpp", ".hpp", ".cs", ".go",
                   ".rs", ".rb", ".php", ".kt", ".swift", ".scala", ".sh", ".lua", ".r", ".jl"}


class DataError(ValueError):
    """A user-facing data problem; the message is one line naming the file (and line)."""


@dataclass(frozen=True)
class Example:
    prompt: str
    completion: str
    id: str
    meta: dict = field(default_factory=dict, hash=False, compare=False)


def load_examples(path: str | Path) -> list[Example]:
    """Load a JSONL file or a folder of source files; raise DataError on anything malformed."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    examples = _load_folder(path) if path.is_dir() else _load_jsonl(path)
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
        if "completion" not in obj:
            raise DataError(f"{where}: missing field 'completion' (the code to forget)")
        for key in ("prompt", "completion"):
            if key in obj and not isinstance(obj[key], str):
                raise DataError(f"{where}: field '{key}' must be a string, got {type(obj[key]).__name__}")
        if not obj["completion"].strip():
            raise DataError(f"{where}: field 'completion' is empty")
        if "meta" in obj and not isinstance(obj["meta"], dict):
            raise DataError(f"{where}: field 'meta' must be an object")
        if "id" in obj and not isinstance(obj["id"], (str, int)):
            raise DataError(f"{where}: field 'id' must be a string")
        unknown = set(obj) - {"prompt", "completion", "id", "meta"}
        if unknown:
            raise DataError(f"{where}: unknown field(s) {sorted(unknown)} (expected prompt, completion, id, meta)")
        examples.append(Example(obj.get("prompt", ""), obj["completion"],
                                str(obj.get("id", f"{path.stem}:{lineno}")), obj.get("meta", {})))
    return examples


def _load_folder(path: Path) -> list[Example]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SOURCE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
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
    lines = [json.dumps({"id": e.id, "prompt": e.prompt, "completion": e.completion, "meta": e.meta},
                        ensure_ascii=False) for e in examples]
    atomic_write_text(path, "\n".join(lines) + "\n")


def examples_hash(examples: list[Example]) -> str:
    """Content hash of a set (order-sensitive): keys caches and is recorded in run.json."""
    h = hashlib.sha256()
    for e in examples:
        for part in (e.id, e.prompt, e.completion):
            h.update(part.encode("utf-8"))
            h.update(b"\x00")
    return h.hexdigest()
