"""DPO for unlearning (Rafailov et al. 2023, as the unlearning baseline of TOFU/NPO), beta = 0.1.

Preferred answer = a refusal for the same prompt (the "refusal" view, texts from
``methods/refusals.py``), dispreferred = the forget completion y:

  L = -mean_batch log sigmoid(beta * [(logp_theta - logp_ref)(refusal) - (logp_theta - logp_ref)(y)])

Sequence log-probs are summed over completion tokens; logp_ref of both views comes from the
frozen reference pass (it runs once per view). No 2/beta factor, and the reference log-ratio is
kept (the FLAT repository's DPO drops it "to test re-weighting"; we follow the DPO paper).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from prod_unlearn.methods.base import Method
from prod_unlearn.methods.npo import logp_reference, view_logratio


@dataclass
class DpoParams:
    beta: float = 0.1  # inverse temperature (paper default 0.1)


def validate(params: DpoParams) -> None:
    if params.beta <= 0:
        raise ValueError(f"dpo: beta must be > 0, got {params.beta}")


def loss(model, batch, ref, params: DpoParams):
    margin = view_logratio(model, batch, ref, "refusal") - view_logratio(model, batch, ref, "forget")
    return -F.logsigmoid(params.beta * margin).mean()


METHOD = Method(
    "dpo",
    "DPO with a refusal as the preferred answer and the forget completion as the dispreferred one",
    DpoParams,
    loss,
    logp_reference,
    views=("forget", "refusal"),
    validate=validate,
)
