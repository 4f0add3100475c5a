"""Does the forgetting hold? Attacks that try to bring forgotten code back, or find its trace.

One module per kind; each has ``NAME``, ``SUMMARY``, ``PRIMARY`` (the metric its tables compare:
``bleu`` for an attack that brings code back, which makes it a recovery in the audit's verdict),
``COST_S`` (its bench cost: seconds per attacked model at its audit preset, embedded model,
2 cores), ``Settings`` (a dataclass extending ``common.AttackSettings`` with the kind's own
fields and defaults), ``AUDIT`` (the ``Settings`` the audit and the bench run it at),
``run(model, tokenizer, examples, original=None, cfg=Settings()) -> dict`` (``kind``, ``config``,
``rows`` with 95 % bootstrap intervals, ``per_item``) and ``plot(result, path)``. ``ATTACKS`` is
the registry, in report order; a new kind is one module and one ``register(module)`` line.

``settings`` builds one kind's settings from options that may name other kinds' fields (a CLI
line, a Python call); ``run_attacks`` runs several kinds against one model (and optionally the
original it was unlearned from) for callers such as ``bench``; ``markdown_section`` renders one
result, ``methods_table`` / ``plot_methods`` put several methods' results of one kind side by side.
"""

from __future__ import annotations

from dataclasses import replace

from prod_unlearn.attacks import mia, prefix, quantize, relearn, transform
from prod_unlearn.attacks.common import AttackSettings, fmt_ci, public

ATTACKS = [prefix, relearn, transform, quantize, mia]
KINDS = [a.NAME for a in ATTACKS]  # the same list object everywhere: register() extends it in place


def register(module) -> None:
    """Add an attack kind (a module with the members above) after the shipped ones."""
    for member in ("NAME", "SUMMARY", "PRIMARY", "COST_S", "Settings", "AUDIT", "run", "plot"):
        if not hasattr(module, member):
            raise TypeError(f"attack module {module.__name__}: has no {member}")
    if module.NAME in KINDS:
        raise ValueError(f"attack kind {module.NAME!r} is already registered")
    ATTACKS.append(module)
    KINDS.append(module.NAME)


__all__ = [
    "ATTACKS",
    "KINDS",
    "AttackSettings",
    "get_attack",
    "register",
    "run_attacks",
    "settings",
    "with_floor",
    "markdown_section",
    "markdown_table",
    "methods_table",
    "plot_methods",
    "public",
]


def get_attack(kind: str):
    for a in ATTACKS:
        if a.NAME == kind:
            return a
    raise ValueError(f"--kind {kind}: expected one of {', '.join(KINDS)}")


def settings(kind: str, base: AttackSettings | None = None, **given) -> AttackSettings:
    """``kind``'s settings: ``base`` (default: its ``Settings()``) with the ``given`` fields it has.
    A field no registered kind has is an error; one that only other kinds have is left to them
    (``--steps`` means nothing to prefix)."""
    mod = get_attack(kind)
    every = set().union(*(a.Settings.names() for a in ATTACKS))
    unknown = sorted(set(given) - every)
    if unknown:
        raise ValueError(
            f"attack setting(s) {', '.join(unknown)}: no attack has them (they have: {', '.join(sorted(every))})"
        )
    mine = {k: (tuple(v) if isinstance(v, list) else v) for k, v in given.items() if k in mod.Settings.names()}
    return replace(base if base is not None else mod.Settings(), **mine)


def run_attacks(
    model, tokenizer, forget_examples, original=None, kinds=None, config: dict | None = None, **overrides
) -> dict:
    """{kind: result} for each kind (None: every registered one), in the given order. ``config``
    ({kind: Settings}) sets a kind's budgets (default: its ``Settings()``); keyword ``overrides``
    (e.g. ``max_items=12, steps=(5, 10)``) apply to every kind that has the field."""
    mods = [get_attack(k) for k in (KINDS if kinds is None else kinds)]
    stray = sorted(set(config or {}) - set(KINDS))
    if stray:  # e.g. the flat {"max_items": 12} of earlier versions: a budget that would be ignored
        raise ValueError(
            f"attack config: {', '.join(stray)} is not an attack kind (expected {{kind: Settings}} with a kind "
            f"of {', '.join(KINDS)}; a setting for every kind is a keyword: run_attacks(..., max_items=12))"
        )
    return {
        m.NAME: m.run(
            model,
            tokenizer,
            forget_examples,
            original=original,
            cfg=settings(m.NAME, (config or {}).get(m.NAME), **overrides),
        )
        for m in mods
    }


