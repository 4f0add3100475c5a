"""The tasks: forget tasks (what to forget, and how well it was forgotten) and utility tasks (what
must survive). Every built-in task is listed once, here; each module holds one task's loading
and scoring (building a default set is ``prod_unlearn/build/``). Used by `prod-unlearn eval`,
`unlearn`'s before/after figures and `bench`.
"""

from __future__ import annotations

import time
from pathlib import Path

from prod_unlearn.data.examples import Example
from prod_unlearn.tasks import copyright, deprecated, health, humaneval, insecure, ppl
from prod_unlearn.tasks.base import DATA, HELDOUT, ForgetTask, UtilityTask
from prod_unlearn.tasks.ppl import heldout_ppl

# Every built-in task, in the order `bench` and the documentation list them.
FORGET_TASKS: dict[str, ForgetTask] = {
    "copyright": copyright.TASK,
    "insecure": insecure.TASK,
    "deprecated": deprecated.TASK,
}
UTILITY_TASKS: dict[str, UtilityTask] = {
    "ppl": ppl.TASK,
    "humaneval": humaneval.TASK,
    "health": health.TASK,
}
__all__ = [
    "DATA",
    "HELDOUT",
    "FORGET_TASKS",
    "UTILITY_TASKS",
    "ForgetTask",
    "UtilityTask",
    "default_forget_sets",
    "evaluate",
    "heldout_ppl",
    "load_retain_model",
    "register",
]


def register(task: ForgetTask | UtilityTask) -> None:
    """Add a task (a contributor's module defines one ``TASK``; see tasks/base.py for the contract):
    `eval --task`, `bench --tasks` / `--utility` and the Python API take it from then on."""
    registry: dict = FORGET_TASKS if isinstance(task, ForgetTask) else UTILITY_TASKS
    if task.name in FORGET_TASKS or task.name in UTILITY_TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    registry[task.name] = task


def known(task: str) -> None:
    """A one-line error for a task no module registered."""
    if task not in FORGET_TASKS and task not in UTILITY_TASKS:
        raise ValueError(f"--task {task}: expected one of {', '.join([*FORGET_TASKS, *UTILITY_TASKS])}")


def check_request(task: str, data) -> UtilityTask | None:
    """Before a model loads: the task exists, ``data`` is something it reads, and a task that runs
    model-written code has its sandbox. Returns the utility task (None for a forget task)."""
    known(task)
    utility = UTILITY_TASKS.get(task)
    if data is not None and utility is not None and not utility.reads_heldout:
        readers = [n for n, t in UTILITY_TASKS.items() if t.reads_heldout]
        raise ValueError(
            f"--data {data}: --task {task} reads no data (it is a utility task; --data applies to "
            f"forget tasks and to {' and '.join(readers)})"
        )
    if utility is not None and utility.runs_code:
        from prod_unlearn.sandbox import require_isolation

        require_isolation()
    return utility


def default_forget_sets() -> dict[str, Path]:
    return {n: t.default_data for n, t in FORGET_TASKS.items()}


def evaluate(
    model,
    tokenizer,
    task: str = "copyright",
    data: str | Path | None = None,
    examples: list[Example] | None = None,
    with_ppl: bool = True,
    cache: bool = False,
    **kw,
) -> dict:
    """Evaluate one task; forget tasks also report held-out perplexity unless with_ppl=False.

    ``cache=True``: a result computed before for the same weights, tokenizer, data, options and
    evaluation code is read from disk (``evaluation/cache.py``; ``"cached": true`` in the result),
    else computed and stored. ``unlearn`` caches its before-evaluation this way.
    """
    known(task)  # (not check_request: a bench calls this at every point, and the sandbox was probed once)
    if cache:
        from prod_unlearn.evaluation import cache as eval_cache

        t0 = time.time()
        if examples is None and task in FORGET_TASKS:
            spec = FORGET_TASKS[task]
            _, examples = spec.load(Path(data) if data else spec.default_data)
        key = eval_cache.evaluation_key(
            model, tokenizer, task, examples if task in FORGET_TASKS else None, with_ppl, kw
        )
        hit = eval_cache.load(key)
        if hit is not None:
            return {**hit, "cached": True, "seconds": round(time.time() - t0, 1)}
        res = evaluate(model, tokenizer, task, data, examples, with_ppl, **kw)
        eval_cache.store(key, res)
        return res
    t0 = time.time()
    if task in UTILITY_TASKS:
        res = {"task": task, **UTILITY_TASKS[task].evaluate(model, tokenizer, **kw)}
        res.pop("per_item", None)  # (as below: bench's intervals use it, eval prints figures)
    else:
        spec = FORGET_TASKS[task]
        if examples is None:
            _, examples = spec.load(Path(data) if data else spec.default_data)
        res = {"task": task, **spec.evaluate(model, tokenizer, examples, **kw)}
        res.pop("per_item", None)  # {item id: forget quality}: bench's intervals use it, eval prints figures
        if with_ppl:
            res.update(heldout_ppl(model, tokenizer, **kw))
    res["seconds"] = round(time.time() - t0, 1)
    return res


def load_retain_model(given: str | None, examples, tokenizer, device: str, dtype: str = "auto"):
    """(name, model) of the retain model to compare with, or (None, None): the given one ('none': none);
    else the shipped retain model when the forget set is one of the default sets it never saw and the
    tokenizer is the embedded one. A retain model must share --model's tokenizer (one-line error)."""
    import json

    from prod_unlearn.data.examples import examples_hash, load_examples
    from prod_unlearn.models.loading import RETAIN_MODEL, load_companion, load_tokenizer

    if given is not None and given.lower() == "none":
        return None, None
    if given is None:
        excluded = json.loads((RETAIN_MODEL / "pretrain.json").read_text())["excluded"]["sets"]
        h = examples_hash(examples)
        if (
            not any(examples_hash(load_examples(default_forget_sets()[s])) == h for s in excluded)
            or load_tokenizer(str(RETAIN_MODEL)).get_vocab() != tokenizer.get_vocab()
        ):
            return None, None
    name = given or str(RETAIN_MODEL)
    return name, load_companion("--retain-model", name, tokenizer, device, dtype)
