"""What guidance differentiates through in one run: the denoiser, the decoder, where guidance may change x0, and
how gradient computations run (outside inference mode, at the run's precision, skipping non-finite terms)."""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, TypeVar

import torch

from .autograd_safety import Autograd
from .decoding import Decode
from .gradient_check import GradientCheck
from .precision import GuidancePrecision
from .terms import BoundLoss, GuidanceTerm

log = logging.getLogger(__name__)
T = TypeVar("T")

GRADIENT_PATHS = ("through_unet", "x0_only", "unconditional")


class WarnOnce:
    """One warning per term and kind of non-finite value, for the whole run."""

    def __init__(self):
        self.seen: set[tuple[str, str]] = set()

    def __call__(self, term: GuidanceTerm, what: str) -> None:
        if (term.name, what) not in self.seen:
            self.seen.add((term.name, what))
            log.warning("Universal guidance: %s gave a non-finite %s; skipping it at that step.", term.name, what)


@dataclasses.dataclass(frozen=True)
class Guide:
    """The run's networks and how guidance differentiates through them.

    Args:
        denoise: `(x, σ·ones(B)) -> x0`, classifier-free guidance applied.
        decode: differentiable `x0 -> image (B, 3, H, W)` in [0, 1].
        gradient: "through_unet" (eq. 6 exactly), "x0_only" (no backward pass through the denoiser), or
            "unconditional" (the loss on the unconditional x0, its gradient through that branch only).
        unconditional: for "unconditional", `(x, σ) -> (x0 with CFG, the unconditional branch's x0)`, from the host.
        update_mask: 1 where guidance may change x0 directly, 0 where it must not (an inpainting mask, which the
            denoiser already applies to its own output).
        check_interrupt: raises to stop; called before every backward-guidance step.
    """

    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    decode: Decode
    gradient: str = "through_unet"
    unconditional: Callable | None = None
    update_mask: torch.Tensor | None = None
    check_interrupt: Callable[[], None] = lambda: None
    precision: GuidancePrecision = dataclasses.field(default_factory=GuidancePrecision)
    autograd: Autograd = dataclasses.field(default_factory=Autograd)
    warn: WarnOnce = dataclasses.field(default_factory=WarnOnce)
    gradient_check: GradientCheck = dataclasses.field(default_factory=GradientCheck)

    def __post_init__(self):
        if self.gradient not in GRADIENT_PATHS:
            raise ValueError(f"Unknown gradient path {self.gradient!r}: use one of {GRADIENT_PATHS}.")
        if self.gradient == "unconditional" and self.unconditional is None:
            raise ValueError("The gradient path 'unconditional' needs the host's two-branch denoiser.")

    def differentiate(self, compute: Callable[[], T]) -> T:
        """compute() outside inference mode, at the run's precision (redone in full precision if it was not
        finite under autocast)."""
        return self.precision.run(lambda: self.autograd.run(compute))

    def with_loss_noise(self, noise: torch.Tensor) -> "Guide":
        """This guide with every guidance loss read at x0 + noise (TFG's smoothing)."""
        return dataclasses.replace(self, decode=lambda x0: self.decode(x0 + noise))

    def masked(self, update: torch.Tensor) -> torch.Tensor:
        return update if self.update_mask is None else update * self.update_mask

    def loss(self, loss_fn: BoundLoss, term: GuidanceTerm, *inputs: torch.Tensor) -> torch.Tensor:
        """ℓ(inputs) in float32, shape (B,); a failing network's error names the guidance."""
        try:
            loss = loss_fn(*inputs)
        except torch.OutOfMemoryError:
            raise  # the host says what to change
        except Exception as error:
            raise RuntimeError(f"{term.name}: its guidance network failed ({type(error).__name__}: {error}).") from error
        batch = inputs[0].shape[0]
        if loss.shape != (batch,):
            raise ValueError(f"{term.name}: its loss must have shape ({batch},), got {tuple(loss.shape)}.")
        return loss.float()
