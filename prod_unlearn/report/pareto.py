"""Pareto Dominance Ratio (the paper, eq. 6) and the forget-quality / utility picture (Figure 3).

PDR(m) = |{rivals m Pareto-dominates}| / (|M| - 1): no worse on both objectives, strictly better
on one. The paper computes it over the methods' evaluated checkpoints; with several checkpoints
per method we pool them: PDR(m) = the fraction of (checkpoint of m, checkpoint of a rival) pairs
in which m's checkpoint dominates. With one checkpoint per method this is exactly eq. 6.
Bootstrap intervals of PDR (the same definition recomputed on resampled items, all replicates
at once): ``evaluation/stats.py``.
"""

from __future__ import annotations

from pathlib import Path

from prod_unlearn.plots import save


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] >= b[0] and a[1] >= b[1] and (a[0] > b[0] or a[1] > b[1])


def pdr(points: dict[str, list[tuple[float, float]]]) -> dict[str, float]:
    """points: method -> [(forget_quality, utility), ...] (higher is better on both)."""
    out = {}
    for m, mine in points.items():
        rivals = [p for other, ps in points.items() if other != m for p in ps]
        pairs = len(mine) * len(rivals)
        out[m] = sum(dominates(a, b) for a in mine for b in rivals) / pairs if pairs else 0.0
    return out


def plot_pareto(
    curves: dict[str, list[tuple[float, float]]],
    path: str | Path,
    title: str,
    utility_label: str,
    original: tuple[float, float] | None = None,
    errors: dict[str, list[tuple[float, float, float, float]]] | None = None,
) -> None:
    """One curve per method across its evaluation points (training order), like the paper's
    Figure 3. ``errors[m]`` (optional, aligned with ``curves[m]``): (x_lo, x_hi, y_lo, y_hi)
    interval bars per point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
    for m, pts in curves.items():
        xs, ys = zip(*pts)
        (line,) = ax.plot(xs, ys, marker="o", markersize=4, label=m, linewidth=2 if m == "prod" else 1.2)
        if errors and errors.get(m):
            e = errors[m]
            ax.errorbar(
                xs,
                ys,
                xerr=[
                    [max(0.0, x - lo) for x, (lo, _, _, _) in zip(xs, e)],
                    [max(0.0, hi - x) for x, (_, hi, _, _) in zip(xs, e)],
                ],
                yerr=[
                    [max(0.0, y - lo) for y, (_, _, lo, _) in zip(ys, e)],
                    [max(0.0, hi - y) for y, (_, _, _, hi) in zip(ys, e)],
                ],
                fmt="none",
                ecolor=line.get_color(),
                alpha=0.35,
                linewidth=0.8,
                capsize=0,
            )
        ax.annotate(f"{m}", (xs[-1], ys[-1]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if original:
        ax.scatter([original[0]], [original[1]], marker="*", s=120, color="black", zorder=5, label="original")
    ax.set_xlabel("forget quality (higher = more forgotten)")
    ax.set_ylabel(utility_label)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    save(fig, path)


def plot_attack(effects: dict[str, dict[int, list[float]]], path: str | Path) -> None:
    """Bars: mean BLEU gain per prefix length k per method, with min-max ranges (Figure 5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(effects)
    ks = sorted({k for e in effects.values() for k in e})
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
    for i, m in enumerate(methods):
        means = np.array([np.mean(effects[m].get(k, [0.0])) for k in ks])
        lo = np.array([np.min(effects[m].get(k, [0.0])) for k in ks])
        hi = np.array([np.max(effects[m].get(k, [0.0])) for k in ks])
        x = np.arange(len(ks)) + i * width
        ax.bar(x, means, width, label=m, yerr=[means - lo, hi - means], capsize=2, error_kw={"linewidth": 0.8})
    ax.set_xticks(np.arange(len(ks)) + width * (len(methods) - 1) / 2)
    ax.set_xticklabels([f"k={k}" for k in ks])
    ax.set_ylabel("BLEU gain over k=0 (mean, min-max)")
    ax.set_title("prefix-injection attack on the copyright set")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)
