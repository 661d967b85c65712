"""Segmentation-map guidance (paper §4.2): per-pixel cross-entropy between a segmenter's logits and a class map.

The reference (ugd-reference.md §2.2) feeds torchvision's LR-ASPP MobileNetV3 (21 PASCAL VOC classes) the
decoded image resized to 520 px and normalised with ImageNet statistics, and averages the cross-entropy over
every pixel. Here the shorter side goes to 520 px so that non-square images keep their shape.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.models import segmentation

from .images import IMAGENET_MEAN, IMAGENET_STD, check_fits, image_to_bchw, mask_to_b1hw, normalize, resize_short_side
from .weights import load_strictly

ARCHITECTURES = {
    "lraspp_mobilenet_v3_large": (segmentation.lraspp_mobilenet_v3_large, segmentation.LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1),
    "deeplabv3_mobilenet_v3_large": (segmentation.deeplabv3_mobilenet_v3_large, segmentation.DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1),
}
VOC_CLASSES = tuple(ARCHITECTURES["lraspp_mobilenet_v3_large"][1].meta["categories"])
IGNORE = 255  # VOC's "void" label: pixels that carry no loss
INPUT_SIZE = 520
COLOUR_TOLERANCE = 12  # per channel, out of 255: slack for resampled or lossy-saved maps


def voc_palette() -> torch.Tensor:
    """(256, 3) uint8 PASCAL VOC colour of each label: the bits of the label spread over R, G, B from the top bit down."""
    labels = torch.arange(256)
    colours = torch.zeros(256, 3, dtype=torch.long)
    for bit in range(8):
        for channel in range(3):
            colours[:, channel] |= ((labels >> (3 * bit + channel)) & 1) << (7 - bit)
    return colours.to(torch.uint8)


class Segmenter(torch.nn.Module):
    """A segmentation network with its preprocessing: (B, 3, H, W) in [0, 1] to logits (B, classes, h, w).

    The defaults are the reference's for a VOC segmenter. Class i is painted in VOC palette colour i.
    """

    def __init__(self, network: torch.nn.Module, input_size: int = INPUT_SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 classes=VOC_CLASSES):
        super().__init__()
        self.network = network
        self.input_size, self.mean, self.std, self.classes = input_size, tuple(mean), tuple(std), tuple(classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        pixels = normalize(resize_short_side(image, self.input_size), self.mean, self.std)
        return self.network(pixels)["out"]


def build_segmenter(architecture: str, state_dict: dict | None = None) -> Segmenter:
    """A torchvision VOC segmenter of `architecture` in eval mode, with `state_dict` loaded if given."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"Unknown segmentation architecture {architecture!r}; choose one of {sorted(ARCHITECTURES)}.")
    builder, _ = ARCHITECTURES[architecture]
    network = builder(weights=None, weights_backbone=None, num_classes=len(VOC_CLASSES))
    if state_dict is not None:
        # The auxiliary head of DeepLabV3 only serves training.
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("aux_classifier.")}
        load_strictly(network, state_dict, f"{architecture} with {len(VOC_CLASSES)} VOC classes", "Pick the architecture the file was saved from.")
    return Segmenter(network).eval().requires_grad_(False)


