"""Known pixels kept by replacement (the settings' known_pixels "replace"), ComfyUI's own inpainting rule: in the
known region every denoiser pass sees the known latent noised to its level and returns the known latent, so the
model and guidance act in the rest. The guidance terms that know pixels (Image Reconstruction Guidance with a
mask) then take their backward steps once, on the finished latent, where they polish the whole of it through the
decoder of the result (its encoding alone is only as close as the VAE's reconstruction): the polish moves the known
cells too. It decodes with the VAE that encoded the pixels and decodes the result, not a cheaper guidance decoder,
whose optimum is not the VAE's.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .backward_guidance import backward_guidance
from .decoding import Decode
from .guide import Guide
from .parameterization import NoiseScaling, noise_coefficients
from .terms import BoundLoss, GuidanceTerm


def knows_pixels(term: GuidanceTerm) -> bool:
    return bool(getattr(term.loss, "knows_pixels", False))


def known_region(guidance: Sequence[GuidanceTerm], batch: int, height: int, width: int):
    """(image (B, 3, H, W) in [0, 1], known (B, 1, H, W)) of the first term that knows pixels, or None."""
    for term in guidance:
        if knows_pixels(term):
            return term.loss.known_pixels(batch, height, width)
    return None


def kept_cells(known: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """1 on the latent cells whose pixels are all known, 0 elsewhere: (B, 1, h, w)."""
    unknown = F.adaptive_max_pool2d(1 - known, latent_size)
    return (unknown == 0).to(known.dtype)


@dataclasses.dataclass(frozen=True)
class HeldLatent:
    """The known pixels' latent, 1 on the cells held at it, the noise they are held with, and the differentiable
    decoder of the result, from the host (which alone can encode)."""

    latent: torch.Tensor
    keep: torch.Tensor
    noise: torch.Tensor
    decode: Decode

    def denoiser(self, model: Callable, noise_scaling: NoiseScaling) -> Callable:
        """`model(x, σ, **extra) -> x0` (or a tuple of x0s, as the two-branch denoiser gives) with the held cells' x
        replaced by `a(σ)·latent + b(σ)·noise` and their x0 by `latent`."""

        def hold(x0):
            return x0 * (1 - self.keep) + self.latent.to(x0) * self.keep

        def denoise(x, sigma, **extra):
            a, b = noise_coefficients(noise_scaling, sigma.reshape(-1)[0])
            held = (a * self.latent + b * self.noise).to(x)
            out = model(x * (1 - self.keep) + held * self.keep, sigma, **extra)
            return tuple(hold(x0) for x0 in out) if isinstance(out, tuple) else hold(out)

        return denoise

    def update_mask(self, mask: torch.Tensor | None) -> torch.Tensor:
        """Where guidance may change x0 while sampling: not on the held cells."""
        return 1 - self.keep if mask is None else mask * (1 - self.keep)


def while_held(bound: Sequence[tuple[GuidanceTerm, BoundLoss]], polish_steps: int = 0) -> tuple[list, list]:
    """(the (term, loss) pairs to sample with: the pixel-knowing terms without their backward steps, and left out
    where that leaves them no forward weight; those terms, which polish the finished latent, with `polish_steps`
    backward steps each where it is not 0)."""
    sampling = [(term, fn) if not knows_pixels(term) else (dataclasses.replace(term, backward_steps=0), fn)
                for term, fn in bound if not knows_pixels(term) or term.weight > 0]
    polishing = [(dataclasses.replace(term, backward_steps=polish_steps or term.backward_steps), fn)
                 for term, fn in bound if knows_pixels(term)]
    return sampling, [(term, fn) for term, fn in polishing if term.backward_steps > 0]


def polish(guide: Guide, x0: torch.Tensor, polishing: Sequence[tuple[GuidanceTerm, BoundLoss]]) -> torch.Tensor:
    """x0 after each polishing term's backward steps through the guide's decoder, within its update mask (give it
    the held latent's decoder and the host's mask, which leaves the held cells free)."""
    deltas = [backward_guidance(guide, x0, term, fn, term.backward_steps, term.backward_lr, term.optimizer)
              for term, fn in polishing]
    return x0 + sum(deltas) if deltas else x0
