"""Building the default forget sets from the embedded model's training corpus
(``prod-unlearn build-task NAME``): catalogues, mining, filters and build records. Loading and
scoring a set is ``prod_unlearn/tasks/``, which never imports this package."""
from __future__ import annotations

from pathlib import Path

BUILDABLE = ("insecure", "deprecated")


def build_task(name: str, out: str | Path | None = None, model: str | None = None) -> dict:
    """Mine the set, write it (default: the shipped file and its build record) and return the record."""
    if name == "insecure":
        from prod_unlearn.build.insecure import BuildOptions, build_default_set
        return build_default_set(BuildOptions(model=model, **({"out": Path(out)} if out else {})))
    if name == "deprecated":
        from prod_unlearn.build.deprecated import build
        return build(**({"out": out} if out else {}))
    raise ValueError(f"build-task {name}: expected one of {', '.join(BUILDABLE)}")
