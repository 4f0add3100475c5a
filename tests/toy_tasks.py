"""Toy tasks for tests/test_extend.py, each what a contributor writes (tasks/base.py's contract) and
adds with one ``register`` line: a forget task scoring how unlikely each item's completion has
become, and a utility task scoring how likely a few general snippets still are."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from prod_unlearn.data.examples import Example, load_examples
from prod_unlearn.data.tokenize import encode_pair
from prod_unlearn.tasks.base import ForgetTask, UtilityTask

DATA = Path(__file__).parent / "data" / "toy_forget.jsonl"
GENERAL = ["def add(a, b):\n    return a + b\n", "for i in range(3):\n    print(i)\n"]


@torch.no_grad()
def _token_prob(model, tokenizer, prompt: str, completion: str) -> float:
    """Mean probability of the completion's tokens given the prompt."""
    p, c = encode_pair(tokenizer, prompt, completion)
    ids = torch.tensor([p + c], device=next(model.parameters()).device)
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    target = ids[0, 1:]
    picked = logp[torch.arange(len(target)), target][len(p) - 1:]
    return float(picked.exp().mean()) if len(picked) else math.nan


def _load(path: Path) -> tuple[list[Example], list[Example]]:
    items = load_examples(path)
    return items, items


def _forget(model, tokenizer, examples: list[Example], **_) -> dict:
    per = {e.id: 1 - _token_prob(model, tokenizer, e.prompt, e.completion) for e in examples}
    return {"n": len(per), "forget_quality": sum(per.values()) / len(per), "per_item": per}


def _utility(model, tokenizer, **_) -> dict:
    per = {f"g{i}": _token_prob(model, tokenizer, "", text) for i, text in enumerate(GENERAL)}
    return {"utility": sum(per.values()) / len(per), "per_item": per}


FORGET = ForgetTask("toy-forget", DATA, _load, _forget, {"forget_quality": "1 - mean token probability"})
UTILITY = UtilityTask("toy-utility", _utility, {"utility": "mean token probability of general snippets"})
