"""Shared pieces of every attack: the settings every kind has, line-cut prompts, greedy scoring, token
statistics, bootstrap intervals and the uniform result rows that tables and charts read.

Scoring follows the copyright task's line-cut protocol: a file is cut just after a line end
(``data.tokenize.line_cut``), the model is prompted with BOS + the example's prompt + the text
before the cut (``encode_pair``), greedily continues it, and the continuation is scored against
the true remainder cut to the same token budget.

A *row* is one number with its 95 % bootstrap interval over items:
``{"model", "condition", "metric", "mean", "lo", "hi", "n"}`` plus, where the attack has a
baseline condition, the paired gain over it (``gain_mean``, ``gain_lo``, ``gain_hi``) and an
optional numeric ``x`` (steps, k, bits) for line charts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prod_unlearn.data.examples import Example
from prod_unlearn.data.tokenize import encode_document, encode_pair, line_cut, pad_id, right_pad
from prod_unlearn.data.tokenize import ids as text_ids
from prod_unlearn.evaluation.generation import greedy_continue
from prod_unlearn.evaluation.metrics import bleu, window_nll

DATA = Path(__file__).resolve().parent.parent / "assets" / "data"
CONTROL = DATA / "control.jsonl"  # same-size stdlib files/excerpts the embedded model never saw
HELDOUT = DATA / "heldout.jsonl"  # unseen stdlib files (utility; relearning on unrelated code)


@dataclass
class AttackSettings:
    """What every attack reads. Each kind's module declares ``Settings``, a subclass with its own
    fields and defaults (the CLI's: the embedded model on CPU), and ``AUDIT``, the preset the audit
    and the bench run it at."""

    max_new_tokens: int = 64  # tokens generated (and scored) per item
    max_items: int | None = None  # first N items of the forget set (None = all)
    batch_size: int | None = None  # generation batch [default: generation.greedy_continue's]
    cut: float = 0.5  # line cut of the prompt: fraction of the file's lines
    n_boot: int = 1000  # bootstrap resamples for the 95 % intervals
    seed: int = 0
    original: bool = True  # also attack the original model when one is given

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


def attacked(model, original, cfg: AttackSettings) -> list[tuple[str, Any]]:
    """The (label, model) pairs an attack runs on: the model, and the original when given and asked for."""
    return [("model", model)] + ([("original", original)] if original is not None and cfg.original else [])


# ---------------------------------------------------------------- prompts and scoring


@dataclass
class Item:
    id: str
    prompt_ids: list[int]
    ref_ids: list[int]  # the true continuation, cut to the scoring budget
    ref_text: str
    gen_budget: int  # tokens generated (>= len(ref_ids) when next lines need more)
    next_lines: list[str] = field(default_factory=list)  # the true next lines (exact-lines metric)


def context_of(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", None) or 4096)


def first_items(examples: list[Example], max_items: int | None) -> list[Example]:
    return list(examples[:max_items]) if max_items else list(examples)


def cut_items(
    tokenizer,
    examples: list[Example],
    cut: float = 0.5,
    max_new_tokens: int = 64,
    prefix_tokens: int = 0,
    context: int = 1024,
    next_lines: int = 0,
) -> list[Item]:
    """One scoring item per example: prompt = BOS + prompt + completion up to its line cut (+ the
    first ``prefix_tokens`` true tokens after it: the prefix-injection attack); reference = what
    follows, cut to ``max_new_tokens``. Examples with no line cut or nothing left to score are
    skipped. With ``next_lines`` the item also keeps the remainder's next full lines (the
    ``next_lines`` metric: they all come back verbatim) and may generate up to twice the budget to
    reach them; BLEU still scores only the first ``max_new_tokens``."""
    items = []
    for e in examples:
        at = line_cut(e.completion, cut)
        if at == 0:  # a one-line completion has no line cut (as the copyright task)
            continue
        p_ids, c_ids = encode_pair(tokenizer, e.prompt + e.completion[:at], e.completion[at:])
        p_ids, c_ids = p_ids + c_ids[:prefix_tokens], c_ids[prefix_tokens:]
        budget = min(max_new_tokens, len(c_ids), context // 2)
        if budget <= 0:
            continue
        gen_budget, lines = budget, []
        if next_lines:
            rest = tokenizer.decode(c_ids)
            lines = [ln.rstrip() for ln in rest.splitlines()[:next_lines]]
            need = len(text_ids(tokenizer, "\n".join(lines) + "\n")) + 2
            gen_budget = max(budget, min(need, 2 * max_new_tokens, len(c_ids) + 1, context // 2))
            while lines and len(text_ids(tokenizer, "\n".join(lines) + "\n")) > gen_budget:
                lines = lines[:-1]  # only the lines the generation budget can reach
        items.append(Item(e.id, p_ids, c_ids[:budget], tokenizer.decode(c_ids[:budget]), gen_budget, lines))
    return items


def score_items(
    model, tokenizer, items: list[Item], batch_size: int | None = None, desc: str = "attack"
) -> dict[str, dict]:
    """Greedy continuations -> {id: {"bleu", "exact" (all budget tokens verbatim)[, "next_lines"]}}."""
    outs = greedy_continue(
        model,
        tokenizer,
        [it.prompt_ids for it in items],
        [it.gen_budget for it in items],
        batch_size=batch_size,
        desc=desc,
        hints=[it.ref_ids for it in items],
    )
    res = {}
    for it, out in zip(items, outs):
        head = out[: len(it.ref_ids)]
        r = {"bleu": bleu(tokenizer.decode(head), it.ref_text), "exact": float(head == it.ref_ids)}
        if it.next_lines:
            got = [ln.rstrip() for ln in tokenizer.decode(out).splitlines()[: len(it.next_lines)]]
            r["next_lines"] = float(got == it.next_lines)
        res[it.id] = r
    return res


def continuation_scores(
    model,
    tokenizer,
    examples: list[Example],
    cfg: AttackSettings,
    cut: float | None = None,
    prefix_tokens: int = 0,
    next_lines: int = 0,
    desc: str = "attack",
) -> dict[str, dict]:
    items = cut_items(
        tokenizer,
        examples,
        cfg.cut if cut is None else cut,
        cfg.max_new_tokens,
        prefix_tokens,
        context_of(model),
        next_lines,
    )
    return score_items(model, tokenizer, items, cfg.batch_size, desc)


def metric(scores: dict[str, dict], key: str = "bleu") -> dict[str, float]:
    return {i: s[key] for i, s in scores.items() if key in s}


# ---------------------------------------------------------------- token statistics (MIA, perplexity)


@torch.no_grad()
def token_stats(
    model, tokenizer, texts: list[str], max_tokens: int = 512, batch_size: int = 4, moments: bool = True
) -> list[dict[str, np.ndarray]]:
    """Per text (BOS + its first ``max_tokens`` tokens): the log-probability of each true next token
    and, with ``moments``, the mean ``mu`` and std ``sigma`` of log p over the vocabulary at that
    position (Min-K%++). One forward pass per batch; the model's mode is restored."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    seqs = [encode_document(tokenizer, t)[: max_tokens + 1] for t in texts]
    out: list[dict] = [{} for _ in seqs]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        ids, mask = right_pad([seqs[i] for i in idx], pad)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
        logp = torch.log_softmax(logits, dim=-1)
        tgt = ids[:, 1:].to(device)
        tok_lp = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        if moments:
            p = logp.exp()
            mu = (p * logp).sum(-1)
            sigma = ((p * logp.pow(2)).sum(-1) - mu.pow(2)).clamp_min(1e-12).sqrt()
        for r, i in enumerate(idx):
            n = len(seqs[i]) - 1
            d = {"logp": tok_lp[r, :n].cpu().numpy().astype(np.float64)}
            if moments:
                d["mu"] = mu[r, :n].cpu().numpy().astype(np.float64)
                d["sigma"] = sigma[r, :n].cpu().numpy().astype(np.float64)
            out[i] = d
    model.train(was_training)
    return out


