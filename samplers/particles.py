"""Particles: N samples per output image in one loop, resampled by the guidance losses, the best one kept.

Feynman–Kac steering (Singhal et al. 2025). At the chosen steps, each particle's reward r = −Σ ℓ, read on its x̂0
over the reward-only guidance terms where there are any, else over every term, gives it a potential, and each
image's particles are redrawn in proportion to G:

    max:         G = exp(λ·max_s r_s)           the best reward of its line so far
    difference:  G = exp(λ·(r_t − r_t'))        t' the line's previous resampling, r_t' = 0 before the first
    sum:         G = exp(λ·Σ_s r_s)             every reward of its line so far

The output is each image's particle with the lowest final loss, so resampling only at the end is best-of-N.
Every particle takes the method's guided passes unchanged: with gradient guidance as TDS does, and with every term
reward-only as a plain particle sampler.

Rows are particle-major: row j·B + i is particle j of image i, so that one particle runs exactly the run without
particles. Particle j draws its noise from its own generator, so the chunking does not change the result. Particles
after the first start from the first one's denoised x0, re-noised with their own noise. A model call takes several
particles of a single image, or one particle of every image when the batch holds several: the host's masks and the
guidance targets then match the call's batch as they do without particles.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Sequence

import torch

from .guide import Guide
from .settings import Settings, resampling_steps
from .terms import BoundLoss, GuidanceTerm

log = logging.getLogger(__name__)

_PARTICLE_SEED_STRIDE = 0xD1B54A32D192ED03  # particle j's generator: the run's seed plus j strides


def noise_generator(seed: int, particle: int = 0) -> torch.Generator:
    """Particle `particle`'s noise generator; particle 0's is the run's own."""
    return torch.Generator().manual_seed((seed + particle * _PARTICLE_SEED_STRIDE) % 2**64)


def resampled_after(settings: Settings, steps: int) -> set[int]:
    """The 0-based steps after which particles are resampled (never the last: the selection follows it)."""
    if settings.particles == 1:
        return set()
    if settings.resample_steps:
        chosen = {step - 1 for step in resampling_steps(settings.resample_steps)}
    elif settings.resample_every:
        chosen = set(range(settings.resample_every - 1, steps, settings.resample_every))
    else:
        chosen = set()
    return {step for step in chosen if step < steps - 1}


def log_potentials(rewards: torch.Tensor, kind: str, temperature: float) -> torch.Tensor:
    """log G per particle from its line's rewards at the resamplings so far, `rewards` (resamplings, particles)."""
    if kind == "max":
        return temperature * rewards.max(0).values
    if kind == "sum":
        return temperature * rewards.sum(0)
    previous = rewards[-2] if rewards.shape[0] > 1 else torch.zeros_like(rewards[-1])
    return temperature * (rewards[-1] - previous)


def resampling_weights(log_g: torch.Tensor, particles: int) -> torch.Tensor:
    """(images, particles) weights, each image's particles' G normalised, from particle-major log G; a particle
    whose loss was not finite weighs 0, and an image with no finite one keeps its particles evenly."""
    log_g = torch.nan_to_num(log_g.reshape(particles, -1).T, nan=-math.inf, posinf=-math.inf)
    return torch.nan_to_num(torch.softmax(log_g, dim=1), nan=1 / particles)


