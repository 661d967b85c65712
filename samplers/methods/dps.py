"""DPS (Chung et al., ICLR 2023): a step on x_{t−1} along the gradient of the residual's norm.

    z_{t−1} = DDPM(z_t, x̂0) − ζ·∇_{z_t} ‖y − A(x̂0(z_t))‖

(its official code: the norm, not the squared norm). With the pack's losses, ‖y − A(x̂0)‖ is √ℓ. No recurrence
and no mean guidance in the paper (the sampler's recurrence 1 and sampler ddpm), so backward steps are unused.
In x = √(a²+b²)·z the step is `ζ·√(a'²+b'²)·√(a²+b²)·∇ₓ√ℓ`, and none at a flow model's pure-noise level (a = 0),
where x holds no x0 and the x0_only gradient ∇_{x0}/a has no value.
"""
from __future__ import annotations

import dataclasses

from . import raw


def _root(fn):
    return lambda *inputs: fn(*inputs).clamp_min(1e-12).sqrt()


def guided_pass(p):
    if not p.forward:
        return p.denoised(), 0
    size = p.radius * p.radius_next if p.a > 0 else 0.0
    x0, step = p.guided.forward_step(p.x, p.sigma, [(raw(t), _root(fn), t.weight * size) for t, fn in p.active],
                                     p.a, p.b)
    return x0, -step
