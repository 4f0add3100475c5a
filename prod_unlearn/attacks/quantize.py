"""Quantisation attack: round the unlearned weights as a deployment would and score forgetting again.

Unlearning often moves weights by less than a quantisation step, so rounding can snap them back
towards the memorising model. Conditions:

- ``fp32``: the weights as loaded (the baseline);
- ``bf16`` / ``fp16``: every floating-point parameter rounded to that type (computation stays in
  the model's dtype, so this is exactly the rounding, with no kernel needed);
- ``int8`` / ``int4``: simulated weight-only quantisation of every 2-D weight (linear layers and
  embeddings): symmetric round-to-nearest per output channel (row), scale = max|w| / (2^(b-1) - 1),
  then dequantised in torch. Norms and biases stay as they are.

Every condition is applied to the model in place and undone afterwards (the weights are restored
bit for bit). Each condition also reports held-out perplexity so a condition that merely breaks
the model is visible as such.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prod_unlearn.attacks.common import (
    AttackSettings,
    attacked,
    continuation_scores,
    file_nll,
    first_items,
    heldout_texts,
    make_row,
    metric,
    plot_bleu,
    ppl_summary,
    weights_restored,
)
from prod_unlearn.data.examples import Example

NAME = "quantize"
SUMMARY = "weights rounded to bf16 / fp16 or quantised per channel to int8 / int4 (round-to-nearest)"
PRIMARY = "bleu"
COST_S = 52
BITS = {"int8": 8, "int4": 4}
FLOATS = {"bf16": torch.bfloat16, "fp16": torch.float16}
CONDITIONS = ("fp32", "bf16", "fp16", "int8", "int4")


@dataclass
class Settings(AttackSettings):
    quant: tuple[str, ...] = CONDITIONS
    quant_ppl_tokens: int = 256  # held-out tokens per file for each condition's perplexity (0 = skip)
    quant_ppl_files: int = 8


AUDIT = Settings(max_items=20, quant_ppl_files=6)


def fake_quantize(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel round-to-nearest: (dequantised weight, per-row scale)."""
    qmax = 2 ** (bits - 1) - 1
    w32 = w.detach().float()
    flat = w32.reshape(w32.shape[0], -1)
    scale = flat.abs().amax(dim=1).clamp_min(1e-12) / qmax
    q = torch.clamp(torch.round(flat / scale[:, None]), -qmax, qmax)
    return (q * scale[:, None]).reshape(w.shape).to(w.dtype), scale


@torch.no_grad()
def apply_condition(model, condition: str) -> None:
    """Round / quantise ``model``'s weights in place (see the module doc)."""
    if condition == "fp32":
        return
    for _, p in model.named_parameters():  # tied weights appear once
        if not p.is_floating_point():
            continue
        if condition in FLOATS:
            p.copy_(p.to(FLOATS[condition]).to(p.dtype))
        elif condition in BITS:
            if p.dim() == 2:
                p.copy_(fake_quantize(p, BITS[condition])[0])
        else:
            raise ValueError(f"quantisation {condition!r}: expected some of {', '.join(CONDITIONS)}")


def run(model, tokenizer, examples: list[Example], original=None, cfg: Settings | None = None) -> dict:
    cfg = cfg or Settings()
    examples = first_items(examples, cfg.max_items)
    conds = list(dict.fromkeys(["fp32"] + list(cfg.quant)))
    for c in conds:
        if c != "fp32" and c not in FLOATS and c not in BITS:
            raise ValueError(f"quantisation {c!r}: expected some of {', '.join(CONDITIONS)}")
    held = heldout_texts(n_files=cfg.quant_ppl_files) if cfg.quant_ppl_tokens else []
    rows, per_item, ppl = [], {}, {}
    for label, m in attacked(model, original, cfg):
        scores, nll = {}, {}
        for c in conds:
            with weights_restored(m):
                apply_condition(m, c)
                scores[c] = continuation_scores(m, tokenizer, examples, cfg, desc=f"quantize {c}")
                if held:
                    nll[c] = file_nll(m, tokenizer, held, cfg.quant_ppl_tokens)
        per_item[label] = scores
        base = metric(scores["fp32"])
        for i, c in enumerate(conds):
            rows.append(make_row(label, c, "bleu", metric(scores[c]), base, x=i, n_boot=cfg.n_boot, seed=cfg.seed))
        if held:
            ppl[label] = {c: ppl_summary(nll[c], cfg.n_boot, cfg.seed, baseline=nll["fp32"]) for c in conds}
    return {
        "kind": NAME,
        "summary": SUMMARY,
        "baseline": "fp32",
        "config": {
            "conditions": conds,
            "cut": cfg.cut,
            "max_new_tokens": cfg.max_new_tokens,
            "items": len(examples),
            "ppl_files": len(held),
            "ppl_tokens_per_file": cfg.quant_ppl_tokens,
        },
        "rows": rows,
        "heldout_ppl": ppl,
        "per_item": per_item,
    }


def plot(result: dict, path) -> None:
    plot_bleu(result, path, "quantisation attack: forget-set BLEU after rounding the weights")
