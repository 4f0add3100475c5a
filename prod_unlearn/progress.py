"""One progress-bar style for every long loop (rich); silent when stderr is not a terminal."""
from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class _Progress(Progress):
    """Progress whose tasks always carry an ``info`` field (loss, tokens/s...)."""

    def add_task(self, description, *args, **kwargs):
        kwargs.setdefault("info", "")
        return super().add_task(description, *args, **kwargs)


def progress() -> Progress:
    disable = os.environ.get("PROD_UNLEARN_NO_PROGRESS") == "1" or not sys.stderr.isatty()
    return _Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                     TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                     TimeRemainingColumn(), console=console, disable=disable)
