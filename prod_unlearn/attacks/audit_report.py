"""The audit's report: its Markdown (rendered to report.html by html_report.py) and its charts."""

from __future__ import annotations

from pathlib import Path

from prod_unlearn.attacks import get_attack, markdown_section
from prod_unlearn.attacks.common import fmt_ci


def charts(report: dict, out: Path) -> dict[str, str]:
    from prod_unlearn.plots import bar_rows

    charts = {}
    bar_rows(
        report["extraction"]["rows"],
        out / "extraction.png",
        "extraction at each prompt cut (no attack)",
        "forget-set BLEU (mean, 95 % CI)",
        metric="bleu",
    )
    charts["extraction"] = "extraction.png"
    for kind, res in report["attacks"].items():
        get_attack(kind).plot(res, out / f"{kind}.png")
        charts[kind] = f"{kind}.png"
    if report["recovery"]:
        rows = []
        for r in report["recovery"]:
            rows.append(
                {
                    "model": "before attack",
                    "condition": r["attack"],
                    "metric": "bleu",
                    "mean": r["baseline_bleu"],
                    "lo": r["baseline_bleu"],
                    "hi": r["baseline_bleu"],
                }
            )
            rows.append(
                {
                    "model": "after attack",
                    "condition": r["attack"],
                    "metric": "bleu",
                    "mean": r["bleu"],
                    "lo": r["lo"],
                    "hi": r["hi"],
                }
            )
            if r.get("original_bleu") is not None:
                rows.append(
                    {
                        "model": "original",
                        "condition": r["attack"],
                        "metric": "bleu",
                        "mean": r["original_bleu"],
                        "lo": r["original_bleu"],
                        "hi": r["original_bleu"],
                    }
                )
        bar_rows(rows, out / "recovery.png", "each attack's strongest condition", "forget-set BLEU (mean, 95 % CI)")
        charts["recovery"] = "recovery.png"
    return charts