def draw_ancestors(weights: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """(images, particles) ancestor indices within each image, drawn by `weights` (images, particles)."""
    images, n = weights.shape
    if kind == "multinomial":
        return torch.multinomial(weights, n, replacement=True, generator=generator)
    positions = (torch.rand(images, 1, generator=generator, dtype=weights.dtype) + torch.arange(n)) / n
    return torch.searchsorted(weights.cumsum(1), positions).clamp_max(n - 1)


def particle_rows(ancestors: torch.Tensor) -> torch.Tensor:
    """Particle-major rows to take, from (images, particles) ancestors within each image."""
    images, n = ancestors.shape
    return (ancestors.T * images + torch.arange(images)).reshape(-1)


class Particles:
    """A run's particles: their layout, chunks and noise, their lines' rewards, resampling and the selection.

    Args:
        settings: the particle levers.
        images: B, the output images.
        seed: the run's noise seed; particle j draws from `noise_generator(seed, j)`.
        rewarded: the (term, loss) pairs that score particles, unwatched.
        check_interrupt: raises to stop; called before every chunk.
    """

    def __init__(self, settings: Settings, images: int, seed: int, rewarded: Sequence[tuple[GuidanceTerm, BoundLoss]],
                 check_interrupt: Callable[[], None] = lambda: None):
        self.count, self.images, self.settings = settings.particles, images, settings
        self.check_interrupt = check_interrupt
        self.rewarded = list(rewarded)
        self.generators = [noise_generator(seed, j) for j in range(self.count)]
        self.choice = noise_generator(seed, self.count)  # resampling draws, apart from every particle's noise
        self.chunk = settings.particle_batch or (self.count if images == 1 else 1)
        self.rewards: list[torch.Tensor] = []  # (rows,) per resampling so far, reordered along the lines
        self.lines: list[tuple[int, dict[str, torch.Tensor]]] = []  # each step's per-row losses, along the lines
        if images > 1 and self.chunk > 1:
            log.info("Universal guidance: with a batch of %d images, each model call runs one particle of every "
                     "image; particle_batch %d is not used.", images, self.chunk)
            self.chunk = 1

    def randn(self, first: int, stop: int, like: torch.Tensor) -> Callable[[], torch.Tensor]:
        """Draws for particles first…stop−1 from their own generators, `like`'s shape per particle."""
        shape = (self.images, *like.shape[1:])
        generators = self.generators[first:stop]
        return lambda: torch.cat([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]).to(like)

    def spread(self, x: torch.Tensor, x0: Callable[[], torch.Tensor], a: float, b: float) -> torch.Tensor:
        """(N·B) starting rows: particle 0 is x; the others are `x0()` re-noised to x's level with their own noise."""
        if self.count == 1:
            return x
        mean = a * x0() if a > 0 else torch.zeros_like(x)
        return torch.cat([x] + [mean + b * self.randn(j, j + 1, x)() for j in range(1, self.count)])

    def map(self, run: Callable[..., tuple], *tensors: torch.Tensor) -> tuple:
        """run(each tensor's rows of a chunk of particles, their noise), joined over the chunks: the interrupt is
        checked before each chunk, and with particle_batch 0 a chunk that runs out of memory is retried in halves."""
        parts, first = [], 0
        while first < self.count:
            stop = min(first + self.chunk, self.count)
            states = [g.get_state() for g in self.generators[first:stop]]
            self.check_interrupt()
            try:
                rows = slice(first * self.images, stop * self.images)
                parts.append(run(*(t[rows] for t in tensors), self.randn(first, stop, tensors[0])))
            except torch.OutOfMemoryError:
                if self.settings.particle_batch or self.chunk == 1:
                    raise
                for g, state in zip(self.generators[first:stop], states):
                    g.set_state(state)
                self.chunk = max(1, self.chunk // 2)
                log.warning("Universal guidance: out of memory with %d particles per call; retrying with %d.",
                            stop - first, self.chunk)
                continue
            first = stop
        return tuple(torch.cat(outputs) for outputs in zip(*parts))

    def reward(self, guide: Guide, x: torch.Tensor, x0: torch.Tensor, a: float, b: float) -> torch.Tensor:
        """−Σ ℓ of every term per row, read on x0 (decoded), or on x at (a, b) for a loss of the noisy latent."""

        def run(x_rows: torch.Tensor, x0_rows: torch.Tensor, _randn) -> tuple[torch.Tensor]:
            total, image = torch.zeros(x_rows.shape[0], device=x_rows.device), None
            for term, fn in self.rewarded:
                if term.reads_noisy_input:
                    total = total + guide.loss(fn, term, x_rows / math.hypot(a, b), b / a if a > 0 else math.inf)
                else:
                    image = guide.decode(x0_rows) if image is None else image
                    total = total + guide.loss(fn, term, image)
            return (-total,)

        with torch.no_grad():
            return self.map(run, x, x0)[0].cpu()

    def resample(self, guide: Guide, x: torch.Tensor, x0: torch.Tensor, a: float, b: float) -> torch.Tensor:
        """x's rows redrawn within each image by the potentials of their lines' rewards on x0 (x at (a, b))."""
        self.rewards.append(self.reward(guide, x, x0, a, b))
        log_g = log_potentials(torch.stack(self.rewards), self.settings.potential, self.settings.temperature)
        rows = particle_rows(draw_ancestors(resampling_weights(log_g, self.count), self.settings.resampling,
                                            self.choice))
        self.rewards = [r[rows] for r in self.rewards]
        self.lines = [(step, {label: v[rows] for label, v in losses.items()}) for step, losses in self.lines]
        return x[rows.to(x.device)]

    def record(self, step: int, losses: dict[str, torch.Tensor]) -> None:
        """A step's per-row losses by term, kept along the lines for the selected particles' path."""
        if self.count > 1 and all(v.shape[0] == self.count * self.images for v in losses.values()):
            self.lines.append((step, {label: v.cpu() for label, v in losses.items()}))

    def select(self, guide: Guide, x: torch.Tensor, x0: torch.Tensor, a: float, b: float
               ) -> tuple[torch.Tensor, dict[str, dict[int, float]]]:
        """(each image's particle with the highest reward on the last x0, or with return_particles every particle,
        the best of each image first, then the second best, and so on; the chosen particles' losses by term and
        step, their mean over the images)."""
        if self.count == 1:
            return x, {}
        reward = torch.nan_to_num(self.reward(guide, x, x0, a, b), nan=-math.inf).reshape(self.count, self.images)
        rows = reward.argsort(dim=0, descending=True) * self.images + torch.arange(self.images)  # (rank, image)
        path: dict[str, dict[int, float]] = {}
        for step, losses in self.lines:
            for label, v in losses.items():
                path.setdefault(label, {})[step] = float(v[rows[0]].mean())
        taken = rows.reshape(-1) if self.settings.return_particles else rows[0]
        return x[taken.to(x.device)], path
