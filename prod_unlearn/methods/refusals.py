"""Refusal texts for preference-style methods (DPO's preferred answer, FLAT's template)."""

from __future__ import annotations

from pathlib import Path

from prod_unlearn.data.examples import DataError
from prod_unlearn.models.loading import ASSETS

DEFAULT_REFUSALS = ASSETS / "refusals" / "refusals.txt"


def load_refusals(path: str | Path | None = None) -> list[str]:
    """One refusal per non-empty line; the shipped file unless a path is given."""
    path = Path(path) if path else DEFAULT_REFUSALS
    if not path.exists():
        raise DataError(f"{path}: no such refusals file")
    try:
        lines = [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e.reason})") from None
    if not lines:
        raise DataError(f"{path}: no refusal lines (expected one refusal text per line)")
    return lines
