"""TFG (Ye et al., NeurIPS 2024): variance and mean guidance together, on a smoothed loss, with recurrence.

    Δ_t = −ρ_t·∇_{z_t} ℓ_γ(x̂0(z_t))                                   variance guidance, through the denoiser
    x0' = x̂0; N_iter times x0' −= μ_t·∇_{x0'} ℓ_γ(x0');  Δ0 = x0' − x̂0  mean guidance
    z_{t−1} = DDIM_η(z_t, x̂0) + Δ_t/√α_t + √ᾱ_{t−1}·Δ0
    ℓ_γ(x0) = ℓ(x0 + γ̄·√(1 − ᾱ_t)·n)                                    smoothing, one draw n (K = 1)

with α_t = ᾱ_t/ᾱ_{t−1} and TFG's default schedules, ρ and μ both "increase": ρ_t = ρ·α_t/mean_t(α_t), and μ_t
the same. In x = √(a²+b²)·z: `x' = base_step(x, x̂0) − ρ_t/√α_t·√(a'²+b'²)·√(a²+b²)·∇ₓℓ_γ + a'·Δ0`. ρ is the
terms' weight, μ their backward_lr, N_iter their backward_steps, γ̄ the sampler's smoothing.
"""
from __future__ import annotations

from . import raw


def guided_pass(p):
    increase = p.alpha_step / p.alpha_step_mean
    guided = p.smoothed()
    size = p.alpha_step ** 0.5 / p.alpha_step_mean * p.radius * p.radius_next  # ρ_t/√α_t per unit ρ
    variance = [(raw(t), fn, t.weight * size) for t, fn in p.active] if p.forward else []
    x0, step = guided.forward_step(p.x, p.sigma, variance, p.a, p.b)
    delta = p.mean_guidance(guided, x0, lambda term: term.backward_lr * increase)
    return x0, p.a_next * delta - step
