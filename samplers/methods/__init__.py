"""The training-free guidance family: one file per method, each holding its whole guided pass.

TFG (Ye et al., NeurIPS 2024) writes DPS, FreeDoM, MPGD and UGD as points of one space: recurrence, variance
guidance (a gradient step on x_t through the denoiser), mean guidance (gradient steps on x0, no denoiser
backward), smoothing of the loss, and schedules of their sizes. A method's `prepare(settings, alpha_steps)` gives
the run's guided pass, `Pass -> (x', x0)`: it calls forward guidance (samplers/forward_guidance.py), backward or
mean guidance (samplers/backward_guidance.py) and the base step (samplers/base_step.py) in its paper's order.
UGD puts everything into x0 (and so into ε, which the base step recomputes from it); the others put it on x'.

Strengths keep the guidance nodes' inputs, read as each method's own: weight is UGD's w, FreeDoM's and TFG's ρ
and DPS's ζ; backward_steps and backward_lr are mean guidance's N_iter and μ (plain gradient steps).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import torch

from ..base_step import base_step
from ..guide import Guide
from ..terms import BoundLoss, GuidanceTerm


@dataclasses.dataclass(frozen=True)
class Pass:
    """What one guided pass knows: x at σ, the active terms, and ComfyUI's coefficients at σ and the next σ'.

    `forward` is false on the steps where only backward (mean) guidance runs (the settings' backward_end).
    `alpha_step` is α_t = ᾱ(σ)/ᾱ(σ') of step `step`; `randn` draws noise of x's shape from the run's generator.
    """

    guide: Guide
    x: torch.Tensor
    sigma: torch.Tensor
    active: Sequence[tuple[GuidanceTerm, BoundLoss]]
    a: float
    b: float
    a_next: float
    b_next: float
    forward: bool
    step: int
    alpha_step: float
    eta: float
    randn: Callable[[], torch.Tensor]

    @property
    def radius(self) -> float:
        """√(a² + b²): x = radius·z, with z the DDPM latent of the papers' equations."""
        return math.hypot(self.a, self.b)

    @property
    def radius_next(self) -> float:
        return math.hypot(self.a_next, self.b_next)

    def denoised(self) -> torch.Tensor:
        """The denoiser's own x0, without guidance."""
        return self.guide.denoise(self.x, self.sigma)

    def base_step(self, x0: torch.Tensor) -> torch.Tensor:
        """DDIM (η = 0) or DDPM (η = 1) from σ to σ' with this x0; DDPM draws its noise here."""
        noise = self.randn() if self.eta > 0 and self.b_next > 0 else None
        return base_step(self.x, x0, self.a, self.b, self.a_next, self.b_next, self.eta, noise)

    def plain(self) -> tuple[torch.Tensor, torch.Tensor]:
        """An unguided pass: (x', x0)."""
        x0 = self.denoised()
        return self.base_step(x0), x0


GuidedPass = Callable[[Pass], tuple[torch.Tensor, torch.Tensor]]

from . import dps, freedom, mpgd, tfg, ugd  # noqa: E402  (they import Pass from here)

METHODS = {"ugd": ugd, "freedom": freedom, "mpgd": mpgd, "dps": dps, "tfg": tfg}


def prepare(settings, alpha_steps: Sequence[float]) -> GuidedPass:
    """The guided pass of settings.method for a run whose steps have these α_t."""
    return METHODS[settings.method].prepare(settings, alpha_steps)
