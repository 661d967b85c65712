"""Object location guidance (paper §4.2): Faster R-CNN's training loss for boxes the image should contain.

As in the reference (ugd-reference.md §2.3): torchvision's `fasterrcnn_resnet50_fpn_v2` (COCO) runs in train
mode with every BatchNorm in eval mode, and ℓ = loss_classifier + loss_objectness + loss_rpn_box_reg (the
ROI box regression is left out). Train mode samples proposals and anchors at random; here that sampling
draws from a generator seeded per call, so that a run reproduces.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Sequence

import torch
import torchvision
from torchvision.models import detection

from .weights import load_strictly

WEIGHTS = detection.FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1
COCO_CATEGORIES = tuple(WEIGHTS.meta["categories"])  # index = label; "__background__" and "N/A" are no objects
UNITS = ("auto", "pixels", "fractions")
LOSS_TERMS = ("loss_classifier", "loss_objectness", "loss_rpn_box_reg")


@dataclass(frozen=True)
class Boxes:
    """Labelled boxes (x0, y0, x1, y1), in pixels of the sampled image or, if `fractions`, in fractions of it."""

    labels: tuple[int, ...]
    corners: tuple[tuple[float, float, float, float], ...]
    fractions: bool

    def in_pixels(self, height: int, width: int) -> torch.Tensor:
        corners = torch.tensor(self.corners, dtype=torch.float32)
        return corners * torch.tensor([width, height, width, height]) if self.fractions else corners


def coco_label(name: str, categories=COCO_CATEGORIES) -> int:
    """The COCO label index of a category name (case and '_' versus ' ' do not matter); ValueError if unknown."""
    wanted = name.strip().lower().replace("_", " ")
    names = [c for c in categories if c not in ("__background__", "N/A")]
    if wanted in names:
        return categories.index(wanted)
    close = difflib.get_close_matches(wanted, names, n=3)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else f" The COCO classes are: {', '.join(names)}."
    raise ValueError(f"Unknown object class {name.strip()!r}.{hint}")


BOX_SET_SEPARATOR = "---"


def parse_boxes(text: str, units: str = "auto", categories=COCO_CATEGORIES) -> Boxes:
    """Parse one box per line, `label x0 y0 x1 y1`; blank lines and lines starting with '#' are skipped.

    units: "pixels", "fractions" (of the image's width and height), or "auto": fractions when every
    coordinate lies in [0, 1], else pixels.
    """
    return _parse_lines(list(enumerate(text.splitlines(), start=1)), units, categories)


def parse_box_sets(text: str, units: str = "auto", categories=COCO_CATEGORIES) -> tuple[Boxes, ...]:
    """Box lists as `parse_boxes` reads them, one per image of a batch, each after a `---` line but the first."""
    sets, lines = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() == BOX_SET_SEPARATOR:
            sets.append(lines)
            lines = []
        else:
            lines.append((number, line))
    return tuple(_parse_lines(lines, units, categories, f"Box set {i + 1}: " if sets else "")
                 for i, lines in enumerate(sets + [lines]))


def _parse_lines(numbered_lines, units: str, categories, context: str = "") -> Boxes:
    if units not in UNITS:
        raise ValueError(f"units must be one of {UNITS}, got {units!r}.")
    labels, corners = [], []
    for number, line in numbered_lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace(",", " ").split()
        try:
            coordinates = tuple(float(v) for v in parts[-4:])
        except ValueError:
            coordinates = ()
        if len(parts) < 5 or len(coordinates) != 4:
            raise ValueError(f"Box line {number} ({line!r}) is not 'label x0 y0 x1 y1', e.g. 'dog 38 166 218 346'.")
        x0, y0, x1, y1 = coordinates
        if not (x1 > x0 and y1 > y0) or min(coordinates) < 0:
            raise ValueError(f"Box line {number} ({line!r}) needs 0 <= x0 < x1 and 0 <= y0 < y1.")
        labels.append(coco_label(" ".join(parts[:-4]), categories))
        corners.append(coordinates)
    if not labels:
        raise ValueError(f"{context}The box list is empty: write one box per line as 'label x0 y0 x1 y1', e.g. 'dog 38 166 218 346'.")
    fractions = units == "fractions" or (units == "auto" and max(max(c) for c in corners) <= 1.0)
    if fractions and max(max(c) for c in corners) > 1.0:
        raise ValueError(f"{context}With units 'fractions' every coordinate must lie in [0, 1].")
    return Boxes(tuple(labels), tuple(corners), fractions)


class Detector(torch.nn.Module):
    """A torchvision Faster R-CNN whose `location_loss` is the reference's training loss."""

    categories = COCO_CATEGORIES

    def __init__(self, network: detection.FasterRCNN):
        super().__init__()
        self.network = network

    def check_boxes(self, labels) -> None:
        """Any number of boxes per label is fine for Faster R-CNN."""

    def location_loss(self, images: torch.Tensor, boxes: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]) -> torch.Tensor:
        """ℓ per image of (B, 3, H, W) in [0, 1], image i with target boxes[i] (N, 4) in its pixels and labels[i] (N,).
        Faster R-CNN averages its losses over a batch, so each image takes a call of its own."""
        was_training = self.network.training
        self.network.train()
        for module in self.network.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
        try:
            values = []
            for image, image_boxes, image_labels in zip(images, boxes, labels):
                losses = self.network([image], [{"boxes": image_boxes, "labels": image_labels}])
                values.append(sum(losses[name] for name in LOSS_TERMS))
        finally:
            self.network.train(was_training)
        return torch.stack(values)


    def detections(self, images: torch.Tensor, score_threshold: float) -> list[dict[str, torch.Tensor]]:
        """What the detector finds in each image (B, 3, H, W) in [0, 1], as at inference: boxes, labels and scores
        above `score_threshold`, after non-maximum suppression."""
        heads = self.network.roi_heads
        was_training, threshold = self.network.training, heads.score_thresh
        self.network.eval()
        heads.score_thresh = score_threshold
        try:
            return self.network(list(images))
        finally:
            heads.score_thresh = threshold
            self.network.train(was_training)


