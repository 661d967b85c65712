"""Which scenes and seeds each use of the toy world may see, in one place, so that nobody mixes them up.

The networks train on TRAIN_SEEDS (the VAE, the UNet and the guides) and EVALUATOR_SEEDS (the held-out
evaluators), and report held-out scores on TEST_SEEDS. KID measures realism against REALISM_SEEDS. Guidance
targets come from TARGET_SEEDS, scenes that no network saw. Every target and every sampling seed belongs to one
half: anything chosen by looking at scores (a weight, a learning rate, a preset, a default) is chosen on the
tuning half, and tables print the report half.
"""
from __future__ import annotations

from . import data

TRAIN_SEEDS = range(0, 12_000)
EVALUATOR_SEEDS = range(1_000_000, 1_004_000)
TEST_SEEDS = range(3_000_000, 3_000_256)
REALISM_SEEDS = range(3_100_000, 3_100_512)        # the real scenes that KID compares samples with
REALISM_CHECK_SEEDS = range(3_200_000, 3_200_256)  # other real scenes, to check that KID puts real near real
TARGET_SEEDS = range(4_000_000, 5_000_000)
SAMPLING_SEEDS = range(1_000, 2_000)  # the sampler's seeds for guided and unguided runs
HALVES = ("tuning", "report")


def checked(half: str) -> str:
    if half not in HALVES:
        raise ValueError(f"unknown half {half!r}: use one of {HALVES}")
    return half


def half_of_seed(seed: int) -> str:
    """A target scene's or a sampling seed's half: even seeds tune, odd seeds report."""
    return HALVES[seed % 2]


def half_of_class(name: str) -> str:
    """A coloured shape's half, e.g. "red circle": each half has 3 colours of every shape and 2 shapes of every colour."""
    colour, shape = name.split(" ")
    return HALVES[(data.COLOUR_NAMES.index(colour) + data.SHAPES.index(shape)) % 2]


def sampling_seeds(half: str, count: int) -> tuple[int, ...]:
    """The first `count` sampling seeds of a half."""
    seeds = tuple(seed for seed in SAMPLING_SEEDS if half_of_seed(seed) == checked(half))[:count]
    if len(seeds) < count:
        raise ValueError(f"the {half} half has {len(seeds)} sampling seeds, not {count}")
    return seeds
