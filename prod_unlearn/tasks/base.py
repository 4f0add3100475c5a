"""What a task is. A forget task = a default data file (shipped, built from the embedded model's
corpus), a loader for its public format returning (forget set, evaluation set), and an evaluation
returning one flat dict with at least ``n`` and ``forget_quality`` in [0, 1] (higher = more
forgotten) and ``per_item`` ({item id: forget quality}, whose mean is ``forget_quality``: the
bench's intervals resample it); ``evaluate`` takes ``max_new_tokens`` and ignores options it does not
know (``**kw``). A utility task evaluates the model alone (no forget data) and returns its figures,
with ``per_item`` ({item id: value, or a list of values}) when called with ``per_item=True``; its
``formula`` turns per-item values into the utility (higher = better), once for the point figure
and once per bootstrap resample in the bench: the mean by default, held-out perplexity relative to
the original model for ``ppl`` (``relative``), healthy / ln(perplexity) for ``health``. The list
of tasks is in ``prod_unlearn/tasks/__init__.py``; ``register`` adds one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prod_unlearn.data.examples import Example
from prod_unlearn.evaluation.stats import mean_of_items
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
    evaluate: Callable[..., dict]  # (model, tok, **kw) -> figures + per_item
    keys: dict[str, str]
    # (values (B, n[, k]): per-item values of B resamples of the items, the evaluation's figures,
    # the original model's values on the same resamples or None) -> (B,) utilities, higher = better
    formula: Callable[[np.ndarray, dict, np.ndarray | None], np.ndarray] = mean_of_items
    fixed: tuple[str, ...] = ()  # figures the formula reads (held fixed across resamples)
    relative: bool = False  # the formula compares with the original model's items (1 = unchanged)
    reads_heldout: bool = False  # evaluates held-out code, which `eval --data` replaces (``heldout=``)
    runs_code: bool = False  # executes model-written programs: refused early where the sandbox is missing

    def utility(self, per_item: dict, figures: dict, original: dict | None = None) -> float:
        """The utility of one evaluation (``original``: the original model's ``per_item``)."""
        o = None if original is None else np.asarray([list(original.values())], dtype=np.float64)
        return float(self.formula(np.asarray([list(per_item.values())], dtype=np.float64), figures, o)[0])
