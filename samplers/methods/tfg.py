"""TFG (Ye et al., NeurIPS 2024): variance and mean guidance together, on a smoothed loss, with recurrence.

    Δ_t = −ρ_t·∇_{z_t} ℓ_γ(x̂0(z_t))                                   variance guidance, through the denoiser
    x0' = x̂0; N_iter times x0' −= μ_t·∇_{x0'} ℓ_γ(x0');  Δ0 = x0' − x̂0  mean guidance
    z_{t−1} = DDIM_η(z_t, x̂0) + Δ_t/√α_t + √ᾱ_{t−1}·Δ0
    ℓ_γ(x0) = ℓ(x0 + γ_t·n)                                             smoothing, one draw n (K = 1)

with α_t = ᾱ_t/ᾱ_{t−1} and TFG's schedules over the run's T steps: ρ_t = ρ·s_t·T/Σ_t s_t with s_t = α_t
("increase", TFG's default), 1 − α_t ("decrease") or 1 ("constant"), μ_t the same; γ_t = γ̄·√(1 − ᾱ_t)
("decrease", TFG's default) or γ̄ ("constant"). In x = √(a²+b²)·z:
`x' = base_step(x, x̂0) − ρ_t/√α_t·√(a'²+b'²)·√(a²+b²)·∇ₓℓ_γ + a'·Δ0`. ρ is the terms' weight, μ their
backward_lr, N_iter their backward_steps, γ̄ the sampler's smoothing.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from . import raw

SCHEDULES = ("increase", "decrease", "constant")
SMOOTHING_SCHEDULES = ("decrease", "constant")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The sampler's smoothing γ̄ and the schedules of ρ, μ and γ̄, TFG's defaults unless set."""

    smoothing: float = 0.0
    rho_schedule: str = "increase"
    mu_schedule: str = "increase"
    smoothing_schedule: str = "decrease"

    def __post_init__(self):
        if not (math.isfinite(self.smoothing) and self.smoothing >= 0):
            raise ValueError(f"smoothing must be a finite number >= 0, got {self.smoothing}.")
        for name, value, choices in (("rho_schedule", self.rho_schedule, SCHEDULES),
                                     ("mu_schedule", self.mu_schedule, SCHEDULES),
                                     ("smoothing_schedule", self.smoothing_schedule, SMOOTHING_SCHEDULES)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}.")

    def over(self, alpha_steps: Sequence[float]) -> "Run":
        """These settings with ρ_t's and μ_t's factors at each of a run's steps, computed once for the run."""
        return Run(self, schedule(self.rho_schedule, alpha_steps), schedule(self.mu_schedule, alpha_steps))


@dataclasses.dataclass(frozen=True)
class Run:
    """A run's TFG settings, and ρ_t's and μ_t's schedule factors at each of its steps."""

    settings: Settings
    rho: tuple[float, ...]
    mu: tuple[float, ...]


def schedule(name: str, alpha_steps: Sequence[float]) -> tuple[float, ...]:
    """s_t·T/Σ_t s_t at every step: the schedule's factors, 1 on average over the run."""
    values = [{"increase": alpha, "decrease": 1 - alpha, "constant": 1.0}[name] for alpha in alpha_steps]
    total = sum(values)
    return tuple(v * len(values) / total if total > 0 else 0.0 for v in values)


def guided_pass(p):
    settings, rho_t, mu_t = p.tfg.settings, p.tfg.rho[p.step], p.tfg.mu[p.step]
    guided = p.guided
    if settings.smoothing > 0:
        spread = p.b / p.radius if settings.smoothing_schedule == "decrease" else 1.0  # √(1 − ᾱ_t) or 1
        guided = guided.smoothed(settings.smoothing * spread * p.randn())
    # ρ_t/√α_t per unit ρ; at α_t = 0 (a flow model's pure-noise start) the step is undefined and not taken
    size = rho_t / math.sqrt(p.alpha_step) * p.radius * p.radius_next if p.alpha_step > 0 else 0.0
    variance = [(raw(t), fn, t.weight * size) for t, fn in p.active] if p.forward else []
    x0, step = guided.forward_step(p.x, p.sigma, variance, p.a, p.b)
    delta = p.mean_guidance(guided, x0, lambda term: term.backward_lr * mu_t)
    return x0, p.a_next * delta - step
