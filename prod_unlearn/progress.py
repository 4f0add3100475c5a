"""One progress-bar style for every long loop (rich); silent when stderr is not a terminal.

Bars nest: a loop that starts while another bar is live (evaluation inside a training epoch,
training inside `bench`) adds its task to the live display instead of opening a second one,
which rich forbids.
"""

from __future__ import annotations

import contextlib
import os
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)
_live: list[Progress] = []


class _Progress(Progress):
    """Progress whose tasks always carry an ``info`` field (loss, tokens/s...)."""

    def add_task(self, description, *args, **kwargs):
        kwargs.setdefault("info", "")
        return super().add_task(description, *args, **kwargs)


@contextlib.contextmanager
def progress():
    if _live:
        bar = _live[-1]
        before = set(bar.task_ids)
        try:
            yield bar
        finally:
            for t in set(bar.task_ids) - before:
                bar.remove_task(t)
        return
    disable = os.environ.get("PROD_UNLEARN_NO_PROGRESS") == "1" or not sys.stderr.isatty()
    bar = _Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
    )
    with bar:
        _live.append(bar)
        try:
            yield bar
        finally:
            _live.pop()
