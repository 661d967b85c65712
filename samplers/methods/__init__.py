"""The training-free guidance family as pieces of one sampler loop: how one guided pass places its steps.

TFG (Ye et al., NeurIPS 2024) writes DPS, FreeDoM, MPGD and UGD as points of one space: recurrence, variance
guidance (a gradient step on x_t through the denoiser), mean guidance (gradient steps on x0, no denoiser
backward), smoothing of the loss, and schedules of their sizes. Each module here is one method's pass, readable
from top to bottom, with its paper's update rule: it returns the x0 that the base step takes and a shift added
to the base step's result, `x' = base_step(x, x0) + shift`. UGD puts everything into x0 (and so into ε, which the
base step recomputes from it); the others put it on x', as their papers do.

Strengths keep the guidance nodes' inputs, read as each method's own: weight is UGD's w, FreeDoM's and TFG's ρ
and DPS's ζ; backward_steps and backward_lr are mean guidance's N_iter and μ (plain gradient steps).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import torch

from ..terms import BoundLoss, GuidanceTerm


@dataclasses.dataclass(frozen=True)
class GuidedPass:
    """What one guided pass knows: x at σ, the active terms, and ComfyUI's coefficients at σ and at the next σ'.

    `forward` is false on the steps where only backward (mean) guidance runs (the sampler's backward_end).
    `alpha_steps` holds TFG's α_t = ᾱ(σ_t)/ᾱ(σ_{t+1}) for each of the run's steps, this one being `step`.
    `tfg` is the sampler's TFG settings (smoothing and schedules) with their factors at each step. `randn` draws noise of x's shape from the run's
    generator.
    """

    guided: "GuidedDenoiser"  # noqa: F821 (universal_guidance.GuidedDenoiser)
    x: torch.Tensor
    sigma: torch.Tensor
    active: Sequence[tuple[GuidanceTerm, BoundLoss]]
    a: float
    b: float
    a_next: float
    b_next: float
    forward: bool
    alpha_steps: Sequence[float]
    step: int
    tfg: "tfg.Run"
    randn: Callable[[], torch.Tensor]

    @property
    def radius(self) -> float:
        """√(a² + b²): x = radius·z, with z the DDPM latent of the papers' equations."""
        return math.hypot(self.a, self.b)

    @property
    def radius_next(self) -> float:
        return math.hypot(self.a_next, self.b_next)

    @property
    def alpha_step(self) -> float:
        return self.alpha_steps[self.step]

    def denoised(self) -> torch.Tensor:
        """The denoiser's own x0, without guidance."""
        return self.guided.model(self.x, self.sigma, **self.guided.extra_args)

    def mean_guidance(self, guided, x0, lr: Callable[[GuidanceTerm], float]) -> torch.Tensor | int:
        """Σ Δ0_i: each term's N_iter = backward_steps plain gradient steps on x0 of size lr(term) (none at 0)."""
        deltas = [guided.backward_delta_or_warn(
            x0, dataclasses.replace(term, optimizer="sgd", backward_lr=lr(term)), fn)
            for term, fn in self.active if term.backward_steps > 0 and lr(term) > 0]
        return sum(delta for delta in deltas if delta is not None)


def raw(term: GuidanceTerm) -> GuidanceTerm:
    """The term with its gradient taken as it is (the constant schedule's path, not auto's rescaling)."""
    return dataclasses.replace(term, schedule="constant")


def rescaled(term: GuidanceTerm) -> GuidanceTerm:
    """The term with its gradient rescaled to RMS(ε̂) per sample (the auto schedule's path)."""
    return dataclasses.replace(term, schedule="auto")


from . import dps, freedom, mpgd, tfg, ugd  # noqa: E402  (they import raw and rescaled from here)

METHODS = {"ugd": ugd.guided_pass, "freedom": freedom.guided_pass, "mpgd": mpgd.guided_pass,
           "dps": dps.guided_pass, "tfg": tfg.guided_pass}
