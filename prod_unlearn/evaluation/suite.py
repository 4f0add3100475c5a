"""Task evaluation behind `prod-unlearn eval` and the per-epoch figures in run.json."""
from __future__ import annotations

import time
from pathlib import Path

from prod_unlearn.data.examples import Example, load_examples
from prod_unlearn.evaluation.copyright import continuation_bleu
from prod_unlearn.evaluation.metrics import perplexity
from prod_unlearn.models.loading import ASSETS

DATA = ASSETS / "data"
DEFAULT_FORGET_SETS = {"copyright": DATA / "copyright.jsonl"}
HELDOUT = DATA / "heldout.jsonl"
TASKS = tuple(DEFAULT_FORGET_SETS)

# What each key of `prod-unlearn eval --json` means (README documents the same table).
KEYS = {
    "task": "task name",
    "n": "examples evaluated",
    "bleu": "mean sentence BLEU (0-1) of greedy continuations of each file's first half vs. the true second half",
    "forget_quality": "1 - bleu (higher = more forgotten)",
    "heldout_ppl": "perplexity on held-out standard-library code never trained on (utility)",
    "seconds": "wall time of the evaluation",
}


def evaluate(model, tokenizer, task: str = "copyright", data: str | Path | None = None,
             examples: list[Example] | None = None, heldout: str | Path | None = None,
             max_new_tokens: int = 512, batch_size: int = 16, ppl_tokens: int | None = 60_000) -> dict:
    if task not in TASKS:
        raise ValueError(f"--task {task}: expected one of {', '.join(TASKS)}")
    t0 = time.time()
    examples = examples if examples is not None else load_examples(data or DEFAULT_FORGET_SETS[task])
    res = continuation_bleu(model, tokenizer, examples, max_new_tokens=max_new_tokens, batch_size=batch_size)
    held = [e.completion for e in load_examples(heldout or HELDOUT)]
    ctx = min(1024, int(getattr(model.config, "max_position_embeddings", 1024) or 1024))
    ppl = perplexity(model, tokenizer, held, max_length=ctx, max_tokens=ppl_tokens)
    return {"task": task, "n": res["n"], "bleu": round(res["bleu"], 4), "forget_quality": round(1 - res["bleu"], 4),
            "heldout_ppl": round(ppl, 3), "seconds": round(time.time() - t0, 1)}
