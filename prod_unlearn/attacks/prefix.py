"""Prefix-injection attack (the paper, Figure 5), on the line-cut prompts: hand the model the
first k true tokens after the cut and measure how much similarity to the forgotten code comes back.

For each k the prompt is the text before the line cut + k true tokens and the reference is what
follows them; the effect of k on an example is BLEU(k) - BLEU(0).
"""

from __future__ import annotations

from dataclasses import dataclass

from prod_unlearn.attacks import common
from prod_unlearn.attacks.common import AttackSettings, attacked, plot_bleu
from prod_unlearn.data.examples import Example

NAME = "prefix"
SUMMARY = "the first k true tokens after the prompt's line cut are appended to the prompt"
PRIMARY = "bleu"
COST_S = 33


@dataclass
class Settings(AttackSettings):
    max_new_tokens: int = 128
    ks: tuple[int, ...] = (0, 8, 16, 32, 64)  # prefix lengths (0, the baseline, is always added)


AUDIT = Settings(max_items=20, ks=(0, 16, 48))


def _per_k(model, tokenizer, examples, ks, cfg: Settings) -> dict[int, dict[str, float]]:
    return {
        k: common.metric(
            common.continuation_scores(model, tokenizer, examples, cfg, prefix_tokens=k, desc=f"prefix k={k}")
        )
        for k in ks
    }


def prefix_attack(
    model,
    tokenizer,
    examples: list[Example],
    ks=Settings.ks,
    max_new_tokens: int = Settings.max_new_tokens,
    batch_size: int | None = None,
    cut: float = 0.5,
) -> dict:
    """Returns {"bleu": {k: mean}, "gain": {k: [per-example gain]}, "gain_mean"/"gain_min"/"gain_max": {k: x}}
    (the shape ``bench`` stores: every value is a dict keyed by k)."""
    ks = sorted(set(ks) | {0})
    cfg = Settings(max_new_tokens=max_new_tokens, batch_size=batch_size, cut=cut)
    return summarise(_per_k(model, tokenizer, examples, ks, cfg))


def summarise(per_k: dict) -> dict:
    """``prefix_attack``'s shape from per-item BLEU {k: {id: bleu}} (k = 0 included; ``run``'s
    ``per_item["model"]`` has this shape with str keys, which the output keeps)."""
    base = per_k[0 if 0 in per_k else "0"]
    gains = {k: [per_k[k][i] - base[i] for i in per_k[k] if i in base] for k in per_k}
    return {
        "bleu": {k: sum(v.values()) / max(1, len(v)) for k, v in per_k.items()},
        "gain": gains,
        "gain_mean": {k: sum(g) / max(1, len(g)) for k, g in gains.items()},
        "gain_min": {k: min(g, default=0.0) for k, g in gains.items()},
        "gain_max": {k: max(g, default=0.0) for k, g in gains.items()},
    }


def run(model, tokenizer, examples: list[Example], original=None, cfg: Settings | None = None) -> dict:
    cfg = cfg or Settings()
    examples = common.first_items(examples, cfg.max_items)
    ks = sorted(set(cfg.ks) | {0})
    rows, per_item = [], {}
    for label, m in attacked(model, original, cfg):
        per_k = _per_k(m, tokenizer, examples, ks, cfg)
        per_item[label] = {str(k): v for k, v in per_k.items()}
        for k in ks:
            rows.append(
                common.make_row(label, f"k={k}", "bleu", per_k[k], per_k[0], x=k, n_boot=cfg.n_boot, seed=cfg.seed)
            )
    return {
        "kind": NAME,
        "summary": SUMMARY,
        "baseline": "k=0",
        "config": {"ks": ks, "cut": cfg.cut, "max_new_tokens": cfg.max_new_tokens, "items": len(examples)},
        "rows": rows,
        "per_item": per_item,
    }


def plot(result: dict, path) -> None:
    plot_bleu(result, path, f"prefix injection (cut at {int(100 * result['config']['cut'])} % of lines)")
