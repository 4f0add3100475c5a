"""The Hugging Face model card of a model that prod-unlearn trained: what was removed (or memorised)
— never the text itself, only its name, size and hash —, how, the figures before and after with
their intervals, and the audit once one has been run, so a model pushed to the Hub carries the
record of its unlearning. Rendered from the folder's run.json, so ``audit`` can re-render it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from prod_unlearn.io import atomic_write_text

MARK = "<!-- written by prod-unlearn: re-rendered by `unlearn` and `audit`; edit a copy -->"
FIGURES = (
    ("bleu", "line-cut BLEU on the forget set (50 % cut; lower = more forgotten)"),
    ("exact_next5", "next 5 lines reproduced exactly"),
    ("heldout_bpb", "held-out bits per byte (lower = better general code modelling)"),
    ("heldout_ppl", "held-out perplexity"),
)


def base_card(model: str):
    """The base model's card if its folder has one (its licence is kept), else None."""
    from huggingface_hub import ModelCard

    path = Path(model) / "README.md"
    try:
        return ModelCard.load(path) if path.is_file() else None
    except Exception:  # an unparsable card is no card: ours still gets written
        return None


def is_ours(folder: Path) -> bool:
    """The folder's README.md is a card this module wrote (so it may be re-rendered)."""
    card = Path(folder) / "README.md"
    return card.is_file() and MARK in card.read_text(encoding="utf-8", errors="replace")


def _value(fig: dict, key: str) -> str:
    if key not in fig:
        return "-"
    ci = fig.get(f"{key}_ci")
    return f"{fig[key]:.4f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _audit_lines(out: Path, audit: str | Path) -> list[str]:
    """The audit's verdict rows and where its report lives (relative to the model folder if it can)."""
    audit = Path(audit)
    try:
        rep = json.loads((audit / "report.json").read_text())
    except (OSError, ValueError):
        return []
    link = os.path.relpath(audit.resolve(), Path(out).resolve())
    lines = [
        "## Audit",
        "",
        f"Every attack of `prod-unlearn audit` against this model: [{link}/report.html]"
        f"({link}/report.html) (also `report.md`, `report.json`), {rep['request'].get('date', '')}.",
        "",
        "| attack | strongest condition | BLEU after the attack [95 % CI] | never-trained floor | verdict |",
        "|---|---|---:|---:|---|",
    ]
    for r in rep.get("recovery", []):
        floor = "-" if r.get("retain_bleu") is None else f"{r['retain_bleu']:.3f}"
        lines.append(
            f"| {r['attack']} | {r['condition']} | {r['bleu']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] | "
            f"{floor} | {r['verdict']} |"
        )
    mia = (rep.get("attacks") or {}).get("mia")
    for t in rep.get("three_way", []):
        if mia and t["figure"].startswith("membership AUC"):
            lines += [
                "",
                f"Membership (Min-K%++ AUC, forget vs never-trained files): {t['model']:.3f}"
                + (f"; a model never trained on the set: {t['retain']:.3f}" if t.get("retain") is not None else "")
                + ".",
            ]
    return lines + [""]


