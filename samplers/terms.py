"""What the engine needs to know about one guidance: its loss and how strongly and when to apply it.

A `Guidance` is an immutable tuple of `GuidanceTerm`s; combining two guidances concatenates them,
so every term keeps its own s(t) schedule, backward steps and step window (paper §3.4: the effects add up).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

SCHEDULES = ("paper", "constant", "auto")
# A new guidance node's strength: the auto schedule's w, a fraction of the predicted noise, one value for every loss
# and model (chosen on the toy world's tuning half: bench/frontier/tuning.md).
AUTO_WEIGHT = 0.7
OPTIMIZERS = ("adam", "sgd")

BoundLoss = Callable[[torch.Tensor], torch.Tensor]


class GuidanceLoss(Protocol):
    """A guidance network f and loss ℓ.

    `bind(device)` runs outside inference mode at the start of sampling and returns
    `loss(image) -> Tensor[B]` for decoded images (B, 3, H, W) in [0, 1]; lower is better, and
    sample i's loss depends on image i only. `check(batch, height, width)` raises ValueError for
    inputs that cannot serve a batch of that size and image shape.

    A loss with `reads_noisy_input = True` (a noise-aware classifier's) reads the sampler's noisy latent instead:
    its bound loss is `loss(z, noise_level)`, z = x/√(a² + b²) the DDPM latent and noise_level σ = b/a, its
    gradient is taken on x without the denoiser or decoder, and `check_noisy_input(latent shape)` replaces `check`.

    A loss with `knows_pixels = True` (reconstruction with a mask) gives `known_pixels(batch, height, width) ->
    (image, known)`, which the settings' known_pixels "replace" holds at its encoding (samplers/known_pixels.py).
    """

    def bind(self, device: torch.device) -> BoundLoss: ...

    def check(self, batch: int, height: int, width: int) -> None: ...


@dataclass(frozen=True)
class GuidanceTerm:
    """One (f, ℓ) pair with its paper hyperparameters.

    Args:
        name: shown in warnings.
        loss: the guidance loss.
        weight: w of the forward-guidance strength; 0 turns forward guidance off.
        schedule: "paper" for s(t) = w·√(1 − ᾱ_t), "constant" for s(t) = w; "auto" for the paper's s(t) on the
            gradient rescaled to the predicted noise's size, so that one w fits every loss and model
            (`forward_guidance_scale`).
        backward_steps: m, optimiser steps on Δ per denoising pass; 0 turns backward guidance off.
        backward_lr: learning rate of the backward optimiser.
        optimizer: "adam" or "sgd".
        start_percent, end_percent: the fraction of sampling steps where this term is active.
        reward_only: the term only scores particles (samplers/particles.py) and takes no gradient step.
        models: host handles (e.g. ComfyUI ModelPatchers) to load before sampling; the engine ignores them.
    """

    name: str
    loss: GuidanceLoss
    weight: float = 0.0
    schedule: str = "paper"
    backward_steps: int = 0
    backward_lr: float = 1e-2
    optimizer: str = "adam"
    start_percent: float = 0.0
    end_percent: float = 1.0
    reward_only: bool = False
    models: tuple[Any, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if not math.isfinite(self.weight) or self.weight < 0:
            raise ValueError(f"{self.name}: weight must be a finite number >= 0, got {self.weight}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"{self.name}: schedule must be one of {SCHEDULES}, got {self.schedule!r}.")
        if self.backward_steps < 0:
            raise ValueError(f"{self.name}: backward_steps must be >= 0, got {self.backward_steps}.")
        if self.backward_steps and not (math.isfinite(self.backward_lr) and self.backward_lr > 0):
            raise ValueError(f"{self.name}: backward_lr must be > 0, got {self.backward_lr}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"{self.name}: optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}.")
        if self.reads_noisy_input and self.backward_steps:
            raise ValueError(f"{self.name}: it reads the noisy latent x_t, which backward guidance (steps on the clean "
                             f"x0) does not reach; set backward_steps to 0.")
        if not 0.0 <= self.start_percent < self.end_percent <= 1.0:
            raise ValueError(
                f"{self.name}: need 0 <= start_percent < end_percent <= 1, "
                f"got {self.start_percent} and {self.end_percent}."
            )

    @property
    def reads_noisy_input(self) -> bool:
        """Whether the loss reads the noisy latent x_t itself rather than the decoded x0 (see GuidanceLoss)."""
        return bool(getattr(self.loss, "reads_noisy_input", False))

    def active_at(self, step: int, steps: int) -> bool:
        """Whether the term guides step `step` of `steps` (its window is a fraction of the steps)."""
        return self.start_percent <= step / steps < self.end_percent


Guidance = tuple[GuidanceTerm, ...]


def combine(*guidances: Guidance) -> Guidance:
    """A new guidance with every term of the inputs; the inputs are not changed."""
    return tuple(term for guidance in guidances for term in guidance)
