"""Charts of attack rows (matplotlib, Agg): grouped bars or lines, always with 95 % intervals."""

from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path) -> None:
    """Write the figure atomically (a reader never sees half a PNG) and close it. A PNG names us in its
    metadata, so that the output guard (cli/guard.py) replaces it on a rerun and nothing else."""
    from prod_unlearn.io import atomic_file

    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format=fmt, metadata={"Software": "prod-unlearn"} if fmt == "png" else None)
    _plt().close(fig)


def bar_rows(
    rows: list[dict],
    path: str | Path,
    title: str,
    ylabel: str,
    metric: str | None = None,
    hline: float | None = None,
    ylim: tuple[float, float] | None = (0, 1.05),
) -> None:
    """Conditions on x, one bar per model (or series), mean with its 95 % interval."""
    import numpy as np

    plt = _plt()
    rows = [r for r in rows if (metric is None or r["metric"] == metric) and r["mean"] is not None]
    conds = list(dict.fromkeys(r["condition"] for r in rows))
    series = list(dict.fromkeys(r.get("series", r["model"]) for r in rows))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.0 + 0.9 * len(conds)), 3.8), dpi=120)
    for i, s in enumerate(series):
        by = {r["condition"]: r for r in rows if r.get("series", r["model"]) == s}
        xs = [j + i * width for j, c in enumerate(conds) if c in by]
        m = np.array([by[c]["mean"] for c in conds if c in by])
        lo = np.array([by[c]["lo"] for c in conds if c in by])
        hi = np.array([by[c]["hi"] for c in conds if c in by])
        ax.bar(xs, m, width, label=s, yerr=[m - lo, hi - m], capsize=2, error_kw={"linewidth": 0.8})
    ax.set_xticks(np.arange(len(conds)) + width * (len(series) - 1) / 2)
    ax.set_xticklabels(conds, rotation=20 if len(conds) > 5 else 0, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if hline is not None:
        ax.axhline(hline, color="black", linewidth=0.7, linestyle="--")
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)


def line_rows(
    rows: list[dict], path: str | Path, title: str, xlabel: str, ylabel: str, metric: str | None = None
) -> None:
    """Numeric ``x`` on the x axis, one line per series with a shaded 95 % band."""
    plt = _plt()
    rows = [r for r in rows if (metric is None or r["metric"] == metric) and r["mean"] is not None and "x" in r]
    series = list(dict.fromkeys(r.get("series", r["model"]) for r in rows))
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for s in series:
        rs = sorted((r for r in rows if r.get("series", r["model"]) == s), key=lambda r: r["x"])
        xs = [r["x"] for r in rs]
        (line,) = ax.plot(xs, [r["mean"] for r in rs], marker="o", markersize=4, label=s)
        ax.fill_between(xs, [r["lo"] for r in rs], [r["hi"] for r in rs], alpha=0.15, color=line.get_color())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)
