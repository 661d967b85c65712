"""Image reconstruction and inpainting guidance (paper §5.1): ℓ2 to a reference on its known region."""
from __future__ import annotations

import torch

from .images import check_fits, fit, image_to_bchw, mask_to_b1hw


def masked_mse(image: torch.Tensor, reference: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the known region, per sample.

    Args:
        image, reference: (B, C, H, W).
        known: (B, 1, H, W) weights in [0, 1], 1 where the reference is known.

    Returns:
        (B,). The reference normalises by 1·W instead of H·W (ugd-reference.md §0.7d); this is the
        plain mean over the known pixels.
    """
    squared = (image - reference) ** 2 * known
    return squared.sum(dim=(1, 2, 3)) / (known.sum(dim=(1, 2, 3)) * image.shape[1]).clamp_min(1e-8)


class ReconstructionLoss:
    """ℓ2 to a reference IMAGE where an optional MASK leaves it known (mask 1 = to be generated)."""

    def __init__(self, reference: torch.Tensor, mask: torch.Tensor | None = None):
        self.reference = image_to_bchw(reference)
        self.known = None if mask is None else 1.0 - mask_to_b1hw(mask)
        if self.known is not None and float(self.known.sum()) == 0:
            raise ValueError("The mask covers the whole image, so nothing of the reference is known: clear part of it.")

    def check(self, batch: int, height: int, width: int) -> None:
        check_fits("the reference image", self.reference.shape[0], *self.reference.shape[2:], batch, height, width)
        if self.known is not None:
            check_fits("the mask", self.known.shape[0], *self.known.shape[2:], batch, height, width)

    @property
    def knows_pixels(self) -> bool:
        """Whether a mask leaves part of the image known: pixels to keep. Without one the whole reference is a soft
        target."""
        return self.known is not None

    def known_pixels(self, batch: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(the reference (B, 3, H, W), known (B, 1, H, W), 1 where it is known) at this size."""
        return fit(self.reference.float(), batch, height, width), fit(self.known.float(), batch, height, width)

    def bind(self, device: torch.device):
        reference = self.reference.to(device=device, dtype=torch.float32).clone()
        known = None if self.known is None else self.known.to(device=device, dtype=torch.float32).clone()

        fitted: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # resized once per image shape, not per call

        def loss(image: torch.Tensor) -> torch.Tensor:
            b, _, h, w = image.shape
            key = (b, h, w, image.dtype, image.device)
            if key not in fitted:
                weights = torch.ones(1, 1, h, w) if known is None else known
                fitted[key] = (fit(reference, b, h, w).to(image), fit(weights, b, h, w).to(image))
            target, weights = fitted[key]
            return masked_mse(image, target, weights)

        return loss
