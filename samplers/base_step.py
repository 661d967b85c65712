"""The step every method ends with, and self-recurrence's way back (paper eq. 10), in ComfyUI's `x = a·x0 + b·ε`."""
from __future__ import annotations

import math

from .parameterization import alpha_bar


def base_step(x, x0, a, b, a_next, b_next, eta=0.0, noise=None):
    """One DDIM step from σ to σ' with predicted x0; η = 0 is k-diffusion's Euler step, η = 1 is DDPM.

    In DDPM terms `z' = √ᾱ'·x0 + √(1 − ᾱ' − σ_η²)·ε + σ_η·n`, with
    `σ_η = η·√((1 − ᾱ')/(1 − ᾱ))·√(1 − ᾱ/ᾱ')`, scaled back to x by √(a'² + b'²).
    """
    eps = (x - a * x0) / b
    if eta == 0 or b_next == 0:
        return a_next * x0 + b_next * eps
    ab, ab_next = alpha_bar(a, b), alpha_bar(a_next, b_next)
    sigma_eta = eta * math.sqrt((1 - ab_next) / (1 - ab) * max(0.0, 1 - ab / ab_next))
    up = min(b_next, sigma_eta * math.hypot(a_next, b_next))
    return a_next * x0 + math.sqrt(b_next * b_next - up * up) * eps + up * noise


def renoise(x_next, a_next, b_next, a, b, noise):
    """Eq. 10 in ComfyUI's terms: take x from σ' back to σ, `x_σ = (a/a')·x' + √(b² − (a·b'/a')²)·ε`."""
    ratio = a / a_next
    return ratio * x_next + math.sqrt(max(0.0, b * b - (ratio * b_next) ** 2)) * noise
