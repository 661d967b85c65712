"""Backward guidance (paper eq. 7–9): Δ ≈ argmin_Δ ℓ(decode(x0 + Δ)), found by optimiser steps from Δ = 0.

Δ is confined to the update mask. Mean guidance (MPGD's and TFG's) is the same search with plain gradient steps.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .guide import Guide
from .terms import BoundLoss, GuidanceTerm

OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


def backward_guidance(guide: Guide, x0: torch.Tensor, term: GuidanceTerm, loss_fn: BoundLoss, steps: int, lr: float,
                      optimizer: str = "adam") -> torch.Tensor:
    """Δ after `steps` optimiser steps of size `lr`; zero, with a warning, where the loss or its gradient is not
    finite."""

    def compute():
        base = x0.detach().clone()
        delta = torch.zeros_like(base, requires_grad=True)
        step = OPTIMIZERS[optimizer]([delta], lr=lr)
        for _ in range(steps):
            guide.check_interrupt()
            with guide.precision.autocast():
                loss = guide.loss(loss_fn, term, guide.decode(base + guide.masked(delta)))
            if not guide.precision.finite(loss):
                return None
            grad = guide.precision.gradient(loss.sum(), delta)
            if not guide.precision.finite(grad):
                return None
            delta.grad = grad
            step.step()
        return guide.masked(delta).detach()

    delta = guide.differentiate(compute)
    if delta is None:
        guide.warn(term, "backward-guidance loss or gradient")
        return torch.zeros_like(x0)
    return delta


def mean_guidance(guide: Guide, x0: torch.Tensor, active: Sequence[tuple[GuidanceTerm, BoundLoss]],
                  lr: Callable[[GuidanceTerm], float]) -> torch.Tensor:
    """Σ Δ0_i: each term's backward_steps plain gradient steps on x0, of size lr(term) (none at 0)."""
    deltas = [backward_guidance(guide, x0, term, fn, term.backward_steps, lr(term), "sgd")
              for term, fn in active if term.backward_steps > 0 and lr(term) > 0]
    return sum(deltas, torch.zeros_like(x0))
