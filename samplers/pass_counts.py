"""What a guided run computed, counted as it ran: the passes of each network, forward and backward.

A pass is counted in images: a call on a batch of B counts B, and a call on a smaller input than the run's
full size counts its share of the full area (the decoder at half resolution counts ¼ per image). A backward
pass is counted when a gradient reaches the network's output, so a forward pass outside autograd, or one
whose output no loss depends on, counts no backward.

The parts: `denoiser`, the sampler's calls of the model (one per sample and pass, whatever the host batches
inside it); `unet`, the network inside it, with the host's classifier-free guidance batch (cond and uncond);
`decoder`, the guidance decoder; `guidance_network`, every guidance loss. The engine counts the denoiser and
the losses; the host, which builds the model and the decoder, counts the UNet and the decoder. Beside the
passes, `backward_guidance_steps` counts the optimiser steps of backward (and mean) guidance, in images too.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator

import torch

PARTS = ("denoiser", "unet", "decoder", "guidance_network")
_RECORDERS: contextvars.ContextVar[tuple["PassCounts", ...]] = contextvars.ContextVar("recorders", default=())


class PassCounts:
    """Images through each part, forward and backward, and backward-guidance steps."""

    def __init__(self):
        self.forward = dict.fromkeys(PARTS, 0.0)
        self.backward = dict.fromkeys(PARTS, 0.0)
        self.backward_guidance_steps = 0.0

    def add(self, part: str, output: torch.Tensor, images: float, backward_images: float | None = None) -> torch.Tensor:
        """Count `images` forward through `part`, and as many backward (or `backward_images`, for an output that
        only part of the pass reaches) once a gradient reaches `output`."""
        self.forward[part] += images
        if output.requires_grad:
            def count_backward(grad):
                self.backward[part] += images if backward_images is None else backward_images
                return grad

            output.register_hook(count_backward)
        return output

    def counted(self, part: str, fn: Callable[..., torch.Tensor],
                full_area: int | None = None) -> Callable[..., torch.Tensor]:
        """`fn(x, …)`, counting x's batch; with `full_area`, weighted by x's area (its last two sizes) over it."""

        def call(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            images = x.shape[0] * (1.0 if full_area is None else x.shape[-2] * x.shape[-1] / full_area)
            return self.add(part, fn(x, *args, **kwargs), images)

        return call

    def per_sample(self, samples: int) -> "PassCounts":
        scaled = PassCounts()
        for part in PARTS:
            scaled.forward[part], scaled.backward[part] = self.forward[part] / samples, self.backward[part] / samples
        scaled.backward_guidance_steps = self.backward_guidance_steps / samples
        return scaled

    def as_dict(self) -> dict:
        return {"forward": dict(self.forward), "backward": dict(self.backward),
                "backward_guidance_steps": self.backward_guidance_steps}

    def __repr__(self) -> str:
        return "PassCounts(" + ", ".join(f"{p} {self.forward[p]:g}/{self.backward[p]:g}" for p in PARTS) + ")"


@contextlib.contextmanager
def recording() -> Iterator[PassCounts]:
    """The passes of every guided run that finishes inside the block, summed (for benchmarks and tests)."""
    total = PassCounts()
    token = _RECORDERS.set(_RECORDERS.get() + (total,))
    try:
        yield total
    finally:
        _RECORDERS.reset(token)


def report(counts: PassCounts) -> None:
    """Hand one finished run's counts to every `recording()` around it."""
    for recorder in _RECORDERS.get():
        for part in PARTS:
            recorder.forward[part] += counts.forward[part]
            recorder.backward[part] += counts.backward[part]
        recorder.backward_guidance_steps += counts.backward_guidance_steps
