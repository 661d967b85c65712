"""What a counted guided run would cost on Stable Diffusion 1.5 at 512 px, as a multiple of an unguided run.

Prices the passes that `samplers.pass_counts` counted, per sample, with the part costs that bench/speed measured
and wrote to bench/part_costs.json (seconds per image, forward and backward; rerun bench/speed to update them):

- each denoiser pass as SD's UNet on a cond and uncond pair, as SD runs with classifier-free guidance and as
  bench/speed measured it, whatever CFG the counted run used;
- each guidance-decoder pass as SD's VAE decoder, or TAESD when the run decoded with the cheap decoder;
- each guidance-loss pass as the guidance network named (CLIP RN50 or LR-ASPP, measured at 512 px).

Both runs end with one VAE decode. The reference is an unguided run of 20 steps: 20 UNet pairs and that decode.
"""
from __future__ import annotations

import functools
import json
import os

PART_COSTS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "part_costs.json")
REFERENCE_STEPS = 20
DECODERS = ("vae", "taesd")
GUIDES = ("clip", "segmentation")


@functools.cache
def part_costs(path: str = PART_COSTS_FILE) -> dict:
    """{part: {"forward": s, "backward": s}} per image, from bench/speed's results file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: run `bash bench/speed --sizes 512 --batches 1 --parts-only` to measure it.")
    with open(path) as f:
        return json.load(f)["seconds_per_image"]


def _unguided_seconds(costs: dict, steps: int) -> float:
    return steps * 2 * costs["unet"]["forward"] + costs["vae"]["forward"]


def sd15_multiple(forward: dict, backward: dict, decoder: str, guide: str, costs: dict | None = None) -> float:
    """The counted run's cost on SD 1.5 over an unguided 20-step run's; `forward` and `backward` are one sample's
    counts (PassCounts.per_sample(...).forward and .backward)."""
    if decoder not in DECODERS or guide not in GUIDES:
        raise ValueError(f"decoder must be one of {DECODERS} and guide one of {GUIDES}, got {decoder!r} and {guide!r}")
    costs = costs or part_costs()
    priced = {"denoiser": ("unet", 2), "decoder": (decoder, 1), "guidance_network": (guide, 1)}
    seconds = costs["vae"]["forward"]  # the final decode
    for counted, (part, images) in priced.items():
        seconds += images * (forward[counted] * costs[part]["forward"] + backward[counted] * costs[part]["backward"])
    return seconds / _unguided_seconds(costs, REFERENCE_STEPS)


def unguided_multiple(steps: int, costs: dict | None = None) -> float:
    """An unguided run of `steps` steps over one of 20."""
    costs = costs or part_costs()
    return _unguided_seconds(costs, steps) / _unguided_seconds(costs, REFERENCE_STEPS)
