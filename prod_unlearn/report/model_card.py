"""The Hugging Face model card of an unlearned model: what was removed (never the removed text), how,
and the figures before and after, so a model pushed to the Hub carries the record of its unlearning."""
from __future__ import annotations

from pathlib import Path

from prod_unlearn.io import atomic_write_text

FIGURES = (("bleu", "line-cut BLEU on the forget set (50 % cut; lower = more forgotten)"),
           ("exact_next5", "next 5 lines reproduced exactly"),
           ("heldout_bpb", "held-out bits per byte (lower = better general code modelling)"),
           ("heldout_ppl", "held-out perplexity"))


def base_card(model: str):
    """The base model's card if its folder has one (its licence is kept), else None."""
    from huggingface_hub import ModelCard
    path = Path(model) / "README.md"
    try:
        return ModelCard.load(path) if path.is_file() else None
    except Exception:  # an unparsable card is no card: ours still gets written
        return None


def write_model_card(out: Path, run: dict, forget_name: str, audit: str | None = None) -> Path:
    """``out/README.md``: YAML metadata (base_model, tags, library_name, licence kept from the base
    card), then the forget set's name, size and sha256, the method and settings, before/after figures
    and the stopping rule's verdict."""
    from huggingface_hub import ModelCard, ModelCardData
    base = base_card(run["model"])
    licence = getattr(base.data, "license", None) if base else None
    data = ModelCardData(base_model=run["model"] if not Path(run["model"]).exists() else None,
                         library_name="transformers", license=licence,
                         tags=["unlearning", "prod-unlearn", run["method"]])
    before, after = run.get("before") or {}, run.get("after") or {}
    rows = [f"| {label} | {before.get(k, '-')} | {after.get(k, '-')} |" for k, label in FIGURES if k in after]
    until = run.get("until") or {}
    settings = {k: run["config"][k] for k in ("lr", "batch_size", "grad_accum", "max_length", "seed", "sam_rho")
                if k in run["config"]}
    stopped = until.get("stopped_by") or "a fixed budget"
    if until.get("kept_step") is not None:
        stopped += f" (model of optimiser step {until['kept_step']})"
    lines = [
        f"# {Path(run['model']).name or run['model']}, with code unlearned by prod-unlearn", "",
        f"This model is `{run['model']}` after `prod-unlearn unlearn` removed a forget set from it. The forgotten "
        "text is not reproduced here; the set is identified by its hash.", "",
        "## What was forgotten", "",
        "| | |", "|---|---|",
        f"| forget set | `{forget_name}` |",
        f"| items | {run['forget_examples']} |",
        f"| sha256 of the items | `{run['forget_hash']}` |",
        f"| method | `{run['method']}` {', '.join(f'{k}={v}' for k, v in run['params'].items())} |",
        f"| training | {', '.join(f'{k} {v}' for k, v in settings.items())} |",
        f"| stopped by | {stopped} |",
        f"| base model fingerprint | `{run['model_fingerprint']}` |", ""]
    if rows:
        lines += ["## Before and after", "", "| figure | before | after |", "|---|---:|---:|", *rows, ""]
    if audit:
        lines += [f"Audit of this model (every attack, with intervals): `{audit}`.", ""]
    if base is not None:
        lines += ["## Base model", "", f"The base model's card follows; its licence ({licence or 'none stated'}) "
                  "applies. What changed: the weights, by the unlearning above.", "", base.text.strip(), ""]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n" + "\n".join(lines))
    path = Path(out) / "README.md"
    atomic_write_text(path, str(card))
    return path
