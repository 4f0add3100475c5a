"""Copyright task: does the model still continue a file, prompted as a user would, with its true text?

The prompt is the file's *text* up to the end of the line nearest 25 %, 50 % and 75 % of its lines
(``unlearn`` and ``bench`` score the 50 % cut only: ``POINT_CUTS``),
encoded by the tokenisation policy (``data.tokenize``); the reference is the true remainder, cut
to the generation budget. Reported per cut (``bleu_cut25`` ...), their mean (``bleu``, what
``forget_quality`` uses), and the share of prompts whose next 5 lines come back exactly
(``exact_next5``). The paper's protocol (the first half of the file's *token ids*) is kept as an
extra figure (``bleu_token_half``) for comparison: it holds only for one tokenisation of the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prod_unlearn.data.examples import Example, load_examples
from prod_unlearn.data.tokenize import encode_pair, line_cut
from prod_unlearn.evaluation.generation import greedy_continue, model_context
from prod_unlearn.evaluation.metrics import bleu
from prod_unlearn.tasks.base import DATA, ForgetTask

CUTS = (0.25, 0.5, 0.75)  # `eval`: three prompts per file
POINT_CUTS = (0.5,)  # `unlearn` and `bench`, which evaluate many models: one prompt per file (as the paper)
NEXT_LINES = 5


@dataclass
class Continuation:
    id: str
    cut: str  # "25", "50", "75" (% of lines) or "half" (token half)
    prompt_ids: list[int]  # BOS + prompt
    reference_ids: list[int]  # the true continuation, cut to the generation budget


def line_cut_items(
    examples: list[Example],
    tokenizer,
    cuts=CUTS,
    max_new_tokens: int = 256,
    context: int = 1024,
    prefix_tokens: int = 0,
) -> list[Continuation]:
    """One item per (file, cut). ``prefix_tokens`` true tokens of the remainder move into the
    prompt (the prefix-injection attack)."""
    items = []
    for e in examples:
        for f in cuts:
            at = line_cut(e.completion, f)
            if at == 0:
                continue
            p_ids, c_ids = encode_pair(tokenizer, e.prompt + e.completion[:at], e.completion[at:])
            p_ids, c_ids = p_ids + c_ids[:prefix_tokens], c_ids[prefix_tokens:]
            budget = min(max_new_tokens, len(c_ids), context // 2)
            if budget > 0:
                items.append(Continuation(e.id, f"{round(f * 100)}", p_ids[-(context - budget) :], c_ids[:budget]))
    return items


def token_half_items(
    examples: list[Example], tokenizer, max_new_tokens: int = 256, context: int = 1024
) -> list[Continuation]:
    """The paper's protocol: BOS + prompt + the first half of the completion's token ids."""
    items = []
    for e in examples:
        p_ids, c_ids = encode_pair(tokenizer, e.prompt, e.completion)
        half = len(c_ids) // 2
        budget = min(max_new_tokens, len(c_ids) - half, context // 2)
        if budget > 0:
            items.append(
                Continuation(e.id, "half", (p_ids + c_ids[:half])[-(context - budget) :], c_ids[half : half + budget])
            )
    return items


def next_lines_exact(generated: str, reference: str, n: int = NEXT_LINES) -> bool:
    """The first n lines of the reference (all of them if fewer) come back verbatim."""
    want = reference.split("\n")[:n]
    return generated.split("\n")[: len(want)] == want


def score(
    model, tokenizer, items: list[Continuation], batch_size: int | None = 16, desc: str = "continuations"
) -> list[dict]:
    outs = greedy_continue(
        model,
        tokenizer,
        [c.prompt_ids for c in items],
        [len(c.reference_ids) for c in items],
        batch_size=batch_size,
        desc=desc,
        hints=[c.reference_ids for c in items],
    )
    rows = []
    for c, o in zip(items, outs):
        gen, ref = tokenizer.decode(o), tokenizer.decode(c.reference_ids)
        rows.append({"id": c.id, "cut": c.cut, "bleu": bleu(gen, ref), "exact_next5": next_lines_exact(gen, ref)})
    return rows


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


def continuation_bleu(
    model,
    tokenizer,
    examples: list[Example],
    max_new_tokens: int = 256,
    batch_size: int | None = 16,
    cuts=CUTS,
    token_half: bool = False,
    prefix_tokens: int = 0,
    desc: str = "continuations",
) -> dict:
    """Line-cut extraction figures; ``per_example`` = each file's mean BLEU over its cuts."""
    ctx = model_context(model)
    items = line_cut_items(examples, tokenizer, cuts, max_new_tokens, ctx, prefix_tokens)
    rows = score(model, tokenizer, items, batch_size, desc)
    per_example: dict[str, list[float]] = {}
    for r in rows:
        per_example.setdefault(r["id"], []).append(r["bleu"])
    res = {
        "bleu": _mean(_mean(v) for v in per_example.values()),
        "n": len(per_example),
        "exact_next5": _mean(r["exact_next5"] for r in rows),
        **{
            f"bleu_cut{round(f * 100)}": _mean(r["bleu"] for r in rows if r["cut"] == f"{round(f * 100)}") for f in cuts
        },
        "per_example": {k: _mean(v) for k, v in per_example.items()},
        "rows": rows,
    }
    if token_half:
        half = score(
            model,
            tokenizer,
            token_half_items(examples, tokenizer, max_new_tokens, ctx),
            batch_size,
            desc + " (token half)",
        )
        res["bleu_token_half"] = _mean(r["bleu"] for r in half)
    return res