def heldout_texts(path: str | Path | None = None, n_files: int | None = None) -> list[str]:
    from prod_unlearn.data.examples import load_examples

    ex = load_examples(path or HELDOUT)
    return [e.prompt + e.completion for e in ex[:n_files] if (e.prompt + e.completion).strip()]


def file_nll(model, tokenizer, texts: list[str], max_tokens: int = 512) -> list[tuple[float, int]]:
    """(summed NLL, tokens) of each text's first ``max_tokens`` tokens: perplexity with a bootstrap over files."""
    windows = [encode_document(tokenizer, t)[: max_tokens + 1] for t in texts]
    return list(zip(*window_nll(model, tokenizer, windows, desc="perplexity")))


def ppl_summary(nll: list[tuple[float, int]], n_boot: int = 1000, seed: int = 0, baseline=None) -> dict:
    """Pooled perplexity exp(sum NLL / sum tokens) with a 95 % bootstrap interval over files; with
    ``baseline`` (the same files under another model) also the paired ratio ppl / baseline ppl."""
    a = np.array(nll, dtype=np.float64)
    ppl = lambda x: float(math.exp(x[:, 0].sum() / max(1.0, x[:, 1].sum())))  # noqa: E731
    rng = np.random.default_rng(seed)
    boots = rng.integers(0, len(a), size=(n_boot, len(a))) if len(a) else np.zeros((0, 0), int)
    res = {"ppl": ppl(a), "n": len(a)}
    res["lo"], res["hi"] = _pct([ppl(a[b]) for b in boots], res["ppl"])
    if baseline is not None:
        b0 = np.array(baseline, dtype=np.float64)
        res["ratio"] = res["ppl"] / ppl(b0)
        res["ratio_lo"], res["ratio_hi"] = _pct([ppl(a[b]) / ppl(b0[b]) for b in boots], res["ratio"])
    return res


