"""Algorithm 1 of Bansal et al. (2023), Universal Guidance for Diffusion Models, as a k-diffusion sampler.

Works in ComfyUI's parameterisation `x = a(σ)·x0 + b(σ)·ε`, with a denoiser `model(x, σ) -> x0` (classifier-free
guidance already applied) and a differentiable `decode(x0) -> image in [0, 1]`. Each step is taken in k passes
(self-recurrence, eq. 10): a guided pass by the settings' method (samplers/methods/: UGD's forward guidance, eq. 6,
backward guidance, eq. 7–9, then the base step), and, unless it is the last pass, re-noising back to σ.

Which steps are guided, by which terms and in how many passes is planned before the first step (`step_plan`), from
the terms' windows and the settings' (samplers/settings.py).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from . import methods
from .base_step import renoise
from .decoding import Decode, at_reduced_resolution
from .guide import Guide
from .known_pixels import HeldLatent, polish, while_held
from .parameterization import NoiseScaling, alpha_bar, noise_coefficients
from .precision import GuidancePrecision
from .progress import PassLosses, PassReport, term_labels
from .settings import Settings
from .terms import GuidanceTerm

_RECURRENCE_SEED_SALT = 0x9E3779B97F4A7C15  # keeps re-noising noise apart from the initial noise of the same seed


def step_plan(bound, i: int, steps: int, settings: Settings) -> tuple[bool, list, int]:
    """(whether step i takes forward guidance, its active (term, loss) pairs, its passes), by the windows."""
    forward = i % settings.guidance_every == 0 and i / steps < settings.guidance_end
    if forward:
        active = [(term, fn) for term, fn in bound if term.active_at(i, steps)]
    elif i / steps < settings.backward_end:  # backward guidance alone
        active = [(term, fn) for term, fn in bound if term.backward_steps > 0 and term.active_at(i, steps)]
    else:
        active = []
    if not active:
        return forward, active, 1
    if settings.backward_recurrence and any(term.backward_steps > 0 for term, _ in active):
        return forward, active, settings.backward_recurrence
    return forward, active, settings.recurrence if forward else 1


def sample_universal_guidance(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                              callback=None, disable: bool | None = None, *, guidance: Sequence[GuidanceTerm],
                              decode: Decode, noise_scaling: NoiseScaling, settings: Settings = Settings(),
                              seed: int | None = None, check_interrupt: Callable[[], None] = lambda: None,
                              update_mask: torch.Tensor | None = None, unconditional: Callable | None = None,
                              held: HeldLatent | None = None,
                              on_pass: Callable[[PassReport], None] | None = None) -> torch.Tensor:
    """Universal guided sampling (Algorithm 1), a k-diffusion sampler function.

    Args:
        model: denoiser, `model(x, σ·ones(B), **extra_args) -> x0`.
        x: (B, C, h, w) latent at sigmas[0], already noised.
        sigmas: descending noise levels.
        guidance: the guidance terms.
        decode: differentiable `x0 -> image (B, 3, H, W)` in [0, 1], not clamped.
        noise_scaling: `model_sampling.noise_scaling`, which gives a(σ) and b(σ).
        settings: the method and every lever.
        seed: seeds the re-noising and ancestral noise; defaults to extra_args["seed"].
        check_interrupt: raises to stop sampling; called before every denoiser pass and backward step.
        update_mask: 1 where guidance may change x0 directly, 0 where it must not (e.g. an inpainting mask, which
            the denoiser already applies to its own output and to guidance through it).
        unconditional: for the "unconditional" gradient, `(x, σ) -> (x0 with CFG, the unconditional x0)`, from the
            host, which alone can run the branches apart.
        held: with known_pixels "replace", the known pixels' latent to hold (samplers/known_pixels.py), from the
            host, which alone can encode.
        on_pass: called after every denoiser pass with its `progress.PassReport`; the step bar counts passes and
            shows the terms' losses too.
    """
    extra_args = {} if extra_args is None else extra_args
    randn = _noise_source(x, int(extra_args.get("seed") or 0) if seed is None else int(seed))
    losses, polishing = PassLosses(), []
    with torch.inference_mode(False):
        guidance = [replace(term, weight=term.weight * settings.weight_scale) for term in guidance]
        bound = [(term, losses.watched(label, term.loss.bind(x.device)))
                 for term, label in zip(guidance, term_labels(guidance))]
        update_mask = None if update_mask is None else update_mask.clone()
        if held is not None:
            model, (bound, polishing) = held.denoiser(model, noise_scaling), while_held(bound, settings.polish_steps)
            unconditional = unconditional and held.denoiser(unconditional, noise_scaling)
        guide = Guide(lambda x_in, sigma: model(x_in, sigma, **extra_args),
                      at_reduced_resolution(decode, settings.decode_resolution), settings.gradient, unconditional,
                      held.update_mask(update_mask) if held is not None else update_mask, check_interrupt,
                      GuidancePrecision(settings.autocast, x.device.type))
    steps = len(sigmas) - 1
    coefficients = [noise_coefficients(noise_scaling, s) for s in sigmas]
    alpha_steps = [alpha_bar(*coefficients[i]) / alpha_bar(*coefficients[i + 1]) for i in range(steps)]
    guided_pass = methods.prepare(settings, alpha_steps)
    plan = [step_plan(bound, i, steps, settings) for i in range(steps)]
    s_in, done, total = x.new_ones([x.shape[0]]), 0, sum(passes for _, _, passes in plan)
    with tqdm(total=total, disable=disable, unit="pass") as bar:
        for i, (forward, active, passes) in enumerate(plan):
            (a, b), (a_next, b_next) = coefficients[i], coefficients[i + 1]
            for r in range(passes):
                check_interrupt()
                p = methods.Pass(guide, x, sigmas[i] * s_in, active, a, b, a_next, b_next, forward, i,
                                 alpha_steps[i], settings.eta, randn)
                x_next, x0 = guided_pass(p) if active else p.plain()
                if r < passes - 1:
                    x = renoise(x_next, a_next, b_next, a, b, randn())
                done += 1
                report = PassReport(i, steps, r, passes, done, total, losses.take(), x_next, x0)
                if report.losses:
                    bar.set_postfix_str(report.text(), refresh=False)
                bar.update()
                if on_pass is not None:
                    on_pass(report)
            x = x_next
            if callback is not None:
                callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": x0})
    if polishing and float(sigmas[-1]) == 0:  # the finished latent is x0 itself
        x = polish(replace(guide, decode=held.decode, update_mask=update_mask), x, polishing)
    return x


def _noise_source(x: torch.Tensor, seed: int) -> Callable[[], torch.Tensor]:
    """Draws of x's shape from the run's own generator, on x's device and dtype."""
    generator = torch.Generator().manual_seed((seed ^ _RECURRENCE_SEED_SALT) % 2**64)
    return lambda: torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x)
