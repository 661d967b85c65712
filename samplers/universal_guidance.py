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
from .particles import Particles, resampled_after
from .progress import PassLosses, PassReport, term_labels
from .settings import Settings
from .terms import GuidanceTerm

_RECURRENCE_SEED_SALT = 0x9E3779B97F4A7C15  # keeps re-noising noise apart from the initial noise of the same seed


def scaled(guidance: Sequence[GuidanceTerm], settings: Settings) -> list[GuidanceTerm]:
    """The terms with the settings' weight_scale applied to their weights."""
    return [replace(term, weight=term.weight * settings.weight_scale) for term in guidance]


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
                              on_pass: Callable[[PassReport], None] | None = None,
                              on_chosen: Callable[[dict[str, dict[int, float]]], None] | None = None) -> torch.Tensor:
    """Universal guided sampling (Algorithm 1), a k-diffusion sampler function.

    Args:
        model: denoiser, `model(x, σ·ones(B), **extra_args) -> x0`.
        x: (B, C, h, w) latent at sigmas[0], already noised.
        sigmas: descending noise levels.
        guidance: the guidance terms.
        decode: differentiable `x0 -> image (B, 3, H, W)` in [0, 1], not clamped.
        noise_scaling: `model_sampling.noise_scaling`, which gives a(σ) and b(σ).
        settings: the method and every lever.
        seed: seeds the re-noising, ancestral and particle noise; defaults to extra_args["seed"].
        check_interrupt: raises to stop sampling; called before every denoiser pass (every chunk of particles) and
            backward step.
        update_mask: 1 where guidance may change x0 directly, 0 where it must not (e.g. an inpainting mask, which
            the denoiser already applies to its own output and to guidance through it).
        unconditional: for the "unconditional" gradient, `(x, σ) -> (x0 with CFG, the unconditional x0)`, from the
            host, which alone can run the branches apart.
        held: with known_pixels "replace", the known pixels' latent to hold (samplers/known_pixels.py), from the
            host, which alone can encode.
        on_pass: called after every denoiser pass with its `progress.PassReport`; the step bar counts passes and
            shows the terms' losses too.
        on_chosen: with particles, called at the end with the chosen particles' losses by term and step.

    Returns each image's chosen particle, (B, C, h, w), or every particle with settings.return_particles.
    """
    extra_args = {} if extra_args is None else extra_args
    seed = int(extra_args.get("seed") or 0) if seed is None else int(seed)
    losses, polishing = PassLosses(), []
    with torch.inference_mode(False):
        guidance = scaled(guidance, settings)
        unwatched = [(term, term.loss.bind(x.device)) for term in guidance]
        bound = [(term, losses.watched(label, fn)) for (term, fn), label in zip(unwatched, term_labels(guidance))
                 if not term.reward_only]
        # particles are scored by the reward-only terms where there are any, else by every term
        rewarded = [(term, fn) for term, fn in unwatched if term.reward_only] or unwatched
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
    particles = Particles(settings, x.shape[0], seed ^ _RECURRENCE_SEED_SALT, rewarded, check_interrupt)
    resampled = resampled_after(settings, steps)
    shown = slice(0, x.shape[0])  # the first particle of each image, which the progress and previews show
    x = particles.spread(x, lambda: guide.denoise(x, sigmas[0] * x.new_ones([x.shape[0]])), *coefficients[0])
    done, total = 0, sum(passes for _, _, passes in plan)
    with tqdm(total=total, disable=disable, unit="pass") as bar:
        for i, (forward, active, passes) in enumerate(plan):
            (a, b), (a_next, b_next) = coefficients[i], coefficients[i + 1]
            for r in range(passes):
                def run(x_rows, randn):
                    losses.next_chunk()
                    p = methods.Pass(guide, x_rows, sigmas[i] * x_rows.new_ones([x_rows.shape[0]]), active, a, b,
                                     a_next, b_next, forward, i, alpha_steps[i], settings.eta, randn)
                    x_next, x0 = guided_pass(p) if active else p.plain()
                    again = renoise(x_next, a_next, b_next, a, b, randn()) if r < passes - 1 else x_next
                    return x_next, x0, again

                x_next, x0, x = particles.map(run, x)
                done += 1
                pass_losses = losses.take()
                report = PassReport(i, steps, r, passes, done, total,
                                    {label: float(v.mean()) for label, v in pass_losses.items()}, x_next[shown],
                                    x0[shown])
                if report.losses:
                    bar.set_postfix_str(report.text(), refresh=False)
                bar.update()
                if on_pass is not None:
                    on_pass(report)
            particles.record(i, pass_losses)
            x = particles.resample(guide, x_next, x0, a_next, b_next) if i in resampled else x_next
            if callback is not None:
                callback({"x": x[shown], "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": x0[shown]})
    x, path = particles.select(guide, x, x0, *coefficients[-1])
    if path and on_chosen is not None:
        on_chosen(path)
    if polishing and float(sigmas[-1]) == 0:  # the finished latent is x0 itself
        polishing_guide, images = replace(guide, decode=held.decode, update_mask=update_mask), particles.images
        x = torch.cat([polish(polishing_guide, x[first:first + images], polishing)
                       for first in range(0, x.shape[0], images)])  # each rank of particles has the held batch
    return x


