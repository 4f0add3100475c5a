"""Building the default forget sets from the embedded model's training corpus
(``prod-unlearn build-task NAME``): catalogues, mining, filters and build records. Loading and
scoring a set is ``prod_unlearn/tasks/``, which never imports this package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

BUILDABLE = ("insecure", "deprecated")


def build_task(name: str, out: str | Path | None = None, model: str | None = None) -> dict:
    """Mine the set, write it (default: the shipped file and its build record) and return the record."""
    if name == "insecure":
        from prod_unlearn.build.insecure import BuildOptions, build_default_set

        insecure_kw: dict[str, Any] = {"out": Path(out)} if out else {}
        return build_default_set(BuildOptions(model=model, **insecure_kw))
    if name == "deprecated":
        from prod_unlearn.build.deprecated import build

        deprecated_kw: dict[str, Any] = {"out": out} if out else {}
        return build(**deprecated_kw)
    raise ValueError(f"build-task {name}: expected one of {', '.join(BUILDABLE)}")
