"""Held-out perplexity and bits per byte: the cheapest utility figure (and the one every forget
task reports beside its own)."""

from __future__ import annotations

from pathlib import Path

from prod_unlearn.data.examples import load_examples
from prod_unlearn.evaluation.metrics import bits_per_byte, perplexity
from prod_unlearn.tasks.base import HELDOUT, UtilityTask


def heldout_ppl(model, tokenizer, heldout: str | Path | None = None, ppl_tokens: int | None = 60_000, **_) -> dict:
    held = [e.completion for e in load_examples(heldout or HELDOUT)]
    ctx = min(1024, int(getattr(model.config, "max_position_embeddings", 1024) or 1024))
    ppl = perplexity(model, tokenizer, held, max_length=ctx, max_tokens=ppl_tokens)
    bpb = bits_per_byte(model, tokenizer, held, ctx, max_tokens=ppl_tokens, ppl=ppl)  # same tokens
    return {"heldout_ppl": round(ppl, 3), "heldout_bpb": round(bpb, 4)}


TASK = UtilityTask(
    "ppl",
    heldout_ppl,
    {
        "heldout_ppl": "perplexity on the first 60 k tokens of held-out standard-library code never trained on",
        "heldout_bpb": "bits per UTF-8 byte over the same tokens (comparable across tokenizers)",
    },
)
