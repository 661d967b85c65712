"""ComfyUI's noise parameterisation `x = a(σ)·x0 + b(σ)·ε` and the paper's DDPM quantities.

EPS and v-prediction models have a = 1, b = σ; flow (CONST) models have a = 1 − σ, b = σ.
The paper's DDPM latent is `z = x / √(a² + b²)`, so `√ᾱ = a / √(a² + b²)` and `√(1 − ᾱ) = b / √(a² + b²)`.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

NoiseScaling = Callable[..., torch.Tensor]


def noise_coefficients(noise_scaling: NoiseScaling, sigma: torch.Tensor | float) -> tuple[float, float]:
    """(a, b) at σ, read from a model_sampling.noise_scaling(σ, noise, latent_image)."""
    s = torch.as_tensor(sigma, dtype=torch.float64).reshape(1)
    # Fresh tensors on every call: EPS.noise_scaling adds into `noise` in place.
    a = noise_scaling(s, torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    b = noise_scaling(s, torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    return float(a.reshape(-1)[0]), float(b.reshape(-1)[0])


def alpha_bar(a: float, b: float) -> float:
    """ᾱ of the DDPM latent z = x/√(a² + b²)."""
    return a * a / (a * a + b * b)


def forward_guidance_scale(schedule: str, weight: float, a: float, b: float) -> float:
    """The factor c of a forward-guidance step `x0' = x0 − c·g` (paper eq. 6 moved from ε and z to x0 and x).

    "paper" and "constant" take the raw gradient, g = ∇ₓℓ: `ε̂ = ε + s(t)·∇_z ℓ` with `∇_z = √(a²+b²)·∇ₓ` and
    `x0 = (x − b·ε)/a` give `c = s(t)·(b/a)·√(a² + b²)`. The paper's `s(t) = w·√(1 − ᾱ)` makes this `w·b²/a`.

    "auto" keeps the paper's s(t) but rescales the gradient to the size of the predicted noise,
    `g = RMS(ε̂)·∇ₓℓ / RMS(∇ₓℓ)` per sample: the step changes ε̂ by w·√(1 − ᾱ) of its own RMS, whatever the loss,
    decoder or latent scale, and so `c = s(t)·b/a` and `RMS(x0' − x0) = w·√(1 − ᾱ)·(b/a)·RMS(ε̂)`.

    At a = 0 (a flow model's pure-noise level, ᾱ = 0) the ε-form gives no x0, so c is 0 there.
    """
    if a <= 0:
        return 0.0
    if schedule == "paper":
        return weight * b * b / a
    if schedule == "constant":
        return weight * (b / a) * math.sqrt(a * a + b * b)
    if schedule == "auto":
        return weight * b * b / (a * math.sqrt(a * a + b * b))
    raise ValueError(f"Unknown guidance schedule {schedule!r}: use 'paper', 'constant' or 'auto'.")
