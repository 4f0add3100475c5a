"""Two sections of the bench report (report/bench.py): every method against the retain model's
floor, and the methods compared at matched utility and at matched forgetting."""

from __future__ import annotations

from pathlib import Path


def ci_text(s: dict | None, scale: float = 1.0, digits: int = 3, signed: bool = False) -> str:
    if not s:
        return "-"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"{f.format(s['point'] * scale)} [{f.format(s['lo'] * scale)}, {f.format(s['hi'] * scale)}]"


def floor_section(cells: dict, cfg: dict, runs_info: dict, seed: int, level: float) -> tuple[list[str], dict]:
    """Each method's final forget quality beside the retain model's (the floor), and the share of the
    original -> floor gap it closed, with a paired bootstrap interval over the forget items."""
    from prod_unlearn.evaluation.stats import gap_closed

    lines: list[str] = []
    stats: dict[str, dict[str, dict | None]] = {}
    for ti, task in enumerate(cfg.get("floor_tasks", [])):
        o, r = cells.get(f"{task}/original"), cells.get(f"{task}/retain")
        if not (o and r and o["items"].get("fq") and r["items"].get("fq")):
            continue
        if not lines:
            lines = [
                "## Against the retain model (never trained on the forget set)",
                "",
                f"`{Path(cfg['retain_model']).name}` ({cfg['retain_model']}) was trained like the original "
                'without the task\'s set: its forget quality is the floor a method could reach. "gap closed" = '
                "(method - original) / (retain - original) on the mean forget quality: 0 = unchanged, 1 = as "
                f"if never trained ({round(100 * level)} % paired bootstrap over the forget items).",
                "",
            ]
        lines += [
            f"### {task}",
            "",
            "| model | final forget quality | utility | gap closed |",
            "|---|---:|---:|---:|",
            f"| original | {o['forget_quality']:.3f} | {o['utility']:.3f} | 0 |",
            f"| retain (floor) | {r['forget_quality']:.3f} | {r['utility']:.3f} | 1 |",
        ]
        stats[task] = {}
        for m in cfg["methods"]:
            info = runs_info.get(f"{task}/{m}/s{seed}")
            c = cells.get(f"{task}/{m}/s{seed}/{info['eval_steps'][-1]}") if info and info["eval_steps"] else None
            if not c or not c["items"].get("fq"):
                continue
            g = gap_closed(
                o["items"]["fq"],
                c["items"]["fq"],
                r["items"]["fq"],
                cfg.get("bootstrap", 1000),
                [cfg["seed"], ti],
                level,
            )
            stats[task][m] = g
            lines.append(
                f"| {m} | {c['forget_quality']:.3f} | {c['utility']:.3f} | {ci_text(g, digits=2) if g else '-'} |"
            )
        lines.append("")
    return lines, stats


def _at_lr(entry: dict, method: str) -> str:
    """lr | gap closed | utility of a calibration entry's chosen lr for ``method``."""
    lr = f"{entry['lr'][method]:g}"
    gap, util = entry["gap_closed"][method].get(lr), entry["utility"][method].get(lr)
    return (
        f"{lr}{'' if entry['qualified'][method] else ' (not reached)'} | "
        f"{'-' if gap is None else f'{gap:.2f}'} | {'-' if util is None else f'{util:.4f}'}"
    )


def matched_section(calibration: dict, cfg: dict) -> list[str]:
    """From the calibrated table: each method's forgetting at matched utility beside its utility at
    matched forgetting (single calibration runs at the bench's budget: no intervals)."""
    rows = []
    for task, rules in calibration.items():
        u, f = rules.get("utility"), rules.get("forget")
        if not (u and f and u.get("gap_closed") and f.get("gap_closed")):
            continue
        rows += [
            f"### {task}",
            "",
            "| method | matched utility: lr | gap closed | utility | matched forgetting: lr | gap closed | utility |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for m in cfg["methods"]:
            if m not in u["lr"] or m not in f["lr"]:
                continue
            rows.append(f"| {m} | {_at_lr(u, m)} | {_at_lr(f, m)} |")
        rows.append("")
    if not rows:
        return []
    return [
        "## Matched utility vs matched forgetting",
        "",
        "Two ways to pick each method's learning rate (`bench --calibrate --rule utility|forget`): the largest "
        "lr whose utility stays within 10 % (matched utility), or the smallest whose forget quality closes "
        "90 % of the gap to the retain model (matched forgetting). A method that forgets only by moving "
        "less scores well on the first and pays in utility on the second. Figures of single calibration "
        "runs at the bench's budget (no intervals).",
        "",
    ] + rows
