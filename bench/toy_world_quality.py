"""Quality of universal guidance in the toy world, graded by held-out evaluators, guided against unguided.

    bash bench/toy-world-quality [--seeds 8] [--output bench-output/toy_world]

Every setting samples the same seeds twice through the pack's ComfyUI nodes (the toy model, VAE and guidance
networks, Universal Guided KSampler; unguided is ComfyUI's KSampler with euler, which is the DDIM step): once
unguided, once guided. The evaluators (other architectures, trained on other scenes) score both:

- segmentation: mIoU against the target map;
- classification: accuracy, whether the target coloured shape is the evaluator's most likely class;
- location: IoU of the evaluator's box for each target shape with its target box (0 if it finds none);
- inpainting: PSNR over the known pixels (backward guidance keeps them);
- combination: segmentation and classification at once, through Combine Guidance (the mean of both scores).

Realism is the toy UNet's own denoising error on the samples (re-encoded with the VAE), at fixed noise levels
and noise; lower is more like the training data. Before the rows it prints KID (toy_world/evaluation.py) checked
on images whose answer is known: other real scenes, unguided samples, and those samples with strong noise.
Seconds are wall time per sample on this machine. The SD 1.5 cost is what the same run would cost on Stable
Diffusion 1.5 at 512 px, as a multiple of an unguided 20-step run: the passes that the sampler counted, priced
with bench/speed's part costs (samplers/cost.py); the segmentation guide is priced as LR-ASPP, the others as
CLIP RN50. It prints a Markdown table and saves it, with one picture grid per row (target | unguided | guided, a
row per seed).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torchvision
from PIL import Image

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(PACK_DIR, "tools"))
sys.path.insert(0, PACK_DIR)
from comfy_headless import ComfyHost  # noqa: E402

from samplers import cost as sd_equivalent  # noqa: E402
from guidance.segmentation import voc_palette  # noqa: E402
from toy_world import data, evaluation, networks, splits  # noqa: E402

FIRST_SEED = 42
TARGET_SCENE = 2_000_017  # the demo's map: a triangle and a circle, a scene no network was trained on
TARGET_CLASS = "red circle"
TARGET_BOXES = {"circle": (0.08, 0.08, 0.48, 0.48), "square": (0.52, 0.5, 0.92, 0.9)}
INPAINT_SCENE = 2_000_021  # a square and a cross
KID_CHECK_SAMPLES = 128


class Toy:
    """The toy world's nodes, called as ComfyUI's executor calls them (in inference mode)."""

    def __init__(self, host: ComfyHost):
        self.nodes = host.nodes.NODE_CLASS_MAPPINGS
        self.pass_counts = host.pack_module("samplers.pass_counts")
        self.settings = host.pack_module("samplers.settings")
        with torch.inference_mode():
            self.model, self.vae, self.unconditional, self.cheap_vae = self.call("UGDToyWorldLoader", "load")
            self.segmenter, self.classifier, self.detector = self.call("UGDToyWorldGuidanceNetworks", "load")
        self.evaluators = {kind: networks.load(kind, "evaluator") for kind in networks.KINDS}

    def call(self, node: str, function: str, **inputs):
        with torch.inference_mode():
            return getattr(self.nodes[node](), function)(**inputs)

    def sample(self, guidance, seeds: int, steps: int, recurrence: int) -> torch.Tensor:
        """Decoded images (B, 3, H, W) in [0, 1]; unguided with guidance=None."""
        latent = self.call("UGDEmptyToyWorldLatent", "generate", batch_size=seeds)[0]
        common = dict(model=self.model, positive=self.unconditional, negative=self.unconditional, latent_image=latent,
                      seed=FIRST_SEED, steps=steps, cfg=1.0, scheduler="ddim_uniform", denoise=1.0)
        if guidance is None:
            samples = self.call("KSampler", "sample", sampler_name="euler", **common)[0]
        else:
            samples = self.call("UGDGuidedKSampler", "sample", vae=self.vae, guidance=guidance, sampler_name="ddim",
                                preset="custom", options=self.settings.Settings(recurrence=recurrence), **common)[0]
        with torch.inference_mode():
            return self.vae.decode(samples["samples"]).movedim(-1, 1).clone()

    def denoising_error(self, images: torch.Tensor) -> float:
        return float(evaluation.denoising_error(self.model.model, self.vae, images).mean())


def as_comfy_image(images: torch.Tensor) -> torch.Tensor:
    return images.movedim(1, -1).contiguous()


def map_picture(segmentation: torch.Tensor) -> torch.Tensor:
    """Class maps (…, H, W) as (…, 3, H, W) pictures in the VOC palette colours that Segmentation Guidance reads."""
    return (voc_palette()[segmentation].float() / 255).movedim(-1, -3)


class Tasks:
    """Each task: its guidance for given settings, its score of images, and the picture of its target."""

    def __init__(self, toy: Toy):
        self.toy = toy
        target = data.scene(TARGET_SCENE)
        self.target_map = torch.from_numpy(target.segmentation).long()
        self.map_image = map_picture(self.target_map)
        inpaint = data.scene(INPAINT_SCENE)
        self.reference = torch.from_numpy(inpaint.image).permute(2, 0, 1).float() / 255
        self.hole = torch.zeros(data.SIZE, data.SIZE)
        self.hole[16:48, 16:48] = 1  # 1 = generate

    def guidance(self, task: str, weight_scale: float, backward_steps: int):
        toy = self.toy

        def settings(weight, lr):
            return dict(weight=weight * weight_scale, schedule="paper", backward_steps=backward_steps, backward_lr=lr,
                        optimizer="adam", start_percent=0.0, end_percent=1.0)

        if task == "segmentation":
            return toy.call("UGDSegmentationGuidance", "guide", segmentation_model=toy.segmenter, class_name="circle",
                            outside_mask="background", target_map=as_comfy_image(self.map_image[None]), **settings(*WEIGHTS[task]))[0]
        if task == "classification":
            return toy.call("UGDClassifierGuidance", "guide", classifier=toy.classifier, target_class=TARGET_CLASS,
                            **settings(*WEIGHTS[task]))[0]
        if task == "location":
            boxes = "\n".join(f"{shape} {' '.join(map(str, box))}" for shape, box in TARGET_BOXES.items())
            return toy.call("UGDObjectLocationGuidance", "guide", detector=toy.detector, boxes=boxes, units="fractions",
                            proposal_seed=0, **settings(*WEIGHTS[task]))[0]
        if task == "inpainting":
            return toy.call("UGDImageReconstructionGuidance", "guide", image=as_comfy_image(self.reference[None]),
                            mask=self.hole[None], **settings(*WEIGHTS[task]))[0]
        if task == "combination":
            return toy.call("UGDCombineGuidance", "combine", guidance_1=self.guidance("segmentation", weight_scale, backward_steps),
                            guidance_2=self.guidance("classification", weight_scale, backward_steps))[0]
        raise ValueError(task)

    def score(self, task: str, images: torch.Tensor) -> torch.Tensor:
        evaluators = self.toy.evaluators
        if task == "segmentation":
            return evaluation.segmentation_score(evaluators["segmenter"], images, self.target_map.expand(len(images), -1, -1))
        if task == "classification":
            return evaluation.classification_score(evaluators["classifier"], images, networks.CLASSIFIER_CLASSES.index(TARGET_CLASS))
        if task == "location":
            return evaluation.location_score(evaluators["box_predictor"], images, TARGET_BOXES)
        if task == "inpainting":
            return evaluation.masked_psnr(images, self.reference[None], 1 - self.hole[None])
        return (self.score("segmentation", images) + self.score("classification", images)) / 2

    def picture(self, task: str) -> torch.Tensor:
        if task in ("segmentation", "combination"):
            return self.map_image
        if task == "inpainting":
            return torch.where(self.hole.bool(), torch.full_like(self.reference, 0.5), self.reference)
        if task == "location":
            canvas = torch.full((3, data.SIZE, data.SIZE), 255, dtype=torch.uint8)
            boxes = torch.tensor(list(TARGET_BOXES.values())) * data.SIZE
            return torchvision.utils.draw_bounding_boxes(canvas, boxes, list(TARGET_BOXES), colors="black").float() / 255
        return torch.ones(3, data.SIZE, data.SIZE)  # classification: the class is in the table


# Per task: (weight w of s(t) = w·√(1−ᾱ), backward Adam lr), picked by hand from probe runs on seeds 42-49. Combination uses the
# segmentation and classification settings.
WEIGHTS = {"segmentation": (100.0, 0.1), "classification": (8.0, 0.1), "location": (2.0, 0.1), "inpainting": (20.0, 0.1)}
TASKS = ("segmentation", "classification", "location", "inpainting", "combination")
BACKWARD_STEPS = 3
MODES = {"forward": (1.0, 0), "backward": (0.0, BACKWARD_STEPS), "forward + backward": (1.0, BACKWARD_STEPS)}
DEFAULT_STEPS, DEFAULT_RECURRENCE = 20, 4


def settings_to_run() -> list[tuple[str, str, int, int]]:
    """(task, mode, steps, k): every task in every mode, then recurrence and step count on two tasks."""
    rows = [(task, mode, DEFAULT_STEPS, DEFAULT_RECURRENCE) for task in TASKS for mode in MODES]
    rows += [(task, "forward", DEFAULT_STEPS, k) for task in ("segmentation", "location") for k in (1, 10)]
    rows += [("segmentation", "forward", steps, DEFAULT_RECURRENCE) for steps in (10, 50)]
    return rows


def save_grid(path: str, columns: list[torch.Tensor]) -> None:
    """Columns of (B or 1, 3, H, W) pictures side by side, a row per sample."""
    rows = len(columns[-1])
    cells = torch.stack([c.expand(rows, -1, -1, -1) for c in columns], 1)
    grid = torchvision.utils.make_grid(cells.flatten(0, 1), nrow=len(columns), padding=2, pad_value=1.0)
    Image.fromarray((grid.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()).save(path)


def claims(results: list[dict]) -> list[str]:
    """The paper's claims, checked against this run's rows."""
    def row(task, mode, steps=DEFAULT_STEPS, k=DEFAULT_RECURRENCE):
        return next(r for r in results if (r["task"], r["mode"], r["steps"], r["k"]) == (task, mode, steps, k))

    better = [r for r in results if r["guided"] > r["unguided"]]
    lines = [f"- Guidance beats unguided in {len(better)} of {len(results)} rows"
             + ("." if len(better) == len(results) else "; not in: " + "; ".join(
                 f"{r['task']} {r['mode']} (steps {r['steps']}, k {r['k']})" for r in results if r not in better) + ".")]
    forward, both = row("location", "forward"), row("location", "forward + backward")
    lines.append(f"- Location, forward + backward against forward only: {both['guided']:.3f} against {forward['guided']:.3f}: "
                 + ("holds." if both["guided"] > forward["guided"] else "does not hold."))
    for task in ("segmentation", "location"):
        runs = [row(task, "forward", k=k) for k in (1, DEFAULT_RECURRENCE, 10)]
        trend = ", ".join(f"k = {r['k']}: {r['guided']:.3f} in {r['seconds']:.2f} s" for r in runs)
        holds = runs[0]["guided"] < runs[1]["guided"] < runs[2]["guided"] and runs[0]["seconds"] < runs[2]["seconds"]
        lines.append(f"- Recurrence on {task} (forward): {trend} per sample: "
                     + ("a better score for more time, holds." if holds else "the score does not rise steadily with k."))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=8, help="samples per setting (default 8)")
    parser.add_argument("--output", default=os.path.join(PACK_DIR, "bench-output", "toy_world"))
    args = parser.parse_args()
    os.makedirs(args.output, exist_ok=True)
    toy = Toy(ComfyHost(os.environ["COMFYUI_PATH"]))
    tasks = Tasks(toy)
    real = data.batch(splits.TEST_SEEDS[:64])[0]
    features = evaluation.RealismFeatures(toy.evaluators["classifier"])
    checks = evaluation.kid_checks(features, toy.sample(None, KID_CHECK_SAMPLES, 20, 1))
    lines = [f"Realism of real held-out toy images: {toy.denoising_error(real):.3f}", "",
             f"KID against {len(splits.REALISM_SEEDS)} real held-out scenes (mean ± std over subsets; "
             f"{KID_CHECK_SAMPLES} unguided samples, 20 steps):"]
    lines += [f"- {name}: {mean:.1f} ± {std:.1f}" for name, (mean, std) in checks.items()] + ["",
             "| task | guidance | steps | k | unguided | guided | realism (unguided → guided) | s / sample "
             "| SD 1.5 cost (unguided → guided) |", "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    unguided, results = {}, []
    for task, mode, steps, recurrence in settings_to_run():
        if steps not in unguided:
            images = toy.sample(None, args.seeds, steps, 1)
            unguided[steps] = images, toy.denoising_error(images)
        base_images, base_realism = unguided[steps]
        start = time.time()
        with toy.pass_counts.recording() as counts:
            images = toy.sample(tasks.guidance(task, *MODES[mode]), args.seeds, steps, recurrence)
        seconds = (time.time() - start) / args.seeds
        per_sample = counts.per_sample(args.seeds)
        cost = sd_equivalent.sd15_multiple(per_sample.forward, per_sample.backward, "vae",
                                           "segmentation" if task == "segmentation" else "clip")
        result = dict(task=task, mode=mode, steps=steps, k=recurrence, seconds=seconds,
                      unguided=float(tasks.score(task, base_images).mean()), guided=float(tasks.score(task, images).mean()))
        results.append(result)
        unit = " dB" if task == "inpainting" else ""
        lines.append(f"| {task} | {mode} | {steps} | {recurrence} | {result['unguided']:.3f}{unit} | {result['guided']:.3f}{unit} | "
                     f"{base_realism:.3f} → {toy.denoising_error(images):.3f} | {seconds:.2f} | "
                     f"{sd_equivalent.unguided_multiple(steps):.2f}× → {cost:.1f}× |")
        print(lines[-1], flush=True)
        name = f"{task}_{mode.replace(' + ', '_')}_steps{steps}_k{recurrence}.png".replace(" ", "_")
        save_grid(os.path.join(args.output, name), [tasks.picture(task)[None], base_images, images])
    lines += [""] + claims(results)
    print("\n".join(lines[-4:]))
    with open(os.path.join(args.output, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {args.output}/results.md and a grid per row (target | unguided | guided)")


if __name__ == "__main__":
    main()
