"""GA: gradient ascent on the forget set.

Loss = -(mean token NLL of the completion), the mean taken over every completion token of the
batch exactly as SFT takes it, negated. Unbounded below: it is the classic baseline that
collapses the model if run long; there is no parameter to set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from prod_unlearn.methods.base import Method, completion_logits


@dataclass
class GaParams:
    pass


def loss(model, batch, ref, params: GaParams):
    logits, targets, _ = completion_logits(model, batch["forget"])
    return -F.cross_entropy(logits, targets)


METHOD = Method("ga", "gradient ascent: minimise -NLL of the forget completions", GaParams, loss)
