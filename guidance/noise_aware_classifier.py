"""Classifier guidance with a noise-aware classifier (Dhariwal and Nichol 2021), on the noisy latent itself.

The classifier p(y | z_t, t) was trained on noisy images, so its gradient is taken at the sampler's x_t, not
through the denoiser and a decoder: `ε̂' = ε̂ − s·√(1 − ᾱ_t)·∇_{z_t} log p(y | z_t, t)` (their Algorithm 2), which
is the engine's forward guidance with ℓ = −log p(y | z_t, t) read at z_t and the paper schedule, w being the
classifier scale. The engine hands the loss the DDPM latent z = x/√(a² + b²) and the noise level σ = b/a; the
classifier's timestep comes from σ on the schedule it was trained on, so it serves any sampler and schedule.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def linear_alphas_cumprod(steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """ᾱ_t of guided-diffusion's "linear" schedule (β linear from 1e-4 to 0.02 over 1000 steps)."""
    betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


class NoiseAwareClassifier(torch.nn.Module):
    """A classifier of noisy images `network(z_t, t) -> logits` with the schedule it was trained on.

    Args:
        network: takes z_t (B, C, H, W) and timesteps (B,) of `alphas_cumprod`'s schedule.
        image_shape: (C, H, W) that it takes (guided-diffusion's attention pooling fixes the size).
        alphas_cumprod: ᾱ_t of its training schedule, t = 0, 1, …
        categories: its class names.
    """

    def __init__(self, network: torch.nn.Module, image_shape: Sequence[int], alphas_cumprod: torch.Tensor,
                 categories: Sequence[str]):
        super().__init__()
        self.network, self.image_shape, self.categories = network, tuple(image_shape), tuple(categories)
        self.register_buffer("log_sigmas", (((1 - alphas_cumprod) / alphas_cumprod).sqrt().log()).float(),
                             persistent=False)

    def timestep(self, noise_level: torch.Tensor) -> torch.Tensor:
        """The (fractional) timestep whose σ = √((1 − ᾱ_t)/ᾱ_t) is `noise_level`, interpolated in log σ."""
        log_sigmas = self.log_sigmas
        log_sigma = torch.as_tensor(noise_level, dtype=torch.float32, device=log_sigmas.device).log().reshape(-1)
        high = torch.searchsorted(log_sigmas, log_sigma).clamp(1, len(log_sigmas) - 1)
        low = high - 1
        fraction = ((log_sigma - log_sigmas[low]) / (log_sigmas[high] - log_sigmas[low])).clamp(0, 1)
        return low + fraction

    def forward(self, z: torch.Tensor, noise_level: float | torch.Tensor) -> torch.Tensor:
        t = self.timestep(noise_level).expand(z.shape[0])
        return self.network(z, t)


class NoiseAwareClassifierLoss:
    """ℓ = −log p(y | z_t, t), per sample, for class `index` (one for every sample, or one per sample).

    It reads the noisy latent (`reads_noisy_input`): the engine calls the bound loss as `loss(z, noise_level)`.
    """

    reads_noisy_input = True

    def __init__(self, classifier: NoiseAwareClassifier, index: int | Sequence[int]):
        self.classifier, self.index = classifier, index

    def check_noisy_input(self, shape: Sequence[int]) -> None:
        """The sampled latent must be an image of the classifier's shape."""
        batch, *image = shape
        if tuple(image) != self.classifier.image_shape:
            c, h, w = self.classifier.image_shape
            raise ValueError(
                f"The noise-aware classifier reads the sampled latent itself, which must be a {c}-channel {w}×{h} "
                f"image, but the latent is {tuple(image)} (channels, height, width). Sample with a pixel-space "
                f"guided-diffusion model (ADM Model Loader) from an Empty Pixel Image of {w}×{h}.")
        if not isinstance(self.index, int) and len(self.index) != batch:
            raise ValueError(f"There are {len(self.index)} target classes for a batch of {batch}: give one class, "
                             f"or one per image.")

    def bind(self, device: torch.device):
        classifier = self.classifier
        network_device = next(classifier.parameters()).device

        def loss(z: torch.Tensor, noise_level: float) -> torch.Tensor:
            logits = classifier(z.to(network_device, torch.float32), noise_level).float()
            target = torch.as_tensor(self.index, device=network_device).expand(logits.shape[0])
            return F.cross_entropy(logits, target, reduction="none").to(z.device)

        return loss