def write_model_card(out: Path, run: dict, data_name: str, audit: str | Path | None = None) -> Path:
    """``out/README.md`` from ``run`` (run.json of ``unlearn`` or ``learn``): YAML metadata
    (base_model for a hub id, tags, library_name, the base card's licence), the set's name, size and
    sha256, the method and settings, figures with intervals, the stopping rule and the audit."""
    from huggingface_hub import ModelCard, ModelCardData

    learned = run["method"] == "sft"
    base = base_card(run["model"])
    licence = getattr(base.data, "license", None) if base else None
    local = Path(run["model"]).exists()
    data = ModelCardData(
        base_model=None if local else run["model"],
        library_name="transformers",
        license=licence,
        tags=["prod-unlearn"] + (["memorisation"] if learned else ["unlearning"]) + [run["method"]],
    )
    settings = {
        k: run["config"][k]
        for k in ("lr", "batch_size", "grad_accum", "max_length", "seed", "sam_rho")
        if k in run["config"]
    }
    what = "memorised" if learned else "forgotten"
    name = Path(run["model"]).name or run["model"]
    lines = [
        MARK,
        "",
        f"# {name}, with code {what} by prod-unlearn",
        "",
        f"This model is `{run['model']}` after `prod-unlearn {'learn' if learned else 'unlearn'}` "
        + (
            "trained it to reproduce a set of code files (the setting before unlearning). "
            if learned
            else "removed a forget set from it. "
        )
        + f"The {what} text is not reproduced here; the set is identified by its hash.",
        "",
        f"## What was {what}",
        "",
        "| | |",
        "|---|---|",
        f"| {'data' if learned else 'forget set'} | `{data_name}` |",
        f"| items | {run['forget_examples']} |",
        f"| sha256 of the items | `{run['forget_hash']}` (prod-unlearn's `examples_hash`: id, prompt, "
        f"completion of each item) |",
        f"| method | `{run['method']}` {', '.join(f'{k}={v}' for k, v in run['params'].items())} |",
        f"| training | {', '.join(f'{k} {v}' for k, v in settings.items())} |",
    ]
    until = run.get("until") or {}
    if not learned:
        stopped = until.get("stopped_by") or run.get("stopped_by") or f"a fixed budget ({len(run['epochs'])} epochs)"
        if until.get("kept_step") is not None:
            stopped += f" (model of optimiser step {until['kept_step']})"
        lines.append(f"| stopped by | {stopped} |")
    lines += [f"| base model fingerprint | `{run['model_fingerprint']}` |", ""]
    before, after = run.get("before") or {}, run.get("after") or {}
    rows = [f"| {label} | {_value(before, k)} | {_value(after, k)} |" for k, label in FIGURES if k in after]
    if rows:
        lines += [
            "## Before and after",
            "",
            "| figure | before [95 % CI] | after [95 % CI] |",
            "|---|---:|---:|",
            *rows,
            "",
            "BLEU intervals: 1,000 bootstrap resamples of the files. The held-out figures are one "
            "measurement over the first 60 k tokens of held-out code (the audit gives their interval).",
            "",
        ]
    if learned and run["epochs"] and "eval" in run["epochs"][-1]:
        lines += [
            "## Memorisation",
            "",
            "| epoch | loss | memorisation BLEU |",
            "|---:|---:|---:|",
            *(f"| {e['epoch']} | {e['loss']:.4f} | {e['eval'].get('memorisation_bleu', '-')} |" for e in run["epochs"]),
            "",
        ]
    if until.get("rule"):
        r = until["rule"]
        lines += [
            f"Stopping rule: BLEU <= {r['until_bleu']} at every cut"
            + (f", membership AUC <= {r['until_auc']}" if r.get("until_auc") is not None else "")
            + ", held-out bits per byte within "
            f"+{100 * r['max_utility_loss']:g} %, at most {r['max_steps']} steps; "
            + ("forgotten." if until.get("forgotten") else f"NOT forgotten ({until.get('stopped_by')})."),
            "",
        ]
    if audit:
        lines += _audit_lines(out, audit)
    if base is not None:
        lines += [
            "## Base model",
            "",
            f"The base model's card follows; its licence ({licence or 'none stated'}) "
            f"applies. What changed: the weights, by the {'training' if learned else 'unlearning'} above.",
            "",
            base.text.strip(),
            "",
        ]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n" + "\n".join(lines))
    path = Path(out) / "README.md"
    atomic_write_text(path, str(card))
    return path


def add_audit(model_dir: str | Path, audit: str | Path) -> Path | None:
    """Re-render the card of a model folder that prod-unlearn wrote, now with its audit; any other
    folder (a user's own card, a hub id) is left alone. Returns the card's path when it was updated."""
    model_dir = Path(model_dir)
    run_path = model_dir / "run.json"
    if not (model_dir.is_dir() and is_ours(model_dir) and run_path.is_file()):
        return None
    try:
        run = json.loads(run_path.read_text())
        return write_model_card(model_dir, run, run.get("data_name", "?"), audit=audit)
    except (OSError, ValueError, KeyError):
        return None
