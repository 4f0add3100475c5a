"""Prefix-injection attack (the paper, Figure 5): hand the model the first k true tokens of the
hidden half and measure how much similarity to the forgotten code comes back.

For each k the prompt is the first half + k true tokens and the reference is what follows them;
the effect of k on an example is BLEU(k) - BLEU(0).
"""
from __future__ import annotations

from prod_unlearn.data.examples import Example
from prod_unlearn.evaluation.copyright import continuation_bleu

DEFAULT_KS = (0, 8, 16, 32, 64)


def prefix_attack(model, tokenizer, examples: list[Example], ks=DEFAULT_KS, max_new_tokens: int = 128,
                  batch_size: int = 16) -> dict:
    """Returns {"bleu": {k: mean}, "gain": {k: [per-example gain]}, "gain_mean"/"gain_min"/"gain_max": {k: x}}."""
    ks = sorted(set(ks) | {0})
    per_k = {k: continuation_bleu(model, tokenizer, examples, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                  prefix_tokens=k, desc=f"attack k={k}")["per_example"] for k in ks}
    base = per_k[0]
    gains = {k: [per_k[k][i] - base[i] for i in per_k[k] if i in base] for k in ks}
    return {"bleu": {k: sum(v.values()) / max(1, len(v)) for k, v in per_k.items()},
            "gain": gains,
            "gain_mean": {k: sum(g) / max(1, len(g)) for k, g in gains.items()},
            "gain_min": {k: min(g, default=0.0) for k, g in gains.items()},
            "gain_max": {k: max(g, default=0.0) for k, g in gains.items()}}
