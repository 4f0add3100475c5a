"""Membership-inference attack: is there still a trace of the forget files in the model's token
probabilities, even where it no longer reproduces them?

Scores (higher = "looks trained on"), each over a text's first ``mia_max_tokens`` tokens:

- ``loss``: the mean log-probability of the text's tokens (the classic loss attack);
- ``min_k``: Min-K% Prob (Shi et al., 2024): the mean log-probability of the k % least likely tokens;
- ``min_k_pp``: Min-K%++ (Zhang et al., 2024): each token's log-probability standardised by the
  mean and standard deviation of log p over the vocabulary at that position, then the mean of the
  k % lowest.

Members are the forget files, non-members the control files (``assets/data/control.jsonl``: files
and excerpts of the same size band the embedded model never saw). The AUC is the Mann-Whitney
statistic P(member score > non-member score), ties 1/2: 0.5 means no trace is left
(``max_items`` caps members and non-members each). Intervals
resample members and non-members independently; with an original model the paired difference
AUC(model) - AUC(original) is bootstrapped on the same resamples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from prod_unlearn.attacks.common import CONTROL, AttackSettings, _pct, attacked, auc, first_items, token_stats
from prod_unlearn.data.examples import Example, load_examples

NAME = "mia"
SUMMARY = "Min-K% / Min-K%++ membership scores: AUC of forget files against never-trained control files"
PRIMARY = "auc"
COST_S = 33
SCORES = ("loss", "min_k", "min_k_pp")


@dataclass
class Settings(AttackSettings):
    mia_k: float = 0.2  # Min-K%: the fraction of lowest-scoring tokens averaged
    mia_max_tokens: int = 512  # tokens scored per text
    control_path: str | None = None  # non-members [default: assets control.jsonl]


AUDIT = Settings(mia_max_tokens=256)


def min_k(values: np.ndarray, k: float) -> float:
    if values.size == 0:
        return float("nan")
    n = max(1, int(math.ceil(k * values.size)))
    return float(np.sort(values)[:n].mean())


def scores_of(stats: dict[str, np.ndarray], k: float) -> dict[str, float]:
    lp = stats["logp"]
    out = {"loss": float(lp.mean()) if lp.size else float("nan"), "min_k": min_k(lp, k)}
    if "mu" in stats:
        out["min_k_pp"] = min_k((lp - stats["mu"]) / stats["sigma"], k)
    return out


def membership_scores(model, tokenizer, texts: list[str], k: float = 0.2, max_tokens: int = 512) -> list[dict]:
    return [scores_of(s, k) for s in token_stats(model, tokenizer, texts, max_tokens)]


def heldout_auc(tokenizer, forget: list[Example], heldout=None):
    """model -> Min-K%++ AUC (this attack's defaults) of ``forget`` against the held-out files
    (``heldout``: a path, default the shipped ones): `unlearn --until-auc`'s figure. The attack's own
    non-members (the control files) are not read, so `attack --kind mia` scores other files."""
    from prod_unlearn.attacks.common import heldout_texts

    s = Settings()
    texts_m, texts_n = [e.prompt + e.completion for e in forget], heldout_texts(heldout)

    def score(model) -> float:
        m, n = (
            [x["min_k_pp"] for x in membership_scores(model, tokenizer, t, s.mia_k, s.mia_max_tokens)]
            for t in (texts_m, texts_n)
        )
        return auc(m, n)

    return score


def auc_with_ci(pos, neg, n_boot: int = 1000, seed: int = 0) -> dict:
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    point = auc(pos, neg)
    rng = np.random.default_rng(seed)
    boots = (
        [auc(pos[rng.integers(0, pos.size, pos.size)], neg[rng.integers(0, neg.size, neg.size)]) for _ in range(n_boot)]
        if pos.size > 1 and neg.size > 1
        else []
    )
    lo, hi = _pct(boots, point)
    return {"mean": point, "lo": lo, "hi": hi, "n": int(pos.size), "n_nonmembers": int(neg.size)}


def _paired_delta(a_pos, a_neg, b_pos, b_neg, n_boot: int, seed: int) -> dict:
    a_pos, a_neg, b_pos, b_neg = (np.asarray(x, dtype=np.float64) for x in (a_pos, a_neg, b_pos, b_neg))
    point = auc(a_pos, a_neg) - auc(b_pos, b_neg)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        ip, ineg = rng.integers(0, a_pos.size, a_pos.size), rng.integers(0, a_neg.size, a_neg.size)
        boots.append(auc(a_pos[ip], a_neg[ineg]) - auc(b_pos[ip], b_neg[ineg]))
    lo, hi = _pct(boots, point)
    return {"gain_mean": point, "gain_lo": lo, "gain_hi": hi}


def load_control(path=None) -> list[Example]:
    return load_examples(path or CONTROL)


def non_members(forget: list[Example], control: list[Example], max_items: int | None) -> list[Example]:
    """The control files minus any that are also forget files (a member cannot be a non-member);
    none left (a control set identical to the forget set) is an error, since AUC would read 0.5."""
    from prod_unlearn.data.examples import DataError
    from prod_unlearn.progress import console

    members = {e.prompt + e.completion for e in forget}
    kept = [e for e in control if e.prompt + e.completion not in members]
    if not kept:
        raise DataError(
            "--control: every control file is also a forget file; membership needs files the model never trained on"
        )
    if len(kept) < len(control):
        console.print(
            f"mia: {len(control) - len(kept)} control file(s) are also forget files and are left out "
            f"({len(kept)} remain)",
            highlight=False,
        )
    return first_items(kept, max_items)


def run(model, tokenizer, examples: list[Example], original=None, cfg: Settings | None = None) -> dict:
    cfg = cfg or Settings()
    members = first_items(examples, cfg.max_items)
    nonmembers = non_members(examples, load_control(cfg.control_path), cfg.max_items)
    texts_m = [e.prompt + e.completion for e in members]
    texts_n = [e.prompt + e.completion for e in nonmembers]
    rows, raw = [], {}
    models = attacked(model, original, cfg)
    for label, m in models:
        s_m = membership_scores(m, tokenizer, texts_m, cfg.mia_k, cfg.mia_max_tokens)
        s_n = membership_scores(m, tokenizer, texts_n, cfg.mia_k, cfg.mia_max_tokens)
        raw[label] = {
            "members": {e.id: s for e, s in zip(members, s_m)},
            "nonmembers": {e.id: s for e, s in zip(nonmembers, s_n)},
        }
    for label, _ in models:
        for sc in SCORES:
            pos = [s[sc] for s in raw[label]["members"].values()]
            neg = [s[sc] for s in raw[label]["nonmembers"].values()]
            row = {"model": label, "condition": sc, "metric": "auc", **auc_with_ci(pos, neg, cfg.n_boot, cfg.seed)}
            if label == "model" and "original" in raw:
                o = raw["original"]
                row.update(
                    _paired_delta(
                        pos,
                        neg,
                        [s[sc] for s in o["members"].values()],
                        [s[sc] for s in o["nonmembers"].values()],
                        cfg.n_boot,
                        cfg.seed,
                    )
                )
            rows.append(row)
    return {
        "kind": NAME,
        "summary": SUMMARY,
        "baseline": None,
        "config": {
            "k": cfg.mia_k,
            "max_tokens": cfg.mia_max_tokens,
            "members": len(members),
            "nonmembers": len(nonmembers),
        },
        "rows": rows,
        "per_item": raw,
    }


def plot(result: dict, path) -> None:
    from prod_unlearn.plots import bar_rows

    bar_rows(
        result["rows"],
        path,
        "membership inference: forget files vs never-trained control files",
        "AUC (mean, 95 % CI; 0.5 = no trace)",
        metric="auc",
        hline=0.5,
    )
