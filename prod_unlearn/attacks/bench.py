"""The attacks inside `prod-unlearn bench`: on the copyright task, each chosen kind runs on every
method's final model (first seed) and on the original model, one resumable cell each
(``attacks/<kind>/<method>`` in results.json); the report gets one section per kind with the
methods side by side (``methods_table``, 95 % intervals) and a chart ``attack_<kind>.png``.

Budgets: the audit's (each module's ``AUDIT`` preset under ``AuditBudget``: 48 scored tokens,
the first 20 files for transform and quantize, 16 scored files for relearn, every file for mia,
capped like the forget files by ``--max-items``),
so the per-model times the audit measured on a loaded 2-core machine apply (each ``COST_S``).
``prefix`` is the exception: it runs at the bench's own prefix settings (``attack_ks``,
min(128, max_new_tokens) tokens, every item) and also fills the paper's ``attack/<method>`` cell
(the "Prefix-injection attack" section and attack.png), so it replaces the bench's prefix attack
at no extra cost.

Defaults: ``DEFAULT_KINDS`` = prefix, mia for the full bench (7 models: mia adds about 33 s x 7 = 4
min; quantize would add 52 s x 7 more, left to ``--attacks``, so that the default bench fits an hour);
``QUICK_KINDS`` = the same for ``--quick`` (4 models, 16 items).
``--attacks all`` adds relearn and transform (about (127 + 68) s x 7 = 23 min more).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from prod_unlearn.attacks import KINDS, methods_table, plot_methods, prefix, public, run_attacks, settings
from prod_unlearn.attacks.common import AttackSettings, fmt_ci

DEFAULT_KINDS = ("prefix", "mia")
QUICK_KINDS = DEFAULT_KINDS


def parse_kinds(text: str | None) -> list[str] | None:
    """``--attacks``: a comma list of kinds, ``all`` or ``none`` (None: the default)."""
    if text is None:
        return None
    text = text.strip()
    if text == "all":
        return list(KINDS)
    if text in ("none", ""):
        return []
    kinds = [k.strip() for k in text.split(",")]
    for k in kinds:
        if k in ("all", "none"):
            raise ValueError(f"--attacks {text}: '{k}' stands alone (not in a list of kinds)")
        if k not in KINDS:
            raise ValueError(f"--attacks {k}: unknown (expected some of {', '.join(KINDS)}, or all, or none)")
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"--attacks {text}: a kind is repeated")
    return kinds


def estimate_seconds(kinds, n_models: int) -> int:
    """Extra bench time of the attack kinds (prefix excluded: the bench runs it anyway)."""
    from prod_unlearn.attacks import get_attack  # (prefix: 0 extra, it replaces the bench's own prefix attack)

    return sum(get_attack(k).COST_S for k in kinds if k != "prefix") * n_models


def attack_settings(kind: str, cfg) -> AttackSettings:
    """The budget one kind runs at in a bench with config ``cfg`` (BenchConfig): the audit's."""
    from prod_unlearn.attacks.audit import AuditBudget

    ks = tuple(sorted(set(cfg.attack_ks) | {0}))
    b = AuditBudget(
        max_new_tokens=min(AuditBudget.max_new_tokens, cfg.max_new_tokens), n_boot=cfg.bootstrap, seed=cfg.seed
    )
    c = settings(kind, b.attack_settings(kind, original_given=False), ks=ks)  # the original is a row of its own
    if kind == "prefix":  # the bench's prefix settings (shared with the attack/<method> cells)
        c = replace(c, max_new_tokens=min(prefix.Settings.max_new_tokens, cfg.max_new_tokens), max_items=None)
    elif kind == "mia":  # cap the control files like the forget files
        c = replace(c, max_items=cfg.max_items or None)
    return c


def keys(cfg) -> dict:
    """Key entries (one per kind: adding a kind later reuses the folder; changing one's settings is refused)."""
    return {f"attack:{k}": attack_settings(k, cfg).to_dict() for k in cfg.attacks}


def cell_key(kind: str, method: str) -> str:
    return f"attacks/{kind}/{method}"


def attacked_models(methods, floor: bool) -> list[str]:
    """The original, the retain model when the bench has a floor for the copyright task, every method."""
    return ["original"] + (["retain"] if floor else []) + list(methods)


def todo(cfg, floor: bool = False) -> list[str]:
    return [cell_key(k, m) for m in attacked_models(cfg.methods, floor) for k in cfg.attacks] + [
        f"attack/{m}" for m in attacked_models(cfg.methods, floor)
    ]


def missing(cells, cfg, method: str) -> bool:
    """Whether any attack cell of ``method``'s final model is still to compute."""
    return f"attack/{method}" not in cells or any(cell_key(k, method) not in cells for k in cfg.attacks)


