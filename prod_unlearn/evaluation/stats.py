"""Bootstrap intervals over evaluation items for `bench`: forget quality, utility and PDR.

What varies. A task's figures are means (or ratios of sums) over its evaluation *items*: the
copyright files, the insecure prompts, the held-out deprecated call sites, and on the utility
side the health prompts (or the held-out perplexity windows on the ``ppl`` axis). Another draw of
items from the same source would give other figures; the bootstrap estimates how much.

How. One replicate = one draw of the forget items with replacement (n of n) and, independently,
one draw of the utility items. The SAME draw is applied to every evaluation point of every
method (and of every seed) of the task, so all points are recomputed on the same resampled
items and the PDR is recomputed from them (``pdr_replicates``). 1000 replicates by default,
seeded. A figure's 95 % interval is the 2.5 and 97.5 percentiles of its replicates (percentile
bootstrap); the point estimate is the figure on the items as they are.

Comparisons. Two methods' figures are compared *paired*: the difference is computed in every
replicate (same items for both), and the difference is called larger than its interval
(``separated``) when the 95 % interval of the paired difference excludes 0. Otherwise it is a
tie. This is sharper than checking whether the two methods' own intervals overlap (items that
are hard for one method are usually hard for the other), and it is the test the report marks.

Utility items (``items["utility"]`` of a bench cell): ``{"task", "values": [per item], "figures"}``.
The utility task's ``formula`` (``tasks/base.py``) maps the resampled values (and the original
model's, resampled with the same draw) to the utility of each replicate: the mean by default,
healthy / ln(perplexity) for ``health`` (its perplexity held fixed in ``figures``), ppl(original) /
ppl(model) for ``ppl`` (values: summed NLL and tokens per held-out window). A cell without items
uses its scalar in every replicate (no interval).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

LEVEL = 0.95


# ---------------------------------------------------------------- primitives


def resample_indices(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n) item indices drawn with replacement."""
    if n <= 0:
        return np.zeros((resamples, 0), dtype=np.int64)
    return rng.integers(0, n, size=(resamples, n))


def identity_indices(n: int) -> np.ndarray:
    """The items as they are: the point estimate is every statistic at this 'replicate'."""
    return np.arange(n, dtype=np.int64)[None, :]


