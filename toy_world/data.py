"""The toy world's data: seeded 64×64 scenes of one to three coloured shapes, with their labels.

`scene(seed)` draws one scene from its own random generator, so a scene depends only on its seed, never on
which other scenes were drawn before it. Shapes are rendered with 4× supersampling (soft edges); the
segmentation map, class labels and bounding boxes come from the same geometry.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SIZE = 64
SUPERSAMPLING = 4
SHAPES = ("circle", "square", "triangle", "cross")  # segmentation classes 1..4; 0 is background
COLOURS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 230),
    "yellow": (235, 210, 40), "magenta": (210, 50, 200), "cyan": (40, 200, 210),
}
COLOUR_NAMES = tuple(COLOURS)
MAX_OBJECTS = 3
MIN_SIDE, MAX_SIDE = 16, 30  # the side of a shape's bounding square, in pixels
MAX_BOX_OVERLAP = 0.15       # of the smaller box, so that every shape stays mostly visible


@dataclass(frozen=True)
class ToyObject:
    shape: str
    colour: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1 and y1 exclusive


@dataclass(frozen=True)
class Scene:
    image: np.ndarray         # (SIZE, SIZE, 3) uint8
    segmentation: np.ndarray  # (SIZE, SIZE) uint8: 0 background, 1 + SHAPES.index(shape)
    objects: tuple[ToyObject, ...]


def _coverage(shape: str, box: tuple[int, int, int, int]) -> np.ndarray:
    """The fraction of each pixel the shape covers, from a 4× supersampled grid."""
    n = SIZE * SUPERSAMPLING
    y, x = (np.mgrid[0:n, 0:n] + 0.5) / SUPERSAMPLING
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    u, v = (x - cx) / r, (y - cy) / r  # the shape's own coordinates, [-1, 1] across its box
    if shape == "circle":
        inside = u * u + v * v <= 1
    elif shape == "square":
        inside = (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)
    elif shape == "triangle":  # pointing up, its base on the box's bottom
        inside = (v <= 1) & (v >= -1) & (np.abs(u) <= (v + 1) / 2)
    elif shape == "cross":
        inside = ((np.abs(u) <= 1) & (np.abs(v) <= 0.33)) | ((np.abs(v) <= 1) & (np.abs(u) <= 0.33))
    else:
        raise ValueError(f"unknown shape {shape!r}; the shapes are {SHAPES}")
    return inside.reshape(SIZE, SUPERSAMPLING, SIZE, SUPERSAMPLING).mean(axis=(1, 3))


def _background(rng: np.random.Generator) -> np.ndarray:
    """A muted base colour with a linear gradient and soft blotches, so that shapes stand out by colour."""
    base = rng.uniform(60, 190) + rng.uniform(-25, 25, size=3)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    angle = rng.uniform(0, 2 * np.pi)
    gradient = (np.cos(angle) * (x - 0.5) + np.sin(angle) * (y - 0.5))[..., None] * rng.uniform(-50, 50, size=3)
    blotches = sum(np.sin(rng.uniform(2, 7) * x + rng.uniform(0, 6)) * np.sin(rng.uniform(2, 7) * y + rng.uniform(0, 6))
                   for _ in range(2))[..., None] * rng.uniform(0, 12)
    return base + gradient + blotches


def _overlap(a, b) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return width * height / smaller


def scene(seed: int) -> Scene:
    rng = np.random.default_rng(seed)
    boxes = []
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    while len(boxes) < count:
        side = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
        x0, y0 = (int(v) for v in rng.integers(1, SIZE - side, size=2))
        box = (x0, y0, x0 + side, y0 + side)
        if all(_overlap(box, other) <= MAX_BOX_OVERLAP for other in boxes):
            boxes.append(box)
    image = _background(rng)
    segmentation = np.zeros((SIZE, SIZE), dtype=np.uint8)
    objects = []
    for box in boxes:
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
        alpha = _coverage(shape, box)[..., None]
        tint = np.array(COLOURS[colour]) + rng.uniform(-15, 15, size=3)
        image = image * (1 - alpha) + tint * alpha
        segmentation[alpha[..., 0] >= 0.5] = 1 + SHAPES.index(shape)
        objects.append(ToyObject(shape, colour, box))
    image = np.clip(image + rng.normal(0, 3, size=image.shape), 0, 255).round().astype(np.uint8)
    return Scene(image, segmentation, tuple(objects))


def batch(seeds) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, 3, SIZE, SIZE) in [0, 1] and segmentation maps (B, SIZE, SIZE) of the given seeds."""
    scenes = [scene(int(seed)) for seed in seeds]
    images = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 255
    maps = torch.from_numpy(np.stack([s.segmentation for s in scenes])).long()
    return images, maps
