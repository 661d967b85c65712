"""Cheaper differentiable decoders for the guidance loss: the same decoder at a reduced resolution."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Decode = Callable[[torch.Tensor], torch.Tensor]
DECODE_RESOLUTIONS = {"full": 1, "half": 2, "quarter": 4}


def at_reduced_resolution(decode: Decode, resolution: str) -> Decode:
    """`decode` of the latent shrunk by the resolution's factor, the image enlarged back to full size.

    The decoder's cost falls with the square of the factor; the loss sees an image of the usual size whose
    detail is that of the smaller one. Both resizes are bilinear (antialiased down) and differentiable.
    """
    if resolution not in DECODE_RESOLUTIONS:
        raise ValueError(f"Unknown decode resolution {resolution!r}: use one of {tuple(DECODE_RESOLUTIONS)}.")
    factor = DECODE_RESOLUTIONS[resolution]
    if factor == 1:
        return decode

    def decode_small(x0: torch.Tensor) -> torch.Tensor:
        height, width = x0.shape[-2:]
        small_size = (max(1, height // factor), max(1, width // factor))
        small = F.interpolate(x0, size=small_size, mode="bilinear", antialias=True, align_corners=False)
        image = decode(small)
        pixels_per_cell = image.shape[-2] // small_size[0], image.shape[-1] // small_size[1]
        full_size = (pixels_per_cell[0] * height, pixels_per_cell[1] * width)
        return F.interpolate(image, size=full_size, mode="bilinear", align_corners=False)

    return decode_small
