"""A toy attack for tests/test_extend.py: prompt with a comment line naming the file above the
first half of the file, and score the continuation (what a contributor's new kind looks like: one
module with the members of prod_unlearn/attacks/__init__.py, registered with one line)."""
from __future__ import annotations

from dataclasses import dataclass

from prod_unlearn.attacks.common import AttackSettings, continuation_scores, first_items, make_row, metric, plot_bleu
from prod_unlearn.data.examples import Example

NAME = "toy"
SUMMARY = "a comment naming the file is put above the prompt"
PRIMARY = "bleu"
COST_S = 1


@dataclass
class Settings(AttackSettings):
    comment: str = "# file: {id}"  # the line put above the prompt


AUDIT = Settings(max_items=4)


def run(model, tokenizer, examples: list[Example], original=None, cfg: Settings | None = None) -> dict:
    cfg = cfg or Settings()
    examples = first_items(examples, cfg.max_items)
    named = [Example(cfg.comment.format(id=e.id) + "\n" + e.prompt, e.completion, e.id, e.meta) for e in examples]
    sets = {"plain": examples, "named": named}
    scores = {c: continuation_scores(model, tokenizer, s, cfg, desc=f"toy {c}") for c, s in sets.items()}
    base = metric(scores["plain"])
    rows = [make_row("model", c, "bleu", metric(scores[c]), base, n_boot=cfg.n_boot, seed=cfg.seed) for c in sets]
    return {"kind": NAME, "summary": SUMMARY, "baseline": "plain", "config": {"items": len(examples)},
            "rows": rows, "per_item": {"model": scores}}


def plot(result: dict, path) -> None:
    plot_bleu(result, path, "toy attack")
