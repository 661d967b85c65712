"""What a guided run computed, counted as it ran: the passes of each network, forward and backward.

A pass is counted in images: a call on a batch of B counts B, and a call on a smaller input than the run's
full size counts its share of the full area (the decoder at half resolution counts ¼ per image). A backward
pass is counted when a gradient reaches the network's output, so a forward pass outside autograd, or one
whose output no loss depends on, counts no backward.

The parts: `denoiser`, the sampler's calls of the model (one per sample and pass, whatever the host batches
inside it); `unet`, the network inside it, with the host's classifier-free guidance batch (cond and uncond);
`decoder`, the guidance decoder; `guidance_network`, every guidance loss; `polish_decoder`, the decoder of the
result that polishes known pixels (samplers/known_pixels.py). Whoever calls the engine counts, by
wrapping what it hands the engine (`counted`, `counted_loss`, `counted_branches`); the engine itself counts
nothing. Beside the passes, `backward_guidance_steps` counts the optimiser steps of backward (and mean) guidance,
in images too, through torch's optimiser hooks (`counting_optimizer_steps`).
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Callable, Iterator

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

PARTS = ("denoiser", "unet", "decoder", "guidance_network", "polish_decoder")
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

    def wrapped(self, model, guidance, decode, full_area: int | None = None, unconditional: Callable | None = None):
        """(model, guidance, decode, unconditional) as the engine takes them, each counting its passes here."""
        return (self.counted("denoiser", model),
                tuple(dataclasses.replace(term, loss=self.counted_loss(term.loss)) for term in guidance),
                self.counted("decoder", decode, full_area), unconditional and self.counted_branches(unconditional))

    def counted_loss(self, loss) -> "CountedLoss":
        """A guidance loss whose bound function counts its passes as the guidance network's."""
        return CountedLoss(loss, self)

    def counted_branches(self, branches: Callable) -> Callable:
        """The host's two-branch denoiser `(x, σ) -> (x0, unconditional x0)`, counted as one denoiser pass forward
        and half of one backward (the unconditional branch of the CFG batch)."""

        def call(x, sigma):
            x0, unconditional_x0 = branches(x, sigma)
            self.add("denoiser", x0.detach(), x.shape[0])
            return x0, self.add("denoiser", unconditional_x0, 0.0, backward_images=x.shape[0] / 2)

        return call

    @contextlib.contextmanager
    def counting_optimizer_steps(self) -> Iterator[None]:
        """Counts every optimiser step taken inside the block as a backward-guidance step of its parameters'
        batch (Δ's first size)."""

        def count(optimizer, args, kwargs):
            self.backward_guidance_steps += sum(p.shape[0] for group in optimizer.param_groups for p in group["params"])

        handle = register_optimizer_step_post_hook(count)
        try:
            yield
        finally:
            handle.remove()

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


class CountedLoss:
    """A guidance loss (samplers/terms.py's protocol) whose bound function counts its passes; everything else is
    the wrapped loss's."""

    def __init__(self, loss, counts: PassCounts):
        self.loss, self.counts = loss, counts

    def bind(self, device):
        return self.counts.counted("guidance_network", self.loss.bind(device))

    def __getattr__(self, name):
        return getattr(self.__dict__["loss"], name)


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
