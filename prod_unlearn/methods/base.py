"""What a method is: hyperparameters, an optional frozen reference, and a loss on a batch.

A method never loads a model and never owns a loop. If it needs anything from the original
model (PROD's sculpted target, NPO's reference log-prob...), it declares ``reference``: a
function of the frozen model's logits at one example's completion positions, run ONCE before
training by ``prod_unlearn.training.reference`` and cached on disk. Training then keeps a
single model in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F

from prod_unlearn.data.batching import IGNORE
from prod_unlearn.data.examples import Example


@dataclass
class Method:
    name: str
    summary: str
    params: type  # a dataclass; its field defaults are the published defaults
    loss: Callable  # loss(model, batch, ref, params) -> scalar tensor
    reference: Callable | None = None  # reference(logits [n, V] fp32, targets [n], params) -> {name: tensor}
    views: tuple[str, ...] = ("forget",)  # sequences scored per example: "forget" and/or "refusal"
    # (built by method_views; see refusal_view)
    validate: Callable | None = None  # validate(params) raises ValueError on a bad combination
    prepare: Callable | None = None  # prepare(model, params): choose the weights it trains (RMU), before
    # the optimiser is built; the loop restores the flags afterwards
    # on_stall(params) -> params: the method's own answer to a stall under the stopping rule (NPO: a smaller
    # beta), given instead of a larger learning rate (training/until.py); it must not change what ``reference`` computes
    on_stall: Callable | None = None


def make_params(method: Method, overrides: dict | None = None):
    """Build the params dataclass; unknown keys are an error naming the method's parameters."""
    overrides = dict(overrides or {})
    names = {f.name: f for f in fields(method.params)}
    for k, v in list(overrides.items()):
        if k not in names:
            raise ValueError(
                f"--param {k}: method {method.name} has no such parameter (has: {', '.join(names) or 'none'})"
            )
        typ = type(getattr(method.params(), k))
        overrides[k] = typ(v) if not isinstance(v, typ) else v
    params = method.params(**overrides)
    if method.validate:
        method.validate(params)
    return params


# ---------------------------------------------------------------- views
# A view turns a forget example into the sequence a method scores. Most methods only need the
# forget pair itself; preference methods also score a refusal for the same prompt.


def refusal_view(example: Example, refusals: list[str]) -> Example:
    text = refusals[hash_index(example.id, len(refusals))]
    return Example(example.prompt, text, example.id, example.meta)


def hash_index(key: str, n: int) -> int:
    import zlib

    return zlib.crc32(key.encode()) % n


# ---------------------------------------------------------------- shared helpers


def completion_logits(model, view_batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward pass; return (logits [N, V] fp32, targets [N], per-example counts [B]) at the
    completion positions, in row-major (example, position) order."""
    out = model(input_ids=view_batch["input_ids"], attention_mask=view_batch["attention_mask"])
    labels = view_batch["labels"][:, 1:]
    keep = labels != IGNORE
    logits = out.logits[:, :-1][keep].float()
    return logits, labels[keep], keep.sum(1)


def sequence_logprob(logits: torch.Tensor, targets: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Sum of token log-probs per example ([B])."""
    tok = -F.cross_entropy(logits, targets, reduction="none")
    seg = torch.repeat_interleave(torch.arange(len(counts), device=tok.device), counts.to(tok.device))
    return torch.zeros(len(counts), device=tok.device, dtype=tok.dtype).index_add(0, seg, tok)


def resolved_params(method, overrides: dict) -> dict:
    """Every parameter of ``method`` with ``overrides`` applied (a run key names them all)."""
    return asdict(make_params(method, overrides))


def method_views(method: Method, forget: list[Example], refusals: list[str] | None) -> dict[str, list[Example]]:
    """The sequences ``method`` scores for each forget example, per view."""
    views = {}
    for v in method.views:
        if v == "forget":
            views[v] = forget
        elif v == "refusal":
            from prod_unlearn.methods.refusals import load_refusals

            views[v] = [refusal_view(e, refusals or load_refusals()) for e in forget]
        else:
            raise ValueError(f"method {method.name}: unknown view {v!r}")
    return views