def model_cells(cells, cfg, examples, method: str, loaded, emit) -> None:
    """The missing attack cells of one final model (``loaded`` = (model, tokenizer); "original": the
    model before unlearning, "retain": the floor); ``emit(key, cell)`` receives each new cell."""
    from prod_unlearn.attacks.prefix import prefix_attack, summarise

    model, tok = loaded
    legacy = f"attack/{method}"
    for kind in [k for k in cfg.attacks if cell_key(k, method) not in cells]:
        t0 = time.time()
        res = run_attacks(model, tok, examples, kinds=[kind], config={kind: attack_settings(kind, cfg)})[kind]
        emit(cell_key(kind, method), {**public(res), "seconds": round(time.time() - t0, 1)})
        if kind == "prefix" and legacy not in cells:
            cells[legacy] = summarise(res["per_item"]["model"])
            emit(legacy, cells[legacy])
    if legacy not in cells:  # the paper's prefix attack, when prefix is not among the kinds
        a = prefix_attack(
            model, tok, examples, cfg.attack_ks, max_new_tokens=min(prefix.Settings.max_new_tokens, cfg.max_new_tokens)
        )
        emit(legacy, {k: {str(kk): vv for kk, vv in v.items()} for k, v in a.items()})


def _gain_table(results: dict[str, dict], metric: str) -> list[str]:
    """Paired change against the attack's baseline condition, mean [95 % CI], methods side by side."""

    def conds_of(res):
        return [
            r
            for r in res["rows"]
            if r["model"] == "model"
            and r["metric"] == metric
            and r.get("gain_mean") is not None
            and r["condition"] != res.get("baseline")
            and not r["condition"].endswith("@0")
        ]

    conds = list(dict.fromkeys(r["condition"] for res in results.values() for r in conds_of(res)))
    if not conds:
        return []
    out = [f"| method | {' | '.join(conds)} |", "|---|" + "---:|" * len(conds)]
    for method, res in results.items():
        by = {r["condition"]: r for r in conds_of(res)}
        out.append(
            f"| {method} | "
            + " | ".join(
                f"{by[c]['gain_mean']:+.3f} [{by[c]['gain_lo']:+.3f}, {by[c]['gain_hi']:+.3f}]" if c in by else "-"
                for c in conds
            )
            + " |"
        )
    return out


def report_sections(cells: dict, cfg: dict, out: Path) -> tuple[list[str], dict]:
    """(report.md lines, report.json entry {kind: {method: {config, rows}}}); writes attack_<kind>.png."""
    from prod_unlearn.attacks import get_attack

    models = attacked_models(cfg["methods"], "copyright" in cfg.get("floor_tasks", []))
    chosen = [k for k in KINDS if k in (cfg.get("attacks") or [])]
    found = {k: {m: cells[cell_key(k, m)] for m in models if cell_key(k, m) in cells} for k in chosen}
    found = {k: v for k, v in found.items() if v}
    if not found:
        return [], {}
    lines = [
        "## Does the forgetting hold? Attacks (copyright, final model of the first seed)",
        "",
        "Each attack runs on every method's final model and on the original model (`original`). Cells: the "
        "mean over files with its 95 % percentile bootstrap interval over files; the change tables give the "
        "paired difference against the attack's baseline condition on the same files (an interval "
        "excluding 0 = the attack moved it). BLEU: higher = more of the forgotten code comes back; "
        "membership AUC: 0.5 = no trace of the forget files left. Other kinds: `bench --attacks all` "
        "(or a comma list of " + ", ".join(KINDS) + ").",
        "",
    ]
    for kind, res in found.items():
        first = next(iter(res.values()))
        metric = get_attack(kind).PRIMARY
        png = f"attack_{kind}.png"
        plot_methods(kind, res, out / png)
        settings = "; ".join(
            f"{k} {', '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in first["config"].items()
            if not isinstance(v, (list, dict)) or k in ("ks", "steps", "transforms", "conditions", "sources")
        )
        lines += (
            [
                f"### {kind}: {first['summary']}",
                "",
                f"Settings: {settings}.",
                "",
                f"![{kind}]({png})",
                "",
                f"{metric} per condition, mean [95 % CI]:",
                "",
            ]
            + methods_table(kind, res)
            + [""]
        )
        gains = _gain_table(res, metric)
        if gains:
            lines += [f"Change against `{first.get('baseline')}` (paired), mean [95 % CI]:", ""] + gains + [""]
        if kind == "quantize":
            lines += [
                "Held-out perplexity ratio to the unrounded weights (a condition that merely breaks the "
                "model shows here), mean [95 % CI]:",
                "",
                "| method | " + " | ".join(first["config"]["conditions"]) + " |",
                "|---|" + "---:|" * len(first["config"]["conditions"]),
            ]
            for m, r in res.items():
                p = (r.get("heldout_ppl") or {}).get("model", {})
                lines.append(
                    f"| {m} | "
                    + " | ".join(
                        fmt_ci(p[c]["ratio"], p[c]["ratio_lo"], p[c]["ratio_hi"]) if c in p else "-"
                        for c in first["config"]["conditions"]
                    )
                    + " |"
                )
            lines.append("")
        took = sum(r.get("seconds", 0) for r in res.values())
        lines += [f"Time: {took:.0f} s for {len(res)} model(s).", ""]
    return lines, {k: {m: {"config": r["config"], "rows": r["rows"]} for m, r in v.items()} for k, v in found.items()}