def interval(reps: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of replicates."""
    reps = np.asarray(reps, dtype=float)
    a = (1 - level) / 2
    lo, hi = np.percentile(reps, [100 * a, 100 * (1 - a)])
    return float(lo), float(hi)


def gap_closed(original, model, floor, resamples: int = 1000, seed=0, level: float = LEVEL) -> dict | None:
    """Share of the gap from the original's mean score to the floor's (a model never trained on the
    items) that ``model`` closed: 0 = unchanged, 1 = as if never trained, > 1 past the floor. The
    three score lists are per item, in the same order; the interval resamples items, paired."""
    o, m, f = (np.asarray(x, dtype=float) for x in (original, model, floor))
    if not (len(o) == len(m) == len(f)) or len(o) == 0 or abs(f.mean() - o.mean()) < 1e-9:
        return None
    idx = resample_indices(len(o), resamples, np.random.default_rng(seed))
    den = f[idx].mean(1) - o[idx].mean(1)
    ok = np.abs(den) > 1e-9
    reps = (m[idx].mean(1) - o[idx].mean(1))[ok] / den[ok]
    return summary(float((m.mean() - o.mean()) / (f.mean() - o.mean())), reps, level)


def summary(point: float, reps: np.ndarray, level: float = LEVEL) -> dict:
    lo, hi = interval(reps, level)
    return {"point": float(point), "lo": lo, "hi": hi}


def paired_difference(
    point_a: float, reps_a: np.ndarray, point_b: float, reps_b: np.ndarray, level: float = LEVEL
) -> dict:
    """a - b with the interval of the paired difference; ``separated`` when it excludes 0."""
    lo, hi = interval(np.asarray(reps_a) - np.asarray(reps_b), level)
    return {"diff": float(point_a - point_b), "lo": lo, "hi": hi, "separated": bool(lo > 0 or hi < 0)}


# ---------------------------------------------------------------- statistics per replicate


def mean_replicates(values, idx: np.ndarray, fallback: float | None = None) -> np.ndarray:
    """Mean of ``values`` over each row of ``idx``; ``values`` None -> ``fallback`` everywhere."""
    if values is None or len(values) == 0:
        return np.full(idx.shape[0], np.nan if fallback is None else float(fallback))
    v = np.asarray(values, dtype=float)
    return v[idx].mean(axis=1)


def mean_of_items(values: np.ndarray, figures: dict, original: np.ndarray | None) -> np.ndarray:
    """The default utility formula: the mean of the items' values in each replicate."""
    return values.mean(axis=1)


def utility_replicates(
    u: dict | None,
    idx: np.ndarray,
    original: dict | None = None,
    fallback: float | None = None,
    formula: Callable[[np.ndarray, dict, np.ndarray | None], np.ndarray] = mean_of_items,
) -> np.ndarray:
    """Utility per replicate for one evaluation point: ``formula`` on the resampled values."""
    if not u:
        return np.full(idx.shape[0], np.nan if fallback is None else float(fallback))
    o = np.asarray(original["values"], dtype=np.float64)[idx] if original else None
    return formula(np.asarray(u["values"], dtype=np.float64)[idx], u.get("figures") or {}, o)


def pdr_replicates(fq: dict[str, np.ndarray], u: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Pooled PDR (``pareto.pdr``) in every replicate at once.

    fq[m], u[m]: (points of m, replicates). PDR(m) per replicate = share of (point of m, point of
    a rival) pairs in which m's point is no worse on both axes and strictly better on one.
    """
    out = {}
    for m in fq:
        rivals = [r for r in fq if r != m]
        if not rivals or fq[m].shape[0] == 0:
            out[m] = np.zeros(fq[m].shape[1] if fq[m].ndim == 2 else 1)
            continue
        rf = np.concatenate([fq[r] for r in rivals], axis=0)[None]  # (1, R, B)
        ru = np.concatenate([u[r] for r in rivals], axis=0)[None]
        af, au = fq[m][:, None], u[m][:, None]  # (P, 1, B)
        dom = (af >= rf) & (au >= ru) & ((af > rf) | (au > ru))
        out[m] = dom.mean(axis=(0, 1)) if rf.shape[1] else np.zeros(af.shape[-1])
    return out


# ---------------------------------------------------------------- one task of a bench


def bootstrap_task(
    original: dict | None,
    runs: dict[str, dict[int, list[dict]]],
    resamples: int = 1000,
    seed=0,
    level: float = LEVEL,
    indices: tuple[np.ndarray, np.ndarray] | None = None,
    formula: Callable[[np.ndarray, dict, np.ndarray | None], np.ndarray] = mean_of_items,
) -> dict:
    """Intervals for one task (``formula``: the utility task's, ``tasks/base.py``).

    original: the cell of the model the methods start from (or None); runs[method][seed] = that
    run's cells in step order. A cell holds ``forget_quality``, ``utility`` and optionally
    ``items = {"fq": [per forget item], "utility": {...}}`` (all cells of a task: same items, same
    order). Returns a JSON-ready summary; ``_replicates`` (popped by callers that combine tasks)
    holds the PDR replicates per method. ``indices`` = (forget, utility) index matrices to use
    instead of random draws (tests).
    """
    cells = ([original] if original else []) + [c for s in runs.values() for cs in s.values() for c in cs]
    n_fq = _common_len([(c.get("items") or {}).get("fq") for c in cells])
    n_u = _common_len([_utility_len((c.get("items") or {}).get("utility")) for c in cells])
    if indices is not None:
        idx_f, idx_u = (np.asarray(i, dtype=np.int64) for i in indices)
        resamples = idx_f.shape[0]
    else:
        rng = np.random.default_rng(seed)
        idx_f = resample_indices(n_fq, resamples, rng)
        idx_u = resample_indices(n_u, resamples, rng)
    orig_u = (original.get("items") or {}).get("utility") if original else None

    def point_stats(c: dict, i_f: np.ndarray, i_u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        items = c.get("items") or {}
        f = mean_replicates(items.get("fq") if n_fq else None, i_f, c.get("forget_quality"))
        uu = utility_replicates(items.get("utility") if n_u else None, i_u, orig_u, c.get("utility"), formula)
        return f, uu

    def evaluate(i_f: np.ndarray, i_u: np.ndarray):
        pts = {
            m: {s: [point_stats(c, i_f, i_u) for c in cs] for s, cs in by_seed.items()} for m, by_seed in runs.items()
        }
        seeds = sorted({s for by_seed in runs.values() for s in by_seed})
        pdr_by_seed = {}
        for s in seeds:
            have = {m: pts[m][s] for m in runs if s in pts[m] and pts[m][s]}
            pdr_by_seed[s] = pdr_replicates(
                {m: np.stack([p[0] for p in v]) for m, v in have.items()},
                {m: np.stack([p[1] for p in v]) for m, v in have.items()},
            )
        orig = point_stats(original, i_f, i_u) if original else None
        return pts, pdr_by_seed, orig

    p_pts, p_pdr, p_orig = evaluate(identity_indices(n_fq), identity_indices(n_u))
    r_pts, r_pdr, r_orig = evaluate(idx_f, idx_u)

    out: dict = {
        "n_items": {"forget": n_fq, "utility": n_u},
        "resamples": resamples,
        "level": level,
        "seed": seed,
        "points": {},
        "methods": {},
        "pairs": {},
    }
    if original:
        out["original"] = {
            "forget_quality": summary(p_orig[0][0], r_orig[0], level),
            "utility": summary(p_orig[1][0], r_orig[1], level),
        }
    finals: dict[str, dict[str, tuple[float, np.ndarray]]] = {
        "pdr": {},
        "final_forget_quality": {},
        "final_utility": {},
    }
    for m, by_seed in runs.items():
        out["points"][m] = {}
        for s, cs in by_seed.items():
            out["points"][m][str(s)] = [
                {
                    "step": c.get("step"),
                    "epoch": c.get("epoch"),
                    "forget_quality": summary(pp[0][0], rp[0], level),
                    "utility": summary(pp[1][0], rp[1], level),
                }
                for c, pp, rp in zip(cs, p_pts[m][s], r_pts[m][s])
            ]
        seeds = [s for s in by_seed if by_seed[s]]
        if not seeds:
            continue
        per_seed = {
            "pdr": [float(p_pdr[s][m][0]) for s in seeds],
            "final_forget_quality": [float(p_pts[m][s][-1][0][0]) for s in seeds],
            "final_utility": [float(p_pts[m][s][-1][1][0]) for s in seeds],
        }
        reps = {
            "pdr": np.mean([r_pdr[s][m] for s in seeds], axis=0),
            "final_forget_quality": np.mean([r_pts[m][s][-1][0] for s in seeds], axis=0),
            "final_utility": np.mean([r_pts[m][s][-1][1] for s in seeds], axis=0),
        }
        entry = {}
        for k in finals:
            point = float(np.mean(per_seed[k]))
            finals[k][m] = (point, reps[k])
            entry[k] = {**summary(point, reps[k], level), **_seed_spread(per_seed[k], seeds)}
        out["methods"][m] = entry
    for k, by_m in finals.items():
        ms = list(by_m)
        out["pairs"][k] = {
            f"{a} vs {b}": paired_difference(*by_m[a], *by_m[b], level=level)
            for i, a in enumerate(ms)
            for b in ms[i + 1 :]
        }
    out["_replicates"] = {"pdr": finals["pdr"]}
    return out


def combine_mean(per_task: dict[str, dict[str, tuple[float, np.ndarray]]], level: float = LEVEL) -> dict:
    """Mean over tasks of a per-method figure (tasks resampled independently, so replicate b of
    each task can be averaged); methods missing from a task are left out of the mean."""
    methods = list(dict.fromkeys(m for t in per_task.values() for m in t))
    means: dict[str, tuple[float, np.ndarray]] = {}
    out: dict[str, Any] = {"methods": {}, "pairs": {}}
    for m in methods:
        have = [t[m] for t in per_task.values() if m in t]
        if len(have) != len(per_task):
            continue
        means[m] = (float(np.mean([p for p, _ in have])), np.mean([r for _, r in have], axis=0))
        out["methods"][m] = summary(*means[m], level=level)
    ms = list(means)
    out["pairs"] = {
        f"{a} vs {b}": paired_difference(*means[a], *means[b], level=level)
        for i, a in enumerate(ms)
        for b in ms[i + 1 :]
    }
    return out


def _seed_spread(values: list[float], seeds) -> dict:
    if len(values) < 2:
        return {"seeds": {str(s): v for s, v in zip(seeds, values)}}
    return {
        "seeds": {str(s): v for s, v in zip(seeds, values)},
        "seed_sd": float(np.std(values, ddof=1)),
        "seed_min": float(min(values)),
        "seed_max": float(max(values)),
    }


def _utility_len(u: dict | None) -> int | None:
    return len(u["values"]) if u and u.get("values") is not None else None


def _common_len(lengths) -> int:
    """Number of items every cell has (0 when some cell has none: no item resampling)."""
    lengths = list(lengths)
    if not lengths or any(n is None for n in lengths):
        return 0
    lengths = [len(n) if not isinstance(n, int) else n for n in lengths]
    if len(set(lengths)) != 1:
        raise ValueError(f"cells of one task hold different numbers of items: {sorted(set(lengths))}")
    return lengths[0]
