"""SimNPO: Simple NPO (Fan et al. 2024, "Simplicity Prevails: Rethinking Negative Preference
Optimization for LLM Unlearning"), reference-free:

  L = -(2 / beta) * mean_batch log sigmoid(beta * (NLL(y|x) / |y| - delta))

NLL summed over the completion tokens and divided by their number, so long and short files are
pushed alike and no frozen model is needed. Defaults are open-unlearning's (beta 4.5, delta 0;
its ``gamma`` forget weight is our lr). Same tensors, same loss as open-unlearning's ``SimNPO``
(README "Methods").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from prod_unlearn.methods.base import Method, completion_logits, sequence_logprob


@dataclass
class SimNpoParams:
    beta: float = 4.5  # inverse temperature
    delta: float = 0.0  # margin on the length-normalised NLL


def validate(params: SimNpoParams) -> None:
    if params.beta <= 0:
        raise ValueError(f"simnpo: beta must be > 0, got {params.beta}")


def loss(model, batch, ref, params: SimNpoParams):
    logits, targets, counts = completion_logits(model, batch["forget"])
    nll = -sequence_logprob(logits, targets, counts) / counts.to(logits.device, logits.dtype)
    return -(2.0 / params.beta) * F.logsigmoid(params.beta * (nll - params.delta)).mean()


METHOD = Method(
    "simnpo",
    "SimNPO: NPO without a reference model, on the length-normalised NLL (margin delta)",
    SimNpoParams,
    loss,
    validate=validate,
)
