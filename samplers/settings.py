"""Every lever of a guided run in one frozen object, validated once where it is made.

A field's metadata says what the field accepts and what it does, in a tooltip of one or two sentences: the
Universal Guidance Options node builds its inputs from it, and `Settings` checks its values against it. Adding a
lever means adding a field here and the code that reads it.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from .decoding import DECODE_RESOLUTIONS
from .guide import GRADIENT_PATHS
from .methods import METHODS
from .precision import AUTOCAST_DTYPES

BASE_STEPS = ("ddim", "ddpm")
TFG_SCHEDULES = ("increase", "decrease", "constant")
SMOOTHING_SCHEDULES = ("decrease", "constant")
KNOWN_PIXELS = ("guidance", "replace")
POTENTIALS = ("max", "difference", "sum")
RESAMPLING = ("systematic", "multinomial")


def resampling_steps(text: str) -> tuple[int, ...]:
    """"5, 10, 15" as (5, 10, 15): the steps after which particles are resampled, counted from 1."""
    try:
        steps = tuple(int(part) for part in text.replace(",", " ").split())
    except ValueError:
        raise ValueError(f"resample_steps must list whole step numbers such as '5, 10, 15', got {text!r}.") from None
    if any(step < 1 for step in steps):
        raise ValueError(f"resample_steps counts steps from 1, got {text!r}.")
    return steps


def _lever(default: Any, tooltip: str, *, choices: tuple | None = None, noun: str | None = None,
           minimum: float | None = None, maximum: float | None = None, above: float | None = None,
           widget_max: float | None = None, step: float | None = None, on_options_node: bool = True,
           parse=None):
    """A field with what it accepts: one of `choices` (a `noun` names them in errors), a number from `minimum`
    (or strictly `above`) to `maximum`, or text that `parse` reads (raising ValueError with the fix).
    `widget_max` caps only the options node's widget."""
    metadata = dict(tooltip=tooltip, choices=choices, noun=noun, minimum=minimum, maximum=maximum, above=above,
                    widget_max=widget_max, step=step, on_options_node=on_options_node, parse=parse)
    return dataclasses.field(default=default, metadata=metadata)


def _problem(name: str, value: Any, meta: dict, kind: type) -> str | None:
    """What is wrong with `value` for a field, with the fix, or None."""
    if meta["choices"] is not None:
        if value not in meta["choices"]:
            return f"Unknown {meta['noun'] or name} {value!r}: {name} must be one of {meta['choices']}."
        return None
    if kind is bool:
        return None if isinstance(value, bool) else f"{name} must be true or false, got {value!r}."
    if kind is str:
        if not isinstance(value, str):
            return f"{name} must be text, got {value!r}."
        try:
            meta["parse"](value)
        except ValueError as error:
            return str(error)
        return None
    low, high, above = meta["minimum"], meta["maximum"], meta["above"]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        return f"{name} must be a whole number, got {value!r}."
    if kind is float and not (isinstance(value, (int, float)) and math.isfinite(value)):
        return f"{name} must be a finite number{'' if high is not None else f' >= {low:g}'}, got {value!r}."
    if high is not None:
        left, floor = ("(", above) if above is not None else ("[", low)
        inside = (value > floor if above is not None else value >= floor) and value <= high
        return None if inside else f"{name} must be in {left}{floor:g}, {high:g}], got {value!r}."
    if value < low:
        return (f"{name} must be at least {low:g}, got {value!r}." if kind is int
                else f"{name} must be a finite number >= {low:g}, got {value!r}.")
    return None


