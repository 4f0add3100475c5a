"""SFT: plain next-token training on the set (not an unlearning method).

`prod-unlearn learn` uses it to memorise code before unlearning it (the paper's setup), and the
step-cost benchmark uses it as the floor every method is compared against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from prod_unlearn.methods.base import Method, completion_logits


@dataclass
class SftParams:
    pass


def loss(model, batch, ref, params: SftParams):
    logits, targets, _ = completion_logits(model, batch["forget"])
    return F.cross_entropy(logits, targets)


METHOD = Method("sft", "fine-tuning (memorise; used by `learn`, and the cost floor)", SftParams, loss)
