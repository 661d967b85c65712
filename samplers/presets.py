"""Named settings of the sampler's levers, chosen on the toy world's tuning half (bench/toy-world-frontier).

paper is the paper's method. balanced and fast guide only the first steps (40% and 50%), with self-recurrence
(k = 6 and 4) and the gradient taken at x0 (no backward pass through the UNet), at 0.4 and 0.3 of the guidance's
forward weight: that gradient overshoots at high noise, where the UNet's own Jacobian would shrink it. Backward
guidance goes on alone to the last step: matching known pixels or boxes needs the late steps, and their
recurrence most of all. The steps with backward guidance take k = 2 (balanced) and 1 (fast), since each of
their passes costs m more decoder passes. fast also takes 10 steps and expects a cheap guidance decoder (TAESD).
bench/frontier/tuning.md has the runs that chose them; README, "Quality against cost", their measured scores and
costs.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """The levers a preset sets. steps None keeps the sampler's steps; cheap_decoder says that the preset was
    measured with a cheap guidance decoder (TAESD) and expects one."""

    recurrence: int
    gradient: str
    guidance_end: float
    weight_scale: float
    steps: int | None = None
    guidance_every: int = 1
    backward_end: float = 0.0
    backward_recurrence: int = 0
    decode_resolution: str = "full"
    cheap_decoder: bool = False

    def levers(self) -> dict:
        """The sampler's speed options that the preset sets (steps and recurrence are the sampler's own inputs)."""
        return dict(guidance_every=self.guidance_every, guidance_end=self.guidance_end, gradient=self.gradient,
                    weight_scale=self.weight_scale, decode_resolution=self.decode_resolution,
                    backward_end=self.backward_end, backward_recurrence=self.backward_recurrence)

    def describe(self) -> str:
        window = "guidance on every step" if self.guidance_end == 1 else f"guidance in the first {self.guidance_end:.0%} of the steps"
        if self.backward_end > 0:
            window += (" and backward guidance alone after it, "
                       + (f"k = {self.backward_recurrence}, " if self.backward_recurrence else "one pass per step, ")
                       + ("to the last step" if self.backward_end == 1 else f"to {self.backward_end:.0%} of the steps"))
        parts = [f"{self.steps} steps" if self.steps else "the sampler's steps",
                 f"k = {self.recurrence}" + (f" ({self.backward_recurrence} where a guidance takes backward steps)"
                                             if self.backward_recurrence else ""),
                 window,
                 "gradient through the UNet" if self.gradient == "through_unet" else "gradient at x0 (x0_only)",
                 f"weight ×{self.weight_scale:g}",
                 f"{self.decode_resolution}-resolution decode"]
        if self.guidance_every > 1:
            parts.append(f"every {self.guidance_every} steps")
        if self.cheap_decoder:
            parts.append("a TAESD guidance_vae")
        return ", ".join(parts)


PRESETS = {
    "paper": Preset(recurrence=10, gradient="through_unet", guidance_end=1.0, weight_scale=1.0),
    "balanced": Preset(recurrence=6, backward_recurrence=2, gradient="x0_only", guidance_end=0.4, weight_scale=0.4,
                       backward_end=1.0),
    "fast": Preset(recurrence=4, backward_recurrence=1, gradient="x0_only", guidance_end=0.5, weight_scale=0.3,
                   backward_end=1.0, steps=10, cheap_decoder=True),
}