class TinySegmentationNet(torch.nn.Module):
    """Two convolutions to 21 class logits, returned like torchvision's segmenters."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, len(VOC_CLASSES), 3, padding=1))

    def forward(self, x):
        return {"out": self.layers(x)}


def small_random_segmenter(seed: int = 0, input_size: int = 64) -> Segmenter:
    """A tiny segmenter with random weights and 21 outputs, for stand-ins and tests."""
    torch.manual_seed(seed)
    return Segmenter(TinySegmentationNet(), input_size=input_size).eval().requires_grad_(False)


def class_map_from_colours(image: torch.Tensor, classes=VOC_CLASSES) -> torch.Tensor:
    """A ComfyUI IMAGE (B, H, W, 3) drawn in VOC palette colours to class indices (B, H, W); void (224, 224, 192) is ignored.

    Raises ValueError naming a pixel whose colour is the colour of none of `classes`.
    """
    image_to_bchw(image)  # checks the shape
    pixels = (image[..., :3].float() * 255).round()
    palette = voc_palette().float()
    allowed = torch.tensor(list(range(len(classes))) + [IGNORE])
    distance = (pixels[..., None, :] - palette[allowed]).abs().amax(dim=-1)  # (B, H, W, classes)
    nearest_distance, nearest = distance.min(dim=-1)
    unknown = nearest_distance > COLOUR_TOLERANCE
    if unknown.any():
        b, y, x = (int(i) for i in unknown.nonzero()[0])
        colour = tuple(int(c) for c in pixels[b, y, x])
        examples = ", ".join(f"{name} {tuple(palette[i].int().tolist())}" for i, name in enumerate(classes[:6]))
        raise ValueError(
            f"The target map has {int(unknown.sum())} pixels in colours that are none of the segmenter's "
            f"{len(classes)} classes, e.g. RGB {colour} at x={x}, y={y} of image {b}. Paint it only in the VOC palette "
            f"colours of its classes ({examples}{', …' if len(classes) > 6 else ''}), without antialiasing or blur.")
    return allowed[nearest]


def class_map_from_mask(mask: torch.Tensor, class_name: str, outside: str = "background", classes=VOC_CLASSES) -> torch.Tensor:
    """A ComfyUI MASK (B, H, W) to class indices: `class_name` where the mask is above 0.5, and outside it
    background (class 0) or, with outside="ignore", no loss."""
    if class_name not in classes:
        raise ValueError(f"The segmenter has no class {class_name!r}; choose one of {', '.join(classes[1:])}.")
    if outside not in ("background", "ignore"):
        raise ValueError(f"outside must be 'background' or 'ignore', got {outside!r}.")
    inside = mask_to_b1hw(mask)[:, 0] > 0.5
    if not inside.any():
        raise ValueError("The mask is empty, so it marks no pixel of the class: draw the region where it should be.")
    fill = 0 if outside == "background" else IGNORE
    return torch.where(inside, classes.index(class_name), fill)


def pixel_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per sample, averaged over the pixels that carry a label: (B, K, h, w), (B, h, w) -> (B,)."""
    per_pixel = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
    counted = (target != IGNORE).sum(dim=(1, 2)).clamp_min(1)
    return per_pixel.sum(dim=(1, 2)) / counted


class SegmentationLoss:
    """ℓ = per-pixel cross-entropy between the segmenter's logits and a target class map (B or 1, H, W)."""

    def __init__(self, segmenter: Segmenter, target: torch.Tensor):
        if target.ndim != 3:
            raise ValueError(f"Expected a class map of shape (B, H, W), got {tuple(target.shape)}.")
        if not (target != IGNORE).any():
            raise ValueError("The target map marks every pixel as ignored, so it cannot guide anything.")
        self.segmenter, self.target = segmenter, target.long()

    def check(self, batch: int, height: int, width: int) -> None:
        check_fits("the target map", self.target.shape[0], *self.target.shape[1:], batch, height, width)

    def bind(self, device: torch.device):
        segmenter = self.segmenter
        network_device = next(segmenter.parameters()).device
        target = self.target.to(network_device).clone()
        fitted: dict[tuple, torch.Tensor] = {}

        def loss(image: torch.Tensor) -> torch.Tensor:
            logits = segmenter(image.to(network_device, torch.float32)).float()
            b, _, h, w = logits.shape
            if (b, h, w) not in fitted:
                resized = F.interpolate(target[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
                fitted[(b, h, w)] = resized.expand(b, h, w) if resized.shape[0] == 1 else resized
            return pixel_cross_entropy(logits, fitted[(b, h, w)]).to(image.device)

        return loss
