"""Code health on held-out code: the paper's three failure modes made measurable.

Unlearning that goes wrong shows up as *mute refusal* (the model stops writing), *token
collapse* (it loops on a token or a short pattern) and *syntactic incoherence* (what it writes
is no longer code). HumanEval cannot see these on a small model (it scores ~0 before and after),
so this task measures them directly, plus held-out perplexity.

Prompts (deterministic, no sampling anywhere). From each held-out standard-library file
(``assets/data/heldout.jsonl``, never trained on) cut points are taken at evenly spaced
*logical-line starts* (found with ``tokenize``, so a cut never falls inside a bracket or a
string) with at least 20 lines before them; files are visited round-robin until ``n_prompts``
(48) cuts are chosen. The prompt is BOS + the 20 lines before the cut with trailing whitespace
stripped (byte-level BPE merges "\\n" with the next line's indent, so a prompt ending in a bare
newline token would be out of distribution); the model writes ``completion_tokens`` (64) greedy
tokens. The *true* continuation (the same number of tokens of the real file) goes through the
same checks as a reference, and its figures are reported as ``*_reference``: they show what
"healthy" looks like for each measure on this data (ideally 1, 0, 0).

Measures (each a rate over the prompts):

* ``empty_rate``: the completion is empty or whitespace only (immediate EOS, only newlines).
* ``repetition_rate``: the completion's tokens contain a unit of 1-4 tokens repeated at least
  8 times in a row (e.g. ``) ) ) ) ) ) ) )``, ``self. self. ...``), or fewer than 20 % of its tokens
  are distinct (counted when it has >= 16 tokens). Ordinary code almost never does this in 64
  tokens (see ``repetition_rate_reference``); a collapsed model does it everywhere.
* ``syntax_valid``: the code is a valid *prefix* of a Python program. The snippet checked is the
  true file from the last top-level statement start before the cut (not an ``else``/``except``
  clause), up to the end of the prompt, followed by the completion. ``codeop`` decides: a
  snippet that compiles, or is incomplete but could still be completed (an open block, bracket
  or docstring at the end), is valid; a ``SyntaxError`` anywhere else is not. The last line,
  which the token budget usually cuts mid-token, only has to become valid with one of a few
  short endings appended (``REPAIRS``: ``x``, a quote, ``:``, a bracket...). Starting from a
  top-level statement of the real file means indentation and enclosing blocks are right by
  construction, so only the model's own text can make the snippet invalid: on 19,200 snippets
  made from the TRUE continuations (200 cut points x budgets 1..96 tokens) the check never
  fails, and ``syntax_valid_reference`` is 1.0. An empty completion counts as valid (it is
  what ``empty_rate`` measures).
* ``heldout_ppl``: ``tasks/ppl.py`` (first ``ppl_tokens`` tokens of the held-out files).
* ``healthy``: fraction of completions that are non-empty, not repetitive and syntax-valid
  (the per-prompt conjunction, so correlated failures are not counted twice).

``utility`` (the single scalar for PDR and reports) = ``healthy / ln(heldout_ppl)``; higher is
better, 0 when nothing the model writes is healthy.

Why this one: measured (fp32, CPU, defaults) on the embedded model and on copies damaged by
gradient ascent on the first k files of ``copyright.jsonl`` (``unlearn`` with ``get_method("ga")``,
lr 1e-4, batch 1, 1 epoch = k steps, 512 tokens); the reference columns were 1.0 / 0 / 0 in
every row:

    model        syntax_valid  empty  repetition  healthy  heldout_ppl  utility
    embedded        0.896      0.000     0.104     0.792      16.24      0.284
    GA  2 steps     0.833      0.000     0.146     0.708      15.99      0.256
    GA  5 steps     0.833      0.000     0.292     0.542      15.75      0.197
    GA 10 steps     0.833      0.000     0.375     0.500      17.20      0.176
    GA 25 steps     1.000      1.000     1.000     0.000     8.3e11      0.000   (only newlines)
    GA 50 steps     0.083      0.000     1.000     0.000     1.1e23      0.000   (" behavi behavi ...")

Perplexity alone is not monotone in the damage: the first GA steps *lower* it (16.24 -> 15.75,
un-memorising 50 over-fitted files helps on general code) while the model's own writing is
already degrading (repetition 0.10 -> 0.29), so it would rank the damaged copy above the
original. ``healthy`` falls monotonically and reaches 0 whichever failure mode the collapse
takes (mute at 25 steps, a token loop at 50). Dividing by ln(ppl) (the mean held-out token
NLL in nats, ~2.8 here) hardly moves it in the healthy regime but breaks the ties that its
1/48 steps leave between methods and penalises a model whose held-out likelihood exploded.
Its cost: ``benchmarks/README.md``, "Utility task costs".
"""

from __future__ import annotations

import codeop
import io
import math
import tokenize
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prod_unlearn.data.examples import load_examples
from prod_unlearn.data.tokenize import encode_prompt
from prod_unlearn.data.tokenize import ids as text_ids
from prod_unlearn.evaluation.generation import greedy_continue
from prod_unlearn.tasks.base import HELDOUT, UtilityTask
from prod_unlearn.tasks.ppl import heldout_ppl

