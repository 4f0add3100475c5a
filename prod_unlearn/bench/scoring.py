"""Evaluations that keep per-item scores, so that every bench point can carry bootstrap intervals."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prod_unlearn.bench.config import BenchConfig

# ---------------------------------------------------------------- evaluation with per-item scores


def evaluate_forget(task: str, model, tok, examples, cfg: BenchConfig) -> tuple[dict, dict | None]:
    """(figures, {item id: forget quality} or None)."""
    from prod_unlearn.tasks import FORGET_TASKS

    # copyright's options (token_half, cuts) pass through the other tasks' evaluate untouched
    r = FORGET_TASKS[task].evaluate(
        model, tok, examples, max_new_tokens=cfg.max_new_tokens, token_half=False, cuts=tuple(cfg.copyright_cuts)
    )
    return r, r.pop("per_item", None)


def evaluate_utility(
    axis: str, model, tok, cfg: BenchConfig, original: dict | None
) -> tuple[dict, dict | None, list[str] | None]:
    """(figures incl. ``utility`` (higher is better), utility items for the bootstrap, item ids).
    ``original``: the original model's cell (a relative formula such as ``ppl``'s reads its items).
    The items, ``{"task", "values", "figures"}``, are what ``evaluation.stats`` resamples through
    the task's formula."""
    from prod_unlearn.tasks import UTILITY_TASKS

    if axis not in UTILITY_TASKS:
        raise ValueError(f"--utility {axis}: expected one of {', '.join(UTILITY_TASKS)}")
    task = UTILITY_TASKS[axis]
    res = task.evaluate(model, tok, ppl_tokens=cfg.ppl_tokens, per_item=True)
    per = res.pop("per_item", None)
    if not per:
        raise ValueError(f"utility task {axis}: its result has no per_item scores (tasks/base.py)")
    o = ((original or {}).get("items") or {}).get("utility")
    o_per = dict(zip(per, o["values"])) if o else None
    res["utility"] = round(task.utility(per, res, o_per), 4)
    items = {"task": axis, "values": list(per.values()), "figures": {k: res[k] for k in task.fixed}}
    return res, items, list(per)
