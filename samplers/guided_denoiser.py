"""Guidance inside the denoiser, for any sampler: the denoiser's x0 replaced by the guided x0 at every call.

A sampler of ComfyUI's (Euler, DPM++ 2M, UniPC, …) recomputes its noise estimate from x0, so guidance that acts on
x0 carries over to it unchanged: UGD's forward guidance (eq. 6) and backward guidance (eq. 7–9), and MPGD's
gradient steps on x0. What changes x_t after the base step (self-recurrence, FreeDoM's, DPS's and TFG's steps,
particles, held known pixels) needs the pack's own sampler loop (samplers/universal_guidance.py).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch

from .decoding import Decode, at_reduced_resolution
from .guide import Guide
from .methods import mpgd, ugd
from .parameterization import NoiseScaling, noise_coefficients
from .precision import GuidancePrecision
from .settings import Settings
from .terms import GuidanceTerm
from .universal_guidance import scaled, step_plan

X0_METHODS = ("ugd", "mpgd")


def check_supported(settings: Settings) -> None:
    """Raise ValueError naming every setting a denoiser-level guidance cannot run, each with what to do."""
    problems = _unsupported(settings)
    if problems:
        raise ValueError("Universal Guidance Guider cannot run these options: " + "; ".join(problems) + ".")


def _unsupported(settings: Settings) -> list[str]:
    loop = "use the Universal Guidance Sampler or the Universal Guided KSampler for it"
    problems = []
    if settings.method not in X0_METHODS:
        problems.append(f"method {settings.method} changes x_t after the base step ({loop}, or choose ugd or mpgd)")
    if settings.recurrence > 1 or settings.backward_recurrence > 0:
        problems.append(f"recurrence re-noises within a step ({loop}, or set recurrence to 1 and "
                        f"backward_recurrence to 0)")
    if settings.particles > 1:
        problems.append(f"particles resample between steps ({loop}, or set particles to 1)")
    if settings.known_pixels == "replace":
        problems.append(f"known_pixels replace holds the latent between steps ({loop}, or set it to guidance)")
    if settings.gradient == "unconditional":
        problems.append("gradient unconditional needs the sampler's CFG branches apart (choose through_unet or "
                        "x0_only)")
    return problems


class GuidedDenoiser:
    """`(denoise, x, σ) -> x0'`: the guidance of the step whose σ is nearest, applied to `denoise(x, σ)`.

    Args:
        guidance: the guidance terms; reward-only terms (for particles) are left out.
        decode: differentiable `x0 -> image (B, 3, H, W)` in [0, 1].
        noise_scaling: `model_sampling.noise_scaling`, which gives a(σ) and b(σ).
        sigmas: the run's schedule; the terms' step windows and the settings' are read on it.
        settings: ugd or mpgd, and the levers that act on x0 (`check_supported` names the others).
        update_mask: 1 where guidance may change x0, 0 where it must not (the latent's noise mask).
    """

    def __init__(self, guidance: Sequence[GuidanceTerm], decode: Decode, noise_scaling: NoiseScaling,
                 sigmas: torch.Tensor, settings: Settings, device: torch.device,
                 update_mask: torch.Tensor | None = None, check_interrupt: Callable[[], None] = lambda: None):
        check_supported(settings)
        self.settings, self.noise_scaling = settings, noise_scaling
        self.sigmas = sigmas.detach().float().cpu()
        with torch.inference_mode(False):
            self.bound = [(t, t.loss.bind(device)) for t in scaled(guidance, settings) if not t.reward_only]
            mask = None if update_mask is None else update_mask.clone()
        self.guide = Guide(None, at_reduced_resolution(decode, settings.decode_resolution), settings.gradient,
                           update_mask=mask, check_interrupt=check_interrupt,
                           precision=GuidancePrecision(settings.autocast, torch.device(device).type))

    def step_of(self, sigma: float) -> int:
        """The schedule's step whose σ is nearest (samplers that evaluate between two σ take the nearer)."""
        return int((self.sigmas[:-1] - sigma).abs().argmin())

    def __call__(self, denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                 sigma: torch.Tensor) -> torch.Tensor:
        level = float(sigma.reshape(-1)[0])
        steps = len(self.sigmas) - 1
        forward, active, _ = step_plan(self.bound, self.step_of(level), steps, self.settings)
        if not active:
            return denoise(x, sigma)
        a, b = noise_coefficients(self.noise_scaling, level)
        guide = dataclasses.replace(self.guide, denoise=denoise)
        if self.settings.method == "mpgd":
            x0, update = mpgd.x0_update(guide, x, sigma, active, a, b)
            x0 = x0 + update
        else:
            x0 = ugd.guided_x0(guide, x, sigma, active, a, b, forward)
        return x0.to(x.dtype)
