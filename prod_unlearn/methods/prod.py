"""PROD: Probabilistic Redistribution of the Output Distribution (the paper, Algorithm 1).

Target, per completion position t, from the frozen original logits h_t:
  1. forget-data elimination  h_t[y_t] = -inf
  2. noise elimination        keep the smallest top set S_p whose mass reaches p (the crossing
                              token kept; the top-1 always kept)
  3. redistribution           p_T = softmax over the survivors
  4. alpha-suppression        p_T[y_t] = -alpha * p_orig(y_t)   (alpha = 0: off)
Loss: cross-entropy to p_T on completion tokens (KL / JS selectable).
The target is sparse (|S_p| entries, not |V|), computed once and never recomputed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from prod_unlearn.methods.base import Method, completion_logits


@dataclass
class ProdParams:
    p: float = 0.8  # nucleus threshold of noise elimination (1.0 = keep every token)
    alpha: float = 0.0  # alpha-suppression strength; negative delays forgetting
    loss: str = "ce"  # ce | kl | js


def validate(params: ProdParams) -> None:
    if not 0.0 < params.p <= 1.0:
        raise ValueError(f"prod: p must be in (0, 1], got {params.p}")
    if params.loss not in ("ce", "kl", "js"):
        raise ValueError(f"prod: loss must be ce, kl or js, got {params.loss!r}")
    if params.alpha != 0.0 and params.loss != "ce":
        raise ValueError("prod: alpha-suppression puts negative mass in the target; it is defined for loss=ce only")


def sculpt_target(logits: torch.Tensor, targets: torch.Tensor, p: float, alpha: float = 0.0):
    """Sparse p_T for n positions: (ids [E], probs [E], counts [n]); entries grouped by position."""
    logits = logits.float()
    n = logits.size(0)
    rows = torch.arange(n, device=logits.device)
    eliminated = logits.clone()
    eliminated[rows, targets] = float("-inf")  # step 1 before step 2
    q = torch.softmax(eliminated, dim=-1)
    sorted_q, order = q.sort(dim=-1, descending=True)
    # Mass strictly above each token, summed in float64: a float32 cumsum over a large vocabulary
    # reaches 1.0 before the tail and would drop tokens even at p = 1.0 (which keeps them all).
    before = sorted_q.double().cumsum(-1) - sorted_q.double()
    keep = ((before < p) if p < 1.0 else torch.ones_like(sorted_q, dtype=torch.bool)) & (sorted_q > 0)
    keep[:, 0] = True  # top-1 always survives
    kept_q = sorted_q * keep
    probs = (kept_q / kept_q.sum(-1, keepdim=True))[keep]  # = softmax over surviving logits
    ids = order[keep]
    counts = keep.sum(-1)
    if alpha != 0.0:
        p_orig = torch.softmax(logits, dim=-1)[rows, targets]
        pos = torch.repeat_interleave(rows, counts)
        pos = torch.cat([pos, rows])
        ids = torch.cat([ids, targets])
        probs = torch.cat([probs, -alpha * p_orig])
        order = torch.sort(pos, stable=True).indices
        ids, probs = ids[order], probs[order]
        counts = counts + 1
    return ids.to(torch.int32), probs, counts.to(torch.int32)


def reference(logits, targets, params: ProdParams) -> dict[str, torch.Tensor]:
    ids, probs, counts = sculpt_target(logits, targets, params.p, params.alpha)
    return {"ids": ids, "probs": probs, "counts": counts}


def sparse_loss(
    logits: torch.Tensor, ids: torch.Tensor, probs: torch.Tensor, counts: torch.Tensor, kind: str = "ce"
) -> torch.Tensor:
    """Mean over positions of the divergence between sparse p_T and the model's distribution.

    CE = -sum_w p_T(w) log pi(w), gathered at the target's entries only. log pi comes from the
    fused log_softmax: measured (benchmarks/README.md) it costs what fine-tuning's cross-entropy
    costs, while logit - logsumexp kept extra |V|-wide buffers (peak memory 1.10x -> 0.97x of SFT
    on the embedded model, 2.4x -> 1.25x at |V| = 32k).
    KL = CE - H(p_T): same gradient, different value. JS needs pi outside S_p only through its
    total mass there, so it is sparse too: 0.5 * log 2 * (1 - sum_{w in S} pi(w)).
    """
    n = logits.size(0)
    rows = torch.repeat_interleave(torch.arange(n, device=logits.device), counts.to(logits.device).long())
    ids = ids.to(logits.device).long()
    probs = probs.to(logits.device, logits.dtype)
    log_pi = torch.log_softmax(logits, dim=-1)[rows, ids]
    if kind == "ce":
        return -(probs * log_pi).sum() / n
    if kind == "kl":
        pos = probs > 0
        return ((probs[pos] * (probs[pos].log() - log_pi[pos])).sum()) / n
    if kind == "js":
        pi = log_pi.exp()
        m = 0.5 * (probs + pi)
        inside = 0.5 * (torch.xlogy(probs, probs / m) + pi * (log_pi - m.log()))
        outside_mass = 1.0 - torch.zeros(n, device=logits.device, dtype=pi.dtype).index_add(0, rows, pi)
        return (inside.sum() + 0.5 * math.log(2.0) * outside_mass.clamp_min(0).sum()) / n
    raise ValueError(f"unknown PROD loss {kind!r}")


def loss(model, batch, ref, params: ProdParams) -> torch.Tensor:
    logits, _, _ = completion_logits(model, batch["forget"])
    idx = batch["index"]
    return sparse_loss(
        logits,
        ref.gather("forget", "ids", idx),
        ref.gather("forget", "probs", idx),
        ref.gather("forget", "counts", idx),
        params.loss,
    )


METHOD = Method(
    "prod",
    "PROD: train to the original distribution with the forget token removed and the tail "
    "pruned (nucleus p), renormalised",
    ProdParams,
    loss,
    reference,
    validate=validate,
)
