"""How big one forward-guidance step is on SD 1.5, SDXL, SD3 and Flux: one raw w against one auto w.

    bash bench/strength-scale [--at 3 1 0.3] [--output bench-output/strength-scale]

On the tiny random-weight stand-ins of each family (nodes/stand_ins.py, nodes/stand_in_families.py), with each
family's own noise parameterisation, latent format and conditioning, it takes one guided step at a few noise
levels, the same for every family (b/a, the noise's size over the signal's: σ for SD, σ/(1 − σ) for a flow
model), and measures the step the guidance makes, RMS(x0' − x0) in the model's latent space, from the same x.
It does so for two losses (CLIP text guidance with the stand-in CLIP model, and the L2 image reconstruction) at
w = 1 with the paper schedule and at w = 1 with the auto schedule, and prints, per noise level, how far apart the
steps are (largest over smallest) across the families for each loss, and across families and losses together. The weights are random, so this checks scale only: what
a w means on each family, not what it does to an image.

Needs a ComfyUI with SD3 and Flux (COMFYUI_PATH; the 2024-03 host has SD 1.5 and SDXL only).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(PACK_DIR, "tools"))
from comfy_headless import ComfyHost  # noqa: E402

FAMILIES = ("sd15", "sdxl", "sd3", "flux")
SCHEDULERS = {"sd15": "normal", "sdxl": "normal", "sd3": "simple", "flux": "simple"}
SCHEDULES = ("paper", "auto")
LOSSES = ("clip text", "reconstruction")
IMAGE_SIZE = 64
SEED = 0


class Families:
    """Each family's MODEL, VAE and conditioning, and the guidance nodes, called as ComfyUI's executor calls them."""

    def __init__(self, host: ComfyHost):
        self.nodes = host.nodes.NODE_CLASS_MAPPINGS
        self.guided_sampling = host.pack_module("nodes.guided_sampling")
        self.noise_coefficients = host.pack_module("samplers.parameterization").noise_coefficients
        self.clip_model = self.call("UGDStandInCLIPGuidanceModel", "load", seed=SEED)[0]
        self.target = torch.rand(1, IMAGE_SIZE, IMAGE_SIZE, 3, generator=torch.Generator().manual_seed(SEED))

    def call(self, node: str, function: str, **inputs):
        with torch.inference_mode():
            return getattr(self.nodes[node](), function)(**inputs)

    def load(self, family: str) -> tuple:
        """(model, vae, positive, negative, empty latent)."""
        if family == "sd15":
            model, clip, vae = self.call("UGDStandInCheckpoint", "load", seed=SEED)
            positive = self.call("CLIPTextEncode", "encode", clip=clip, text="a red square")[0]
            negative = self.call("CLIPTextEncode", "encode", clip=clip, text="")[0]
        else:
            model, vae, positive, negative = self.call("UGDStandInModelFamily", "load", family=family, seed=SEED)
        channels = getattr(vae, "latent_channels", 4)
        latent = torch.zeros(1, channels, IMAGE_SIZE // 8, IMAGE_SIZE // 8)
        return model, vae, positive, negative, latent

    def guidance(self, loss: str, schedule: str, weight: float) -> tuple:
        settings = dict(weight=weight, schedule=schedule, backward_steps=0, backward_lr=0.01, optimizer="adam",
                        start_percent=0.0, end_percent=1.0)
        if loss == "clip text":
            return self.call("UGDCLIPTextGuidance", "guide", clip_model=self.clip_model, text="a red square", **settings)[0]
        return self.call("UGDImageReconstructionGuidance", "guide", image=self.target, **settings)[0]

    def guided_x0(self, family_parts, sigmas, guidance) -> torch.Tensor:
        """The first step's x0 after guidance, from the noise of SEED at sigmas[0] (cfg 2, k = 1)."""
        import comfy.sample  # the host is set up by now

        model, vae, positive, negative, latent = family_parts
        sampler = self.guided_sampling.universal_guidance_sampler(guidance, vae)
        noise = comfy.sample.prepare_noise(latent, SEED)
        seen = []
        with torch.inference_mode():
            comfy.sample.sample_custom(model, noise, 2.0, sampler, sigmas, positive, negative, latent,
                                       callback=lambda step, x0, x, total: seen.append(x0.clone()),
                                       disable_pbar=True, seed=SEED)
        return seen[0].float()


