"""Task registry behind `prod-unlearn eval`, `unlearn`'s before/after figures and `bench`.

A forget task = a default data file (shipped, built from the embedded model's corpus), a loader
for its public format returning (forget set, evaluation set), and an evaluation returning one
flat dict with at least ``n`` and ``forget_quality`` in [0, 1] (higher = more forgotten).
A utility task evaluates the model alone (no forget data).

Every built-in task is listed once, at the bottom of this module (``FORGET_TASKS``,
``UTILITY_TASKS``): nothing registers itself on import and no caller has to load anything first.
"""
from __future__ import annotations

import importlib
import time
from collections.abc import Mapping
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


# ---------------------------------------------------------------- copyright

def _copyright_load(path: Path) -> tuple[list[Example], list[Example]]:
    ex = load_examples(path)
    return ex, ex  # forget quality is measured on the forgotten files themselves (the paper)


def _copyright_eval(model, tokenizer, examples: list[Example], max_new_tokens: int = 256,
                    batch_size: int | None = None, token_half: bool = True, **_) -> dict:
    res = continuation_bleu(model, tokenizer, examples, max_new_tokens=max_new_tokens, batch_size=batch_size,
                            token_half=token_half)
    out = {k: round(v, 4) for k, v in res.items() if k.startswith(("bleu", "exact"))}
    return {"n": res["n"], **out, "forget_quality": round(1 - res["bleu"], 4) + 0.0,
            "per_item": {k: round(1 - v, 4) for k, v in res["per_example"].items()}}


COPYRIGHT = ForgetTask(
    "copyright", DATA / "copyright.jsonl", _copyright_load, _copyright_eval,
    {"bleu": "mean over files of the BLEU (0-1) of greedy continuations of the file's text cut at the line end "
             "nearest 25/50/75 % of its lines, against the true remainder (up to --max-new-tokens, 256)",
     "bleu_cut25": "the same at the 25 % cut (bleu_cut50, bleu_cut75 likewise)",
     "exact_next5": "share of (file, cut) prompts whose next 5 lines come back verbatim",
     "bleu_token_half": "the paper's protocol: BOS + the first half of the file's token ids (one tokenisation)",
     "forget_quality": "1 - bleu"})


# ---------------------------------------------------------------- held-out perplexity (utility)

def heldout_ppl(model, tokenizer, heldout: str | Path | None = None, ppl_tokens: int | None = 60_000, **_) -> dict:
    from prod_unlearn.evaluation.metrics import bits_per_byte
    held = [e.completion for e in load_examples(heldout or HELDOUT)]
    ctx = min(1024, int(getattr(model.config, "max_position_embeddings", 1024) or 1024))
    ppl = perplexity(model, tokenizer, held, max_length=ctx, max_tokens=ppl_tokens)
    bpb = bits_per_byte(model, tokenizer, held, ctx, max_tokens=ppl_tokens, ppl=ppl)  # same tokens
    return {"heldout_ppl": round(ppl, 3), "heldout_bpb": round(bpb, 4)}


PPL = UtilityTask("ppl", heldout_ppl, {
    "heldout_ppl": "perplexity on the first 60 k tokens of held-out standard-library code never trained on",
    "heldout_bpb": "bits per UTF-8 byte over the same tokens (comparable across tokenizers)"})


# ---------------------------------------------------------------- the registry

class TaskList(Mapping):
    """name -> task, for tasks given as objects or as ``"module:ATTRIBUTE"``. A module is imported
    the first time one of its tasks is looked up: the task modules import this one (ForgetTask,
    DATA, heldout_ppl), so importing them here, at import time, would be circular. Names, ``in``
    and ``len`` import nothing; an import error is raised as is."""

    def __init__(self, entries: dict):
        self._entries = dict(entries)

    def __getitem__(self, name: str):
        task = self._entries[name]
        if isinstance(task, str):
            module, attr = task.split(":")
            task = self._entries[name] = getattr(importlib.import_module(module), attr)
        return task

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


# Every built-in task, in the order `bench` and the documentation list them.
FORGET_TASKS: Mapping[str, ForgetTask] = TaskList({
    "copyright": COPYRIGHT,
    "insecure": "prod_unlearn.evaluation.insecure:TASK",
    "deprecated": "prod_unlearn.evaluation.deprecated:TASK",
})
UTILITY_TASKS: Mapping[str, UtilityTask] = TaskList({
    "ppl": PPL,
    "humaneval": "prod_unlearn.evaluation.humaneval:TASK",
    "health": "prod_unlearn.evaluation.health:TASK",
})


def default_forget_sets() -> dict[str, Path]:
    return {n: t.default_data for n, t in FORGET_TASKS.items()}


def evaluate(model, tokenizer, task: str = "copyright", data: str | Path | None = None,
             examples: list[Example] | None = None, with_ppl: bool = True, cache: bool = False, **kw) -> dict:
    """Evaluate one task; forget tasks also report held-out perplexity unless with_ppl=False.

    ``cache=True``: a result computed before for the same weights, tokenizer, data, options and
    evaluation code is read from disk (``evaluation/cache.py``; ``"cached": true`` in the result),
    else computed and stored. ``unlearn`` caches its before-evaluation this way.
    """
    if cache:
        from prod_unlearn.evaluation import cache as eval_cache
        t0 = time.time()
        if examples is None and task in FORGET_TASKS:
            spec = FORGET_TASKS[task]
            _, examples = spec.load(Path(data) if data else spec.default_data)
        key = eval_cache.evaluation_key(model, tokenizer, task, examples if task in FORGET_TASKS else None,
                                        with_ppl, kw)
        hit = eval_cache.load(key)
        if hit is not None:
            return {**hit, "cached": True, "seconds": round(time.time() - t0, 1)}
        res = evaluate(model, tokenizer, task, data, examples, with_ppl, **kw)
        eval_cache.store(key, res)
        return res
    t0 = time.time()
    if task in UTILITY_TASKS:
        res = {"task": task, **UTILITY_TASKS[task].evaluate(model, tokenizer, **kw)}
    elif task in FORGET_TASKS:
        spec = FORGET_TASKS[task]
        if examples is None:
            _, examples = spec.load(Path(data) if data else spec.default_data)
        res = {"task": task, **spec.evaluate(model, tokenizer, examples, **kw)}
        res.pop("per_item", None)   # {item id: forget quality}: bench's intervals use it, eval prints figures
        if with_ppl:
            res.update(heldout_ppl(model, tokenizer, **kw))
    else:
        raise ValueError(f"--task {task}: expected one of {', '.join(list(FORGET_TASKS) + list(UTILITY_TASKS))}")
    res["seconds"] = round(time.time() - t0, 1)
    return res
