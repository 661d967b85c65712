"""The settings every guidance node shares, and turning them into a GUIDANCE value."""
from __future__ import annotations

from ..samplers.terms import AUTO_WEIGHT, OPTIMIZERS, SCHEDULES, GuidanceTerm

GUIDANCE = "UGD_GUIDANCE"


def settings_inputs(weight: float = AUTO_WEIGHT, schedule: str = "auto", backward_steps: int = 0,
                    backward_lr: float = 1e-2) -> dict:
    """ComfyUI inputs for s(t), backward guidance and the step window; by default the auto schedule's w. The
    shipped paper workflows set the paper's schedule and weights themselves."""
    return {
        "weight": ("FLOAT", {"default": weight, "min": 0.0, "max": 1e7, "step": 0.1,
                             "tooltip": "Forward-guidance strength w: s(t) = w·√(1−ᾱ_t) with the paper schedule, a fraction "
                                        "of the predicted noise (about 1) with auto. 0 turns forward guidance off."}),
        "schedule": (list(SCHEDULES), {"default": schedule,
                                       "tooltip": "paper: s(t) = w·√(1−ᾱ_t), as in the paper; constant: s(t) = w; auto: "
                                                  "the paper's s(t) on a gradient rescaled to the predicted noise, so "
                                                  "that w means the same for every guidance and model."}),
        "backward_steps": ("INT", {"default": backward_steps, "min": 0, "max": 1000,
                                   "tooltip": "m, optimiser steps of backward guidance per denoising pass. 0 turns it off."}),
        "backward_lr": ("FLOAT", {"default": backward_lr, "min": 1e-6, "max": 1e7, "step": 0.001,
                                  "tooltip": "Learning rate of backward guidance."}),
        "optimizer": (list(OPTIMIZERS), {"default": "adam", "tooltip": "Optimiser of backward guidance (the reference uses Adam)."}),
        "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                    "tooltip": "Guide from this fraction of the sampling steps on."}),
        "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                  "tooltip": "Stop guiding at this fraction of the sampling steps."}),
    }


def guidance_output(name: str, loss, models=(), **settings) -> tuple:
    """A one-term GUIDANCE node output; bad settings raise ValueError naming the setting."""
    return ((GuidanceTerm(name=name, loss=loss, models=tuple(models), **settings),),)
