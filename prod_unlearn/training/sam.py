"""Sharpness-aware unlearning (``--sam RHO``, any method): each step's gradient is taken at the
worst weights within radius ``rho`` of the current ones, so the minimum it reaches is flat and a
few relearning steps cannot climb out of it."""

from __future__ import annotations

import torch


def sharpness_aware(model, objective, rho: float, accelerator) -> None:
    """SAM (Foret et al. 2021) as used for unlearning by Fan et al. (ICML 2025, "Towards LLM unlearning
    resilient to relearning attacks"): replace the gradient g at w by the gradient at the worst-case
    nearby weights w + rho * g / ||g||, so the unlearning objective is minimised in a flat region
    that a few relearning steps cannot climb out of. One more forward and backward per step."""
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


def sharpness_aware_step(model, forget_objective, retain_objective, rho: float, accelerator) -> torch.Tensor:
    """One step's gradients as Fan et al.'s ``SAMTrainer``: the method's loss at the worst nearby
    weights (``sharpness_aware``), plus the retain term's (``retain_objective``, or None) at the
    weights themselves. Returns the step's loss (detached)."""
    loss = forget_objective()
    accelerator.backward(loss)
    sharpness_aware(model, forget_objective, rho, accelerator)
    loss = loss.detach()
    if retain_objective is not None:
        retained = retain_objective()
        accelerator.backward(retained)
        loss = loss + retained.detach()
    return loss
