"""The bench report: Markdown + JSON + PNGs from ``results.json`` (`prod-unlearn report` rebuilds it)."""

from __future__ import annotations

import math
from pathlib import Path

from prod_unlearn.bench.calibration import CALIBRATION_RULE
from prod_unlearn.bench.config import FORMAT, upgrade
from prod_unlearn.io import atomic_write_json, atomic_write_text
from prod_unlearn.report.bench_sections import ci_text, floor_section, matched_section

# ---------------------------------------------------------------- the report


def _diff(d: dict, a: str, b: str, scale: float = 1.0, digits: int = 3) -> str:
    f = f"{{:+.{digits}f}}"
    txt = f"{f.format(d['diff'] * scale)} [{f.format(d['lo'] * scale)}, {f.format(d['hi'] * scale)}]"
    if not d["separated"]:
        return f"tie: {txt}"
    return f"**{a if d['diff'] > 0 else b}**: {txt}"


def _ordered(pairs: dict) -> list[str]:
    """'a > b' for each separated pair."""
    out = []
    for name, d in pairs.items():
        if d["separated"]:
            a, b = name.split(" vs ")
            out.append(f"{a} > {b}" if d["diff"] > 0 else f"{b} > {a}")
    return out


def _seeds(cfg: dict) -> list[int]:
    return [cfg["seed"] + i for i in range(cfg.get("seeds", 1))]


