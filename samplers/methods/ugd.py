"""UGD (Bansal et al. 2023), the paper's method: everything goes into x0, and the base step takes it.

    eq. 6     ε̂' = ε̂ + s(t)·∇_z ℓ(x̂0(z)),  so  x0' = x̂0 − s(t)·(b/a)·√(a²+b²)·∇ₓℓ     forward guidance
    eq. 7–9   x0' += Δ,  Δ from m optimiser steps on ℓ(decode(x0' + Δ))                 backward guidance
    then      x' = base_step(x, x0'), which recomputes ε̂ from x0'                      DDIM or DDPM

Self-recurrence (eq. 10) is the sampler loop's: it re-noises x' back to σ and takes the pass again.
"""
from __future__ import annotations

from ..backward_guidance import backward_guidance
from ..forward_guidance import ForwardTerm, forward_guidance
from ..parameterization import forward_guidance_scale


def prepare(settings, alpha_steps):
    return guided_pass


def guided_x0(guide, x, sigma, active, a: float, b: float, forward: bool = True):
    """x0 after forward guidance (eq. 6, unless `forward` is false) and backward guidance (eq. 7–9)."""
    terms = [ForwardTerm(t, fn, forward_guidance_scale(t.schedule, t.weight, a, b), rescaled=t.schedule == "auto")
             for t, fn in active] if forward else []
    x0, step = forward_guidance(guide, x, sigma, terms, a, b)
    x0 = x0 - step
    deltas = [backward_guidance(guide, x0, t, fn, t.backward_steps, t.backward_lr, t.optimizer)
              for t, fn in active if t.backward_steps > 0]
    return x0 + sum(deltas) if deltas else x0


def guided_pass(p):
    x0 = guided_x0(p.guide, p.x, p.sigma, p.active, p.a, p.b, p.forward)
    return p.base_step(x0), x0
