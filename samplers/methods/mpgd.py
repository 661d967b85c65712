"""MPGD (He et al., ICLR 2024): gradient steps on x̂0 alone, no backward pass through the denoiser.

    x0' = x̂0 − μ·∇_{x̂0} ℓ(x̂0) / √ᾱ_t            (its pixel-model rule, N_iter = 1 in the paper)
    z_{t−1} = √ᾱ_{t−1}·x0' + √(1 − ᾱ_{t−1} − σ_t²)·ε̂ + σ_t·n    (ε̂ the denoiser's own, not recomputed)

so `x' = base_step(x, x̂0) + a'·(x0' − x̂0)`. μ is the terms' backward_lr and N_iter their backward_steps; the
weight (variance guidance) is unused. The manifold projection through the autoencoder is not included.
"""
from __future__ import annotations

from ..backward_guidance import mean_guidance


def prepare(settings, alpha_steps):
    return guided_pass


def guided_pass(p):
    x0 = p.denoised()
    over_sqrt_alpha_bar = p.radius / p.a if p.a > 0 else 0.0
    delta = mean_guidance(p.guide, x0, p.active, lambda term: term.backward_lr * over_sqrt_alpha_bar)
    return p.base_step(x0) + p.a_next * delta, x0