@dataclasses.dataclass(frozen=True)
class Settings:
    """The method, its strengths and schedules, the step windows, the gradient path, the decoder, memory and
    precision. The defaults are the paper's exact method with one pass per step."""

    base: str = _lever("ddim", "ddim: deterministic DDIM (η = 0). ddpm: the ancestral DDPM step (η = 1).",
                       choices=BASE_STEPS, noun="base step", on_options_node=False)
    recurrence: int = _lever(1, "k: denoising passes per guided step, re-noising in between (the paper's "
                                "self-recurrence); 1 means none.", minimum=1, widget_max=100)
    method: str = _lever("ugd", "How a guided pass steps: ugd is the paper's; freedom, mpgd, dps and tfg are the "
                                "training-free family's (README: Methods).", choices=tuple(METHODS),
                       noun="guidance method")
    smoothing: float = _lever(0.0, "tfg only: γ̄, the loss is read at x0 plus noise of this size (0 = off).",
                              minimum=0.0, widget_max=10.0, step=0.01)
    rho_schedule: str = _lever("increase", "tfg only: how its step ρ_t changes over the steps, 1 on average "
                                           "(increase is TFG's default).", choices=TFG_SCHEDULES)
    mu_schedule: str = _lever("increase", "tfg only: how its mean-guidance step μ_t changes over the steps, as "
                                          "rho_schedule.", choices=TFG_SCHEDULES)
    smoothing_schedule: str = _lever("decrease", "tfg only: smoothing noise of γ̄·√(1−ᾱ_t) (decrease, TFG's "
                                                 "default) or γ̄ (constant).", choices=SMOOTHING_SCHEDULES)
    guidance_every: int = _lever(1, "Guide only every N-th step; the steps between are plain steps taken once.",
                                 minimum=1, widget_max=1000)
    guidance_end: float = _lever(1.0, "Guide only this first fraction of the steps, within each guidance's own "
                                      "window.", above=0.0, maximum=1.0, step=0.01)
    backward_end: float = _lever(0.0, "Up to this fraction of the steps, the steps left plain still take backward "
                                      "guidance alone (0 = off).", minimum=0.0, maximum=1.0, step=0.01)
    backward_recurrence: int = _lever(0, "k on the steps where a guidance takes backward steps, in place of "
                                         "recurrence (0 = recurrence on guided steps, one pass after them).",
                                      minimum=0, widget_max=100)
    known_pixels: str = _lever("guidance", "guidance: known pixels (Image Reconstruction Guidance with a mask) are "
                                           "matched by guidance alone, as in the paper; replace: their encoding "
                                           "replaces the known latent at every step, as ComfyUI's inpainting does.",
                               choices=KNOWN_PIXELS)
    polish_steps: int = _lever(0, "With known_pixels replace, the backward steps that polish the finished latent "
                                  "(0 = each guidance's own backward_steps).", minimum=0, widget_max=1000)
    gradient: str = _lever("through_unet", "through_unet is the paper's gradient; x0_only skips the UNet's "
                                           "backward pass, and unconditional runs it on the negative branch only.",
                           choices=GRADIENT_PATHS, noun="gradient path")
    weight_scale: float = _lever(1.0, "Multiplies every guidance's forward weight w.", minimum=0.0,
                                 widget_max=100.0, step=0.05)
    decode_resolution: str = _lever("full", "Decode for the guidance loss at full, half or quarter resolution: "
                                            "the decoder costs 4× or 16× less, the loss sees less detail.",
                                    choices=tuple(DECODE_RESOLUTIONS), noun="decode resolution")
    particles: int = _lever(1, "Samples per output image, run side by side and resampled by the guidance losses; the "
                               "output is the one with the lowest final loss (README: Particles).", minimum=1,
                            widget_max=256)
    resample_every: int = _lever(0, "Resample the particles by their losses every N steps; 0 only picks the best at "
                                    "the end (best-of-N).", minimum=0, widget_max=1000)
    resample_steps: str = _lever("", "Steps to resample after, such as 5, 10, 15 (counted from 1); replaces "
                                     "resample_every.", parse=resampling_steps)
    potential: str = _lever("max", "How a particle's losses so far weigh it when resampling: FK steering's max, "
                                   "difference or sum of its rewards.", choices=POTENTIALS)
    temperature: float = _lever(10.0, "λ: how strongly resampling prefers low losses (0 keeps particles at "
                                      "random).", minimum=0.0, widget_max=10000.0, step=0.1)
    resampling: str = _lever("systematic", "How particles are drawn by their weights: systematic (less chance "
                                           "noise) or multinomial.", choices=RESAMPLING)
    particle_batch: int = _lever(0, "Particles per model call; 0 runs all of an image's particles at once and "
                                    "halves that on running out of memory.", minimum=0, widget_max=256)
    return_particles: bool = _lever(False, "Return every particle, each image's best first, instead of the best "
                                           "one.")
    checkpointing: bool = _lever(False, "Recompute the UNet's and decoder's activations in the backward pass: much "
                                        "less memory, a little more time, the same result.")
    autocast: str = _lever("off", "Run the guided passes under bf16 or fp16 autocast, for GPUs; a pass that is not "
                                  "finite is redone in full precision.", choices=tuple(AUTOCAST_DTYPES))

    def __post_init__(self):
        for field in dataclasses.fields(self):
            problem = _problem(field.name, getattr(self, field.name), field.metadata, _kind(field))
            if problem:
                raise ValueError(problem)

    @property
    def eta(self) -> float:
        """The base step's η: 0 for DDIM, 1 for DDPM."""
        return 1.0 if self.base == "ddpm" else 0.0

    def replace(self, **changes) -> "Settings":
        unknown = set(changes) - set(LEVERS)
        if unknown:
            raise ValueError(f"Unknown settings {sorted(unknown)}: use some of {LEVERS}.")
        return dataclasses.replace(self, **changes)


def _kind(field: dataclasses.Field) -> type:
    return {"str": str, "int": int, "float": float, "bool": bool}[field.type]


LEVERS = tuple(field.name for field in dataclasses.fields(Settings))


def option_fields() -> list[dataclasses.Field]:
    """The fields the Universal Guidance Options node shows, in order."""
    return [field for field in dataclasses.fields(Settings) if field.metadata["on_options_node"]]


def widget(name: str) -> tuple:
    """The ComfyUI input spec of a lever: its type, default, range and tooltip."""
    field = Settings.__dataclass_fields__[name]
    meta, kind = field.metadata, _kind(field)
    spec: dict[str, Any] = {"default": field.default, "tooltip": meta["tooltip"]}
    if meta["choices"] is not None:
        return list(meta["choices"]), spec
    if kind is bool:
        return "BOOLEAN", spec
    if kind is str:
        return "STRING", spec
    low = meta["minimum"] if meta["minimum"] is not None else meta["above"] + meta["step"]
    high = meta["maximum"] if meta["maximum"] is not None else meta["widget_max"]
    spec.update(min=low, max=high)
    if kind is float:
        spec["step"] = meta["step"]
    return ("INT" if kind is int else "FLOAT"), spec
