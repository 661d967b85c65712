"""Named settings, chosen on the toy world's tuning half by one bounded search per cost budget, the same for every
method (bench/toy_world_presets.py; every candidate's run in bench/frontier/presets/), and how a preset meets the
options a user set.

fast (at most 1.5× an unguided 20-step run), balanced (at most ⅕ of paper mode's cost) and quality (at most paper
mode's) each won their budget on the worst case over every task and both toy models, with the guidance nodes at
their defaults (the auto schedule, w = 0.7): the method, recurrence, window, gradient path and strength together.
All three take the gradient at x0 and hold known pixels at their encoding, polishing the result through the VAE
(samplers/known_pixels.py). paper is the paper's method. README, "Presets", has their report-half scores and costs.

A preset is a partial `Settings`: it sets PRESET_LEVERS, and leaves TFG's strengths and schedules, checkpointing
and autocast to the options. Where the options set one of a preset's levers to another value, the preset's wins,
and `resolve` says so.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from .settings import Settings

# What every preset sets, so that switching presets changes the same levers.
PRESET_LEVERS = ("method", "recurrence", "guidance_every", "guidance_end", "backward_end", "backward_recurrence",
                 "gradient", "weight_scale", "decode_resolution", "known_pixels", "polish_steps")


@dataclasses.dataclass(frozen=True)
class Preset:
    """A partial `Settings`, `levers`, with the steps it was measured at (None keeps the sampler's) and whether it
    expects a cheap guidance decoder (TAESD)."""

    levers: Mapping[str, Any]
    steps: int | None = None
    cheap_decoder: bool = False

    def __post_init__(self):
        self.over(Settings())  # names and values checked as the options' are

    def over(self, settings: Settings) -> Settings:
        """settings with this preset's levers in place of theirs."""
        return settings.replace(**self.levers)

    def describe(self) -> str:
        s = self.over(Settings())
        window = "guidance on every step" if s.guidance_end == 1 else f"guidance in the first {s.guidance_end:.0%} of the steps"
        if s.backward_end > 0:
            window += (" and backward guidance alone after it, "
                       + (f"k = {s.backward_recurrence}, " if s.backward_recurrence else "one pass per step, ")
                       + ("to the last step" if s.backward_end == 1 else f"to {s.backward_end:.0%} of the steps"))
        parts = [f"the {s.method} method", f"{self.steps} steps" if self.steps else "the sampler's steps",
                 f"k = {s.recurrence}" + (f" ({s.backward_recurrence} where a guidance takes backward steps)"
                                          if s.backward_recurrence else ""),
                 window,
                 "gradient through the UNet" if s.gradient == "through_unet" else "gradient at x0 (x0_only)",
                 f"weight ×{s.weight_scale:g}",
                 f"{s.decode_resolution}-resolution decode"]
        if s.guidance_every > 1:
            parts.append(f"every {s.guidance_every} steps")
        if s.known_pixels == "replace":
            parts.append("known pixels replaced and polished"
                         + (f" in {s.polish_steps} steps" if s.polish_steps else ""))
        if self.cheap_decoder:
            parts.append("a TAESD guidance_vae")
        return ", ".join(parts)


def _preset(steps: int | None = None, cheap_decoder: bool = False, **levers) -> Preset:
    """A preset of these levers, and the settings' defaults for the rest of PRESET_LEVERS."""
    defaults = Settings()
    return Preset({name: levers.get(name, getattr(defaults, name)) for name in PRESET_LEVERS}, steps, cheap_decoder)


PRESETS = {
    "balanced": _preset(method="ugd", recurrence=3, guidance_end=0.5, gradient="x0_only", known_pixels="replace",
                        polish_steps=40),
    "fast": _preset(method="freedom", recurrence=4, guidance_end=0.4, gradient="x0_only", weight_scale=0.5,
                    known_pixels="replace", steps=10, cheap_decoder=True),
    "quality": _preset(method="ugd", recurrence=8, gradient="x0_only", weight_scale=2.0, known_pixels="replace",
                       polish_steps=40),
    "paper": _preset(recurrence=10),
}
CUSTOM = "custom"
DEFAULT = "balanced"  # what a new sampler node starts with
PRESET_NAMES = (*PRESETS, CUSTOM)


def resolve(preset: str, options: Settings | None, steps: int | None) -> tuple[Settings, int | None, list[str]]:
    """(the settings that run, the steps that run, notes): custom runs the options as they are (the defaults without
    them); a named preset runs its levers over the options', and its steps where it sets them. The notes name every
    value of the graph's that a preset replaced, for the log."""
    options = options or Settings()
    if preset == CUSTOM:
        return options, steps, []
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}: preset must be one of {PRESET_NAMES}.")
    chosen, notes = PRESETS[preset], []
    replaced = {name: getattr(options, name) for name, value in chosen.levers.items() if getattr(options, name) != value}
    if replaced:
        notes.append(f"preset {preset} sets " + ", ".join(f"{name} {value}" for name, value in chosen.levers.items()
                                                           if name in replaced)
                     + "; the options input's " + ", ".join(f"{name} {value}" for name, value in replaced.items())
                     + " are not used (choose preset custom to run them)")
    if chosen.steps and steps is not None and steps != chosen.steps:
        notes.append(f"preset {preset} runs {chosen.steps} steps; the node's steps {steps} is not used (choose preset "
                     f"custom to run it)")
    return chosen.over(options), chosen.steps or steps, notes
