"""FreeDoM (Yu et al., ICCV 2023): a gradient step on x_{t−1}, through the denoiser, sized to the noise.

    z_{t−1} = DDIM(z_t, x̂0) − ρ_t·∇_{z_t} ℓ(x̂0(z_t)),
    ρ_t = ρ·RMS(ε̂)·(√(1 − ᾱ_t)/√ᾱ_t)·c_t / RMS(∇_{z_t} ℓ),   c_t = √ᾱ_{t−1}·(1 − α_t)/(1 − ᾱ_t)

(its pixel-model code, with 0.02 as ρ), with time travel (the sampler's recurrence) and no mean guidance, so
backward steps are unused. In x = √(a²+b²)·z the step is RMS(ε̂)-rescaled, of size ρ·√(a'²+b'²)·(b/a)·c_t.
"""
from __future__ import annotations

from ..forward_guidance import ForwardTerm, forward_guidance
from ..parameterization import alpha_bar


def prepare(settings, alpha_steps):
    return guided_pass


def guided_pass(p):
    if not p.forward:
        return p.plain()
    c_t = alpha_bar(p.a_next, p.b_next) ** 0.5 * (1 - p.alpha_step) / (1 - alpha_bar(p.a, p.b))
    size = p.radius_next * (p.b / p.a) * c_t if p.a > 0 else 0.0
    terms = [ForwardTerm(t, fn, t.weight * size, rescaled=True) for t, fn in p.active]
    x0, step = forward_guidance(p.guide, p.x, p.sigma, terms, p.a, p.b)
    return p.base_step(x0) - step, x0