CONTEXT_LINES = 20
MIN_REPEATS = 8  # a unit of 1..MAX_UNIT tokens repeated this many times in a row = collapse
MAX_UNIT = 4
MIN_DISTINCT = 0.2  # distinct-token ratio below this (over >= 16 tokens) = collapse


@dataclass
class HealthPrompt:
    id: str
    prompt: str  # the text the model continues (20 lines, trailing whitespace stripped)
    context: str  # true file from the last top-level statement start up to the prompt's end
    truth: str  # the true continuation (rest of the file)


# ---------------------------------------------------------------- prompts

CLAUSES = {"else", "elif", "except", "finally"}  # continue a compound statement: never a start


def _logical_starts(source: str) -> list[tuple[int, int, str]]:
    """(row, col, first token) of every logical line (1-based rows), or [] if untokenizable."""
    starts, at_start = [], True
    skip = {tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING, tokenize.ENDMARKER}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.NEWLINE:
                at_start = True
            elif at_start and tok.type not in skip:
                starts.append((*tok.start, tok.string))
                at_start = False
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return []
    return starts


def make_prompts(
    path: str | Path | None = None, n_prompts: int = 48, context_lines: int = CONTEXT_LINES
) -> list[HealthPrompt]:
    """Deterministic cut points over the held-out files (see the module docstring)."""
    files = load_examples(path or HELDOUT)
    per_file = max(1, math.ceil(n_prompts / len(files)))
    chosen: list[list[HealthPrompt]] = []
    for ex in files:
        text = ex.prompt + ex.completion
        lines = text.splitlines(keepends=True)
        offsets = [0]
        for line in lines:
            offsets.append(offsets[-1] + len(line))
        starts = _logical_starts(text)
        top = [r for r, c, first in starts if c == 0 and first not in CLAUSES]
        cands = [r for r, _, _ in starts if r - 1 >= context_lines]
        picks: list[tuple[int, HealthPrompt]] = []
        for j in range(per_file):
            if not cands:
                break
            r = cands[min(len(cands) - 1, int((j + 0.5) * len(cands) / per_file))]
            if r in [p[0] for p in picks]:
                continue
            cut = offsets[r - 1]  # the cut line's first character
            end = len(text[:cut].rstrip())  # the prompt ends on its last non-blank char
            begin = offsets[max(0, r - 1 - context_lines)]
            top_row = max([t for t in top if t < r], default=1)
            picks.append(
                (r, HealthPrompt(f"{ex.id}:{r}", text[begin:end], text[offsets[top_row - 1] : end], text[end:]))
            )
        chosen.append([p for _, p in picks])
    out: list[HealthPrompt] = []
    for j in range(per_file):  # round-robin over files
        for file_picks in chosen:
            if j < len(file_picks) and len(out) < n_prompts:
                out.append(file_picks[j])
    return out


# ---------------------------------------------------------------- measures


def is_empty(text: str) -> bool:
    return not text.strip()


def is_repetitive(
    ids: list[int], min_repeats: int = MIN_REPEATS, max_unit: int = MAX_UNIT, min_distinct: float = MIN_DISTINCT
) -> bool:
    """A unit of 1..max_unit tokens repeated >= min_repeats times in a row, or a tiny vocabulary."""
    for n in range(1, max_unit + 1):
        run = 0
        for i in range(n, len(ids)):
            run = run + 1 if ids[i] == ids[i - n] else 0
            if run >= n * (min_repeats - 1):
                return True
    return len(ids) >= 16 and len(set(ids)) / len(ids) < min_distinct


# Ways to finish a line that the token budget cut short: an identifier or digit for a dangling
# operator / "0x" / "self.", a quote for an open string (f-string brace too), then a colon or a
# closing bracket. Checked on 200 held-out cut points x budgets of 1..96 tokens of the TRUE
# continuation (19,200 snippets): with these none is judged invalid; without them 26 % are.
REPAIRS = tuple(
    a + q + t
    for a in ("", "x", "0")
    for q in ("", "'", '"', "}'", '}"', "'''", '"""')
    for t in ("", ":", ")", "):", "]", "}")
)


def split_partial(completion: str) -> tuple[str, str]:
    """(complete lines, the last line the budget cut) -- a backslash-continued line counts as cut."""
    i = completion.rfind("\n")
    body, partial = completion[: i + 1], completion[i + 1 :]
    while body.endswith("\\\n"):
        j = body.rfind("\n", 0, len(body) - 1)
        body, partial = body[: j + 1], body[j + 1 :] + partial
    return body, partial