def non_finite(obj, where: str = "") -> str | None:
    """The path of the first NaN or infinite number in a results tree (None when every number is finite)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return f"{where or '(top)'} = {obj}"
    children = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in children:
        found = non_finite(v, f"{where}.{k}" if where else str(k))
        if found:
            return found
    return None


def write_report(results: dict, out: Path) -> dict:
    """Bootstrap statistics, PDR table, Pareto PNG per task, attack PNGs, report.md / .html / .json."""
    from prod_unlearn.attacks.bench import report_sections
    from prod_unlearn.evaluation.stats import bootstrap_task, combine_mean
    from prod_unlearn.report.pareto import plot_attack, plot_pareto
    from prod_unlearn.tasks import UTILITY_TASKS

    bad = non_finite({"config": results.get("config"), "cells": results.get("cells")})
    if bad:
        raise ValueError(
            f"{Path(out) / 'results.json'}: {bad}: expected a finite number (rerun that cell: delete "
            f"it and rerun `prod-unlearn bench --out {out}`)"
        )
    if upgrade(results).get("format") != FORMAT:
        raise ValueError(
            f"{out}: results.json is from the old bench protocol (no per-item scores); "
            f"rerun `prod-unlearn bench` to re-measure"
        )
    out = Path(out)
    cfg, cells, runs_info = results["config"], results["cells"], results.get("runs", {})
    seeds, level = _seeds(cfg), cfg.get("level", 0.95)
    pct = f"{round(100 * level)} %"
    stats, pdr_reps, pdr_table = {}, {}, {}
    utility = UTILITY_TASKS.get(cfg["utility"])
    if utility is None:  # a task registered from Python in the run that wrote these results
        raise ValueError(
            f"results.json: utility task {cfg['utility']!r} is not registered here (known: "
            f"{', '.join(UTILITY_TASKS)}); register it (prod_unlearn.tasks.register) before rebuilding the report"
        )
    for ti, task in enumerate(cfg["tasks"]):
        runs = {}
        for m in cfg["methods"]:
            by_seed = {}
            for s in seeds:
                info = runs_info.get(f"{task}/{m}/s{s}")
                cs = [cells[k] for st in (info or {}).get("eval_steps", []) if (k := f"{task}/{m}/s{s}/{st}") in cells]
                if cs:
                    by_seed[s] = cs
            if by_seed:
                runs[m] = by_seed
        if utility.relative and f"{task}/original" not in cells and runs:
            raise ValueError(
                f"results.json: the {cfg['utility']} utility is relative to the original model, whose cell "
                f"{task}/original is missing (rerun the bench in this folder to compute it)"
            )
        st = bootstrap_task(
            cells.get(f"{task}/original"),
            runs,
            cfg.get("bootstrap", 1000),
            seed=[cfg["seed"], ti],
            level=level,
            formula=utility.formula,
        )
        pdr_reps[task] = st.pop("_replicates")["pdr"]
        stats[task] = st
        pdr_table[task] = {m: e["pdr"]["point"] for m, e in st["methods"].items()}
    overall = combine_mean(pdr_reps, level) if len(pdr_reps) > 1 else None

    lines = [
        "# prod-unlearn benchmark report",
        "",
        f"Model `{cfg['model'] or 'embedded'}`; methods {', '.join(cfg['methods'])}; {cfg['epochs']} epoch(s), "
        f"evaluated after {cfg['eval_points']} evenly spaced optimiser steps (batch 1) and before training; "
        f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))}: data orders); utility axis `{cfg['utility']}`; "
        + (f"first {cfg['max_items']} items a task" if cfg.get("max_items") else "every item of every task")
        + ".",
        "",
        f"Intervals: {pct} percentile bootstrap over the evaluation items ({cfg.get('bootstrap', 1000)} "
        "resamples, seeded): each resample draws the forget items and the utility items with replacement and "
        "recomputes every evaluation point of every method and the PDR from them. Differences between two "
        "methods are paired (the same resample for both): **bold** names the better method when the interval "
        "of the difference excludes 0; `tie` otherwise."
        + (
            " With several seeds a figure is the mean over seeds; `seeds` gives its spread across them."
            if len(seeds) > 1
            else ""
        ),
        "",
        "## Learning rates",
        "",
        "| method | " + " | ".join(cfg["tasks"]) + " |",
        "|---|" + "---|" * len(cfg["tasks"]),
    ]
    for m in cfg["methods"]:
        lr_cells: list[str] = []
        for t in cfg["tasks"]:
            info = runs_info.get(f"{t}/{m}/s{seeds[0]}")
            lr_cells.append(f"{info['lr']:g} ({info['lr_source']})" if info else "-")
        lines.append(f"| {m} | " + " | ".join(lr_cells) + " |")
    lines += ["", f"Calibration rule (`bench --calibrate`): {CALIBRATION_RULE}", ""]

    for task in cfg["tasks"]:
        st = stats[task]
        orig = st.get("original")
        curves, errors = {}, {}
        for m, by_seed in st["points"].items():
            pts = by_seed.get(str(seeds[0])) or next(iter(by_seed.values()))
            seq = ([orig] if orig else []) + pts
            curves[m] = [(p["forget_quality"]["point"], p["utility"]["point"]) for p in seq]
            errors[m] = [
                (p["forget_quality"]["lo"], p["forget_quality"]["hi"], p["utility"]["lo"], p["utility"]["hi"])
                for p in seq
            ]
        if curves:
            plot_pareto(
                curves,
                out / f"pareto_{task}.png",
                f"{task}: forget quality vs utility ({pct} intervals"
                + (f", seed {seeds[0]})" if len(seeds) > 1 else ")"),
                f"utility ({cfg['utility']})",
                (orig["forget_quality"]["point"], orig["utility"]["point"]) if orig else None,
                errors,
            )
        n = st["n_items"]
        lines += [
            f"## {task}",
            "",
            f"![pareto](pareto_{task}.png)",
            "",
            f"Items resampled: {n['forget']} forget items, {n['utility']} utility items "
            "(0 = no per-item scores: no interval).",
            "",
            "| method | lr | PDR % | final forget quality | final utility |"
            + (" PDR % by seed (sd) |" if len(seeds) > 1 else ""),
            "|---|---|---|---|---|" + ("---|" if len(seeds) > 1 else ""),
        ]
        if orig:
            lines.append(
                f"| original | - | - | {ci_text(orig['forget_quality'])} | {ci_text(orig['utility'])} |"
                + (" - |" if len(seeds) > 1 else "")
            )
        for m, e in st["methods"].items():
            info = runs_info.get(f"{task}/{m}/s{seeds[0]}", {})
            row = (
                f"| {m} | {info.get('lr', 0):g} | {ci_text(e['pdr'], 100, 1)} | {ci_text(e['final_forget_quality'])} | "
                f"{ci_text(e['final_utility'])} |"
            )
            if len(seeds) > 1:
                sp = e["pdr"]
                row += (
                    " "
                    + ", ".join(f"{100 * v:.1f}" for v in sp["seeds"].values())
                    + (f" ({100 * sp['seed_sd']:.1f})" if "seed_sd" in sp else "")
                    + " |"
                )
            lines.append(row)
        pairs = st["pairs"]
        if pairs.get("pdr"):
            lines += [
                "",
                f"Paired differences (row method minus column method, {pct} interval):",
                "",
                "| pair | PDR (pp) | final forget quality | final utility |",
                "|---|---|---|---|",
            ]
            for name in pairs["pdr"]:
                a, b = name.split(" vs ")
                lines.append(
                    f"| {name} | {_diff(pairs['pdr'][name], a, b, 100, 1)} | "
                    f"{_diff(pairs['final_forget_quality'][name], a, b)} | "
                    f"{_diff(pairs['final_utility'][name], a, b)} |"
                )
            sep = _ordered(pairs["pdr"])
            lines += [
                "",
                f"PDR differences larger than their intervals: {', '.join(sep) if sep else 'none'}; "
                f"the other {len(pairs['pdr']) - len(sep)} pair(s) are ties.",
            ]
        extra = _extra_keys(cells, task)
        lines += [
            "",
            "Evaluation points:",
            "",
            "| method | seed | step | epoch | forget quality | utility | " + " | ".join(extra) + " |",
            "|---|---|---|---|---|---|" + "---|" * len(extra),
        ]
        c0 = cells.get(f"{task}/original")
        if orig and c0:
            lines.append(
                f"| original | - | 0 | 0 | {ci_text(orig['forget_quality'])} | {ci_text(orig['utility'])} | "
                + " | ".join(_fmt(c0.get(x)) for x in extra)
                + " |"
            )
        for m, by_seed in st["points"].items():
            for s, pts in by_seed.items():
                for p in pts:
                    c = cells.get(f"{task}/{m}/s{s}/{p['step']}", {})
                    lines.append(
                        f"| {m} | {s} | {p['step']} | {p['epoch']} | {ci_text(p['forget_quality'])} | "
                        f"{ci_text(p['utility'])} | " + " | ".join(_fmt(c.get(x)) for x in extra) + " |"
                    )
        lines.append("")
    if overall:
        lines += ["## PDR averaged over the tasks", "", f"| method | mean PDR % [{pct}] |", "|---|---|"]
        for m, s in overall["methods"].items():
            lines.append(f"| {m} | {ci_text(s, 100, 1)} |")
        sep = _ordered(overall["pairs"])
        lines += [
            "",
            f"Differences larger than their intervals: {', '.join(sep) if sep else 'none'}; "
            f"the other {len(overall['pairs']) - len(sep)} pair(s) are ties.",
            "",
        ]
    floor_lines, floor_stats = floor_section(cells, cfg, runs_info, seeds[0], level)
    lines += floor_lines + matched_section(results.get("calibration") or {}, cfg)
    attacks = {m: cells[f"attack/{m}"] for m in ["original", "retain"] + cfg["methods"] if f"attack/{m}" in cells}
    if attacks:
        plot_attack(
            {m: {int(k): v for k, v in a["gain"].items() if int(k) > 0} for m, a in attacks.items()}, out / "attack.png"
        )
        ks = sorted(int(k) for k in next(iter(attacks.values()))["gain_mean"])
        lines += [
            "## Prefix-injection attack (copyright, final model of the first seed): BLEU gain over k=0, "
            "mean [min, max]",
            "",
            "![attack](attack.png)",
            "",
            "| method | BLEU k=0 | " + " | ".join(f"k={k}" for k in ks if k) + " |",
            "|---|---|" + "---|" * len([k for k in ks if k]),
        ]
        for m, a in attacks.items():
            lines.append(
                f"| {m} | {a['bleu']['0']:.3f} | "
                + " | ".join(
                    f"{a['gain_mean'][str(k)]:+.3f} [{a['gain_min'][str(k)]:+.2f}, {a['gain_max'][str(k)]:+.2f}]"
                    for k in ks
                    if k
                )
                + " |"
            )
        lines.append("")
    attack_lines, attack_stats = report_sections(cells, cfg, out)
    lines += attack_lines
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    from prod_unlearn.html_report import write_html

    write_html(
        out,
        "\n".join(lines) + "\n",
        "prod-unlearn benchmark report",
        first=("PDR averaged over the tasks",),
        last=("Learning rates",),
        settings=cfg,
    )
    report = {
        "format": FORMAT,
        "pdr": pdr_table,
        "config": cfg,
        "stats": stats,
        "pdr_mean": overall,
        "attacks": attack_stats,
        "gap_closed": floor_stats,
    }
    atomic_write_json(
        out / "report.json",
        {
            **report,
            "runs": runs_info,
            "cells": {k: {kk: vv for kk, vv in v.items() if kk != "items"} for k, v in cells.items()},
        },
    )
    return report


def _extra_keys(cells: dict, task: str) -> list[str]:
    keys: list[str] = []
    skip = ("forget_quality", "utility", "utility_eval", "task", "seconds", "n", "step", "epoch", "items")
    for k, r in cells.items():
        if k.startswith(f"{task}/"):
            keys += [x for x in r if x not in keys and x not in skip and not isinstance(r[x], (dict, list))]
    return keys


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