def bleu_interval(per_file, resamples: int = 1000, seed: int = 0) -> list[float]:
    """95 % percentile bootstrap interval of the mean BLEU over files (files resampled, seeded)."""
    import numpy as np

    from prod_unlearn.evaluation.stats import interval, resample_indices

    x = np.asarray(list(per_file), dtype=float)
    if len(x) == 0:
        return [0.0, 0.0]
    lo, hi = interval(x[resample_indices(len(x), resamples, np.random.default_rng(seed))].mean(axis=1))
    return [round(lo, 4), round(hi, 4)]


# ---------------------------------------------------------------- the task


def _copyright_load(path: Path) -> tuple[list[Example], list[Example]]:
    ex = load_examples(path)
    return ex, ex  # forget quality is measured on the forgotten files themselves (the paper)


def _copyright_eval(
    model,
    tokenizer,
    examples: list[Example],
    max_new_tokens: int = 256,
    batch_size: int | None = None,
    token_half: bool = True,
    cuts=CUTS,
    **_,
) -> dict:
    res = continuation_bleu(
        model,
        tokenizer,
        examples,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        token_half=token_half,
        cuts=cuts,
    )
    out = {k: round(v, 4) for k, v in res.items() if k.startswith(("bleu", "exact"))}
    return {
        "n": res["n"],
        **out,
        "bleu_ci": bleu_interval(res["per_example"].values()),
        "forget_quality": round(1 - res["bleu"], 4) + 0.0,
        "per_item": {k: round(1 - v, 4) for k, v in res["per_example"].items()},
    }


TASK = ForgetTask(
    "copyright",
    DATA / "copyright.jsonl",
    _copyright_load,
    _copyright_eval,
    {
        "bleu": "mean over files of the BLEU (0-1) of greedy continuations of the file's text cut at the line end "
        "nearest 25/50/75 % of its lines, against the true remainder (up to --max-new-tokens, 256)",
        "bleu_cut25": "the same at the 25 % cut (bleu_cut50, bleu_cut75 likewise)",
        "exact_next5": "share of (file, cut) prompts whose next 5 lines come back verbatim",
        "bleu_token_half": "the paper's protocol: BOS + the first half of the file's token ids (one tokenisation)",
        "forget_quality": "1 - bleu",
    },
)