def with_floor(result: dict, attack, retain, tokenizer, examples, cfg: AttackSettings) -> dict:
    """``result`` with the retain model (never trained on the forget set) put through the identical
    attack (same items, split, budgets and seed): its rows labelled ``retain``, the floor."""
    floor = attack.run(retain, tokenizer, examples, cfg=replace(cfg, original=False))
    result["rows"] += [{**r, "model": "retain"} for r in floor["rows"] if r["model"] == "model"]
    result["per_item"]["retain"] = floor["per_item"].get("model")
    return result


def _gain(r: dict) -> str:
    if r.get("gain_mean") is None:
        return "-"
    return f"{r['gain_mean']:+.3f} [{r['gain_lo']:+.3f}, {r['gain_hi']:+.3f}]"


def markdown_table(result: dict, metric: str | None = None) -> list[str]:
    """One Markdown table of a result's rows (optionally one metric): mean [95 % CI] and the paired
    change against the attack's baseline (for ``mia``: AUC(model) - AUC(original))."""
    rows = [r for r in result["rows"] if metric is None or r["metric"] == metric]
    change = "vs original" if result["kind"] == "mia" else f"change vs {result.get('baseline') or '-'}"
    out = [f"| model | condition | metric | mean [95 % CI] | {change} | n |", "|---|---|---|---:|---:|---:|"]
    for r in rows:
        out.append(
            f"| {r.get('series', r['model'])} | {r['condition']} | {r['metric']} | "
            f"{fmt_ci(r['mean'], r['lo'], r['hi'])} | {_gain(r)} | {r['n']} |"
        )
    return out


def markdown_section(result: dict, png: str | None = None, level: int = 3) -> list[str]:
    """A report section for one attack result (bench and audit both use it)."""
    kind = result["kind"]
    lines = [f"{'#' * level} {kind}: {result['summary']}", ""]
    cfg = ", ".join(
        f"{k}={v}"
        for k, v in result["config"].items()
        if not isinstance(v, (list, dict)) or k in ("ks", "steps", "transforms", "conditions", "sources")
    )
    lines += [f"Settings: {cfg}.", ""]
    if png:
        lines += [f"![{kind}]({png})", ""]
    lines += markdown_table(result)
    if kind == "quantize" and result.get("heldout_ppl"):
        lines += [
            "",
            "Held-out perplexity under each condition (ratio to the unrounded weights):",
            "",
            "| model | condition | perplexity [95 % CI] | ratio [95 % CI] |",
            "|---|---|---:|---:|",
        ]
        for label, conds in result["heldout_ppl"].items():
            for c, p in conds.items():
                lines.append(
                    f"| {label} | {c} | {fmt_ci(p['ppl'], p['lo'], p['hi'], 2)} | "
                    f"{fmt_ci(p['ratio'], p['ratio_lo'], p['ratio_hi'])} |"
                )
    if result.get("skipped"):
        lines += ["", f"Left out (a rewrite could not keep the program's meaning): {', '.join(result['skipped'])}."]
    return lines


def methods_table(kind: str, results: dict[str, dict], metric: str | None = None) -> list[str]:
    """Methods side by side for one attack (what a bench section shows): one line per method
    (each a ``run`` result of that kind on the method's final model), one column per condition,
    cells ``mean [95 % CI]`` of the kind's primary metric (BLEU; AUC for ``mia``)."""
    metric = metric or get_attack(kind).PRIMARY
    conds = list(
        dict.fromkeys(
            r["condition"]
            for res in results.values()
            for r in res["rows"]
            if r["model"] == "model" and r["metric"] == metric
        )
    )
    out = [f"| method | {' | '.join(conds)} |", "|---|" + "---:|" * len(conds)]
    for method, res in results.items():
        by = {r["condition"]: r for r in res["rows"] if r["model"] == "model" and r["metric"] == metric}
        cells = [fmt_ci(by[c]["mean"], by[c]["lo"], by[c]["hi"]) if c in by else "-" for c in conds]
        out.append(f"| {method} | {' | '.join(cells)} |")
    return out


def plot_methods(kind: str, results: dict[str, dict], path, metric: str | None = None) -> None:
    """One bar per method and condition (95 % CI): the chart of a bench section."""
    from prod_unlearn.plots import bar_rows

    metric = metric or get_attack(kind).PRIMARY
    rows = [
        {**r, "series": method}
        for method, res in results.items()
        for r in res["rows"]
        if r["model"] == "model" and r["metric"] == metric
    ]
    bar_rows(
        rows, path, f"{kind} attack, every method", f"{metric} (mean, 95 % CI)", hline=0.5 if metric == "auc" else None
    )
