"""What a model has memorised of the default forget sets, measured as a user would prompt it.

Used to certify the embedded model (``prod-unlearn pretrain`` records these figures in the model
folder's ``pretrain.json`` and model card) and by ``benchmarks/embedded_model.py``.
"""

from __future__ import annotations

from prod_unlearn.data.examples import Example, load_examples
from prod_unlearn.evaluation.metrics import bits_per_byte
from prod_unlearn.models.loading import ASSETS
from prod_unlearn.tasks.copyright import continuation_bleu

DATA = ASSETS / "data"


def _files(role: str) -> list[Example]:
    return load_examples(DATA / f"{role}.jsonl")


def heldout_bpb(model, tokenizer, limit: int | None = None) -> float:
    texts = [e.completion for e in _files("heldout")][:limit]
    return round(bits_per_byte(model, tokenizer, texts, max_length=1024), 4)


def monitor(model, tokenizer) -> dict:
    """Cheap figures logged during pretraining: held-out bits per byte on 6 files."""
    return {"heldout_bpb_6": heldout_bpb(model, tokenizer, limit=6)}


def memorisation_report(model, tokenizer, max_new_tokens: int = 256, with_detector: bool = True) -> dict:
    """Line-cut BLEU on the copyright files and the never-trained control files, reproduction of the
    insecure items (BLEU, detector rate next to the references' rate) and of the deprecated API at
    its forget and held-out sites, and held-out bits per byte."""
    from prod_unlearn.tasks import deprecated, insecure

    out: dict = {}
    for role, name in (("copyright", "copyright"), ("control", "control")):
        r = continuation_bleu(
            model, tokenizer, _files(role), max_new_tokens=max_new_tokens, token_half=True, desc=f"{name} files"
        )
        out[name] = {k: round(v, 4) for k, v in r.items() if k.startswith(("bleu", "exact"))}
        out[name]["min_file_bleu"] = round(min(r["per_example"].values()), 4)
    forget, _ = insecure.load_insecure(insecure.DEFAULT_DATA)
    rows = insecure.continue_and_scan(model, tokenizer, forget, detect=with_detector)
    out["insecure"] = {
        "n": len(rows),
        "bleu": round(sum(r["bleu"] for r in rows) / len(rows), 4),
        "reproduced_0.8": round(sum(r["bleu"] >= 0.8 for r in rows) / len(rows), 4),
    }
    if with_detector:
        out["insecure"]["insecure_rate"] = round(sum(bool(r["findings"]) for r in rows) / len(rows), 4)
    forget, heldout = deprecated.load_deprecated(deprecated.DEFAULT_DATA)
    for name, ex in (("forget_sites", forget), ("eval_sites", heldout)):
        res = deprecated.evaluate_deprecated(model, tokenizer, ex)
        out.setdefault("deprecated", {})[name] = {k: res[k] for k in ("n", "deprecated_match") if k in res}
    out["heldout_bpb"] = heldout_bpb(model, tokenizer)
    return out
