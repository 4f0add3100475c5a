"""Evaluations that keep per-item scores, so that every bench point can carry bootstrap intervals."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prod_unlearn.bench.config import BenchConfig

# ---------------------------------------------------------------- evaluation with per-item scores


def evaluate_forget(task: str, model, tok, examples, cfg: BenchConfig) -> tuple[dict, dict | None]:
    """(figures, {item id: forget quality} or None)."""
    from prod_unlearn.tasks import FORGET_TASKS

    # copyright's options (token_half, cuts) pass through the other tasks' evaluate untouched
    r = FORGET_TASKS[task].evaluate(
        model, tok, examples, max_new_tokens=cfg.max_new_tokens, token_half=False, cuts=tuple(cfg.copyright_cuts)
    )
    return r, r.pop("per_item", None)


def heldout_windows(tok, context: int, max_tokens: int | None) -> tuple[list[str], list[list[int]]]:
    """The held-out perplexity windows (as ``metrics.perplexity`` cuts them) with ids."""
    from prod_unlearn.data.examples import load_examples
    from prod_unlearn.evaluation.metrics import first_windows, windows_of
    from prod_unlearn.tasks import HELDOUT

    named = [
        (f"{e.id}#{k}", w)
        for e in load_examples(HELDOUT)
        for k, w in enumerate(windows_of(tok, [e.completion], context))
    ]
    named = named[: first_windows([w for _, w in named], max_tokens)]
    return [n for n, _ in named], [w for _, w in named]


def window_nll(model, tok, windows: list[list[int]], batch_size: int = 8) -> tuple[list[float], list[int]]:
    """Summed next-token NLL and scored-token count per window."""
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    from prod_unlearn.data.tokenize import pad_id, right_pad

    pad = pad_id(tok)
    nll, count = [0.0] * len(windows), [0] * len(windows)
    order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            rows = order[s : s + batch_size]
            ids, mask = (t.to(device) for t in right_pad([windows[i] for i in rows], pad))
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            tgt = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tgt, ignore_index=-100, reduction="none")
            for r, i in enumerate(rows):
                nll[i] = float(loss[r].sum())
                count[i] = int((tgt[r] != -100).sum())
    model.train(was_training)
    return nll, count


def evaluate_utility(
    axis: str, model, tok, cfg: BenchConfig, original: dict | None
) -> tuple[dict, dict | None, list[str] | None]:
    """(figures incl. ``utility`` (higher is better), utility items for the bootstrap, item ids)."""
    from prod_unlearn.tasks import UTILITY_TASKS

    items: dict[str, Any] | None
    ids: list[str] | None
    if axis not in UTILITY_TASKS:
        raise ValueError(f"--utility {axis}: expected one of {', '.join(UTILITY_TASKS)}")
    if axis == "ppl":  # original / current perplexity on the same windows: 1 = unchanged, -> 0 as the model breaks
        ctx = min(1024, int(getattr(model.config, "max_position_embeddings", 1024) or 1024))
        ids, windows = heldout_windows(tok, ctx, cfg.ppl_tokens)
        nll, count = window_nll(model, tok, windows)
        mean = sum(nll) / max(1, sum(count))
        items = {"kind": "ppl", "nll": nll, "tokens": count}
        o = (original or {}).get("items", {}).get("utility") if original else None
        o_mean = sum(o["nll"]) / max(1, sum(o["tokens"])) if o else mean
        ppl = math.exp(mean) if mean < 700 else float("inf")
        return (
            {"heldout_ppl": round(ppl, 3), "utility": round(math.exp(o_mean - mean), 4) if mean < 700 else 0.0},
            items,
            ids,
        )
    if axis in ("health", "humaneval"):
        res = UTILITY_TASKS[axis].evaluate(model, tok, ppl_tokens=cfg.ppl_tokens, details=True)
        if axis == "health":
            per = res.pop("per_prompt", None)
            items = (
                {
                    "kind": "health",
                    "healthy": [float(bool(p["healthy"])) for p in per],
                    "heldout_ppl": res["heldout_ppl"],
                }
                if per
                else None
            )
        else:
            per = res.pop("per_problem", None)
            res["utility"] = res.get("pass_at_1", 0.0)
            items = {"kind": "mean", "values": [float(bool(p["passed"])) for p in per]} if per else None
        ids = [str(p.get("id", p.get("task_id", i))) for i, p in enumerate(per)] if per else None
        return res, items, ids
    # any other task: ``utility`` is the mean of its ``per_item`` values (tasks/base.py)
    res = UTILITY_TASKS[axis].evaluate(model, tok, ppl_tokens=cfg.ppl_tokens)
    per = res.pop("per_item", None)
    if "utility" not in res:
        raise ValueError(f"utility task {axis}: its result has no 'utility' figure (tasks/base.py)")
    return res, ({"kind": "mean", "values": list(per.values())} if per else None), (list(per) if per else None)
