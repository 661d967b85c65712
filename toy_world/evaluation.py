"""Scores of generated toy images against a guidance target, per sample, from the held-out evaluators."""
from __future__ import annotations

import torch

from . import data
from .networks import iou


def mean_iou(predicted: torch.Tensor, target: torch.Tensor, classes: int = 1 + len(data.SHAPES)) -> torch.Tensor:
    """Per sample, the IoU of each class present in the target or the prediction, averaged: (B, H, W) ×2 -> (B,)."""
    scores = []
    for p, t in zip(predicted, target):
        ious = [((p == c) & (t == c)).sum() / ((p == c) | (t == c)).sum() for c in range(classes) if ((p == c) | (t == c)).any()]
        scores.append(torch.stack(ious).float().mean())
    return torch.stack(scores)


def segmentation_score(evaluator, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mIoU of the evaluator's segmentation of images (B, 3, H, W) in [0, 1] against target maps (B, H, W)."""
    with torch.no_grad():
        return mean_iou(evaluator(images)["out"].argmax(1), target)


def classification_score(evaluator, images: torch.Tensor, target_class: int) -> torch.Tensor:
    """1 where the target class (a coloured shape) is the evaluator's most likely class for the image, else 0."""
    with torch.no_grad():
        return (evaluator(images).argmax(1) == target_class).float()


def location_score(evaluator, images: torch.Tensor, shape_boxes: dict[str, tuple[float, ...]]) -> torch.Tensor:
    """Mean over the target shapes of the IoU between the evaluator's box and the target box (fractions);
    0 for a shape the evaluator does not find."""
    with torch.no_grad():
        presence, boxes = evaluator(images)
    scores = []
    for shape, box in shape_boxes.items():
        index = data.SHAPES.index(shape)
        overlap = iou(boxes[:, index], torch.tensor([box], dtype=boxes.dtype).expand(len(images), 4))
        scores.append(torch.where(presence[:, index] > 0, overlap, torch.zeros_like(overlap)))
    return torch.stack(scores).mean(0)


def masked_psnr(images: torch.Tensor, reference: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """PSNR in dB over the known pixels (known: (B or 1, H, W), 1 = known) of images in [0, 1]."""
    weight = known[:, None].expand_as(images).float()
    mse = ((images - reference) ** 2 * weight).sum(dim=(1, 2, 3)) / weight.sum(dim=(1, 2, 3))
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))
