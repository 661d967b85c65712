"""The first guidance gradient through the denoiser, checked: a model patch that blocks it (one that runs the model
under `torch.no_grad`, detaches its output, or casts weights so that the gradient overflows) would otherwise let
the run finish unguided, with nothing said."""
from __future__ import annotations

import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)
FIX = ("Remove the model patches before the sampler one at a time to find it, or set gradient to x0_only on the "
       "Universal Guidance Options node, which takes no gradient through the model.")


class GuidanceBlocked(RuntimeError):
    """The gradient through the model is missing, zero or not finite while the loss's own gradient is not."""


def blocked(what: str) -> GuidanceBlocked:
    return GuidanceBlocked(
        f"Universal guidance: the guidance gradient through the model is {what} at the first guided step, so the "
        f"run would finish unguided. A node that patches the MODEL likely blocks it (a patch that runs the model "
        f"under torch.no_grad or detaches its output, or weights whose per-call cast overflows). {FIX}")


class GradientCheck:
    """Checks the run's first gradient through the denoiser, once.

    A gradient that is zero or not finite for some image is a fault of the model only if the loss's gradient at
    x0 itself is finite and not zero there; a flat loss is the loss's own affair, and its warnings say so. Under a
    noise mask a zero gradient can be the mask's doing (Differential Diffusion keeps every cell at the first
    steps), so there it is a warning, and the check waits for the next gradient.
    """

    def __init__(self):
        self.pending, self.warned = True, False

    def output(self, x0: torch.Tensor) -> None:
        """The denoiser's x0 on a gradient path: it must depend on x."""
        if self.pending and not x0.requires_grad:
            self.pending = False
            raise blocked("missing (the model's output does not depend on its input)")

    def gradient(self, grad: torch.Tensor, at_x0: Callable[[], torch.Tensor], masked: bool = False) -> None:
        """`grad` is ∇ₓℓ through the denoiser; `at_x0()` gives ∇_{x0}ℓ without it, for the diagnosis; `masked`
        says whether a noise mask limits what sampling may change."""
        if not self.pending:
            return
        per_image = grad.detach().flatten(1)
        not_finite = ~torch.isfinite(per_image).all(1)
        zero = (per_image == 0).all(1)
        suspect = not_finite | zero
        if not suspect.any():
            self.pending = False
            return
        reference = at_x0().detach().flatten(1)
        healthy = torch.isfinite(reference).all(1) & (reference != 0).any(1)
        blocked_not_finite, blocked_zero = (not_finite & healthy).any(), (zero & healthy).any()
        if masked and blocked_zero and not blocked_not_finite:
            if not self.warned:
                self.warned = True
                log.warning("Universal guidance: the guidance gradient through the model is zero at the first guided "
                            "step. The latent's noise mask may keep every cell there (Differential Diffusion does "
                            "at the first steps); if the result looks unguided, a patch on the MODEL blocks the "
                            "gradient. %s", FIX)
            return  # the next gradient is checked too
        self.pending = False
        if blocked_not_finite:
            raise blocked("not finite")
        if blocked_zero:
            raise blocked("zero")
