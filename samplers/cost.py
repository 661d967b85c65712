"""What a guided run costs on Stable Diffusion 1.5 at 512 px, as a multiple of an unguided run.

Prices the passes that `pass_counts` counted, per sample, with the part costs that bench/speed measured and
wrote to samplers/part_costs.json (seconds per image, forward and backward; rerun bench/speed to update them):

- each denoiser pass as SD's UNet on a cond and uncond pair, as SD runs with classifier-free guidance and as
  bench/speed measured it, whatever CFG the counted run used;
- each guidance-decoder pass as SD's VAE decoder, or TAESD when the run decoded with the cheap decoder, and each
  pass of the known pixels' polish (samplers/known_pixels.py) as the VAE decoder, which it runs;
- each guidance-loss pass as the guidance network named (CLIP RN50 or LR-ASPP, measured at 512 px).

Both runs end with one VAE decode. The reference is an unguided run of 20 steps: 20 UNet pairs and that decode.

`counted_passes` counts what settings will run before they run: the engine's own loop on a tiny stand-in of the
denoiser, decoder and loss, with the same steps, settings and guidance terms (the sampler nodes log it before
sampling, the shipped workflows' notes quote it); `settings_multiple` prices that count. For a model whose part
costs were not measured, `plan_summary` gives the count as a ratio of passes instead of a price.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Sequence

import torch

from .known_pixels import HeldLatent
from .pass_counts import PassCounts
from .settings import Settings
from .terms import GuidanceTerm
from .universal_guidance import sample_universal_guidance

PART_COSTS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "part_costs.json")
REFERENCE_STEPS = 20
DECODERS = ("vae", "taesd")
GUIDES = ("clip", "segmentation")  # the guidance networks bench/speed measures


@functools.cache
def part_costs(path: str = PART_COSTS_FILE) -> dict:
    """{part: {"forward": s, "backward": s}} per image, from bench/speed's results file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: run `bash bench/speed --sizes 512 --batches 1 --parts-only` to measure it.")
    with open(path) as f:
        return json.load(f)["seconds_per_image"]


def _unguided_seconds(costs: dict, steps: int) -> float:
    return steps * 2 * costs["unet"]["forward"] + costs["vae"]["forward"]


def sd15_multiple(forward: dict, backward: dict, decoder: str, guide: str | None, costs: dict | None = None) -> float:
    """The counted run's cost on SD 1.5 over an unguided 20-step run's; `forward` and `backward` are one sample's
    counts (PassCounts.per_sample(...).forward and .backward). guide None leaves the guidance network unpriced."""
    if decoder not in DECODERS or guide not in GUIDES + (None,):
        raise ValueError(f"decoder must be one of {DECODERS} and guide one of {GUIDES} or None, got {decoder!r} and {guide!r}")
    costs = costs or part_costs()
    priced = {"denoiser": ("unet", 2), "decoder": (decoder, 1), "polish_decoder": ("vae", 1)}
    if guide:
        priced["guidance_network"] = (guide, 1)
    seconds = costs["vae"]["forward"]  # the final decode
    for counted, (part, images) in priced.items():
        seconds += images * (forward.get(counted, 0) * costs[part]["forward"]
                             + backward.get(counted, 0) * costs[part]["backward"])
    return seconds / _unguided_seconds(costs, REFERENCE_STEPS)


def unguided_multiple(steps: int, costs: dict | None = None) -> float:
    """An unguided run of `steps` steps over one of 20."""
    costs = costs or part_costs()
    return _unguided_seconds(costs, steps) / _unguided_seconds(costs, REFERENCE_STEPS)


class _StandInLoss:
    def __init__(self, reads_noisy_input: bool = False, knows_pixels: bool = False):
        self.reads_noisy_input, self.knows_pixels = reads_noisy_input, knows_pixels

    def check(self, batch: int, height: int, width: int) -> None:
        pass

    def bind(self, device):
        return lambda image, *noise_level: image.square().flatten(1).mean(1)


LOSS_KINDS = ("reads_noisy_input", "knows_pixels")  # what the count needs to know of a term's loss
_STAND_IN_STRENGTH = 1e-3


def term_settings(term: GuidanceTerm) -> dict:
    """A term's settings as counted_passes takes them: everything but its name, loss and models, and whether its
    loss reads the noisy latent or knows pixels."""
    settings = {f.name: getattr(term, f.name) for f in dataclasses.fields(term) if f.name not in ("name", "loss", "models")}
    return {**settings, **{kind: bool(getattr(term.loss, kind, False)) for kind in LOSS_KINDS}}


