"""The guided sampler's loss plot: each guidance term's loss over the steps, its window shaded, as an IMAGE."""
from __future__ import annotations

import logging
import math

import numpy as np
import torch

from ..samplers.progress import LossHistory

log = logging.getLogger(__name__)

SIZE_INCHES, DPI = (6.4, 3.6), 100


def loss_plot(history: LossHistory) -> torch.Tensor:
    """ComfyUI IMAGE (1, H, W, 3) in [0, 1]. Without matplotlib, a grey image and a warning naming the fix."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # a canvas of its own: pyplot's backend untouched
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        log.warning("Universal guidance: the loss plot needs matplotlib (pip install matplotlib, in ComfyUI's "
                    "Python); the plot output is a grey image.")
        return torch.full((1, int(SIZE_INCHES[1] * DPI), int(SIZE_INCHES[0] * DPI), 3), 0.5)
    figure = Figure(figsize=SIZE_INCHES, dpi=DPI, facecolor="white")
    axes = figure.add_subplot()
    colours = matplotlib.colormaps["tab10"].colors
    steps = np.arange(1, history.steps + 1)
    for (label, values), colour in zip(history.values.items(), colours * 10):
        start, end = history.windows[label]
        axes.axvspan(start + 0.5, end + 0.5, color=colour, alpha=0.08, linewidth=0)
        axes.plot(steps, values, marker=".", color=colour, label=f"{label} (window shaded)")
    finite = [v for values in history.values.values() for v in values if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 100:
        axes.set_yscale("log")
    axes.set_xlim(0.5, history.steps + 0.5)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("step")
    axes.set_ylabel("loss (batch mean, at the step's last pass)")
    axes.set_title("Universal guidance: each term's loss")
    if history.values:
        axes.legend(fontsize="small")
    figure.tight_layout()
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3]
    return torch.from_numpy(pixels.astype(np.float32) / 255.0).unsqueeze(0)
