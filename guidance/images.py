"""Fitting ComfyUI IMAGE and MASK inputs to the batch and size of the decoded samples."""
from __future__ import annotations

import torch
import kornia

ASPECT_TOLERANCE = 0.02


def check_batch(count: int, what: str, batch: int) -> None:
    """Raise ValueError unless `count` guidance targets (`what`) can serve `batch` samples: 1 for all, or one each."""
    if count not in (1, batch):
        raise ValueError(f"{count} {what} cannot guide {batch} samples: give 1 or {batch}.")


def check_fits(name: str, batch: int, height: int, width: int, target_batch: int, target_height: int, target_width: int) -> None:
    """Raise ValueError unless a (batch, height, width) input can be resized and broadcast to the target."""
    if batch not in (1, target_batch):
        raise ValueError(
            f"{name} has a batch of {batch}, which cannot be matched to {target_batch} samples: "
            f"give 1 {name} for all samples or exactly {target_batch}."
        )
    aspect, target_aspect = width / height, target_width / target_height
    if abs(aspect / target_aspect - 1) > ASPECT_TOLERANCE:
        raise ValueError(
            f"{name} is {width}x{height}, which cannot be resized to the {target_width}x{target_height} "
            f"images being sampled without distortion: crop or pad it to the same aspect ratio first."
        )


def fit(tensor: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """Resize (N, C, h, w) to (batch, C, height, width), repeating a batch of 1 (bilinear, antialiased)."""
    if tensor.shape[-2:] != (height, width):
        tensor = kornia.geometry.transform.resize(tensor, (height, width), interpolation="bilinear", antialias=True)
    return tensor.expand(batch, *tensor.shape[1:]) if tensor.shape[0] == 1 else tensor


def image_to_bchw(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) to (B, 3, H, W), dropping an alpha channel."""
    if image.ndim != 4 or image.shape[-1] not in (3, 4):
        raise ValueError(f"Expected an IMAGE of shape (B, H, W, 3), got {tuple(image.shape)}.")
    return image[..., :3].movedim(-1, 1)


def mask_to_b1hw(mask: torch.Tensor) -> torch.Tensor:
    """ComfyUI MASK (B, H, W) or (H, W) to (B, 1, H, W)."""
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise ValueError(f"Expected a MASK of shape (B, H, W), got {tuple(mask.shape)}.")
    return mask[:, None]


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_short_side(image: torch.Tensor, size: int, interpolation: str = "bilinear") -> torch.Tensor:
    """Differentiable resize of (B, C, H, W) so that its shorter side is `size`, keeping the aspect ratio."""
    if min(image.shape[-2:]) == size:
        return image
    return kornia.geometry.transform.resize(image, size, side="short", interpolation=interpolation, antialias=True)


def normalize(image: torch.Tensor, mean, std) -> torch.Tensor:
    """(image − mean) / std per channel, with mean and std as sequences."""
    return kornia.enhance.normalize(image, image.new_tensor(mean), image.new_tensor(std))
