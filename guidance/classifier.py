"""Classifier guidance with an off-the-shelf ImageNet classifier: cross-entropy to a chosen class.

Any torchvision ImageNet classifier, with the preprocessing of its own torchvision weights (shorter side
resized, centre crop, ImageNet normalisation), done differentiably with kornia.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Sequence

import kornia
import torch
import torch.nn.functional as F
import torchvision

from .images import IMAGENET_MEAN, IMAGENET_STD, normalize, resize_short_side
from .weights import load_strictly

ARCHITECTURES = tuple(torchvision.models.list_models(module=torchvision.models))
IMAGENET_CATEGORIES = tuple(torchvision.models.get_model_weights("resnet50").DEFAULT.meta["categories"])


@dataclass(frozen=True)
class Preprocessing:
    resize_size: int = 256
    crop_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


def default_weights(architecture: str):
    """torchvision's default ImageNet weights entry for `architecture` (no download)."""
    if architecture not in ARCHITECTURES:
        close = difflib.get_close_matches(architecture, ARCHITECTURES, n=3)
        raise ValueError(f"Unknown torchvision classifier {architecture!r}." + (f" Did you mean {' or '.join(close)}?" if close else ""))
    return torchvision.models.get_model_weights(architecture).DEFAULT


class ImageClassifier(torch.nn.Module):
    """An ImageNet classifier with its preprocessing: (B, 3, H, W) in [0, 1] to logits (B, 1000)."""

    def __init__(self, network: torch.nn.Module, preprocessing: Preprocessing = Preprocessing(), categories=IMAGENET_CATEGORIES):
        super().__init__()
        self.network, self.preprocessing, self.categories = network, preprocessing, tuple(categories)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        p = self.preprocessing
        resized = resize_short_side(image, p.resize_size)
        cropped = kornia.geometry.transform.center_crop(resized, (p.crop_size, p.crop_size))
        return self.network(normalize(cropped, p.mean, p.std))


def build_classifier(architecture: str, state_dict: dict | None = None) -> ImageClassifier:
    """A torchvision ImageNet classifier in eval mode, with `state_dict` loaded if given."""
    weights = default_weights(architecture)
    transform = weights.transforms()
    preprocessing = Preprocessing(transform.resize_size[0], transform.crop_size[0], tuple(transform.mean), tuple(transform.std))
    network = torchvision.models.get_model(architecture, weights=None, num_classes=len(IMAGENET_CATEGORIES))
    if state_dict is not None:
        load_strictly(network, state_dict, f"torchvision's {architecture}", "Pick the architecture the file was saved from.")
    return ImageClassifier(network, preprocessing).eval().requires_grad_(False)


def small_random_classifier(seed: int = 0, crop_size: int = 32) -> ImageClassifier:
    """A two-layer convolutional ImageNet classifier with random weights, for stand-ins and tests."""
    torch.manual_seed(seed)
    network = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, stride=2, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(16, len(IMAGENET_CATEGORIES)))
    return ImageClassifier(network, Preprocessing(resize_size=crop_size + crop_size // 7, crop_size=crop_size)).eval().requires_grad_(False)


def class_index(target: str, categories=IMAGENET_CATEGORIES) -> int:
    """The index of a class given by name (case-insensitive) or by index; ValueError if there is none."""
    text = target.strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < len(categories):
            raise ValueError(f"Class index {index} is out of range: the classifier has classes 0 to {len(categories) - 1}.")
        return index
    lowered = [c.lower() for c in categories]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    close = difflib.get_close_matches(text.lower(), lowered, n=3)
    hint = f" Did you mean {' or '.join(repr(categories[lowered.index(c)]) for c in close)}?" if close else ""
    example = "golden retriever" if "golden retriever" in categories else categories[0]
    raise ValueError(f"Unknown class {text!r}: give one of the classifier's class names, such as {example!r}, or its index.{hint}")


class ClassifierLoss:
    """ℓ = cross-entropy of the classifier's logits to class `index` (one for every sample, or one per sample), per sample."""

    def __init__(self, classifier: ImageClassifier, index: int | Sequence[int]):
        self.classifier, self.index = classifier, index

    def check(self, batch: int, height: int, width: int) -> None:
        # any image size is resized to the classifier's input; only a class per image must match the batch
        if not isinstance(self.index, int) and len(self.index) != batch:
            raise ValueError(f"There are {len(self.index)} target classes for a batch of {batch}: give one class, or one per image.")

    def bind(self, device: torch.device):
        classifier = self.classifier
        network_device = next(classifier.parameters()).device

        def loss(image: torch.Tensor) -> torch.Tensor:
            logits = classifier(image.to(network_device, torch.float32)).float()
            target = torch.as_tensor(self.index, device=network_device).expand(logits.shape[0])
            return F.cross_entropy(logits, target, reduction="none").to(image.device)

        return loss