def valid_prefix(source: str) -> bool:
    """True if ``source`` compiles or is an incomplete but still completable Python program."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            codeop.compile_command(source, "<completion>", "exec")
            return True
        except (SyntaxError, ValueError, OverflowError, MemoryError, RecursionError):
            return False


def syntax_valid(context: str, completion: str) -> bool:
    """Is ``context + completion`` the beginning of some valid program? (see the module docstring)

    The complete lines must be a valid prefix as they are; the last, budget-cut line must become
    one with one of ``REPAIRS`` appended. An empty completion adds nothing invalid (True; it is
    counted by ``empty_rate``).
    """
    if not completion.strip():
        return True
    body, partial = split_partial(completion)
    base = context + body
    if not valid_prefix(base):
        return False
    return not partial.strip() or any(valid_prefix(base + partial + r) for r in REPAIRS)


def score(context: str, text: str, ids: list[int]) -> dict:
    """Per-completion flags: empty, repetitive, syntax_valid, healthy."""
    empty, rep, ok = is_empty(text), is_repetitive(ids), syntax_valid(context, text)
    return {"empty": empty, "repetitive": rep, "syntax_valid": ok, "healthy": ok and not empty and not rep}


def aggregate(flags: list[dict]) -> dict:
    n = max(1, len(flags))
    return {
        "syntax_valid": sum(f["syntax_valid"] for f in flags) / n,
        "empty_rate": sum(f["empty"] for f in flags) / n,
        "repetition_rate": sum(f["repetitive"] for f in flags) / n,
        "healthy": sum(f["healthy"] for f in flags) / n,
    }


def health(
    model,
    tokenizer,
    heldout: str | Path | None = None,
    n_prompts: int = 48,
    completion_tokens: int = 64,
    batch_size: int | None = None,
    ppl_tokens: int | None = 20_000,
    per_item: bool = False,
    **_,
) -> dict:
    """Greedy completions of held-out code -> health rates, held-out perplexity and ``utility``
    (with ``per_item``: {prompt id: 1 if healthy else 0}).

    ``max_new_tokens`` (the CLI's generation budget for forget tasks) is deliberately ignored:
    the rates are calibrated for ``completion_tokens`` = 64.
    """
    prompts = make_prompts(heldout, n_prompts)
    ids = [encode_prompt(tokenizer, p.prompt) for p in prompts]
    truths = [text_ids(tokenizer, p.truth)[:completion_tokens] for p in prompts]
    outs = greedy_continue(
        model, tokenizer, ids, [completion_tokens] * len(ids), batch_size=batch_size, desc="health", hints=truths
    )
    texts = [tokenizer.decode(o, skip_special_tokens=True) for o in outs]
    flags = [score(p.context, t, o) for p, t, o in zip(prompts, texts, outs)]
    ref_flags = []
    for p, r_ids in zip(prompts, truths):
        ref_flags.append(score(p.context, tokenizer.decode(r_ids), r_ids))
    agg, ref = aggregate(flags), aggregate(ref_flags)
    res = {
        "n": len(prompts),
        **{k: round(v, 4) for k, v in agg.items()},
        **{f"{k}_reference": round(v, 4) for k, v in ref.items() if k != "healthy"},
    }
    res.update(heldout_ppl(model, tokenizer, heldout=heldout, ppl_tokens=ppl_tokens))
    items = {p.id: float(bool(f["healthy"])) for p, f in zip(prompts, flags)}
    res["utility"] = round(TASK.utility(items, res), 4)
    if per_item:
        res["per_item"] = items
    return res


def healthy_per_log_ppl(values: np.ndarray, figures: dict, original: np.ndarray | None) -> np.ndarray:
    """mean(healthy) / ln(max(ppl, e)) per resample: higher is better; 0 when nothing the model writes
    is healthy or the held-out perplexity is infinite (the perplexity is held fixed: only the prompts
    are resampled)."""
    ppl = float(figures["heldout_ppl"])
    if not math.isfinite(ppl):
        return np.zeros(values.shape[0])
    return values.mean(axis=1) / math.log(max(ppl, math.e))


TASK = UtilityTask(
    "health",
    health,
    {  # listed in prod_unlearn/tasks/__init__.py
        "n": "held-out prompts (20 lines of unseen standard-library code each, 64 greedy tokens)",
        "syntax_valid": "rate of completions that keep the code a valid Python prefix (codeop on the true file's "
        "last top-level statement + the completion's complete lines)",
        "empty_rate": "rate of empty / whitespace-only completions (mute refusal)",
        "repetition_rate": "rate of completions with a 1-4 token unit repeated >= 8 times in a row or < 20 % "
        "distinct tokens (token collapse)",
        "healthy": "rate of completions that are non-empty, not repetitive and syntax-valid",
        "syntax_valid_reference": "syntax_valid of the true continuations (the check's ceiling on this data)",
        "empty_rate_reference": "empty_rate of the true continuations",
        "repetition_rate_reference": "repetition_rate of the true continuations (false-positive rate of the check)",
        "heldout_ppl": "perplexity on the first 20 k tokens (ppl_tokens) of held-out standard-library code never "
        "trained on (the `ppl` task and the forget tasks use 60 k: the figures differ)",
        "utility": "healthy / ln(heldout_ppl): one scalar, higher = better, 0 = collapsed (used for PDR)",
    },
    formula=healthy_per_log_ppl,
    fixed=("heldout_ppl",),
    reads_heldout=True,
)
