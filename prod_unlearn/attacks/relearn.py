"""Relearning attack: a few fine-tuning steps bring shallowly forgotten code back.

The forget set is split (seeded) into a held-out share (``holdout``, default 10 %, at least one
file) and the rest. The model is fine-tuned (AdamW, constant small lr, no weight decay) on

- ``forget``: the held-out share of the forget set, or
- ``unrelated``: code that has nothing to do with it (default: the shipped held-out stdlib files),

cut into windows of ``relearn_length`` tokens, ``relearn_batch`` windows a step. After each budget
(cumulative steps, default 5, 10, 25) the *other* files are scored: greedy BLEU at the line cut
and the mean token NLL of their first ``relearn_length`` tokens. The same curve for the original
model (when given) shows where a model that never forgot sits under the same procedure.
The weights are restored afterwards.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from prod_unlearn.attacks import common
from prod_unlearn.attacks.common import HELDOUT, AttackSettings, attacked
from prod_unlearn.data.examples import Example, load_examples
from prod_unlearn.data.tokenize import encode_document, pad_id

NAME = "relearn"
SUMMARY = "a few fine-tuning steps on 10 % of the forget set (or on unrelated code), then the other 90 % is scored"
PRIMARY = "bleu"
COST_S = 127
SOURCES = ("forget", "unrelated")


@dataclass
class Settings(AttackSettings):
    steps: tuple[int, ...] = (5, 10, 25)  # cumulative fine-tuning step budgets
    lr: float = 1e-4
    relearn_batch: int = 2  # sequences per step
    relearn_length: int = 256  # tokens per sequence (documents are cut into windows)
    holdout: float = 0.1  # share of the forget set relearned on (the rest is scored)
    sources: tuple[str, ...] = SOURCES
    unrelated_path: str | None = None  # JSONL/folder of unrelated code [default: assets heldout.jsonl]
    relearn_eval_items: int | None = None  # cap on the scored 90 % (None = all of it)


AUDIT = Settings(relearn_eval_items=16)


def split_forget(examples: list[Example], holdout: float = 0.1, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """(relearned share, scored rest): a seeded draw of max(1, round(holdout * n)) files."""
    if len(examples) < 2:
        raise ValueError("relearn: the forget set needs at least 2 examples (one to relearn, one to score)")
    idx = list(range(len(examples)))
    random.Random(seed).shuffle(idx)
    n = min(len(examples) - 1, max(1, round(holdout * len(examples))))
    held = set(idx[:n])
    return [e for i, e in enumerate(examples) if i in held], [e for i, e in enumerate(examples) if i not in held]


def windows(tokenizer, texts: list[str], length: int) -> list[list[int]]:
    """Each text as BOS + tokens, cut into consecutive windows of ``length`` tokens."""
    out = []
    for t in texts:
        ids = encode_document(tokenizer, t)
        out += [ids[s : s + length] for s in range(0, len(ids), length) if len(ids[s : s + length]) > 1]
    return out


def _batch(ws: list[list[int]], pad: int, device) -> dict[str, torch.Tensor]:
    width = max(len(w) for w in ws)
    ids = torch.full((len(ws), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, w in enumerate(ws):
        ids[r, : len(w)] = torch.tensor(w)
        mask[r, : len(w)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def mean_nll(model, tokenizer, examples: list[Example], max_tokens: int) -> dict[str, float]:
    stats = common.token_stats(model, tokenizer, [e.prompt + e.completion for e in examples], max_tokens, moments=False)
    return {e.id: float(-s["logp"].mean()) for e, s in zip(examples, stats) if s["logp"].size}


def relearn_curve(
    model, tokenizer, train: list[list[int]], scored: list[Example], cfg: Settings, desc: str = "relearn"
) -> dict[int, dict]:
    """{steps: {"scores": per-item continuation scores, "nll": per-item NLL}} after each budget;
    the model's weights and mode are restored afterwards."""
    if not train:
        raise ValueError("relearn: no training text")
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    rng = random.Random(cfg.seed)
    order: list[int] = []
    out = {}
    with common.weights_restored(model):
        torch.manual_seed(cfg.seed)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
        done = 0
        for budget in sorted(set(cfg.steps)):
            model.train()
            while done < budget:
                picked: list[list[int]] = []
                while len(picked) < cfg.relearn_batch:
                    if not order:
                        order = list(range(len(train)))
                        rng.shuffle(order)
                    picked.append(train[order.pop()])
                loss = model(**_batch(picked, pad, device)).loss
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"relearn: the loss became {loss.item()} at step {done + 1}; lower --lr (now {cfg.lr:g})"
                    )
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                done += 1
            model.eval()
            out[budget] = {
                "scores": common.continuation_scores(model, tokenizer, scored, cfg, desc=f"{desc} @{budget}"),
                "nll": mean_nll(model, tokenizer, scored, cfg.relearn_length),
            }
        del opt
    return out


