"""Named settings, chosen on the toy world's tuning half (bench/toy-world-frontier), and how a preset meets the
options a user set.

paper is the paper's method. balanced and fast guide only the first steps (40% and 50%), with self-recurrence
(k = 6 and 4) and the gradient taken at x0 (no backward pass through the UNet), at 0.4 and 0.3 of the guidance's
forward weight: that gradient overshoots at high noise, where the UNet's own Jacobian would shrink it. Backward
guidance goes on alone to the last step: matching known pixels or boxes needs the late steps, and their
recurrence most of all. The steps with backward guidance take k = 2 (balanced) and 1 (fast), since each of
their passes costs m more decoder passes. fast also takes 10 steps and expects a cheap guidance decoder (TAESD).
bench/frontier/tuning.md has the runs that chose them; README, "Quality against cost", their measured scores and
costs.

A preset is a partial `Settings`: it sets the step and quality levers below, and leaves the method, TFG's
strengths and schedules, checkpointing and autocast to the options. Where the options set one of a preset's
levers to another value, the preset's wins, and `resolve` says so.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from .settings import Settings

# What every preset sets, so that switching presets changes the same levers.
PRESET_LEVERS = ("recurrence", "guidance_every", "guidance_end", "backward_end", "backward_recurrence", "gradient",
                 "weight_scale", "decode_resolution")


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
        parts = [f"{self.steps} steps" if self.steps else "the sampler's steps",
                 f"k = {s.recurrence}" + (f" ({s.backward_recurrence} where a guidance takes backward steps)"
                                          if s.backward_recurrence else ""),
                 window,
                 "gradient through the UNet" if s.gradient == "through_unet" else "gradient at x0 (x0_only)",
                 f"weight ×{s.weight_scale:g}",
                 f"{s.decode_resolution}-resolution decode"]
        if s.guidance_every > 1:
            parts.append(f"every {s.guidance_every} steps")
        if self.cheap_decoder:
            parts.append("a TAESD guidance_vae")
        return ", ".join(parts)


def _preset(steps: int | None = None, cheap_decoder: bool = False, **levers) -> Preset:
    """A preset of these levers, and the settings' defaults for the rest of PRESET_LEVERS."""
    defaults = Settings()
    return Preset({name: levers.get(name, getattr(defaults, name)) for name in PRESET_LEVERS}, steps, cheap_decoder)


PRESETS = {
    "paper": _preset(recurrence=10),
    "balanced": _preset(recurrence=6, backward_recurrence=2, gradient="x0_only", guidance_end=0.4, weight_scale=0.4,
                        backward_end=1.0),
    "fast": _preset(recurrence=4, backward_recurrence=1, gradient="x0_only", guidance_end=0.5, weight_scale=0.3,
                    backward_end=1.0, steps=10, cheap_decoder=True),
}
CUSTOM = "custom"
PRESET_NAMES = (CUSTOM, *PRESETS)


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
