"""What the pretraining recipe reads besides the corpus: the documents it replays, the task items
scrubbed from the corpus of a retain model (``--exclude``), and the task sets it exports."""

from __future__ import annotations

import sys
from pathlib import Path

from prod_unlearn.data.corpus import SourceFile
from prod_unlearn.data.examples import Example, write_jsonl
from prod_unlearn.io import atomic_write_json, atomic_write_text
from prod_unlearn.models.loading import ASSETS


def _to_examples(files: list[SourceFile]) -> list[Example]:
    return [Example("", f.text, f.path, {"path": f.path, "sha256": f.sha256}) for f in files]


def replay_documents(
    split: dict[str, list[SourceFile]], sets: tuple[str, ...], copyright_repeats: int = 1
) -> list[tuple[str, int]]:
    """(text, focus) pairs to memorise: each copyright file (focus 0) and each default task item
    (prompt + completion, focus = where the completion starts: a window always covers it)."""
    from prod_unlearn.data.examples import load_examples

    docs = [(f.text, 0) for f in split["memorise"]] * copyright_repeats
    for name in sets:
        for e in load_examples(ASSETS / "data" / f"{name}.jsonl"):
            docs.append((e.prompt + e.completion, len(e.prompt)))
    return docs


EXCLUDABLE = ("copyright", "insecure", "deprecated")


def scrub_items(train: list[SourceFile], sets: tuple[str, ...]) -> tuple[list[SourceFile], dict]:
    """The train files with every listed set's completions cut out, whole lines: a retain model never
    sees the code it is the floor for. An item is found as its prompt + completion in its file; one
    that is not found drops its whole file (counted)."""
    from prod_unlearn.data.examples import load_examples

    cuts: dict[str, list[tuple[int, int]]] = {}
    found, dropped = 0, set()
    by_path: dict[str | None, str] = {f.path: f.text for f in train}
    for name in sets:
        for e in load_examples(ASSETS / "data" / f"{name}.jsonl"):
            path = e.meta.get("path") or e.meta.get("file")
            text = by_path.get(path)
            at = text.find(e.prompt + e.completion) if text is not None else -1
            if at < 0:
                if text is not None:
                    dropped.add(path)
                continue
            assert text is not None and path is not None  # at >= 0: found in its file
            start = text.rfind("\n", 0, at + len(e.prompt)) + 1
            end = text.find("\n", at + len(e.prompt) + len(e.completion) - 1)
            cuts.setdefault(path, []).append((start, len(text) if end < 0 else end + 1))
            found += 1
    out, removed = [], 0
    for f in train:
        if f.path in dropped:
            removed += len(f.text)
            continue
        keep, pos = [], 0
        for a, b in sorted(cuts.get(f.path, [])):  # overlapping spans merge
            keep.append(f.text[pos : max(a, pos)])
            pos = max(pos, b)
        text = "".join(keep) + f.text[pos:]
        removed += len(f.text) - len(text)
        out.append(SourceFile(f.path, text))
    return out, {"items_cut": found, "files_dropped": sorted(dropped), "chars_removed": removed}


def line_starts(text: str, upto: int) -> list[int]:
    return [0] + [i + 1 for i, c in enumerate(text[:upto]) if c == "\n" and i + 1 <= upto]


def export_task_sets(root: Path, split: dict[str, list[SourceFile]], data_dir: Path) -> None:
    """Ship the corpus roles the tasks need (copyright = forget set) with the manifest and licence."""
    for role, name in (("memorise", "copyright"), ("control", "control"), ("heldout", "heldout")):
        write_jsonl(_to_examples(split[role]), data_dir / f"{name}.jsonl")
    atomic_write_json(
        data_dir / "manifest.json",
        {
            "corpus_root": str(root),
            "python": sys.version.split()[0],
            "files": {role: [{"path": f.path, "sha256": f.sha256} for f in fs] for role, fs in split.items()},
        },
    )
    licence = root / "LICENSE.txt"
    if licence.exists():
        atomic_write_text(data_dir / "LICENSE-PSF.txt", licence.read_text(encoding="utf-8", errors="replace"))