def rms(t: torch.Tensor) -> float:
    return float(t.pow(2).mean().sqrt())


def sigma_at(noise_coefficients, model_sampling, noise_to_signal: float) -> float:
    """The σ where the family's b/a is `noise_to_signal`, by bisection (b/a grows with σ in every family)."""
    low, high = float(model_sampling.sigma_min), float(model_sampling.sigma_max)
    for _ in range(60):
        mid = (low + high) / 2
        a, b = noise_coefficients(model_sampling.noise_scaling, mid)
        low, high = (mid, high) if a <= 0 or b / a < noise_to_signal else (low, mid)
    return (low + high) / 2


def measure(families: Families, levels: list[float]) -> list[dict]:
    rows = []
    for family in FAMILIES:
        parts = families.load(family)
        model_sampling = parts[0].get_model_object("model_sampling")
        for level in levels:
            window = torch.tensor([sigma_at(families.noise_coefficients, model_sampling, level), 0.0])
            plain = families.guided_x0(parts, window, families.guidance("clip text", "paper", 0.0))  # unguided
            for loss in LOSSES:
                for schedule in SCHEDULES:
                    guided = families.guided_x0(parts, window, families.guidance(loss, schedule, 1.0))
                    rows.append(dict(family=family, at=level, sigma=float(window[0]), loss=loss, schedule=schedule,
                                     step_rms=rms(guided - plain), x0_rms=rms(plain)))
            print(f"{family} at b/a = {level:g} (σ = {float(window[0]):.3g}) done", flush=True)
    return rows


def spread(rows: list[dict], losses, schedule: str, point: float) -> float:
    """Largest over smallest step across the families and the given losses."""
    steps = [r["step_rms"] for r in rows if r["loss"] in losses and (r["schedule"], r["at"]) == (schedule, point)]
    return max(steps) / min(steps) if min(steps) > 0 else math.inf


def markdown(rows: list[dict], points: list[float]) -> str:
    lines = ["| loss | schedule, w = 1 | b/a | " + " | ".join(FAMILIES) + " | largest / smallest |",
             "|---|---|---|" + "---|" * len(FAMILIES) + "---|"]
    for loss in LOSSES:
        for schedule in SCHEDULES:
            for point in points:
                cells = {r["family"]: r["step_rms"] for r in rows
                         if (r["loss"], r["schedule"], r["at"]) == (loss, schedule, point)}
                lines.append(f"| {loss} | {schedule} | {point:g} | "
                             + " | ".join(f"{cells[f]:.3g}" for f in FAMILIES)
                             + f" | {spread(rows, [loss], schedule, point):.3g}× |")
    for schedule in SCHEDULES:
        for point in points:
            lines.append(f"| both | {schedule} | {point:g} |" + " |" * len(FAMILIES)
                         + f" {spread(rows, LOSSES, schedule, point):.3g}× |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--at", type=float, nargs="+", default=[3.0, 1.0, 0.3],
                        help="noise levels b/a to measure at (default 3, 1, 0.3: early, middle and late steps)")
    parser.add_argument("--output", default=os.path.join(PACK_DIR, "bench-output", "strength-scale"))
    args = parser.parse_args(argv)
    families = Families(ComfyHost(os.environ["COMFYUI_PATH"]))
    rows = measure(families, args.at)
    table = markdown(rows, args.at)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(args.output, "results.md"), "w") as f:
        f.write("RMS of the guidance's step on x0, in each family's latent space, at w = 1\n\n" + table + "\n")
    print("\n" + table + f"\n\nwrote {args.output}/results.md and .json")
    return rows


if __name__ == "__main__":
    main()
