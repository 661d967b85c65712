"""TFG (Ye et al., NeurIPS 2024): variance and mean guidance together, on a smoothed loss, with recurrence.

    Δ_t = −ρ_t·∇_{z_t} ℓ_γ(x̂0(z_t))                                   variance guidance, through the denoiser
    x0' = x̂0; N_iter times x0' −= μ_t·∇_{x0'} ℓ_γ(x0');  Δ0 = x0' − x̂0  mean guidance
    z_{t−1} = DDIM_η(z_t, x̂0) + Δ_t/√α_t + √ᾱ_{t−1}·Δ0
    ℓ_γ(x0) = ℓ(x0 + γ_t·n)                                             smoothing, one draw n (K = 1)

with α_t = ᾱ_t/ᾱ_{t−1} and TFG's schedules over the run's T steps: ρ_t = ρ·s_t·T/Σ_t s_t with s_t = α_t
("increase", TFG's default), 1 − α_t ("decrease") or 1 ("constant"), μ_t the same; γ_t = γ̄·√(1 − ᾱ_t)
("decrease", TFG's default) or γ̄ ("constant"). In x = √(a²+b²)·z:
`x' = base_step(x, x̂0) − ρ_t/√α_t·√(a'²+b'²)·√(a²+b²)·∇ₓℓ_γ + a'·Δ0`. ρ is the terms' weight, μ their
backward_lr, N_iter their backward_steps; γ̄ and the schedules are the settings' smoothing, rho_schedule,
mu_schedule and smoothing_schedule. A term on the auto schedule takes its variance step's gradient rescaled to
RMS(ε̂) per sample, so that ρ is a fraction of the noise whatever the loss's scale.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

from ..backward_guidance import mean_guidance
from ..forward_guidance import ForwardTerm, forward_guidance


def schedule(name: str, alpha_steps: Sequence[float]) -> tuple[float, ...]:
    """s_t·T/Σ_t s_t at every step: the schedule's factors, 1 on average over the run."""
    values = [{"increase": alpha, "decrease": 1 - alpha, "constant": 1.0}[name] for alpha in alpha_steps]
    total = sum(values)
    return tuple(v * len(values) / total if total > 0 else 0.0 for v in values)


def prepare(settings, alpha_steps):
    """The pass with ρ_t's and μ_t's factors at each of the run's steps, computed once for the run."""
    return functools.partial(guided_pass, smoothing=settings.smoothing, decreasing=settings.smoothing_schedule == "decrease",
                             rho=schedule(settings.rho_schedule, alpha_steps), mu=schedule(settings.mu_schedule, alpha_steps))


def guided_pass(p, smoothing: float, decreasing: bool, rho: Sequence[float], mu: Sequence[float]):
    guide = p.guide
    if smoothing > 0:
        spread = p.b / p.radius if decreasing else 1.0  # √(1 − ᾱ_t) or 1
        guide = guide.with_loss_noise(smoothing * spread * p.randn())
    # ρ_t/√α_t per unit ρ; at α_t = 0 (a flow model's pure-noise start) the step is undefined and not taken
    size = rho[p.step] / math.sqrt(p.alpha_step) * p.radius * p.radius_next if p.alpha_step > 0 else 0.0
    variance = ([ForwardTerm(t, fn, t.weight * size, rescaled=t.schedule == "auto") for t, fn in p.active]
                if p.forward else [])
    x0, step = forward_guidance(guide, p.x, p.sigma, variance, p.a, p.b)
    delta = mean_guidance(guide, x0, p.active, lambda term: term.backward_lr * mu[p.step])
    return p.base_step(x0) + (p.a_next * delta - step), x0