def run(model, tokenizer, examples: list[Example], original=None, cfg: Settings | None = None) -> dict:
    cfg = cfg or Settings()
    for s in cfg.sources:
        if s not in SOURCES:
            raise ValueError(f"relearn source {s!r}: expected some of {', '.join(SOURCES)}")
    held, scored = split_forget(common.first_items(examples, cfg.max_items), cfg.holdout, cfg.seed)
    if cfg.relearn_eval_items:
        scored = scored[: cfg.relearn_eval_items]
    texts = {"forget": [e.prompt + e.completion for e in held]}
    if "unrelated" in cfg.sources:
        texts["unrelated"] = [e.prompt + e.completion for e in load_examples(cfg.unrelated_path or HELDOUT)]
    train = {s: windows(tokenizer, texts[s], cfg.relearn_length) for s in cfg.sources}
    rows, per_item = [], {}
    for label, m in attacked(model, original, cfg):
        m.eval()
        start: dict[str, Any] = {
            "scores": common.continuation_scores(m, tokenizer, scored, cfg, desc=f"relearn {label} @0"),
            "nll": mean_nll(m, tokenizer, scored, cfg.relearn_length),
        }
        per_item[label] = {"0": start}
        base_b, base_n = common.metric(start["scores"]), start["nll"]
        for s in cfg.sources:
            curve = {0: start, **relearn_curve(m, tokenizer, train[s], scored, cfg, desc=f"relearn {label}/{s}")}
            per_item[label].update({f"{s}@{b}": c for b, c in curve.items() if b})
            for b, c in curve.items():
                for key, vals, base in (("bleu", common.metric(c["scores"]), base_b), ("nll", c["nll"], base_n)):
                    r = common.make_row(label, f"{s}@{b}", key, vals, base, x=b, n_boot=cfg.n_boot, seed=cfg.seed)
                    r["series"] = f"{label}: {s}"
                    rows.append(r)
    return {
        "kind": NAME,
        "summary": SUMMARY,
        "baseline": "@0",
        "config": {
            "steps": sorted(set(cfg.steps)),
            "lr": cfg.lr,
            "batch": cfg.relearn_batch,
            "length": cfg.relearn_length,
            "sources": list(cfg.sources),
            "relearned": [e.id for e in held],
            "scored": len(scored),
            "cut": cfg.cut,
            "max_new_tokens": cfg.max_new_tokens,
            "train_windows": {s: len(w) for s, w in train.items()},
            "unrelated": str(cfg.unrelated_path or HELDOUT) if "unrelated" in cfg.sources else None,
        },
        "rows": rows,
        "per_item": per_item,
    }


def plot(result: dict, path) -> None:
    from prod_unlearn.plots import line_rows

    line_rows(
        result["rows"],
        path,
        "relearning attack: BLEU on the files not relearned",
        "fine-tuning steps",
        "forget-set BLEU (mean, 95 % CI)",
        metric="bleu",
    )
