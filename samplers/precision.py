"""Reduced precision for the guided forward and backward passes: autocast, loss scaling, and the redo in full
precision of a computation that was not finite."""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, TypeVar

import torch

log = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_FIRST_FP16_LOSS_SCALE = 2.0**12
T = TypeVar("T")


class NotFinite(Exception):
    """A loss or gradient under autocast that is not finite: the computation is redone in full precision."""


class GuidancePrecision:
    """How the guided passes run: in the model's own precision, or under autocast to bf16 or fp16.

    `run(compute)` runs a gradient computation under autocast; if it raises `NotFinite` (through `finite`), it is
    redone in full precision, and the fp16 loss scale is halved for the computations that follow. fp16 gradients
    of a small loss underflow, so with fp16 the loss is multiplied by the scale before the backward pass and the
    gradient divided by it after.
    """

    def __init__(self, autocast: str = "off", device_type: str = "cpu"):
        if autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"Unknown autocast {autocast!r}: use one of {tuple(AUTOCAST_DTYPES)}.")
        self.dtype, self.device_type = AUTOCAST_DTYPES[autocast], device_type
        self.loss_scale = _FIRST_FP16_LOSS_SCALE if self.dtype == torch.float16 else 1.0
        self.fell_back = 0
        self.reduced = False  # whether the computation running now is under autocast

    def run(self, compute: Callable[[], T]) -> T:
        if self.dtype is not None:
            self.reduced = True
            try:
                return compute()
            except NotFinite:
                self._fall_back()
            finally:
                self.reduced = False
        return compute()

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype) if self.reduced else contextlib.nullcontext()

    def gradient(self, loss: torch.Tensor, leaf: torch.Tensor, retain_graph: bool = False) -> torch.Tensor:
        """∂loss/∂leaf in float32, through a scaled loss when running reduced."""
        scale = self.loss_scale if self.reduced else 1.0
        (grad,) = torch.autograd.grad(loss.float() * scale, leaf, retain_graph=retain_graph)
        return grad.float() / scale

    def finite(self, value: torch.Tensor) -> bool:
        """Whether every element is finite; under autocast a non-finite value raises NotFinite instead."""
        if torch.isfinite(value).all():
            return True
        if self.reduced:
            raise NotFinite
        return False

    def _fall_back(self) -> None:
        if self.fell_back == 0:
            log.warning("Universal guidance: a guided pass under %s autocast was not finite; redoing such passes "
                        "in full precision.", self.dtype)
        self.fell_back += 1
        if self.dtype == torch.float16:
            self.loss_scale = max(1.0, self.loss_scale / 2)