def render_markdown(report: dict) -> str:
    from prod_unlearn.attacks import markdown_table

    req, b, t = report["request"], report["budget"], report.get("timings", {})
    L = [
        "# Forgetting audit",
        "",
        "Does the forget set stay forgotten when someone tries to get it back? Every number is a mean over "
        "files with its 95 % bootstrap interval (1,000 resamples of the files).",
        "",
        "## Request",
        "",
        "| | |",
        "|---|---|",
    ]
    for k in (
        "model",
        "original",
        "retain_model",
        "forget",
        "forget_files",
        "forget_sha256",
        "date",
        "device",
        "torch_threads",
        "cpu_count",
        "prod_unlearn",
    ):
        if req.get(k) is not None:
            L.append(f"| {k} | `{req[k]}` |")
    L.append(f"| wall time | {t.get('total', 0):.0f} s |")
    L += ["", "## Verdict", ""]
    if report["recovery"]:
        L += [
            "BLEU of the greedy continuation against the true remainder; *change* is the paired difference "
            "over the same files; *share* is the fraction of the gap to the original model that the attack "
            "closes.",
            "",
            "| attack | strongest condition | BLEU before | BLEU after [95 % CI] | change [95 % CI] | original | "
            "share | retain (floor) | above floor | verdict |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in report["recovery"]:
            o = f"{r['original_bleu']:.3f}" if r.get("original_bleu") is not None else "-"
            s = f"{100 * r['share']:.0f} %" if r.get("share") is not None else "-"
            fl = f"{r['retain_bleu']:.3f} | {r['above_floor']:+.3f}" if r.get("retain_bleu") is not None else "- | -"
            L.append(
                f"| {r['attack']} | {r['condition']} | {r['baseline_bleu']:.3f} | "
                f"{fmt_ci(r['bleu'], r['lo'], r['hi'])} | {r['gain_mean']:+.3f} [{r['gain_lo']:+.3f}, "
                f"{r['gain_hi']:+.3f}] | {o} | {s} | {fl} | {r['verdict']} |"
            )
    if any(row["retain"] is not None for row in report.get("three_way", [])):
        L += [
            "",
            "Against the retain model (never trained on the forget set). *Gap closed* = (original - "
            "unlearned) / (original - retain): 1 = as if never trained, 0 = unchanged.",
            "",
            "| figure | original | unlearned | retain | gap closed |",
            "|---|---:|---:|---:|---:|",
        ]

        def f(x):
            return "-" if x is None else f"{x:.3f}"

        for row in report["three_way"]:
            g = "-" if row["gap_closed"] is None else f"{100 * row['gap_closed']:.0f} %"
            L.append(f"| {row['figure']} | {f(row['original'])} | {f(row['model'])} | {f(row['retain'])} | {g} |")
        auc = next((row for row in report["three_way"] if row["figure"].startswith("membership")), None)
        if auc and auc["retain"] is not None:
            L += [
                "",
                f"Membership gap to the retain model (PrivLeak-style, AUC unlearned - AUC retain): "
                f"{auc['model'] - auc['retain']:+.3f}.",
            ]
        ks = report.get("forget_quality_ks")
        if ks:
            L += [
                "",
                f"Forget quality (TOFU-style two-sample KS test of {ks['score']}, unlearned vs retain, "
                f"{ks['n']} files): D = {fmt_ci(ks['statistic'], ks['lo'], ks['hi'])}, p = {ks['p_value']:.3g} "
                f"({'indistinguishable at the 5 % level' if ks['p_value'] >= 0.05 else 'distinguishable'}).",
            ]
    mia = report["attacks"].get("mia")
    if mia:
        for r in mia["rows"]:
            if r["model"] == "model" and r["condition"] == "min_k_pp":
                trace = "a membership trace remains" if r["lo"] > 0.5 else "no membership trace detected"
                L += [
                    "",
                    f"Membership (Min-K%++ AUC, forget vs control files): {fmt_ci(r['mean'], r['lo'], r['hi'])}"
                    f": {trace}.",
                ]
    u = report["utility"]
    if "model" in u:
        m = u["model"]
        line = f"Utility: held-out perplexity {fmt_ci(m['ppl'], m['lo'], m['hi'], 2)}"
        if "ratio" in m:
            line += (
                f", {100 * (m['ratio'] - 1):+.1f} % vs the original [{100 * (m['ratio_lo'] - 1):+.1f}, "
                f"{100 * (m['ratio_hi'] - 1):+.1f}]"
            )
        L += ["", line + "."]
    if "recovery" in report["charts"]:
        L += ["", "![recovery](recovery.png)"]
    L += [
        "",
        "## Extraction at each prompt cut",
        "",
        "The model is prompted with the first 25 / 50 / 75 % of each file's lines (cut at a line end) and "
        "continues greedily; `exact` = the whole scored continuation is verbatim. The change column is "
        "model minus original on the same files.",
        "",
        "![extraction](extraction.png)",
        "",
    ]
    L += markdown_table(report["extraction"])
    L += ["", "## Attacks", ""]
    for kind, res in report["attacks"].items():
        L += markdown_section(res, png=report["charts"].get(kind), level=3) + [""]
    L += [
        "## Utility",
        "",
        f"Perplexity of the first {u['tokens_per_file']} tokens of each of {u['files']} held-out "
        "standard-library files never trained on (pooled; interval over files; ratio paired over files).",
        "",
        "| model | perplexity [95 % CI] | ratio to original [95 % CI] |",
        "|---|---:|---:|",
    ]
    for label in ("model", "original", "retain"):
        if label in u:
            p = u[label]
            ratio = fmt_ci(p["ratio"], p["ratio_lo"], p["ratio_hi"]) if "ratio" in p else "-"
            L.append(f"| {label} | {fmt_ci(p['ppl'], p['lo'], p['hi'], 2)} | {ratio} |")
    L += [
        "",
        "## Budget",
        "",
        "The audit is sized to run in under 10 minutes on 2 CPU cores for the embedded 13.8 M-parameter model "
        "and a 50-file forget set. What that costs in coverage:",
        "",
    ]
    L += [
        f"- {b['max_new_tokens']} tokens generated and scored per file in every section (the copyright task "
        "scores up to 512);",
        f"- extraction: {'all' if b['extraction_items'] is None else b['extraction_items']} files at cuts "
        f"{', '.join(f'{int(100 * c)} %' for c in b['cuts'])};",
    ]
    L += [_budget_line(kind, st) for kind, st in b.get("attacks", {}).items()]
    L += [
        f"- utility: the first {b['utility_tokens']} tokens of {b['utility_files'] or 'all'} held-out files;",
        f"- attacks also run on the original model: {', '.join(b['original_kinds']) or 'none'} "
        "(extraction and utility always compare with it).",
        "",
        "A fuller run of one attack: `prod-unlearn attack --kind K --model M --data F --original O "
        "--max-new-tokens 128 --json`.",
        "",
        "Time per section (s): " + ", ".join(f"{k} {v:.0f}" for k, v in t.items()) + ".",
    ]
    return "\n".join(L) + "\n"


def _budget_line(kind: str, st: dict) -> str:
    """One attack's settings as run: its files, then the fields its kind adds to the shared ones."""
    from prod_unlearn.attacks.common import AttackSettings

    shared = AttackSettings.names()
    own = ", ".join(
        f"{k} {', '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in st.items()
        if k not in shared and v is not None
    )
    files = f"the first {st['max_items']} files" if st.get("max_items") else "every file"
    return f"- {kind}: {files}" + (f"; {own};" if own else ";")
