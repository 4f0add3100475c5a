"""What a task is. A forget task = a default data file (shipped, built from the embedded model's
corpus), a loader for its public format returning (forget set, evaluation set), and an evaluation
returning one flat dict with at least ``n`` and ``forget_quality`` in [0, 1] (higher = more
forgotten) and ``per_item`` ({item id: forget quality}, whose mean is ``forget_quality``: the
bench's intervals resample it); ``evaluate`` takes ``max_new_tokens`` and ignores options it does not
know (``**kw``). A utility task evaluates the model alone (no forget data) and returns ``utility``
(higher = better, 1 = as good as it gets) with ``per_item`` ({item id: value}, utility = their mean)
for the bench's intervals; the built-in ppl, health and humaneval keep their own formulas
(``bench/scoring.py``). The list of tasks is in ``prod_unlearn/tasks/__init__.py``; ``register``
adds one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prod_unlearn.data.examples import Example
from prod_unlearn.models.loading import ASSETS

DATA = ASSETS / "data"
HELDOUT = DATA / "heldout.jsonl"


@dataclass
class ForgetTask:
    name: str
    default_data: Path
    load: Callable[[Path], tuple[list[Example], list[Example]]]  # file -> (forget, eval)
    evaluate: Callable[..., dict]  # (model, tok, eval_examples, **kw) -> dict
    keys: dict[str, str]  # documented result keys


@dataclass
class UtilityTask:
    name: str
    evaluate: Callable[..., dict]  # (model, tok, **kw) -> dict
    keys: dict[str, str]
