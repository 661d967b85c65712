"""The toy world's guidance networks and their held-out evaluators, in plain torch.

Each kind of network has a guide, which steers sampling, and an evaluator, which grades the result. The
evaluator has another architecture and is trained on other scenes from another seed, so guidance is never
graded by the network it steered (TFG's protocol). Every network takes (B, 3, 64, 64) images in [0, 1]:

- segmenter: {"out": logits (B, 5, 64, 64)} over background and the four shapes, like torchvision's segmenters;
- classifier: which of the 24 coloured shapes ("red circle", …) the image holds, one logit each (multi-label);
- box predictor: for each shape, whether it is there and the box of its largest instance. Its training
  loss is its `location_loss`, the interface of the pack's object location guidance.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, box_iou, generalized_box_iou_loss

from . import data
from .diffusion import read_weights

SEGMENTATION_CLASSES = ("background",) + data.SHAPES
CLASSIFIER_CLASSES = tuple(f"{colour} {shape}" for colour in data.COLOUR_NAMES for shape in data.SHAPES)
BOX_CATEGORIES = ("__background__",) + data.SHAPES  # label = index, as for torchvision detectors
KINDS = ("segmenter", "classifier", "box_predictor")
ROLES = ("guide", "evaluator")


def standardised(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5) / 0.5


def conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation),
                               torch.nn.GroupNorm(8, cout), torch.nn.SiLU())


class EncoderDecoderSegmentation(torch.nn.Module):
    """The guide: down to 16×16 and back up, with skip connections."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.down = torch.nn.ModuleList([conv(3, width), conv(width, 2 * width, 2), conv(2 * width, 4 * width, 2)])
        self.middle = conv(4 * width, 4 * width)
        self.up = torch.nn.ModuleList([conv(6 * width, 2 * width), conv(3 * width, width)])
        self.head = torch.nn.Conv2d(width, len(SEGMENTATION_CLASSES), 1)

    def forward(self, x):
        x, skips = standardised(x), []
        for layer in self.down:
            x = layer(x)
            skips.append(x)
        x = self.middle(x)
        for layer, skip in zip(self.up, skips[-2::-1]):
            x = layer(torch.cat([F.interpolate(x, scale_factor=2.0), skip], 1))
        return {"out": self.head(x)}


class DilatedSegmentation(torch.nn.Module):
    """The evaluator: full resolution throughout, with growing dilation."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.layers = torch.nn.Sequential(conv(3, width), *[conv(width, width, dilation=d) for d in (2, 4, 8, 4, 1)],
                                          torch.nn.Conv2d(width, len(SEGMENTATION_CLASSES), 1))

    def forward(self, x):
        return {"out": self.layers(standardised(x))}


class StridedEncoder(torch.nn.Module):
    """64×64 images to (B, C, 8, 8) features; the guides' classifier and box predictor share this shape."""

    def __init__(self, widths=(32, 64, 96)):
        super().__init__()
        layers, cin = [], 3
        for width in widths:
            layers += [conv(cin, width, 2), conv(width, width)]
            cin = width
        self.layers, self.out_channels = torch.nn.Sequential(*layers), cin

    def forward(self, x):
        return self.layers(standardised(x))


class PooledEncoder(torch.nn.Module):
    """The evaluators' encoder: a convolution then max pooling per level, with x and y coordinate channels."""

    def __init__(self, widths=(16, 32, 64)):
        super().__init__()
        layers, cin = [], 5
        for width in widths:
            layers += [conv(cin, width), torch.nn.MaxPool2d(2)]
            cin = width
        self.layers, self.out_channels = torch.nn.Sequential(*layers), cin

    def forward(self, x):
        b, _, h, w = x.shape
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=x.device), torch.linspace(-1, 1, w, device=x.device), indexing="ij")
        return self.layers(torch.cat([standardised(x), xs.expand(b, 1, h, w), ys.expand(b, 1, h, w)], 1))


