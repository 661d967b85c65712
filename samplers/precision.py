"""Reduced precision for the guided forward and backward passes: autocast, loss scaling, non-finite fallback."""
from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_FIRST_FP16_LOSS_SCALE = 2.0**12


class GuidancePrecision:
    """How the guided passes run: in the model's own precision, or under autocast to bf16 or fp16.

    fp16 gradients of a small loss underflow, so with fp16 the loss is multiplied by a scale before the
    backward pass and the gradient divided by it after. A pass whose loss or gradient is not finite under
    autocast is redone in full precision, and the fp16 scale is halved for the passes that follow.
    """

    def __init__(self, autocast: str = "off", device_type: str = "cpu"):
        if autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"Unknown autocast {autocast!r}: use one of {tuple(AUTOCAST_DTYPES)}.")
        self.dtype, self.device_type = AUTOCAST_DTYPES[autocast], device_type
        self.loss_scale = _FIRST_FP16_LOSS_SCALE if self.dtype == torch.float16 else 1.0
        self.fell_back = 0

    @property
    def reduced(self) -> bool:
        return self.dtype is not None

    def autocast(self, reduced: bool):
        if not (reduced and self.reduced):
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def gradient(self, loss: torch.Tensor, leaf: torch.Tensor, reduced: bool, retain_graph: bool = False):
        """∂loss/∂leaf in float32, through a scaled loss when running reduced."""
        scale = self.loss_scale if reduced and self.reduced else 1.0
        (grad,) = torch.autograd.grad(loss.float() * scale, leaf, retain_graph=retain_graph)
        return grad.float() / scale

    def non_finite(self) -> None:
        """A reduced pass was not finite: it is redone in full precision, and fp16 scales down from now on."""
        if self.fell_back == 0:
            log.warning("Universal guidance: a guided pass under %s autocast was not finite; redoing such passes "
                        "in full precision.", self.dtype)
        self.fell_back += 1
        if self.dtype == torch.float16:
            self.loss_scale = max(1.0, self.loss_scale / 2)
