"""UGD (Bansal et al. 2023), the paper's method and the default: everything goes into x0.

Forward guidance (eq. 6) `ε̂' = ε̂ + s(t)·∇_z ℓ(x̂0(z))`, so `x0' = x̂0 − s(t)·(b/a)·√(a²+b²)·∇ₓℓ`; backward
guidance (eq. 7–9) `x0' += Δ`, Δ from m optimiser steps on ℓ(x0' + Δ); the base step then recomputes ε from x0'.
Self-recurrence (eq. 10) is the sampler's recurrence.
"""
from __future__ import annotations


def guided_pass(p):
    return p.guided(p.x, p.sigma, p.active, p.a, p.b, forward=p.forward), 0