def build_detector(state_dict: dict | None = None) -> Detector:
    """torchvision `fasterrcnn_resnet50_fpn_v2` for the 91 COCO labels, with `state_dict` loaded if given."""
    network = detection.fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=len(COCO_CATEGORIES), box_score_thresh=0.9)
    if state_dict is not None:
        load_strictly(network, state_dict, "fasterrcnn_resnet50_fpn_v2", f"Use {WEIGHTS.url.rsplit('/', 1)[-1]}.")
    return Detector(network).eval().requires_grad_(False)


class TinyBackbone(torch.nn.Module):
    """Two strided convolutions, with a BatchNorm to exercise the frozen-BatchNorm rule."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, stride=2, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 16, 3, stride=2, padding=1), torch.nn.ReLU())

    def forward(self, x):
        return self.layers(x)


def small_random_detector(seed: int = 0, image_size: int = 64) -> Detector:
    """A Faster R-CNN with a two-layer backbone, random weights and the 91 COCO labels, for stand-ins and tests."""
    torch.manual_seed(seed)
    backbone = TinyBackbone()
    backbone.out_channels = 16
    anchors = detection.anchor_utils.AnchorGenerator(sizes=((8, 16, 32),), aspect_ratios=((0.5, 1.0, 2.0),))
    network = detection.FasterRCNN(
        backbone, rpn_anchor_generator=anchors,
        box_roi_pool=torchvision.ops.MultiScaleRoIAlign(["0"], output_size=4, sampling_ratio=2),
        box_head=detection.faster_rcnn.TwoMLPHead(16 * 4 * 4, 32),
        box_predictor=detection.faster_rcnn.FastRCNNPredictor(32, len(COCO_CATEGORIES)),
        min_size=image_size, max_size=2 * image_size, box_score_thresh=0.9)
    with torch.no_grad():  # torchvision's small head initialisation would leave a random detector blind to the image
        for module in network.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                torch.nn.init.normal_(module.weight, std=module.weight[0].numel() ** -0.5)
    return Detector(network).eval().requires_grad_(False)


class ObjectLocationLoss:
    """ℓ = the detector's training loss for `boxes` (one set for every sample, or one per sample), per sample,
    with proposal sampling seeded by `seed`."""

    def __init__(self, detector: Detector, boxes: Boxes | Sequence[Boxes], seed: int = 0):
        self.detector, self.seed = detector, seed
        self.box_sets = (boxes,) if isinstance(boxes, Boxes) else tuple(boxes)

    def check(self, batch: int, height: int, width: int) -> None:
        if len(self.box_sets) not in (1, batch):
            raise ValueError(f"There are {len(self.box_sets)} box sets for a batch of {batch}: give one set for every "
                             f"image, or one set per image, separated by '{BOX_SET_SEPARATOR}' lines.")
        for boxes in self.box_sets:
            if not boxes.fractions:
                corners = boxes.in_pixels(height, width)
                if (corners[:, [0, 2]] > width).any() or (corners[:, [1, 3]] > height).any():
                    raise ValueError(f"A box reaches outside the {width}x{height} image being sampled: give pixel "
                                     f"coordinates within it, or fractions of the image with units 'fractions'.")

    def bind(self, device: torch.device):
        detector = self.detector
        network_device = next(detector.parameters()).device
        labels = [torch.tensor(boxes.labels, dtype=torch.int64, device=network_device) for boxes in self.box_sets]
        calls = [0]

        def loss(image: torch.Tensor) -> torch.Tensor:
            h, w = image.shape[-2:]
            per_sample = [i if len(self.box_sets) > 1 else 0 for i in range(image.shape[0])]
            boxes = [self.box_sets[i].in_pixels(h, w).to(network_device) for i in per_sample]
            devices = [network_device] if network_device.type == "cuda" else []
            calls[0] += 1
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed * 1_000_003 + calls[0])
                values = detector.location_loss(image.to(network_device, torch.float32), boxes, [labels[i] for i in per_sample])
            return values.to(image.device)

        return loss


class DetectedBoxesLoss(ObjectLocationLoss):
    """ℓ = −(the mean over the target boxes of the best IoU × score among the detections of the box's label, 0
    where there is none): the detector as at inference, so a reward for particles (reward-only).

    The training loss above guides, but ranks images poorly: its objectness and RPN terms reward anchors that merely
    look like an object near the box, its classifier term averages over proposals sampled at random on every call,
    so that two images are scored on different samples. This reads the boxes the detector commits to instead; its
    gradient, through non-maximum suppression and a score threshold, is no use for guidance."""

    SCORE_THRESHOLD = 0.05

    def bind(self, device: torch.device):
        detector = self.detector
        network_device = next(detector.parameters()).device
        labels = [torch.tensor(boxes.labels, dtype=torch.int64) for boxes in self.box_sets]

        def loss(image: torch.Tensor) -> torch.Tensor:
            h, w = image.shape[-2:]
            with torch.no_grad():
                found = detector.detections(image.detach().to(network_device, torch.float32), self.SCORE_THRESHOLD)
            values = []
            for i, detections in enumerate(found):
                k = i if len(self.box_sets) > 1 else 0
                targets = self.box_sets[k].in_pixels(h, w)
                boxes, scores = detections["boxes"].cpu(), detections["scores"].cpu()
                matches = []
                for label, target in zip(labels[k], targets):
                    same = detections["labels"].cpu() == label
                    overlap = torchvision.ops.box_iou(boxes[same], target[None])[:, 0] * scores[same]
                    matches.append(overlap.max() if same.any() else torch.zeros(()))
                values.append(-torch.stack(matches).mean())
            return torch.stack(values).to(image.device)

        return loss
