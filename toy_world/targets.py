"""Held-out guidance targets for every toy task, drawn from scenes that no network saw, in halves.

Each set draws its scenes from its own block of splits.TARGET_SEEDS, and a target's half is its scene's
(splits.half_of_seed); a class target's half is splits.half_of_class. `targets(task, half)` gives one half.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import data, networks, splits

COUNTS = {"segmentation": 64, "location": 64, "classification": len(networks.CLASSIFIER_CLASSES),
          "inpainting": 32, "combination": 32}
_FIRST_SEED = {task: splits.TARGET_SEEDS.start + 100_000 * number for number, task in enumerate(COUNTS)}
MIN_HOLE, MAX_HOLE = 16, 40  # an inpainting hole's sides, in pixels


@dataclass(frozen=True, eq=False)  # arrays have no plain equality
class MapTarget:
    seed: int
    segmentation: np.ndarray  # (SIZE, SIZE) uint8, as data.Scene's


@dataclass(frozen=True)
class BoxTarget:
    seed: int
    boxes: tuple[tuple[str, tuple[float, float, float, float]], ...]  # (shape, x0 y0 x1 y1 as fractions)


@dataclass(frozen=True)
class ClassTarget:
    name: str  # a coloured shape, e.g. "red circle"


@dataclass(frozen=True, eq=False)  # arrays have no plain equality
class InpaintingTarget:
    seed: int
    image: np.ndarray                 # (SIZE, SIZE, 3) uint8, the whole scene
    hole: tuple[int, int, int, int]   # x0, y0, x1, y1 in pixels, x1 and y1 exclusive

    def known(self) -> np.ndarray:
        """(SIZE, SIZE) float32, 1 outside the hole."""
        known = np.ones((data.SIZE, data.SIZE), np.float32)
        x0, y0, x1, y1 = self.hole
        known[y0:y1, x0:x1] = 0
        return known


@dataclass(frozen=True, eq=False)  # arrays have no plain equality
class CombinationTarget:
    map: MapTarget
    class_name: str  # a colour for one of the map's shapes, from the same half


def _map(seed: int):
    return MapTarget(seed, data.scene(seed).segmentation)


def _boxes(seed: int):
    objects = data.scene(seed).objects
    if len({o.shape for o in objects}) < len(objects):
        return None  # the box evaluator scores one box per shape
    return BoxTarget(seed, tuple((o.shape, tuple(v / data.SIZE for v in o.box)) for o in objects))


def _inpainting(seed: int):
    rng = np.random.default_rng([seed, 1])
    width, height = (int(v) for v in rng.integers(MIN_HOLE, MAX_HOLE + 1, size=2))
    x0, y0 = int(rng.integers(0, data.SIZE - width + 1)), int(rng.integers(0, data.SIZE - height + 1))
    return InpaintingTarget(seed, data.scene(seed).image, (x0, y0, x0 + width, y0 + height))


def _combination(seed: int):
    rng = np.random.default_rng([seed, 2])
    shape = data.scene(seed).objects[0].shape
    colours = [c for c in data.COLOUR_NAMES if splits.half_of_class(f"{c} {shape}") == splits.half_of_seed(seed)]
    return CombinationTarget(_map(seed), f"{colours[int(rng.integers(len(colours)))]} {shape}")


_DRAW = {"segmentation": _map, "location": _boxes, "inpainting": _inpainting, "combination": _combination}


def targets(task: str, half: str) -> tuple:
    """The targets of a task in one half: COUNTS[task] // 2 of them, the same on every call."""
    splits.checked(half)
    if task == "classification":
        return tuple(ClassTarget(name) for name in networks.CLASSIFIER_CLASSES if splits.half_of_class(name) == half)
    if task not in _DRAW:
        raise ValueError(f"unknown task {task!r}: use one of {tuple(COUNTS)}")
    drawn, seed = [], _FIRST_SEED[task] + splits.HALVES.index(half)
    while len(drawn) < COUNTS[task] // 2:
        target = _DRAW[task](seed)
        if target is not None:
            drawn.append(target)
        seed += 2  # the same parity: the same half
    return tuple(drawn)
