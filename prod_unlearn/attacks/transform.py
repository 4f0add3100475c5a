"""Code-transformation attack: prompt with a semantics-preserving rewrite of the file and score the
continuation against the *identically rewritten* remainder.

Rewrites (``attacks/rewrite.py``; each checked against the AST; a file a rewrite cannot handle is left out of every
condition, so all conditions score the same files):

- ``identity``: the file as it is (the baseline, scored the same way);
- ``rename``: consistent renaming of the identifiers the file itself binds (module-level and
  nested functions and classes, parameters, local and global variables, loop/with/except/
  comprehension targets) to meaningless fresh names, in place, keeping layout and comments.
  Never renamed: builtins, imported names, attribute names (``x.attr``), names bound in a class
  body (they are attributes: ``self.method``), keyword-argument names of parameters defined in the
  file, ``global``/``nonlocal`` and ``match`` names, dunders, ``self``/``cls``, names in ``__all__``.
  The result's AST equals the original's with the names mapped;
- ``strip``: comments and docstrings removed (a body left empty gets ``pass``); the AST equals the
  original's without docstrings;
- ``reformat``: the layout ``ast.unparse`` writes (quotes, spacing, parentheses, blank lines;
  comments cannot survive it); the AST is unchanged;
- ``all``: rename, then strip, then reformat.
"""

from __future__ import annotations

from dataclasses import dataclass

from prod_unlearn.attacks import common
from prod_unlearn.attacks.common import AttackSettings, attacked, plot_bleu
from prod_unlearn.attacks.rewrite import TRANSFORMS, TransformError
from prod_unlearn.data.examples import Example

NAME = "transform"
SUMMARY = "the prompt is a renamed / comment-stripped / reformatted version of the file's first part"
PRIMARY = "bleu"
COST_S = 68


@dataclass
class Settings(AttackSettings):
    transforms: tuple[str, ...] = ("identity", "rename", "strip", "reformat", "all")
    next_lines: int = 5  # the next_lines metric: these many lines after the cut all come back verbatim


AUDIT = Settings(max_items=20)


def transformed_sets(examples: list[Example], names) -> tuple[dict[str, list[Example]], list[str]]:
    """{transform: rewritten examples} over the examples every transform handles; the skipped ids."""
    for n in names:
        if n not in TRANSFORMS:
            raise ValueError(f"transform {n!r}: expected some of {', '.join(TRANSFORMS)}")
    sets: dict[str, list[Example]] = {n: [] for n in names}
    skipped, why = [], None
    for e in examples:
        try:
            done = {n: TRANSFORMS[n](e.completion) for n in names}
        except (TransformError, RecursionError) as err:
            skipped.append(e.id)
            why = why or f"{e.id}: {str(err).splitlines()[0] if str(err) else 'nested too deeply'}"
            continue
        if any(len(v.splitlines()) < 2 for v in done.values()):
            skipped.append(e.id)
            why = why or f"{e.id}: shorter than two lines once rewritten"
            continue
        for n, text in done.items():
            sets[n].append(Example(e.prompt, text, e.id, e.meta))
    if examples and len(skipped) == len(examples):  # nothing to measure is an error, not a table of nulls
        from prod_unlearn.data.examples import DataError

        raise DataError(
            f"transform: none of the {len(examples)} items is Python source that the rewrites can "
            f"parse (they rewrite Python with ast), e.g. {why}"
        )
    if skipped:
        from prod_unlearn.progress import console

        console.print(
            f"transform: {len(skipped)} of {len(examples)} items skipped (not rewritable Python), e.g. {why}",
            highlight=False,
        )
    return sets, skipped


def run(model, tokenizer, examples: list[Example], original=None, cfg: Settings | None = None) -> dict:
    cfg = cfg or Settings()
    examples = common.first_items(examples, cfg.max_items)
    names = list(dict.fromkeys(["identity"] + list(cfg.transforms)))
    sets, skipped = transformed_sets(examples, names)
    rows, per_item = [], {}
    for label, m in attacked(model, original, cfg):
        scores = {
            n: common.continuation_scores(m, tokenizer, sets[n], cfg, next_lines=cfg.next_lines, desc=f"transform {n}")
            for n in names
        }
        per_item[label] = scores
        for key in ("bleu", "next_lines"):
            base = common.metric(scores["identity"], key)
            for n in names:
                rows.append(
                    common.make_row(
                        label, n, key, common.metric(scores[n], key), base, n_boot=cfg.n_boot, seed=cfg.seed
                    )
                )
    return {
        "kind": NAME,
        "summary": SUMMARY,
        "baseline": "identity",
        "config": {
            "transforms": names,
            "cut": cfg.cut,
            "max_new_tokens": cfg.max_new_tokens,
            "next_lines": cfg.next_lines,
            "items": len(examples) - len(skipped),
        },
        "skipped": skipped,
        "rows": rows,
        "per_item": per_item,
    }


def plot(result: dict, path) -> None:
    plot_bleu(result, path, "code-transformation attack: continuation of the rewritten file")
