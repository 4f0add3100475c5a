"""`prod-unlearn audit`: every attack against one takedown request (one model, one forget set),
written as one self-contained report (report.md + report.json + PNG charts) to attach to it.

Sections: extraction at each prompt cut, each attack's recovery, membership-inference AUC, utility
change (held-out perplexity), all with 95 % bootstrap intervals over items, then the budgets used.
The default ``AuditBudget`` fits the embedded model (13.8 M parameters) and its 50-file copyright
set in under 10 minutes on 2 CPU cores; larger models want a GPU or a smaller budget.
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from prod_unlearn.attacks import ATTACKS, KINDS, common, get_attack, settings, with_floor
from prod_unlearn.attacks.audit_report import charts as draw_charts
from prod_unlearn.attacks.audit_report import render_markdown
from prod_unlearn.io import atomic_write_json, atomic_write_text
from prod_unlearn.progress import console


@dataclass
class AuditBudget:
    """What the audit spends beyond each attack's ``AUDIT`` preset (in its module). Defaults: under
    10 minutes on 2 CPU cores for the embedded model and the 50-file copyright set (README)."""

    max_new_tokens: int = 48  # tokens generated and scored per item, every section
    cuts: tuple[float, ...] = (0.25, 0.5, 0.75)  # extraction: prompt = this share of the file's lines
    extraction_items: int | None = None  # None = every file of the forget set
    max_items: int | None = None  # files of the kinds whose preset caps them (0 = all) [default: the presets']
    steps: tuple[int, ...] | None = None  # relearn budgets [default: its preset's]
    control_path: str | None = None  # mia non-members [default: the shipped control files]
    utility_files: int | None = None  # held-out files (None = all 23 shipped)
    utility_tokens: int = 512  # first N tokens of each
    original_kinds: tuple[str, ...] = ("mia",)  # attacks also run on the original (relearn doubles its cost)
    n_boot: int = 1000
    seed: int = 0
    batch_size: int | None = None  # generation batch [default: greedy_continue's]

    def attack_settings(self, kind: str, original_given: bool) -> common.AttackSettings:
        """``kind``'s audit preset with this budget's shared figures and overrides applied."""
        preset = get_attack(kind).AUDIT
        if self.max_items is not None and preset.max_items is not None:
            preset = replace(preset, max_items=self.max_items or None)
        given = {k: v for k, v in (("steps", self.steps), ("control_path", self.control_path)) if v is not None}
        return settings(
            kind,
            preset,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            n_boot=self.n_boot,
            seed=self.seed,
            original=original_given and kind in self.original_kinds,
            **given,
        )


def extraction(model, tokenizer, examples, original=None, budget: AuditBudget | None = None, retain=None) -> dict:
    """Greedy extraction at each line cut: BLEU and verbatim share, model next to the original and
    the retain model (never trained on the forget set: the floor)."""
    b = budget or AuditBudget()
    examples = common.first_items(examples, b.extraction_items)
    cfg = common.AttackSettings(max_new_tokens=b.max_new_tokens, batch_size=b.batch_size)
    per = {}
    for label, m in [("original", original), ("model", model), ("retain", retain)]:
        if m is None:
            continue
        per[label] = {
            f"{int(round(100 * c))}%": common.continuation_scores(
                m, tokenizer, examples, cfg, cut=c, desc=f"extraction {label} cut {c:g}"
            )
            for c in b.cuts
        }
    rows = []
    for label in per:
        for c in b.cuts:
            cond = f"{int(round(100 * c))}%"
            for key in ("bleu", "exact"):
                base = common.metric(per["original"][cond], key) if label == "model" and "original" in per else None
                rows.append(
                    common.make_row(
                        label, cond, key, common.metric(per[label][cond], key), base, x=c, n_boot=b.n_boot, seed=b.seed
                    )
                )
    return {
        "kind": "extraction",
        "summary": "greedy continuation of each file from a line cut (no attack)",
        "baseline": "original",
        "config": {"cuts": list(b.cuts), "max_new_tokens": b.max_new_tokens, "items": len(examples)},
        "rows": rows,
        "per_item": per,
    }


def utility(model, tokenizer, original=None, budget: AuditBudget | None = None, retain=None) -> dict:
    b = budget or AuditBudget()
    texts = common.heldout_texts(n_files=b.utility_files)
    nll = {
        label: common.file_nll(m, tokenizer, texts, b.utility_tokens)
        for label, m in [("model", model), ("original", original), ("retain", retain)]
        if m is not None
    }
    res = {
        label: common.ppl_summary(v, b.n_boot, b.seed, baseline=nll.get("original") if label != "original" else None)
        for label, v in nll.items()
    }
    return {"files": len(texts), "tokens_per_file": b.utility_tokens, **res}


def recovery(attacks: dict, ext: dict) -> list[dict]:
    """Per attack: its strongest condition on the model, the BLEU gain over the attack's baseline
    [CI], and the share of the model-vs-original gap it closes (original at the same cut and files)."""
    orig = ext["per_item"].get("original", {}).get("50%")
    out = []
    for kind in [a.NAME for a in ATTACKS if a.PRIMARY == "bleu"]:  # the kinds that bring code back
        res = attacks.get(kind)
        if not res:
            continue
        cands = [
            r
            for r in res["rows"]
            if r["model"] == "model"
            and r["metric"] == "bleu"
            and r.get("gain_mean") is not None
            and r["condition"] != res["baseline"]
            and not r["condition"].endswith("@0")
            and r["condition"] != "k=0"
        ]
        if not cands:
            continue
        best = max(cands, key=lambda r: (r["gain_mean"], r["mean"]))
        rec = {
            "attack": kind,
            "condition": best["condition"],
            "bleu": best["mean"],
            "lo": best["lo"],
            "hi": best["hi"],
            "n": best["n"],
            "baseline_bleu": best["base_mean"],
            "gain_mean": best["gain_mean"],
            "gain_lo": best["gain_lo"],
            "gain_hi": best["gain_hi"],
            "share": None,
        }
        if orig and kind in ("prefix", "quantize", "relearn"):
            o = [orig[i]["bleu"] for i in _cond_ids(res, best["condition"]) if i in orig]
            if o:  # the original at the same cut, budget and files (prefix: without the injected tokens)
                gap = sum(o) / len(o) - best["base_mean"]
                rec["original_bleu"] = sum(o) / len(o)
                rec["share"] = best["gain_mean"] / gap if gap > 0.05 else None
        floor = [
            r
            for r in res["rows"]
            if r["model"] == "retain" and r["metric"] == "bleu" and r["condition"] == best["condition"]
        ]
        if floor:  # the retain model under the identical attack: what any model recovers without the files
            rec["retain_bleu"], rec["above_floor"] = floor[0]["mean"], best["mean"] - floor[0]["mean"]
        rec["verdict"] = _verdict(rec)
        out.append(rec)
    return out


def forget_quality_ks(mia: dict | None, n_boot: int = 1000, seed: int = 0) -> dict | None:
    """TOFU's forget quality: a two-sample Kolmogorov-Smirnov test between the unlearned and the
    retain model's per-file mean token log-likelihood on the forget files (high p = indistinguishable
    from never trained), with a bootstrap interval of the statistic D over files (paired)."""
    import numpy as np
    from scipy.stats import ks_2samp

    per = (mia or {}).get("per_item", {})
    if not per.get("model") or not per.get("retain"):
        return None
    ids = [i for i in per["model"]["members"] if i in per["retain"]["members"]]
    a = np.array([per["model"]["members"][i]["loss"] for i in ids])
    b = np.array([per["retain"]["members"][i]["loss"] for i in ids])
    test = ks_2samp(a, b)
    rng = np.random.default_rng(seed)
    boots = [ks_2samp(a[j], b[j]).statistic for j in (rng.integers(0, len(ids), len(ids)) for _ in range(n_boot))]
    lo, hi = np.percentile(boots, [2.5, 97.5]) if boots else (float("nan"), float("nan"))
    return {
        "statistic": float(test.statistic),
        "lo": float(lo),
        "hi": float(hi),
        "p_value": float(test.pvalue),
        "n": len(ids),
        "score": "per-file mean token log-likelihood (mia 'loss', same tokens)",
    }


def three_way(report: dict) -> list[dict]:
    """Each forget figure for the original, the unlearned and the retain model, with the share of the
    original-to-retain gap the unlearning closed (1 = as if never trained on the forget set)."""
    out = []

    def add(figure, o, m, r, forget=True):
        gap = None if not forget or o is None or r is None or abs(o - r) < 1e-9 else (o - m) / (o - r)
        out.append({"figure": figure, "original": o, "model": m, "retain": r, "gap_closed": gap})

    rows = report["extraction"]["rows"]
    for key, name in (("bleu", "extraction BLEU"), ("exact", "extraction, exact")):
        for cond in dict.fromkeys(r["condition"] for r in rows):
            by = {r["model"]: r["mean"] for r in rows if r["condition"] == cond and r["metric"] == key}
            if "model" in by:
                add(f"{name} at the {cond} cut", by.get("original"), by["model"], by.get("retain"))
    mia = report["attacks"].get("mia")
    if mia:
        by = {r["model"]: r["mean"] for r in mia["rows"] if r["condition"] == "min_k_pp"}
        if "model" in by:
            add("membership AUC (Min-K%++)", by.get("original"), by["model"], by.get("retain"))
    rel = report["attacks"].get("relearn")
    if rel:
        for cond in dict.fromkeys(r["condition"] for r in rel["rows"] if r["metric"] == "bleu"):
            by = {r["model"]: r["mean"] for r in rel["rows"] if r["condition"] == cond and r["metric"] == "bleu"}
            if "model" in by and cond != rel.get("baseline"):
                add(f"BLEU after relearning, {cond}", by.get("original"), by["model"], by.get("retain"))
    u = report["utility"]
    if "model" in u:
        add(
            "held-out perplexity (utility, not a forget figure)",
            u.get("original", {}).get("ppl"),
            u["model"]["ppl"],
            u.get("retain", {}).get("ppl"),
            forget=False,
        )
    return out


def _cond_ids(res: dict, condition: str) -> list[str]:
    """The ids an attack scored under one condition on the model."""
    p = res["per_item"].get("model", {})
    if res["kind"] == "relearn":
        return list(p.get(condition, {}).get("scores", {}))
    if res["kind"] == "prefix":
        return list(p.get(condition.removeprefix("k="), {}))
    return list(p.get(condition, {}))


def _verdict(rec: dict) -> str:
    base, orig = rec["baseline_bleu"], rec.get("original_bleu")
    if (orig is not None and orig - base <= 0.05) or (base is not None and base >= 0.9):
        return "nothing to recover: the model still reproduces the files"
    if rec.get("above_floor") is not None and rec["above_floor"] <= 0.05:
        return "at the floor: a model never trained on the files gets as much back"
    if rec["gain_lo"] is None or rec["gain_lo"] <= 0:
        return "no measurable recovery"
    if rec["share"] is not None and rec["share"] >= 0.5:
        return "undoes most of the forgetting"
    return "partial recovery"


def run_audit(
    model,
    tokenizer,
    forget,
    original=None,
    out: str | Path = "runs/audit",
    budget: AuditBudget | None = None,
    kinds=None,
    request: dict | None = None,
    retain=None,
) -> dict:
    """Run extraction, the attacks, MIA and utility; write OUT/report.md, report.html, report.json and PNGs.
    ``retain``: a model never trained on the forget set, put through every section the same way
    (same items, budgets, split and seed): the floor each figure is read against."""
    b = budget or AuditBudget()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    timings: dict[str, float] = {}

    def timed(name, fn):
        t = time.time()
        console.print(f"[bold]audit[/bold] {name} ...")
        r = fn()
        timings[name] = round(time.time() - t, 1)
        console.print(f"[bold]audit[/bold] {name}: {timings[name]:.0f} s")
        return r

    ext = timed("extraction", lambda: extraction(model, tokenizer, forget, original, b, retain))
    attacks = {}
    for kind in KINDS if kinds is None else kinds:
        a = get_attack(kind)
        attacks[kind] = timed(
            kind,
            lambda a=a, kind=kind: a.run(
                model, tokenizer, forget, original=original, cfg=b.attack_settings(kind, original is not None)
            ),
        )
        if retain is not None:
            timed(
                f"{kind} (retain)",
                lambda a=a, kind=kind: with_floor(
                    attacks[kind], a, retain, tokenizer, forget, b.attack_settings(kind, False)
                ),
            )
    util = timed("utility", lambda: utility(model, tokenizer, original, b, retain))
    rec = recovery(attacks, ext)
    report = {
        "request": {
            **(request or {}),
            "forget_files": len(forget),
            "original_given": original is not None,
            "retain_given": retain is not None,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "device": str(next(model.parameters()).device),
            "python": platform.python_version(),
        },
        "budget": {
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(b).items()},
            "attacks": {kind: b.attack_settings(kind, original is not None).to_dict() for kind in attacks},
        },
        "extraction": ext,
        "attacks": attacks,
        "utility": util,
        "recovery": rec,
    }
    report["three_way"] = three_way(report)
    report["forget_quality_ks"] = forget_quality_ks(attacks.get("mia"), b.n_boot, b.seed)
    charts = draw_charts(report, out)
    timings["total"] = round(time.time() - t0, 1)
    report["timings"] = timings
    report["charts"] = charts
    atomic_write_json(out / "report.json", report)
    md = render_markdown(report)
    atomic_write_text(out / "report.md", md)
    from prod_unlearn.html_report import write_html

    write_html(
        out,
        md,
        "Forgetting audit",
        first=("Verdict",),
        last=("Request", "Budget"),
        settings={"request": {k: v for k, v in report["request"].items() if k != "date"}, "budget": report["budget"]},
    )
    return report


def audit_kinds(text: str | None) -> list[str]:
    if not text:
        return list(KINDS)
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    for k in kinds:
        get_attack(k)
    return kinds


__all__ = ["AuditBudget", "run_audit", "extraction", "utility", "recovery", "three_way", "render_markdown", "ATTACKS"]
