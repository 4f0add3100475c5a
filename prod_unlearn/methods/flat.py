"""FLAT: loss adjustment with only forget data (Wang et al., ICLR 2025, arXiv 2410.11143).

FLAT maximises an f-divergence between a template answer (a refusal, the "good" answer) and the
forget answer, both for the same forget prompt, through its variational form
D_f >= E_good[g(.)] - E_forget[f*(g(.))], with the model's answer probability as the
discriminator value. Per forget example:

  P_g = mean per-token probability of the refusal under the current model
  P_f = mean per-token probability of the forget completion under the current model
  L   = -g(P_g) + f*(g(P_f))          (then mean over the batch)

Activation g and conjugate composition f*(g(v)) (Nowozin et al. 2016, f-GAN, Table 2):

  divergence         g(v)                   f*(g(v))                  L
  kl (default)       v                      exp(v - 1)                -P_g + exp(P_f - 1)
  tv                 tanh(v) / 2            tanh(v) / 2               (tanh P_f - tanh P_g) / 2
  js                 log 2 - log(1+e^-v)    v + log(1+e^-v) - log 2   softplus(-P_g) + P_f + softplus(-P_f) - 2 log 2
  pearson            v                      v + v^2 / 4               -P_g + P_f + P_f^2 / 4
  reverse_kl         -exp(-v)               v - 1                     exp(-P_g) + P_f - 1
  squared_hellinger  1 - exp(-v)            exp(v) - 1                exp(-P_g) + exp(P_f) - 2
  neyman             1 - exp(-v)            2 - 2 exp(-v / 2)         exp(-P_g) - 2 exp(-P_f / 2) + 1

kl, tv, js and pearson are the paper's variants and agree with the official code
(``get_contrastive_loss``: activation = -g, conjugate = -f*(g)). Departures:
- reverse_kl, squared_hellinger and neyman follow f-GAN. The official code uses exp(+v) in
  those activations (and applies Neyman's f* to v rather than to g(v)); that turns the push on
  P_g the wrong way (all three lower the refusal's probability) and, for reverse_kl and
  squared_hellinger, on P_f too. With f-GAN's exp(-v) every variant lowers P_f and raises P_g
  (tested).
- P is the mean over the completion tokens of each example, and g, f* apply per example before
  the batch mean (the paper's expectation over D_f). The official code averages the token
  probabilities over every position of the whole padded batch before applying g and f*: prompt
  positions and padding positions (the pad token is EOS there, and no position is masked) are
  counted with their real probabilities under the model, not left out and not as zeros. Both
  coincide only for one example without prompt or padding.
No reference model is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prod_unlearn.methods.base import Method, completion_logits

LOG2 = math.log(2.0)

# name -> (g, f* o g)
DIVERGENCES = {
    "kl": (lambda v: v, lambda v: torch.exp(v - 1.0)),
    "tv": (lambda v: 0.5 * torch.tanh(v), lambda v: 0.5 * torch.tanh(v)),
    "js": (lambda v: LOG2 - F.softplus(-v), lambda v: v + F.softplus(-v) - LOG2),
    "pearson": (lambda v: v, lambda v: v + 0.25 * v * v),
    "reverse_kl": (lambda v: -torch.exp(-v), lambda v: v - 1.0),
    "squared_hellinger": (lambda v: 1.0 - torch.exp(-v), lambda v: torch.exp(v) - 1.0),
    "neyman": (lambda v: 1.0 - torch.exp(-v), lambda v: 2.0 - 2.0 * torch.exp(-0.5 * v)),
}


@dataclass
class FlatParams:
    divergence: str = "kl"  # kl | tv | js | pearson | reverse_kl | squared_hellinger | neyman


def validate(params: FlatParams) -> None:
    if params.divergence not in DIVERGENCES:
        raise ValueError(f"flat: divergence must be one of {', '.join(DIVERGENCES)}, got {params.divergence!r}")


def mean_token_prob(model, view_batch: dict) -> torch.Tensor:
    """Mean over each example's completion tokens of pi_theta(y_t | ...) ([B])."""
    logits, targets, counts = completion_logits(model, view_batch)
    p = torch.exp(-F.cross_entropy(logits, targets, reduction="none"))
    seg = torch.repeat_interleave(torch.arange(len(counts), device=p.device), counts.to(p.device))
    return torch.zeros(len(counts), device=p.device, dtype=p.dtype).index_add(0, seg, p) / counts.to(p.device)


def flat_loss(p_good: torch.Tensor, p_forget: torch.Tensor, divergence: str = "kl") -> torch.Tensor:
    g, conj = DIVERGENCES[divergence]
    return (-g(p_good) + conj(p_forget)).mean()


def loss(model, batch, ref, params: FlatParams):
    return flat_loss(
        mean_token_prob(model, batch["refusal"]), mean_token_prob(model, batch["forget"]), params.divergence
    )


METHOD = Method(
    "flat",
    "FLAT: maximise an f-divergence between a refusal and the forget answer (forget data only)",
    FlatParams,
    loss,
    views=("forget", "refusal"),
    validate=validate,
)
