"""Sharpness-aware unlearning (``--sam RHO``, any method): each step's gradient is taken at the
worst weights within radius ``rho`` of the current ones, so the minimum it reaches is flat and a
few relearning steps cannot climb out of it."""

from __future__ import annotations

import torch


def sharpness_aware(model, objective, rho: float, accelerator) -> None:
    """SAM (Foret et al. 2021) as used for unlearning by Fan et al. (ICML 2025, "Towards LLM unlearning
    resilient to relearning attacks"): replace the gradient g at w by the gradient at the worst-case
    nearby weights w + rho * g / ||g||, so the unlearning objective is minimised in a flat region
    that a few relearning steps cannot climb out of. One more forward and backward per step. The
    loop passes the method's loss only and adds the retain term's gradient at w afterwards, as their
    ``SAMTrainer`` does (README "Methods": the agreement figure)."""
    params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
    with torch.no_grad():
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        eps = [p.grad * (rho / (norm + 1e-12)) for p in params]
        for p, e in zip(params, eps):
            p.add_(e)
    for p in params:
        p.grad = None
    accelerator.backward(objective())
    with torch.no_grad():
        for p, e in zip(params, eps):
            p.sub_(e)
