"""NPO: Negative Preference Optimization (Zhang et al. 2024), beta = 0.1.

  L = -(2 / beta) * mean_batch log sigmoid(-beta * (logp_theta(y|x) - logp_ref(y|x)))

with sequence log-probs summed over completion tokens (as the reference code's
``get_batch_loss(...).sum(-1)``). logp_ref is the original model's, taken once by the frozen
reference pass (one float per example) instead of a second model kept in memory.
At the start (theta = ref) the loss is (2 / beta) log 2 and its gradient equals GA's with the
token log-probs summed per sequence; the sigmoid then fades the push on already-forgotten examples.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prod_unlearn.methods.base import Method, completion_logits, sequence_logprob


@dataclass
class NpoParams:
    beta: float = 0.1   # inverse temperature (paper default 0.1)


def validate(params: NpoParams) -> None:
    if params.beta <= 0:
        raise ValueError(f"npo: beta must be > 0, got {params.beta}")


def logp_reference(logits, targets, params) -> dict[str, torch.Tensor]:
    """Frozen-pass record shared by NPO and DPO: the summed completion log-prob of one example."""
    return {"logp": -F.cross_entropy(logits.float(), targets, reduction="sum")}


def view_logratio(model, batch, ref, view: str) -> torch.Tensor:
    """logp_theta - logp_ref per example ([B]) for one view."""
    logits, targets, counts = completion_logits(model, batch[view])
    logp = sequence_logprob(logits, targets, counts)
    return logp - ref.gather(view, "logp", batch["index"]).to(logp.device, logp.dtype)


def loss(model, batch, ref, params: NpoParams):
    ratio = view_logratio(model, batch, ref, "forget")
    return -(2.0 / params.beta) * F.logsigmoid(-params.beta * ratio).mean()


METHOD = Method("npo", "negative preference optimisation: sigmoid-bounded ascent relative to the original "
                       "model's log-prob", NpoParams, loss, logp_reference, validate=validate)