class ClassifierNetwork(torch.nn.Module):
    """Features pooled over the image both by mean and by max (a small shape is present anywhere), then one logit per class."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(2 * encoder.out_channels, len(CLASSIFIER_CLASSES))

    def forward(self, x):
        features = self.encoder(x)
        return self.head(torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], 1))


class BoxNetwork(torch.nn.Module):
    """Per shape: a presence logit and a box (cx, cy, w, h) as fractions of the image, through a sigmoid."""

    def __init__(self, encoder: torch.nn.Module, hidden: int = 128):
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(encoder.out_channels * 64, hidden), torch.nn.SiLU(),
                                        torch.nn.Linear(hidden, len(data.SHAPES) * 5))

    def forward(self, x):
        return self.head(self.encoder(x)).view(-1, len(data.SHAPES), 5)


class BoxPredictor(torch.nn.Module):
    """A box network with its preprocessing. `location_loss` is its training loss, as Faster R-CNN's is for the paper."""

    categories = BOX_CATEGORIES

    def __init__(self, network: BoxNetwork):
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) in [0, 1] to presence logits (B, shapes) and boxes (B, shapes, 4) as x0 y0 x1 y1 fractions."""
        image = F.interpolate(image, size=(data.SIZE, data.SIZE), mode="bilinear", antialias=True) if image.shape[-2:] != (data.SIZE, data.SIZE) else image
        output = self.network(image)
        return output[..., 0], box_convert(output[..., 1:].sigmoid(), "cxcywh", "xyxy")

    def check_boxes(self, labels) -> None:
        repeated = {BOX_CATEGORIES[label] for label in labels if list(labels).count(label) > 1}
        if repeated:
            raise ValueError(f"The toy box predictor finds one box per shape, but {', '.join(sorted(repeated))} has several: give each shape at most one box.")

    def detections(self, images: torch.Tensor, score_threshold: float) -> list[dict[str, torch.Tensor]]:
        """Per image, as a torchvision detector gives them: each shape it finds with a presence probability of at
        least `score_threshold`, its box in pixels, label and probability."""
        h, w = images.shape[-2:]
        presence, boxes = self(images)
        scores = presence.sigmoid()
        found = []
        for image_scores, image_boxes in zip(scores, boxes):
            keep = image_scores >= score_threshold
            found.append({"boxes": image_boxes[keep] * image_boxes.new_tensor([w, h, w, h]),
                          "labels": torch.arange(1, len(data.SHAPES) + 1, device=images.device)[keep],
                          "scores": image_scores[keep]})
        return found

    def location_loss(self, images: torch.Tensor, boxes, labels) -> torch.Tensor:
        """ℓ per image of (B, 3, H, W), image i with target boxes[i] (N, 4) in its pixels and labels[i] (N,): every
        unnamed shape should be absent. One forward for the batch."""
        h, w = images.shape[-2:]
        present = torch.zeros(len(images), len(data.SHAPES), device=images.device)
        targets = torch.zeros(len(images), len(data.SHAPES), 4, device=images.device)
        for i, (image_boxes, image_labels) in enumerate(zip(boxes, labels)):
            present[i, image_labels - 1] = 1
            targets[i, image_labels - 1] = image_boxes / image_boxes.new_tensor([w, h, w, h])
        return box_loss(*self(images), present, targets)


def box_loss(presence: torch.Tensor, boxes: torch.Tensor, present: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per sample: presence cross-entropy for every shape, plus L1 and generalised-IoU losses for the present ones."""
    presence_loss = F.binary_cross_entropy_with_logits(presence, present, reduction="none").sum(1)
    l1 = (boxes - targets).abs().sum(-1)
    giou = generalized_box_iou_loss(boxes.reshape(-1, 4), targets.reshape(-1, 4), reduction="none").view_as(l1)
    return presence_loss + ((5 * l1 + 2 * giou) * present).sum(1)


def labels(scene: data.Scene) -> dict:
    """Training targets of one scene: the coloured shapes it holds (multi-hot), and per shape its presence and
    the box of its largest instance (fractions)."""
    classes = torch.zeros(len(CLASSIFIER_CLASSES))
    for o in scene.objects:
        classes[CLASSIFIER_CLASSES.index(f"{o.colour} {o.shape}")] = 1
    present, boxes = torch.zeros(len(data.SHAPES)), torch.zeros(len(data.SHAPES), 4)
    for shape_index, shape in enumerate(data.SHAPES):
        instances = [o for o in scene.objects if o.shape == shape]
        if instances:
            biggest = max(instances, key=lambda o: o.box[2] - o.box[0])
            present[shape_index] = 1
            boxes[shape_index] = torch.tensor(biggest.box, dtype=torch.float32) / data.SIZE
    return {"classes": classes, "present": present, "boxes": boxes}


def build(kind: str, role: str) -> torch.nn.Module:
    """The network of `kind` ("segmenter", "classifier", "box_predictor") and `role` ("guide", "evaluator")."""
    if role not in ROLES:
        raise ValueError(f"Unknown role {role!r}; the roles are {ROLES}.")
    guide = role == "guide"
    if kind == "segmenter":
        return EncoderDecoderSegmentation() if guide else DilatedSegmentation()
    if kind == "classifier":
        return ClassifierNetwork(StridedEncoder() if guide else PooledEncoder())
    if kind == "box_predictor":
        return BoxPredictor(BoxNetwork(StridedEncoder() if guide else PooledEncoder()))
    raise ValueError(f"Unknown toy network {kind!r}; the kinds are {KINDS}.")


def file_name(kind: str, role: str) -> str:
    return f"toy_{kind}.safetensors" if role == "guide" else f"toy_{kind}_evaluator.safetensors"


def load(kind: str, role: str = "guide") -> torch.nn.Module:
    """A trained network from toy_world/weights, in eval mode and frozen."""
    module = build(kind, role)
    module.load_state_dict(read_weights(file_name(kind, role)))
    return module.eval().requires_grad_(False)


def iou(boxes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of matching boxes (N, 4) and (N, 4)."""
    return box_iou(boxes, targets).diagonal()
