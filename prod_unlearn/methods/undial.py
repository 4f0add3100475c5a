"""UNDIAL: self-distillation with adjusted logits (Dong et al. 2024), beta = 10.

Target per completion position t, from the frozen original logits h_t:
  q_t = softmax(h_t - beta * onehot(y_t))
Loss: cross-entropy to q_t on completion tokens (mean over positions). Like PROD's, the target
is computed once by the frozen pass and never recomputed.

Departure (storage): q_t is dense over the vocabulary and has no small support (removing y_t
leaves the original distribution, whose tail is long), so it is cached sparsely:
  - S_t = the ``top_k`` largest entries of q_t other than y_t, plus y_t itself (always stored,
    so the push-down on the forgotten token is exact), with their exact probabilities;
  - m_t = the target mass outside S_t ("tail"), one float per position.
The loss keeps the tail as one bucket instead of renormalising it away:
  L_t = -sum_{w in S_t} q_t(w) log pi(w)  -  m_t log pi(V \\ S_t)
i.e. the cross-entropy between the two distributions coarsened to the partition {S_t, rest}.
It fixes the tail's total mass but not its shape inside, which the model keeps as its own. At
the start of training the model's shape inside the tail IS the original one (q_t is proportional
to the original distribution off y_t), so the gradient equals the dense UNDIAL gradient exactly
(tested); later it departs only in how the tail mass m_t is spread over the tail tokens. The loss
value is lower than the dense CE by the tail's conditional entropy term m_t * H(q_t | tail).
Measured tail mass m_t on the embedded model (12 copyright files, 512 tokens each, beta = 10):
top_k = 256: mean 0.087, 99th percentile 0.36, max 0.49; top_k = 64: mean 0.16. On those 5484
positions at the original weights the gradient w.r.t. the logits matches the dense one to 1e-9
(largest entry 1.8e-4), and the loss reads 7.49 (top_k 256) / 7.02 (64) against the dense 8.17.
(Renormalising the top-k instead would inflate every kept probability by 1 / (1 - m_t), up to 2x
here, and bias the gradient from the first step.)
Cache size: (top_k + 1) * 8 + 4 bytes per completion token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prod_unlearn.methods.base import Method, completion_logits


@dataclass
class UndialParams:
    beta: float = 10.0  # logit penalty on the forget token (paper default 10)
    top_k: int = 256  # target entries cached per position besides y_t (the rest is one tail bucket)


def validate(params: UndialParams) -> None:
    if params.beta < 0:
        raise ValueError(f"undial: beta must be >= 0, got {params.beta}")
    if params.top_k < 1:
        raise ValueError(f"undial: top_k must be >= 1, got {params.top_k}")


def adjusted_target(logits: torch.Tensor, targets: torch.Tensor, beta: float, top_k: int):
    """Sparse q for n positions: ids [n, K], probs [n, K] (K = min(top_k, V-1) + 1, y_t last), tail [n]."""
    logits = logits.float()
    n, vocab = logits.shape
    rows = torch.arange(n, device=logits.device)
    adjusted = logits.clone()
    adjusted[rows, targets] -= beta
    q = torch.softmax(adjusted, dim=-1)
    k = min(top_k, vocab - 1)
    others = q.clone()
    others[rows, targets] = -1.0  # y_t is stored separately
    ids = torch.cat([others.topk(k, dim=-1).indices, targets[:, None]], dim=1)
    probs = q.gather(1, ids)
    tail = q.scatter(1, ids, 0.0).sum(-1)  # summed directly: no 1 - sum cancellation
    return ids, probs, tail


def reference(logits, targets, params: UndialParams) -> dict[str, torch.Tensor]:
    ids, probs, tail = adjusted_target(logits, targets, params.beta, params.top_k)
    return {"ids": ids.to(torch.int32), "probs": probs, "tail": tail}


def tail_bucket_ce(logits: torch.Tensor, ids: torch.Tensor, probs: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
    """Mean over n positions of -sum_S q log pi - m log pi(rest); ids/probs [n, K], tail [n]."""
    ids = ids.to(logits.device).long()
    probs = probs.to(logits.device, logits.dtype)
    lse = torch.logsumexp(logits, dim=-1)
    ce = -(probs * (logits.gather(1, ids) - lse[:, None])).sum(-1)
    if ids.size(1) < logits.size(1):  # a non-empty tail exists
        rest = torch.logsumexp(logits.scatter(1, ids, float("-inf")), dim=-1)
        ce = ce - tail.to(logits.device, logits.dtype) * (rest - lse)
    return ce.mean()


def loss(model, batch, ref, params: UndialParams) -> torch.Tensor:
    logits, _, _ = completion_logits(model, batch["forget"])
    idx = batch["index"]
    n = logits.size(0)
    return tail_bucket_ce(
        logits,
        ref.gather("forget", "ids", idx).view(n, -1),
        ref.gather("forget", "probs", idx).view(n, -1),
        ref.gather("forget", "tail", idx),
    )


METHOD = Method(
    "undial",
    "UNDIAL: self-distil to the original distribution with the forget token's logit "
    "lowered by beta (top-k cached, tail kept as one bucket)",
    UndialParams,
    loss,
    reference,
    validate=validate,
)
