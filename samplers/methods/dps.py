"""DPS (Chung et al., ICLR 2023): a step on x_{t−1} along the gradient of the residual's norm.

    z_{t−1} = DDPM(z_t, x̂0) − ζ·∇_{z_t} ‖y − A(x̂0(z_t))‖

(its official code: the norm, not the squared norm). With the pack's losses, ‖y − A(x̂0)‖ is √ℓ. No recurrence
and no mean guidance in the paper (recurrence 1 and the ddpm base step), so backward steps are unused. In
x = √(a²+b²)·z the step is `ζ·√(a'²+b'²)·√(a²+b²)·∇ₓ√ℓ`, and none at a flow model's pure-noise level (a = 0),
where x holds no x0 and the x0_only gradient ∇_{x0}/a has no value. A term on the auto schedule takes ∇ₓ√ℓ
rescaled to RMS(ε̂) per sample, so that ζ is a fraction of the noise whatever the loss's scale.
"""
from __future__ import annotations

from ..forward_guidance import ForwardTerm, forward_guidance


def prepare(settings, alpha_steps):
    return guided_pass


def _root(fn):
    return lambda *inputs: fn(*inputs).clamp_min(1e-12).sqrt()


def guided_pass(p):
    if not p.forward:
        return p.plain()
    size = p.radius * p.radius_next if p.a > 0 else 0.0
    terms = [ForwardTerm(t, _root(fn), t.weight * size, rescaled=t.schedule == "auto") for t, fn in p.active]
    x0, step = forward_guidance(p.guide, p.x, p.sigma, terms, p.a, p.b)
    return p.base_step(x0) - step, x0
