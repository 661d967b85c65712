"""The Universal Guidance Guider with ComfyUI's samplers against the pack's own sampler, at the same passes.

    bash bench/toy-world-guider [--targets 16] [--seeds 2] [--models eps flow]

On the toy world's segmentation task, report half, every row takes the same guidance (UGD at the task's paper w,
forward guidance through the UNet on every step, no recurrence) and one denoiser pass per step, 20 steps:

- the pack's sampler: the Universal Guided KSampler, ddim base step, preset custom with k = 1;
- the guider: the Universal Guidance Guider through SamplerCustomAdvanced with ComfyUI's ddim, Euler, Euler
  ancestral, DPM++ 2M and UniPC (all one model call per step);
- unguided, for scale.

It prints each row's held-out segmentation score with its 95% interval (bootstrap over targets and seeds) and the
paired difference to the pack's sampler. Nothing is chosen here, so the report half is the only half it runs.
Needs ComfyUI with guiders (2024-04 or newer): it uses ComfyUI 0.3.64 (tools/setup-current-host). Results go to
bench/frontier/guider/.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(PACK_DIR, "tools"))
sys.path.insert(0, PACK_DIR)
from comfy_headless import ComfyHost  # noqa: E402

from bench import toy_world_frontier as frontier  # noqa: E402
from samplers.settings import Settings  # noqa: E402
from toy_world import splits  # noqa: E402

TASK = "segmentation"
STEPS = 20
SAMPLERS = ("ddim", "euler", "euler_ancestral", "dpmpp_2m", "uni_pc")
SAMPLER_ROW = "pack's sampler (ddim, k = 1)"


def guided_by_guider(toy: frontier.Toy, model: str, guidance, sampler: str, seed: int, batch: int) -> torch.Tensor:
    unet, vae, unconditional, _ = toy.models[model]
    latent = toy.call("UGDEmptyToyWorldLatent", "generate", batch_size=batch)[0]
    guider = toy.call("UGDGuider", "get_guider", model=unet, positive=unconditional, negative=unconditional, cfg=1.0,
                      vae=vae, guidance=guidance, options=Settings())[0]
    chosen = toy.call("KSamplerSelect", "get_sampler", sampler_name=sampler)[0]
    sigmas = toy.call("BasicScheduler", "get_sigmas", model=unet, scheduler=frontier.SCHEDULERS[model], steps=STEPS,
                      denoise=1.0)[0]
    noise = toy.call("RandomNoise", "get_noise", noise_seed=seed)[0]
    samples = toy.call("SamplerCustomAdvanced", "sample", noise=noise, guider=guider, sampler=chosen, sigmas=sigmas,
                       latent_image=latent)[0]
    with torch.inference_mode():
        return vae.decode(samples["samples"]).movedim(-1, 1).clone()


def run(toy: frontier.Toy, model: str, target_count: int, seed_count: int) -> dict:
    task_targets, seed_count = frontier.row_samples(TASK, "report", target_count, seed_count)
    guidance = toy.guidance(TASK, task_targets, **frontier.method_terms(TASK, "ugd", 1.0))
    rows = {"unguided": [], SAMPLER_ROW: [], **{f"guider, {s}": [] for s in SAMPLERS}}
    sampler_setting = frontier.Setting(SAMPLER_ROW, Settings(), steps=STEPS, method_strength=1.0)
    for seed in splits.sampling_seeds("report", seed_count):
        images = {"unguided": toy.sample(model, TASK, task_targets, frontier.Setting("unguided", guided=False,
                                                                                    steps=STEPS), seed),
                  SAMPLER_ROW: toy.sample(model, TASK, task_targets, sampler_setting, seed)}
        for sampler in SAMPLERS:
            images[f"guider, {sampler}"] = guided_by_guider(toy, model, guidance, sampler, seed, len(task_targets))
        for name, batch in images.items():
            rows[name].append(toy.score(TASK, task_targets, batch))
    out = {}
    reference = torch.stack(rows[SAMPLER_ROW], 1)
    for name, scores in rows.items():
        table = torch.stack(scores, 1)  # (targets, seeds)
        out[name] = dict(mean=float(table.mean()), interval=frontier.bootstrap_interval(table),
                         difference=float((table - reference).mean()),
                         difference_interval=frontier.bootstrap_interval(table - reference),
                         samples=table.numel())
    return out


def markdown(results: dict) -> str:
    lines = ["| model | row | score (95% interval) | minus the pack's sampler (95% interval) | samples |",
             "|---|---|---|---|---|"]
    for model, rows in results.items():
        for name, r in rows.items():
            lines.append(f"| {model} | {name} | {r['mean']:.3f} ({r['interval'][0]:.3f} to {r['interval'][1]:.3f}) | "
                         f"{r['difference']:+.3f} ({r['difference_interval'][0]:+.3f} to "
                         f"{r['difference_interval'][1]:+.3f}) | {r['samples']} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=frontier.MODELS, choices=frontier.MODELS)
    parser.add_argument("--output", default=os.path.join(PACK_DIR, "bench", "frontier", "guider"))
    args = parser.parse_args(argv)
    toy = frontier.Toy(ComfyHost(os.environ["COMFYUI_PATH"]))
    if "UGDGuider" not in toy.nodes:
        sys.exit("This ComfyUI has no guiders; run with COMFYUI_PATH set to ComfyUI 2024-04 or newer.")
    results = {model: run(toy, model, args.targets, args.seeds) for model in args.models if model in toy.models}
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "results_report.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.output, "results_report.md"), "w") as f:
        f.write(markdown(results) + "\n")
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
