"""Held-out perplexity and bits per byte: the cheapest utility figure (and the one every forget
task reports beside its own). As a utility axis its figure is relative to the original model:
ppl(original) / ppl(model) on the same windows, 1 = unchanged, -> 0 as the model breaks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from prod_unlearn.data.examples import load_examples
from prod_unlearn.evaluation.metrics import text_windows, window_bits_per_byte, window_nll
from prod_unlearn.tasks.base import HELDOUT, UtilityTask

PPL_TOKENS = 60_000  # held-out tokens scored by default (also the stopping rule's guard: training/until.py)


def heldout_ppl(
    model,
    tokenizer,
    heldout: str | Path | None = None,
    ppl_tokens: int | None = PPL_TOKENS,
    per_item: bool = False,
    **_,
) -> dict:
    """Perplexity and bits per byte on the first ``ppl_tokens`` held-out tokens; with ``per_item``
    also {window id: [summed NLL, scored tokens]}."""
    held = load_examples(heldout or HELDOUT)
    ctx = min(1024, int(getattr(model.config, "max_position_embeddings", 1024) or 1024))
    named = text_windows(tokenizer, [e.completion for e in held], ctx, ppl_tokens)
    nll, count = window_nll(model, tokenizer, [w for _, w in named], desc="perplexity")
    mean = sum(nll) / max(1, sum(count))
    ppl = math.exp(mean) if mean < 700 else float("inf")
    bpb = window_bits_per_byte(tokenizer, [w for _, w in named], nll)
    res: dict = {"heldout_ppl": round(ppl, 3), "heldout_bpb": round(bpb, 4)}
    if per_item:
        seen: dict[int, int] = {}
        res["per_item"] = {}
        for (i, _w), a, n in zip(named, nll, count):
            seen[i] = seen.get(i, -1) + 1
            res["per_item"][f"{held[i].id}#{seen[i]}"] = [a, n]
    return res


def relative_ppl(values: np.ndarray, figures: dict, original: np.ndarray | None) -> np.ndarray:
    """exp(NLL_o / T_o - NLL / T) per resample (values (B, n, 2): summed NLL, tokens per window);
    1 without an original (the original model itself)."""

    def mean_nll(v: np.ndarray) -> np.ndarray:
        return v[..., 0].sum(1) / np.maximum(1.0, v[..., 1].sum(1))

    mine = mean_nll(values)
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.exp((mean_nll(original) if original is not None else mine) - mine)
    return np.where(np.isfinite(out), out, 0.0)


TASK = UtilityTask(
    "ppl",
    heldout_ppl,
    {
        "heldout_ppl": "perplexity on the first 60 k tokens of held-out standard-library code never trained on",
        "heldout_bpb": "bits per UTF-8 byte over the same tokens (comparable across tokenizers)",
    },
    formula=relative_ppl,
    relative=True,
    reads_heldout=True,
)
