"""What a guided run shows while it runs: progress in denoiser passes, and each guidance term's loss.

A term's loss at a pass is its batch mean the first time the pass reads it, on the denoiser's x0 before that
pass's guidance (or, for a term with backward steps only, after the others' forward guidance). Its loss at a
step is the one at the step's last pass, the pass whose x0 the step takes.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import torch

from .terms import GuidanceTerm


def term_labels(terms: Sequence[GuidanceTerm]) -> list[str]:
    """Each term's name, numbered where two share one ("CLIP guidance", "CLIP guidance (2)")."""
    labels, seen = [], {}
    for term in terms:
        seen[term.name] = seen.get(term.name, 0) + 1
        labels.append(term.name if seen[term.name] == 1 else f"{term.name} ({seen[term.name]})")
    return labels


class PassLosses:
    """Each watched loss's first value in the current pass, per sample, by label; with particles, the first in
    each chunk of the pass (`next_chunk`)."""

    def __init__(self):
        self.values: dict[str, list[torch.Tensor]] = {}
        self.seen: set[str] = set()

    def watched(self, label: str, loss_fn: Callable[..., torch.Tensor]):
        def call(*inputs: torch.Tensor) -> torch.Tensor:  # the image, or a noisy latent and its noise level
            loss = loss_fn(*inputs)
            if label not in self.seen:
                self.seen.add(label)
                self.values.setdefault(label, []).append(loss.detach().float())
            return loss

        return call

    def next_chunk(self) -> None:
        self.seen = set()

    def take(self) -> dict[str, torch.Tensor]:
        """The pass's per-sample losses, in the order first read; the next pass starts empty."""
        values, self.values, self.seen = self.values, {}, set()
        return {label: torch.cat(parts) for label, parts in values.items()}


@dataclasses.dataclass(frozen=True)
class PassReport:
    """One finished denoiser pass: pass `pass_index` of `passes` at step `step` of `steps`, `done` of `total`
    passes in the run; `losses` holds the active terms' losses by label (empty on a plain pass)."""

    step: int
    steps: int
    pass_index: int
    passes: int
    done: int
    total: int
    losses: dict[str, float]
    x: torch.Tensor
    denoised: torch.Tensor

    @property
    def last_of_step(self) -> bool:
        return self.pass_index == self.passes - 1

    def text(self) -> str:
        """"step 7/20, pass 3/10: CLIP guidance 0.412", for the step bar and the node's progress text."""
        where = f"step {self.step + 1}/{self.steps}" + (f", pass {self.pass_index + 1}/{self.passes}"
                                                        if self.passes > 1 else "")
        if not self.losses:
            return where
        return where + ": " + ", ".join(f"{label} {value:.4g}" for label, value in self.losses.items())


class LossHistory:
    """Each term's loss over the steps (NaN where it was not active) and its window, for the loss plot; with
    particles, the chosen particles' (`chosen`)."""

    def __init__(self):
        self.steps = 0
        self.windows: dict[str, tuple[float, float]] = {}  # label: (first step, end step), in steps
        self.values: dict[str, list[float]] = {}

    def start(self, terms: Sequence[GuidanceTerm], steps: int) -> None:
        self.steps = steps
        self.windows = {label: (term.start_percent * steps, term.end_percent * steps)
                        for label, term in zip(term_labels(terms), terms)}
        self.values = {label: [math.nan] * steps for label in self.windows}

    def record(self, report: PassReport) -> None:
        if report.last_of_step:
            for label, value in report.losses.items():
                self.values[label][report.step] = value

    def chosen(self, path: dict[str, dict[int, float]]) -> None:
        """The chosen particles' losses by term and step, in place of every particle's mean."""
        for label, steps in path.items():
            for step, value in steps.items():
                self.values[label][step] = value
