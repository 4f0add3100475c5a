"""Copyright task: does the model still continue a file's first half with its true second half?"""
from __future__ import annotations

from dataclasses import dataclass

from prod_unlearn.data.examples import Example
from prod_unlearn.evaluation.generation import greedy_continue, model_context
from prod_unlearn.evaluation.metrics import bleu


@dataclass
class Continuation:
    id: str
    prompt_ids: list[int]   # BOS + prompt + first half of the completion
    reference: str          # the true continuation (second half, cut to the generation budget)


def split_halves(examples: list[Example], tokenizer, max_new_tokens: int = 512, context: int = 1024,
                 prefix_tokens: int = 0) -> list[Continuation]:
    """First half of each completion (by tokens) -> second half; ``prefix_tokens`` of the hidden
    half are moved into the prompt (the prefix-injection attack)."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    items = []
    for e in examples:
        prompt = tokenizer(e.prompt, add_special_tokens=False)["input_ids"] if e.prompt else []
        ids = tokenizer(e.completion, add_special_tokens=False)["input_ids"]
        half = len(ids) // 2 + prefix_tokens
        budget = min(max_new_tokens, len(ids) - half, context // 2)
        if budget <= 0:
            continue
        items.append(Continuation(e.id, bos + prompt + ids[:half], tokenizer.decode(ids[half:half + budget])))
    return items


def continuation_bleu(model, tokenizer, examples: list[Example], max_new_tokens: int = 512, batch_size: int = 16,
                      prefix_tokens: int = 0, desc: str = "continuations") -> dict:
    """Mean BLEU of greedy continuations against the true second halves (+ per-example scores)."""
    items = split_halves(examples, tokenizer, max_new_tokens, model_context(model), prefix_tokens)
    refs_ids = [tokenizer(c.reference, add_special_tokens=False)["input_ids"] for c in items]
    outs = greedy_continue(model, tokenizer, [c.prompt_ids for c in items], [len(r) for r in refs_ids],
                           batch_size=batch_size, desc=desc)
    scores = {c.id: bleu(tokenizer.decode(o), c.reference) for c, o in zip(items, outs)}
    return {"bleu": sum(scores.values()) / max(1, len(scores)), "n": len(scores), "per_example": scores}
