"""Gaussian data, for which the exact denoiser is known in closed form; and ComfyUI-like parameterisations."""
from __future__ import annotations

import torch


def eps_noise_scaling(sigma, noise, latent_image, max_denoise=False):
    """EPS / v-prediction models: x = x0 + σ·ε (adds in place, like ComfyUI's)."""
    noise = noise * sigma
    noise += latent_image
    return noise


def flow_noise_scaling(sigma, noise, latent_image, max_denoise=False):
    """Flow (CONST) models: x = (1 − σ)·x0 + σ·ε."""
    return sigma * noise + (1.0 - sigma) * latent_image


class GaussianDenoiser:
    """E[x0 | x] for x0 ~ N(mean, std²) per element and x = a·x0 + b·ε."""

    def __init__(self, noise_scaling, mean=0.3, std=0.5):
        self.noise_scaling, self.mean, self.std = noise_scaling, mean, std
        self.calls = 0

    def coefficients(self, sigma):
        one, zero = torch.ones_like(sigma), torch.zeros_like(sigma)
        return self.noise_scaling(sigma, zero.clone(), one.clone()), self.noise_scaling(sigma, one.clone(), zero.clone())

    def __call__(self, x, sigma, **extra_args):
        self.calls += 1
        a, b = (c.reshape(-1, *([1] * (x.ndim - 1))).to(x) for c in self.coefficients(sigma))
        gain = a * self.std**2 / (a * a * self.std**2 + b * b)
        return self.mean + gain * (x - a * self.mean)


def sigmas_eps(steps=6):
    return torch.cat([torch.linspace(8.0, 0.3, steps), torch.zeros(1)])


def sigmas_flow(steps=6):
    return torch.cat([torch.linspace(1.0, 0.1, steps), torch.zeros(1)])  # starts at pure noise, a = 0