class weights_restored:
    """Context manager: whatever happens to the weights (and the train/eval mode) inside, they are
    put back on exit, bit for bit (a CPU copy of the state dict is kept meanwhile)."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.training = self.model.training
        self.saved = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        return self.model

    def __exit__(self, *exc):
        self.model.load_state_dict(self.saved)
        self.model.train(self.training)
        self.model.zero_grad(set_to_none=True)
        return False


# ---------------------------------------------------------------- statistics


def _pct(values, point: float, alpha: float = 0.05) -> tuple[float, float]:
    if len(values) == 0:
        return point, point
    lo, hi = np.quantile(np.asarray(values, dtype=np.float64), [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_mean(values, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Mean and its percentile-bootstrap (1 - alpha) interval, resampling items with replacement."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    m = float(v.mean())
    if v.size == 1:
        return {"mean": m, "lo": m, "hi": m, "n": 1}
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    lo, hi = _pct(means, m, alpha)
    return {"mean": m, "lo": lo, "hi": hi, "n": int(v.size)}


def make_row(
    model: str,
    condition: str,
    metric_name: str,
    values: dict[str, float],
    baseline: dict[str, float] | None = None,
    x: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """A result row: mean [95 % CI] over items, and the paired gain over ``baseline`` on the items
    both have (``base_mean``: the baseline's mean on those items)."""
    row = {
        "model": model,
        "condition": condition,
        "metric": metric_name,
        **bootstrap_mean(values.values(), n_boot, seed),
    }
    if x is not None:
        row["x"] = x
    if baseline is not None:
        common = [i for i in values if i in baseline]
        g = bootstrap_mean([values[i] - baseline[i] for i in common], n_boot, seed)
        base = sum(baseline[i] for i in common) / len(common) if common else None
        row.update({"gain_mean": g["mean"], "gain_lo": g["lo"], "gain_hi": g["hi"], "base_mean": base})
    return row


def auc(pos, neg) -> float:
    """Mann-Whitney AUC = P(score of a member > score of a non-member), ties counted 1/2."""
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    n1, n0 = pos.size, neg.size
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = _rankdata(np.concatenate([pos, neg]))
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _rankdata(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based), ties sharing the mean of their ranks (as scipy's rankdata)."""
    sorter = np.argsort(x, kind="mergesort")
    inv = np.empty(x.size, dtype=np.intp)
    inv[sorter] = np.arange(x.size)
    xs = x[sorter]
    obs = np.r_[True, xs[1:] != xs[:-1]]
    dense = obs.cumsum()[inv]
    count = np.r_[np.nonzero(obs)[0], x.size]
    return 0.5 * (count[dense] + count[dense - 1] + 1)


def fmt_ci(mean, lo, hi, digits: int = 3) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def plot_bleu(result: dict, path, title: str) -> None:
    """The chart of an attack that brings code back: its rows' BLEU per condition (95 % CI)."""
    from prod_unlearn.plots import bar_rows

    bar_rows(result["rows"], path, title, "forget-set BLEU (mean, 95 % CI)", metric="bleu")


def public(result: dict) -> dict:
    """An attack result without its bulky per-item data (what `--json` prints)."""
    return {k: v for k, v in result.items() if k not in ("per_item",)}
