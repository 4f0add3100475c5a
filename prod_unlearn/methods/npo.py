"""NPO: Negative Preference Optimization (Zhang et al. 2024), beta = 0.1.

  L = -(2 / beta) * mean_batch log sigmoid(-beta * (logp_theta(y|x) - logp_ref(y|x)))

with sequence log-probs summed over completion tokens (as the reference code's
``get_batch_loss(...).sum(-1)``). logp_ref is the original model's, taken once by the frozen
reference pass (one float per example) instead of a second model kept in memory.
At the start (theta = ref) the loss is (2 / beta) log 2 and its gradient equals GA's with the
token log-probs summed per sequence; the sigmoid then fades the push on already-forgotten examples.

``window`` (tokens, 0 = the whole completion, the paper's item) applies the same loss to each
window of a completion as to an item of its own: the log-ratio is summed per window (with the
file's true preceding context) and the sigmoid weighs each window. On whole files the summed
log-ratio of a long file falls far below the reference while parts of it are still reproduced,
and the sigmoid's weight vanishes for all of it (README "Unlearn until forgotten").
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from prod_unlearn.methods.base import Method, completion_logits, sequence_logprob


@dataclass
class NpoParams:
    beta: float = 0.1  # inverse temperature (paper default 0.1)
    window: int = 0  # tokens per preference item (0: the whole completion, as the paper)


def validate(params: NpoParams) -> None:
    if params.beta <= 0:
        raise ValueError(f"npo: beta must be > 0, got {params.beta}")
    if params.window < 0:
        raise ValueError(f"npo: window must be >= 0 tokens, got {params.window}")


def window_logprob(logits, targets, counts, window: int = 0) -> torch.Tensor:
    """Summed token log-probs per window of ``window`` tokens, example by example ([windows]);
    one sum per example when ``window`` is 0."""
    if window <= 0:
        return sequence_logprob(logits, targets, counts)
    tok = -F.cross_entropy(logits, targets, reduction="none")
    counts = counts.to(tok.device)
    per_example = (counts + window - 1) // window
    first = torch.cumsum(per_example, 0) - per_example  # first window of each example
    start = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    ids = torch.repeat_interleave(first, counts) + (torch.arange(len(tok), device=tok.device) - start) // window
    return torch.zeros(int(per_example.sum()), device=tok.device, dtype=tok.dtype).index_add(0, ids, tok)


def logp_reference(logits, targets, params) -> dict[str, torch.Tensor]:
    """Frozen-pass record shared by NPO and DPO: one example's summed completion log-prob (per window)."""
    window = getattr(params, "window", 0)
    return {"logp": window_logprob(logits.float(), targets, torch.tensor([len(targets)]), window)}


def view_logratio(model, batch, ref, view: str, window: int = 0) -> torch.Tensor:
    """logp_theta - logp_ref per example (per window) for one view."""
    logits, targets, counts = completion_logits(model, batch[view])
    logp = window_logprob(logits, targets, counts, window)
    return logp - ref.gather(view, "logp", batch["index"]).to(logp.device, logp.dtype)


def loss(model, batch, ref, params: NpoParams):
    ratio = view_logratio(model, batch, ref, "forget", params.window)
    return -(2.0 / params.beta) * F.logsigmoid(-params.beta * ratio).mean()


def on_stall(params: NpoParams) -> NpoParams:
    """A stall under the stopping rule means the sigmoid has saturated: the summed log-ratio of a
    file (a window) is far below the reference while its lines are still the greedy completion (a
    token that fell from p 0.99 to 0.5 is still the argmax). A tenth of beta gives the push back;
    NPO tends to GA as beta -> 0 (Zhang et al. 2024), whose push never fades."""
    return replace(params, beta=params.beta / 10)


METHOD = Method(
    "npo",
    "negative preference optimisation: sigmoid-bounded ascent relative to the original model's log-prob",
    NpoParams,
    loss,
    logp_reference,
    validate=validate,
    on_stall=on_stall,
)