def counted_passes(steps: int, terms: Sequence[dict], settings: Settings = Settings(),
                   sigmas: torch.Tensor | None = None, noise_scaling=None) -> PassCounts:
    """One sample's passes in a guided run of these settings, counted on a 4×4 stand-in of the denoiser, decoder
    and loss. `terms` are GuidanceTerm settings (weight, backward_steps, start_percent, …; `term_settings`).
    `sigmas` and `noise_scaling` are the run's own where known: a flow model's first step holds no x0, and some
    methods skip it."""
    counts, size = PassCounts(), 4
    # only whether a strength is 0 decides the passes; a small one keeps the stand-in's numbers finite
    small = dict(weight=_STAND_IN_STRENGTH, backward_lr=_STAND_IN_STRENGTH)
    guidance = tuple(GuidanceTerm(name=f"stand-in {i}", loss=_StandInLoss(**{k: term.get(k, False) for k in LOSS_KINDS}),
                                  **{k: (small[k] if k in small and v else v) for k, v in term.items()
                                     if k not in LOSS_KINDS})
                     for i, term in enumerate(terms))
    if sigmas is None:
        sigmas = torch.cat([torch.linspace(14.6, 0.03, steps), torch.zeros(1)])
        noise_scaling = lambda sigma, noise, latent, **kw: sigma * noise + latent  # noqa: E731
    denoiser = lambda x, sigma, **extra: x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2)  # noqa: E731
    branches = (lambda x, sigma: (denoiser(x, sigma), denoiser(x, sigma))) if settings.gradient == "unconditional" else None
    model, guidance, decode, branches = counts.wrapped(denoiser, guidance, lambda x0: x0.repeat(1, 3, 8, 8),
                                                       full_area=size * size, unconditional=branches)
    x = torch.randn(1, 1, size, size, generator=torch.Generator().manual_seed(0))  # the global RNG left alone
    keep = torch.zeros_like(x)
    keep[..., : size // 2] = 1
    held = (HeldLatent(torch.zeros_like(x), keep, torch.zeros_like(x),
                       counts.counted("polish_decoder", lambda x0: x0.repeat(1, 3, 8, 8), full_area=size * size))
            if settings.known_pixels == "replace" and any(t.get("knows_pixels") for t in terms) else None)
    with counts.counting_optimizer_steps():
        sample_universal_guidance(model, x, sigmas, guidance=guidance, decode=decode, noise_scaling=noise_scaling,
                                  settings=settings, unconditional=branches, held=held, disable=True)
    return counts


def settings_multiple(steps: int, terms: Sequence[dict], settings: Settings, decoder: str, guide: str | None) -> float:
    """The SD 1.5 cost, over an unguided 20-step run's, of a guided run of these settings (see counted_passes)."""
    counts = counted_passes(steps, terms, settings)
    return sd15_multiple(counts.forward, counts.backward, decoder, guide)


def plan_summary(counts: PassCounts, steps: int, decoder: str = "vae", priced: bool = True) -> str:
    """What a counted run will compute per sample, and its price over an unguided run of as many steps: priced as
    SD 1.5 (the guidance networks unpriced: their cost depends on which they are), or, for a model whose part costs
    were not measured, as a ratio of denoiser passes."""
    forward, backward = counts.forward, counts.backward
    passes = (f"{steps} steps, {forward['denoiser']:g} denoiser passes ({backward['denoiser']:g} with a backward "
              f"pass), {forward['decoder']:g} guidance-decoder passes, {counts.backward_guidance_steps:g} "
              f"backward-guidance steps per sample")
    if priced:
        multiple = sd15_multiple(forward, backward, decoder, None) / unguided_multiple(steps)
        return (f"{passes}; about {multiple:.1f}× an unguided run of {steps} steps (priced as SD 1.5 at 512 px with "
                f"the {decoder.upper()} decoder, the guidance networks left out)")
    ratio = (forward["denoiser"] + backward["denoiser"]) / steps
    return (f"{passes}; {ratio:.1f}× the denoiser passes of an unguided run of {steps} steps, a backward pass "
            f"counted as one (a ratio of passes, not of time: part costs are measured for SD 1.5 only)")
