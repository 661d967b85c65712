"""MPGD (He et al., ICLR 2024): gradient steps on x̂0 alone, no backward pass through the denoiser.

    x0' = x̂0 − μ·∇_{x̂0} ℓ(x̂0) / √ᾱ_t            (its pixel-model rule, N_iter = 1 in the paper)
    z_{t−1} = √ᾱ_{t−1}·x0' + √(1 − ᾱ_{t−1} − σ_t²)·ε̂ + σ_t·n    (ε̂ the denoiser's own, not recomputed)

so `x' = base_step(x, x̂0) + a'·(x0' − x̂0)`. μ is the terms' backward_lr and N_iter their backward_steps; the
weight is unused. A term on the auto schedule reads its weight w as μ in units of the noise instead: one step
x0' = x̂0 − w·√(1 − ᾱ_t)·(b/a)·RMS(ε̂)·∇_{x̂0}ℓ/RMS(∇_{x̂0}ℓ), the size of the auto schedule's step on x0, so
that one w serves every loss. The manifold projection through the autoencoder is not included.
"""
from __future__ import annotations

import dataclasses
import math

from ..backward_guidance import mean_guidance
from ..forward_guidance import ForwardTerm, forward_guidance
from ..parameterization import forward_guidance_scale


def prepare(settings, alpha_steps):
    return guided_pass


def x0_update(guide, x, sigma, active, a: float, b: float):
    """(x̂0, x0' − x̂0): the auto terms' single step and the other terms' N_iter steps of size μ/√ᾱ_t."""
    auto = [ForwardTerm(t, fn, forward_guidance_scale("auto", t.weight, a, b), rescaled=True)
            for t, fn in active if t.schedule == "auto"]
    x0, step = forward_guidance(dataclasses.replace(guide, gradient="x0_only"), x, sigma, auto, a, b)
    over_sqrt_alpha_bar = math.hypot(a, b) / a if a > 0 else 0.0
    raw = [(t, fn) for t, fn in active if t.schedule != "auto"]
    delta = mean_guidance(guide, x0, raw, lambda term: term.backward_lr * over_sqrt_alpha_bar)
    return x0, delta - step


def guided_pass(p):
    x0, update = x0_update(p.guide, p.x, p.sigma, p.active, p.a, p.b)
    return p.base_step(x0) + p.a_next * update, x0
