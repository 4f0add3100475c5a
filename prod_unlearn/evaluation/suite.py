"""Task registry behind `prod-unlearn eval`, `unlearn`'s before/after figures and `bench`.

A forget task = a default data file (shipped, built from the embedded model's corpus), a loader
for its public format returning (forget set, evaluation set), and an evaluation returning one
flat dict with at least ``n`` and ``forget_quality`` in [0, 1] (higher = more forgotten).
A utility task evaluates the model alone (no forget data).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from prod_unlearn.data.examples import Example, load_examples
from prod_unlearn.evaluation.copyright import continuation_bleu
from prod_unlearn.evaluation.metrics import perplexity
from prod_unlearn.models.loading import ASSETS

DATA = ASSETS / "data"
HELDOUT = DATA / "heldout.jsonl"


@dataclass
class ForgetTask:
    name: str
    default_data: Path
    load: Callable[[Path], tuple[list[Example], list[Example]]]    # file -> (forget, eval)
    evaluate: Callable[..., dict]                                    # (model, tok, eval_examples, **kw) -> dict
    keys: dict[str, str]                                             # documented result keys
    # The embedded model does not reproduce this set by itself: `bench` first memorises the
    # forget set (the paper's own setup: it fine-tuned CodeLlama on what it then unlearned).
    memorise_first: bool = False


@dataclass
class UtilityTask:
    name: str
    evaluate: Callable[..., dict]                                    # (model, tok, **kw) -> dict
    keys: dict[str, str]


FORGET_TASKS: dict[str, ForgetTask] = {}
UTILITY_TASKS: dict[str, UtilityTask] = {}


def register_forget_task(task: ForgetTask) -> ForgetTask:
    FORGET_TASKS[task.name] = task
    return task


def register_utility_task(task: UtilityTask) -> UtilityTask:
    UTILITY_TASKS[task.name] = task
    return task


# ---------------------------------------------------------------- copyright

def _copyright_load(path: Path) -> tuple[list[Example], list[Example]]:
    ex = load_examples(path)
    return ex, ex  # forget quality is measured on the forgotten files themselves (the paper)


def _copyright_eval(model, tokenizer, examples: list[Example], max_new_tokens: int = 512,
                    batch_size: int = 16, **_) -> dict:
    res = continuation_bleu(model, tokenizer, examples, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return {"n": res["n"], "bleu": round(res["bleu"], 4), "forget_quality": round(1 - res["bleu"], 4) + 0.0}


register_forget_task(ForgetTask(
    "copyright", DATA / "copyright.jsonl", _copyright_load, _copyright_eval,
    {"bleu": "mean sentence BLEU (0-1) of greedy continuations of each file's first half vs. its true second half",
     "forget_quality": "1 - bleu"}))


# ---------------------------------------------------------------- held-out perplexity (utility)

def heldout_ppl(model, tokenizer, heldout: str | Path | None = None, ppl_tokens: int | None = 60_000, **_) -> dict:
    held = [e.completion for e in load_examples(heldout or HELDOUT)]
    ctx = min(1024, int(getattr(model.config, "max_position_embeddings", 1024) or 1024))
    return {"heldout_ppl": round(perplexity(model, tokenizer, held, max_length=ctx, max_tokens=ppl_tokens), 3)}


register_utility_task(UtilityTask("ppl", heldout_ppl, {
    "heldout_ppl": "perplexity on the first 60 k tokens of held-out standard-library code never trained on"}))


def _load_builtin_tasks() -> None:
    """Import the task modules that register themselves (kept lazy: they pull heavier deps)."""
    import importlib
    for mod in ("insecure", "deprecated", "humaneval", "health"):
        try:
            importlib.import_module(f"prod_unlearn.evaluation.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"prod_unlearn.evaluation.{mod}":
                raise


def default_forget_sets() -> dict[str, Path]:
    _load_builtin_tasks()
    return {n: t.default_data for n, t in FORGET_TASKS.items()}


def evaluate(model, tokenizer, task: str = "copyright", data: str | Path | None = None,
             examples: list[Example] | None = None, with_ppl: bool = True, **kw) -> dict:
    """Evaluate one task; forget tasks also report held-out perplexity unless with_ppl=False."""
    _load_builtin_tasks()
    t0 = time.time()
    if task in UTILITY_TASKS:
        res = {"task": task, **UTILITY_TASKS[task].evaluate(model, tokenizer, **kw)}
    elif task in FORGET_TASKS:
        spec = FORGET_TASKS[task]
        if examples is None:
            _, examples = spec.load(Path(data) if data else spec.default_data)
        res = {"task": task, **spec.evaluate(model, tokenizer, examples, **kw)}
        if with_ppl:
            res.update(heldout_ppl(model, tokenizer, **kw))
    else:
        raise ValueError(f"--task {task}: expected one of {', '.join(list(FORGET_TASKS) + list(UTILITY_TASKS))}")
    res["seconds"] = round(time.time() - t0, 1)
    return res
