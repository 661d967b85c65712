"""Quality against cost on the toy world's held-out targets: every setting's score, realism and counted cost.

    bash bench/toy-world-frontier [--half report] [--quick] [--targets 16] [--seeds 2] [--tasks …] [--models …]
                                  [--rows all|main|sweep|strength] [--jobs 2] [--autocast bf16] [--resume]
                                  [--replot results_report.json …]

A row is one setting of the sampler's levers (`Setting`) for one task and one toy model (ε, and the flow twin on
ComfyUI with flow sampling). It samples every target of the half with each of the half's sampling seeds, through
the pack's Universal Guided KSampler, batched by seed: sample i of a batch is guided to target i (the guidance
nodes take a target per image, and the classifier's loss a class per image). That is fair,
because every guidance loss depends on its own sample's image only (the engine's loss protocol): without
recurrence a batch gives each sample exactly what a run of its own would (tests/test_toy_world_frontier.py),
and with it only the re-noising noise differs, drawn for the whole batch, from the same distribution. Unguided
rows are ComfyUI's KSampler with euler (DDIM) from the same initial noise.

Each row gives the held-out evaluators' score, its mean with a 95% interval (bootstrap over targets and seeds),
the realism figures (the toy UNet's denoising error on the samples, lower is closer to real scenes; KID against
the 512 real scenes, mean ± std over subsets), and the cost: the passes the sampler counted, priced as Stable
Diffusion 1.5 at 512 px in unguided 20-step runs (samplers/cost.py), and the toy's wall time per sample.

--jobs N runs N worker processes of this script, each with its share of the cores; they claim the rows one at a
time, costliest first by expected cost, so that none idles while rows are left. On the 2-core machine two one-thread
workers sampled about 10% more than one two-thread process in the same time (a batch of 16 segmentation
targets: two in 23.5 s against one in 12.9 s); a run whose time is one costly row, like --quick, gains nothing.
The rows do not depend on which worker runs them; only the wall time per sample does.

--autocast bf16 runs the guided rows' passes under the sampler's own bf16 autocast (its `autocast` input); the
rows record it, and --resume runs again a row saved under another autocast. Unguided rows run as they are.

The tuning half is for choosing settings; tables for the README and docs/ come from the report half (toy_world/splits.py).
The guidance weights are those of bench/toy-world-quality: hand-picked on seeds 42-49, not on either half.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import shutil
import subprocess
import sys
import time
from typing import Sequence

import torch

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(PACK_DIR, "tools"))
sys.path.insert(0, PACK_DIR)
from comfy_headless import ComfyHost  # noqa: E402

from samplers import cost as sd_equivalent  # noqa: E402
# w and backward lr per task (combination uses two), and the target map as Segmentation Guidance reads it
from bench.toy_world_quality import WEIGHTS, as_comfy_image, map_picture  # noqa: E402
from samplers.presets import PRESETS  # noqa: E402
from samplers.settings import Settings  # noqa: E402
from toy_world import evaluation, networks, splits, targets  # noqa: E402

TASKS = ("segmentation", "classification", "location", "inpainting", "combination")
MODELS = ("eps", "flow")
SCHEDULERS = {"eps": "ddim_uniform", "flow": "simple"}
# The flow twin's segmentation weight, 200, was chosen on the tuning half (tests/test_toy_world_flow.py); the other
# tasks take the same factor, untuned.
MODEL_WEIGHT_SCALE = {"eps": 1.0, "flow": 2.0}
# Paper mode follows the paper's experiment for each task: on Stable Diffusion (segmentation) and for CLIP on
# ImageNet (classification) forward guidance only (m = 0); object location on ImageNet forward and backward;
# inpainting backward only (s(t) = 0); the segmentation-and-classifier combination forward only.
PAPER_BACKWARD_STEPS = {"segmentation": 0, "classification": 0, "location": 3, "inpainting": 3, "combination": 0}
BACKWARD_ONLY = {"inpainting"}
TASK_NODES = {"segmentation": "UGDSegmentationGuidance", "classification": "UGDClassifierGuidance",
              "location": "UGDObjectLocationGuidance", "inpainting": "UGDImageReconstructionGuidance"}
BOOTSTRAP_DRAWS = 1000


PAPER_LEVERS = Settings(recurrence=10)  # paper mode: the paper's method, every step guided through the UNet, k = 10


@dataclasses.dataclass(frozen=True)
class Setting:
    """One row: the sampler's settings (samplers/settings.py), its steps and guidance decoder, and what the row asks
    of the guidance terms. The defaults are paper mode but for backward_steps (None: the task's)."""

    name: str
    levers: Settings = PAPER_LEVERS
    steps: int = 20
    cheap_decoder: bool = False
    strength: float | None = None  # None: each task's raw w, paper schedule; a number: the auto schedule's w, for all
    method_strength: float | None = None  # the multiple m of `method_terms`; None: the task's own settings
    backward_steps: int | None = None
    guided: bool = True
    preset: str = "custom"
    node_defaults: bool = False  # the guidance nodes at their defaults, what a user gets, in place of the task's
    reward_only: bool = False  # every term only scores particles (Guidance as Particle Reward)
    sampler: str = "ddim"  # the sampler's base step; particles alone need ddpm's noise to tell them apart
    box_reward: bool = False  # location: particles scored by the detected boxes (Object Location Reward) instead


def paper_with(name: str, **levers) -> Setting:
    """Paper mode with these levers changed."""
    return Setting(name, PAPER_LEVERS.replace(**levers))


UNGUIDED = Setting("unguided", Settings(), guided=False)
PAPER = Setting("paper")
# The known pixels' lever on inpainting with the task's own guidance: held at their encoding alone, and with the
# guidance's 5 backward steps (Adam, lr 0.1) as the polish of the finished latent (samplers/known_pixels.py)
KNOWN_PIXELS = [Setting("known pixels replaced", Settings(known_pixels="replace"), backward_steps=0),
                Setting("known pixels replaced, polished (m = 5)", Settings(known_pixels="replace"), backward_steps=5)]


def preset_setting(name: str) -> Setting:
    """The row of a shipped preset, run through the sampler's preset input; its levers spelled out for the cost."""
    preset = PRESETS[name]
    return Setting(f"{name} preset", preset.over(Settings()), steps=preset.steps or Setting.steps,
                   cheap_decoder=preset.cheap_decoder, preset=name, node_defaults=True)


def lever_sweep() -> list[Setting]:
    """Paper mode with one lever changed at a time."""
    return [
        Setting("cheap decoder", cheap_decoder=True), paper_with("x0_only", gradient="x0_only"),
        paper_with("decode half", decode_resolution="half"), paper_with("decode quarter", decode_resolution="quarter"),
        *[paper_with(f"every {n}", guidance_every=n) for n in (2, 4)],
        *[paper_with(f"first {round(100 * p)}%", guidance_end=p) for p in (0.3, 0.5, 0.7)],
        *[paper_with(f"k = {k}", recurrence=k) for k in (1, 2, 4)],
        *[Setting(f"steps {n}", steps=n) for n in (10, 50)],
        *[Setting(f"m = {m}", backward_steps=m) for m in (0, 1, 3, 5)],
    ]


class Toy:
    """The toy world's nodes, called as ComfyUI's executor calls them (in inference mode)."""

    def __init__(self, host: ComfyHost):
        self.nodes = host.nodes.NODE_CLASS_MAPPINGS
        self.pass_counts = host.pack_module("samplers.pass_counts")
        self.models = {}
        for model in MODELS:
            try:
                self.models[model] = self.call("UGDToyWorldLoader", "load", diffusion_model=model)
            except ValueError as error:  # a ComfyUI without flow sampling
                print(f"No {model} rows: {error}", flush=True)
        self.segmenter, self.classifier, self.detector = self.call("UGDToyWorldGuidanceNetworks", "load")
        self.evaluators = {kind: networks.load(kind, "evaluator") for kind in networks.KINDS}

    def call(self, node: str, function: str, **inputs):
        with torch.inference_mode():
            return getattr(self.nodes[node](), function)(**inputs)

    def node_defaults(self, task: str) -> dict:
        """The settings a new guidance node of the task starts with."""
        spec = self.nodes[TASK_NODES[task]].INPUT_TYPES()["required"]
        return {name: spec[name][1]["default"] for name in ("weight", "schedule", "backward_steps", "backward_lr",
                                                             "optimizer", "start_percent", "end_percent")}

    def guidance(self, task: str, task_targets: Sequence, weight: float = 1.0, backward_steps: int = 0,
                 strength: float | None = None, lr_scale: float = 1.0, mean_lr: float | None = None,
                 defaults: bool = False) -> tuple:
        """One guidance for the batch, sample i guided to target i: the segmentation, location and inpainting nodes
        take a target per image themselves; Classifier Guidance takes one class, so its loss gets the batch's.
        `weight` and `lr_scale` scale each task's raw w and backward lr; with `strength`, every term takes the auto
        schedule with that w instead; with `mean_lr`, a term's backward lr is its raw w times mean_lr. With
        `defaults`, every node keeps its own defaults instead."""
        def settings(task_name):
            if defaults:
                return self.node_defaults(task_name)
            w, lr = WEIGHTS[task_name]
            forward = dict(weight=w * weight, schedule="paper") if strength is None or weight == 0 else \
                dict(weight=strength, schedule="auto")
            return dict(**forward, backward_steps=backward_steps,
                        backward_lr=lr * lr_scale if mean_lr is None else w * mean_lr,
                        optimizer="adam", start_percent=0.0, end_percent=1.0)

        if task == "segmentation":
            maps = torch.stack([torch.from_numpy(t.segmentation).long() for t in task_targets])
            return self.call("UGDSegmentationGuidance", "guide", segmentation_model=self.segmenter, class_name="circle",
                             outside_mask="background", target_map=as_comfy_image(map_picture(maps)), **settings(task))[0]
        if task == "classification":
            term, = self.call("UGDClassifierGuidance", "guide", classifier=self.classifier,
                              target_class=task_targets[0].name, **settings(task))[0]
            classes = [networks.CLASSIFIER_CLASSES.index(t.name) for t in task_targets]
            return (dataclasses.replace(term, loss=type(term.loss)(term.loss.classifier, classes)),)
        if task == "location":
            boxes = "\n---\n".join("\n".join(f"{shape} {' '.join(f'{v:.4f}' for v in box)}" for shape, box in t.boxes)
                                   for t in task_targets)
            return self.call("UGDObjectLocationGuidance", "guide", detector=self.detector, boxes=boxes,
                             units="fractions", proposal_seed=0, **settings(task))[0]
        if task == "inpainting":
            images = torch.stack([torch.from_numpy(t.image).float() / 255 for t in task_targets])
            holes = 1 - torch.stack([torch.from_numpy(t.known()) for t in task_targets])
            return self.call("UGDImageReconstructionGuidance", "guide", image=images, mask=holes, **settings(task))[0]
        if task == "combination":
            return (self.guidance("segmentation", [t.map for t in task_targets], weight, backward_steps, strength,
                                  lr_scale, mean_lr, defaults)
                    + self.guidance("classification", [targets.ClassTarget(t.class_name) for t in task_targets],
                                    weight, backward_steps, strength, lr_scale, mean_lr, defaults))
        raise ValueError(f"unknown task {task!r}")

    def sample(self, model: str, task: str, task_targets: Sequence, setting: Setting, seed: int) -> torch.Tensor:
        """Decoded images (B, 3, H, W) in [0, 1], sample i for target i."""
        unet, vae, unconditional, cheap_vae = self.models[model]
        latent = self.call("UGDEmptyToyWorldLatent", "generate", batch_size=len(task_targets))[0]
        common = dict(model=unet, positive=unconditional, negative=unconditional, latent_image=latent, seed=seed,
                      steps=setting.steps, cfg=1.0, scheduler=SCHEDULERS[model], denoise=1.0)
        if not setting.guided:
            samples = self.call("KSampler", "sample", sampler_name="euler", **common)[0]
        else:
            if setting.node_defaults:
                guidance = self.guidance(task, task_targets, defaults=True)
            elif setting.method_strength is None:
                backward_steps = PAPER_BACKWARD_STEPS[task] if setting.backward_steps is None else setting.backward_steps
                weight = 0.0 if task in BACKWARD_ONLY else MODEL_WEIGHT_SCALE[model]
                guidance = self.guidance(task, task_targets, weight, backward_steps, setting.strength)
            else:
                guidance = self.guidance(task, task_targets,
                                         **method_terms(task, setting.levers.method, setting.method_strength))
            if setting.reward_only:
                guidance = tuple(dataclasses.replace(term, reward_only=True) for term in guidance)
            if setting.box_reward and task == "location":
                guidance = (() if setting.reward_only else guidance) + self.box_reward(task_targets)
            samples = self.call("UGDGuidedKSampler", "sample", vae=vae, guidance=guidance, sampler_name=setting.sampler,
                                guidance_vae=cheap_vae if setting.cheap_decoder else vae, preset=setting.preset,
                                options=setting.levers, **common)[0]
        with torch.inference_mode():
            return vae.decode(samples["samples"]).movedim(-1, 1).clone()

    def box_reward(self, task_targets: Sequence) -> tuple:
        """Object Location Reward for the batch, sample i scored against target i's boxes."""
        boxes = "\n---\n".join("\n".join(f"{shape} {' '.join(f'{v:.4f}' for v in box)}" for shape, box in t.boxes)
                               for t in task_targets)
        return self.call("UGDObjectLocationReward", "reward", detector=self.detector, boxes=boxes, units="fractions")[0]

    def guide_loss(self, task: str, task_targets: Sequence, images: torch.Tensor) -> torch.Tensor:
        """Per image, the guidance networks' own loss (the nodes' defaults, summed over the terms): what particles
        select on, beside the held-out evaluators' score."""
        with torch.inference_mode():
            return sum(term.loss.bind(images.device)(images) for term in self.guidance(task, task_targets, defaults=True))

    def score(self, task: str, task_targets: Sequence, images: torch.Tensor) -> torch.Tensor:
        """Per image, the held-out evaluator's score of image i against target i."""
        evaluators = self.evaluators
        if task == "segmentation":
            maps = torch.stack([torch.from_numpy(t.segmentation).long() for t in task_targets])
            return evaluation.segmentation_score(evaluators["segmenter"], images, maps)
        if task == "classification":
            return torch.cat([evaluation.classification_score(evaluators["classifier"], image[None],
                                                              networks.CLASSIFIER_CLASSES.index(t.name))
                              for image, t in zip(images, task_targets)])
        if task == "location":
            return torch.cat([evaluation.location_score(evaluators["box_predictor"], image[None], dict(t.boxes))
                              for image, t in zip(images, task_targets)])
        if task == "inpainting":
            references = torch.stack([torch.from_numpy(t.image).permute(2, 0, 1).float() / 255 for t in task_targets])
            known = torch.stack([torch.from_numpy(t.known()) for t in task_targets])
            return evaluation.masked_psnr(images, references, known)
        maps = [t.map for t in task_targets]
        classes = [targets.ClassTarget(t.class_name) for t in task_targets]
        return (self.score("segmentation", maps, images) + self.score("classification", classes, images)) / 2


def method_terms(task: str, method: str, m: float) -> dict:
    """`Toy.guidance`'s settings for a method at strength multiple m: its strengths are m times a reference, each
    term's raw w (`WEIGHTS`) for every raw strength (UGD's w, DPS's ζ, TFG's ρ, MPGD's and TFG's μ) and 1 for
    FreeDoM's ρ, which is sized to the noise. UGD keeps the paper's backward steps, with Adam's lr scaled by m
    where it has no forward guidance (inpainting); MPGD and TFG take N_iter = 1 mean-guidance step; FreeDoM and
    DPS have none."""
    if method == "ugd":
        if task in BACKWARD_ONLY:
            return dict(weight=0.0, backward_steps=PAPER_BACKWARD_STEPS[task], lr_scale=m)
        return dict(weight=m, backward_steps=PAPER_BACKWARD_STEPS[task])
    if method == "freedom":
        return dict(weight=1.0, backward_steps=0, strength=m)
    if method == "dps":
        return dict(weight=m, backward_steps=0)
    if method == "mpgd":
        return dict(weight=0.0, backward_steps=1, mean_lr=m)
    if method == "tfg":
        return dict(weight=m, backward_steps=1, mean_lr=m)
    raise ValueError(f"unknown method {method!r}")


def bootstrap_interval(scores: torch.Tensor, draws: int = BOOTSTRAP_DRAWS) -> tuple[float, float]:
    """95% interval of the mean of scores (targets, seeds), resampling targets and seeds with replacement."""
    generator = torch.Generator().manual_seed(0)
    t, s = scores.shape
    means = torch.stack([scores[torch.randint(t, (t,), generator=generator)][:, torch.randint(s, (s,), generator=generator)].mean()
                         for _ in range(draws)])
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975]))
    return float(low), float(high)


def row_samples(task: str, half: str, target_count: int, seed_count: int) -> tuple[list, int]:
    """The row's targets and seed count: a task with fewer targets in the half (classification has 12 classes)
    takes all of them, and more seeds, so that the row still has target_count × seed_count samples or more."""
    available = targets.targets(task, half)
    task_targets = available[:target_count]
    return task_targets, max(seed_count, math.ceil(target_count * seed_count / len(task_targets)))


def run_row(toy: Toy, features, real: torch.Tensor, model: str, task: str, setting: Setting, half: str,
            target_count: int, seed_count: int) -> dict:
    task_targets, seed_count = row_samples(task, half, target_count, seed_count)
    scores, guide_losses, errors, images_all, seconds = [], [], [], [], 0.0
    with toy.pass_counts.recording() as counts:
        for seed in splits.sampling_seeds(half, seed_count):
            start = time.time()
            images = toy.sample(model, task, task_targets, setting, seed)
            seconds += time.time() - start
            scores.append(toy.score(task, task_targets, images))
            guide_losses.append(toy.guide_loss(task, task_targets, images))
            errors.append(evaluation.denoising_error(toy.models["eps"][0].model, toy.models[model][1], images))
            images_all.append(images)
    samples = len(task_targets) * seed_count
    per_sample = counts.per_sample(samples)
    guide = "segmentation" if task == "segmentation" else "clip"
    cost = (sd_equivalent.sd15_multiple(per_sample.forward, per_sample.backward,
                                        "taesd" if setting.cheap_decoder else "vae", guide)
            if setting.guided else sd_equivalent.unguided_multiple(setting.steps))
    table = torch.stack(scores, 1)  # (targets, seeds)
    kid, kid_spread = evaluation.kid(features, torch.cat(images_all), real)
    return dict(model=model, task=task, setting=setting.name, mean=float(table.mean()), interval=bootstrap_interval(table),
                samples=samples, denoising_error=float(torch.cat(errors).mean()), kid=kid, kid_spread=kid_spread,
                sd15_cost=cost, seconds=seconds / samples, passes=per_sample.as_dict(), autocast=setting.levers.autocast,
                scores=table.tolist(), guide_loss=float(torch.cat(guide_losses).mean()))


# Each task's own best weight_scale at the balanced preset's method and levers, on the tuning half (the presets
# search's rows, bench/frontier/presets/balanced.md); a new node's strength is AUTO_WEIGHT at the preset's own.
OWN_STRENGTH = {("eps", "segmentation"): 1.4142, ("eps", "combination"): 0.7071, ("flow", "segmentation"): 1.4142,
                ("flow", "classification"): 1.4142, ("flow", "location"): 0.7071}


def strength_settings(model: str, task: str) -> list[Setting]:
    """The balanced preset with the task's own best weight_scale, where that is not the preset's."""
    balanced = preset_setting("balanced")
    own = OWN_STRENGTH.get((model, task), balanced.levers.weight_scale)
    if own == balanced.levers.weight_scale:
        return []
    return [dataclasses.replace(balanced, name=f"balanced preset, weight ×{own:.3g}", preset="custom",
                                levers=balanced.levers.replace(weight_scale=own))]


def default_strength_checks(results: list[dict]) -> list[str]:
    """Per task and model, the default strength (the balanced preset's row) against the task's own best: within 90%
    of its score or not."""
    rows = {row_key(r): r for r in results}
    lines = []
    for model, task in dict.fromkeys((r["model"], r["task"]) for r in results):
        default = rows.get((model, task, "balanced preset"))
        own = [r for r in results if (r["model"], r["task"]) == (model, task)
               and r["setting"].startswith("balanced preset, weight ×")]
        if not (default and own):
            continue
        best = max(default["mean"], own[0]["mean"])
        ratio = default["mean"] / best if best > 0 else 1.0
        lines.append(f"- {model}, {task}: the default strength scores {default['mean']:.3f}, the task's own "
                     f"({own[0]['setting'][len('balanced preset, '):]}) {own[0]['mean']:.3f}: {ratio:.0%} of the "
                     f"better, " + ("within 90%." if ratio >= 0.9 else "not within 90%."))
    return lines


def combinations() -> list[Setting]:
    """Levers that were promising alone (tuning half, segmentation), together; the presets are more of them."""
    return [
        paper_with("x0_only, first 30%", gradient="x0_only", guidance_end=0.3),
        paper_with("first 30%, k = 4", guidance_end=0.3, recurrence=4),
        paper_with("x0_only, first 50%, k = 4", gradient="x0_only", guidance_end=0.5, recurrence=4),
        # 0.1's fast preset (UGD on the task's raw w) with the full VAE as its guidance decoder
        Setting("fast, full decoder", Settings(recurrence=4, backward_recurrence=1, gradient="x0_only", guidance_end=0.5,
                                               weight_scale=0.3, backward_end=1.0), steps=10),
    ]


ROW_GROUPS = ("all", "main", "sweep", "strength")


def rows_to_run(quick: bool, models: Sequence[str], tasks: Sequence[str] = TASKS,
                group: str = "all") -> list[tuple[str, str, Setting]]:
    """(model, task, setting): the main rows, unguided, paper mode and the presets on every task and model; then
    the sweep, the single levers and the combinations on segmentation with the ε and the flow model and on
    location with the ε model. The strength group, not in all: the auto schedule against each task's raw w on the
    tasks with forward guidance (inpainting has none). --quick: segmentation with the ε model only."""
    if quick:
        return [("eps", "segmentation", s) for s in (UNGUIDED, PAPER, preset_setting("fast"), paper_with("k = 2", recurrence=2))]
    presets = [preset_setting(name) for name in PRESETS if name != "paper"]
    if group == "strength":
        return [(model, task, s) for model in models for task in tasks if task not in BACKWARD_ONLY
                for s in strength_settings(model, task)]
    rows = []
    if group in ("all", "main"):
        rows += [(model, task, s) for model in models for task in tasks for s in (UNGUIDED, PAPER, *presets)]
        rows += [(model, "inpainting", s) for model in models if "inpainting" in tasks for s in KNOWN_PIXELS]
    if group in ("all", "sweep"):
        swept = [("eps", "segmentation"), ("flow", "segmentation"), ("eps", "location")]
        for model, task in swept:
            if model in models and task in tasks:
                settings = [s for s in lever_sweep() + combinations()
                            if s.backward_steps != PAPER_BACKWARD_STEPS[task]]  # that would be paper mode again
                rows += [(model, task, s) for s in sorted(settings, key=lambda s: expected_cost(task, s))]
    return rows


def expected_cost(task: str, setting: Setting) -> float:
    """The setting's SD 1.5 cost before it runs, from a stand-in run (the sweep runs cheapest first, so that a
    cut-off run has the most rows)."""
    backward_steps = PAPER_BACKWARD_STEPS[task] if setting.backward_steps is None else setting.backward_steps
    term = dict(weight=0.0 if task in BACKWARD_ONLY else 1.0, backward_steps=backward_steps)
    return sd_equivalent.settings_multiple(setting.steps, [term], setting.levers,
                                           "taesd" if setting.cheap_decoder else "vae",
                                           "segmentation" if task == "segmentation" else "clip")


def row_key(row: dict) -> tuple[str, str, str]:
    """A result row's identity: (model, task, setting name)."""
    return row["model"], row["task"], row["setting"]


def markdown(results: list[dict]) -> str:
    lines = ["| model | task | setting | score (95% interval) | n | denoising error | KID | SD 1.5 cost | s / sample |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        unit = " dB" if r["task"] == "inpainting" else ""
        lines.append(f"| {r['model']} | {r['task']} | {r['setting']} | {r['mean']:.3f}{unit} ({r['interval'][0]:.3f}–"
                     f"{r['interval'][1]:.3f}) | {r['samples']} | {r['denoising_error']:.3f} | {r['kid']:.0f} ± "
                     f"{r['kid_spread']:.0f} | {r['sd15_cost']:.2f}× | {r['seconds']:.2f} |")
    return "\n".join(lines)


def claims(results: list[dict]) -> list[str]:
    """The paper's claims, read off the rows: guided beats unguided, forward + backward beats forward on
    location, and recurrence buys score for cost."""
    rows = {row_key(r): r for r in results}
    guided = [r for r in results if r["setting"] != UNGUIDED.name and (r["model"], r["task"], UNGUIDED.name) in rows]
    worse = [r for r in guided if r["mean"] <= rows[(r["model"], r["task"], UNGUIDED.name)]["mean"]]
    missed = ", ".join(f"{r['model']} {r['task']} {r['setting']}" for r in worse)
    lines = [f"- Guided beats unguided in {len(guided) - len(worse)} of {len(guided)} rows"
             + (f"; not in: {missed}." if worse else ".")]
    for model in MODELS:
        forward, both = rows.get((model, "location", "m = 0")), rows.get((model, "location", PAPER.name))
        if forward and both:
            interval = lambda r: f"{r['mean']:.3f} ({r['interval'][0]:.3f}–{r['interval'][1]:.3f})"  # noqa: E731
            lines.append(f"- {model}, location: forward + backward (m = 3) {interval(both)} against forward only "
                         f"{interval(forward)}: " + ("holds." if both["mean"] > forward["mean"] else "does not hold."))
    for model, task in dict.fromkeys((r["model"], r["task"]) for r in results):
        ladder = [rows[(model, task, name)] for name in ("k = 1", "k = 2", "k = 4", PAPER.name) if (model, task, name) in rows]
        if len(ladder) > 2:
            lines.append(f"- {model}, {task}, recurrence: " + ", ".join(
                f"k = {10 if r['setting'] == PAPER.name else r['setting'][4:]}: {r['mean']:.3f} at {r['sd15_cost']:.1f}×"
                for r in ladder) + ".")
    return lines


def preset_checks(results: list[dict]) -> list[str]:
    """Per task and model, each preset against its targets: fast keeps 90% of paper mode's gain over unguided at
    1.5× an unguided run's cost or less; balanced scores paper mode's or more at ⅕ of its cost or less; quality
    scores above paper mode, the paired difference's 95% interval above 0, at its cost or less; none has a KID worse
    than paper mode's by more than paper mode's spread."""
    rows = {row_key(r): r for r in results}
    lines = []
    for model, task in dict.fromkeys((r["model"], r["task"]) for r in results):
        unguided, paper = rows.get((model, task, UNGUIDED.name)), rows.get((model, task, PAPER.name))
        if not (unguided and paper):
            continue
        gain = paper["mean"] - unguided["mean"]
        for name in ("fast", "balanced", "quality"):
            row = rows.get((model, task, f"{name} preset"))
            if not row:
                continue
            retained = (row["mean"] - unguided["mean"]) / gain if gain > 0 else float("nan")
            realism = row["kid"] <= paper["kid"] + paper["kid_spread"]
            relative = row["sd15_cost"] / paper["sd15_cost"]
            if name == "fast":
                score, cost = retained >= 0.9, row["sd15_cost"] <= 1.5
                wanted = f"keeps {retained:.0%} of paper mode's gain at {row['sd15_cost']:.2f}× unguided"
            elif name == "balanced":
                score, cost = row["mean"] >= paper["mean"], relative <= 1 / 5
                wanted = (f"scores {row['mean']:.3f} against paper mode's {paper['mean']:.3f} at {relative:.2f} of its "
                          f"cost")
            else:
                low, high = paired_interval(row, paper)
                score, cost = low > 0, relative <= 1
                wanted = (f"scores {row['mean']:.3f} against paper mode's {paper['mean']:.3f}, difference "
                          f"{row['mean'] - paper['mean']:+.3f} ({low:+.3f} to {high:+.3f}), at {relative:.2f} of its cost")
            missed = [what for what, ok in (("score", score), ("cost", cost), ("KID", realism)) if not ok]
            lines.append(f"- {model}, {task}, {name}: {wanted}, KID {row['kid']:.0f} against {paper['kid']:.0f} ± "
                         f"{paper['kid_spread']:.0f}: " + (f"misses on {', '.join(missed)}" if missed else "meets its targets"))
    return lines


def retention_interval(row: dict, unguided: dict, paper: dict, draws: int = BOOTSTRAP_DRAWS) -> tuple[float, float]:
    """95% interval of the share of paper mode's gain over unguided that the row keeps, resampling targets and seeds
    with replacement, the same draw for the three rows."""
    generator = torch.Generator().manual_seed(0)
    tables = [torch.tensor(r["scores"]) for r in (row, unguided, paper)]
    t, s_ = tables[0].shape
    shares = []
    for _ in range(draws):
        pick_t, pick_s = torch.randint(t, (t,), generator=generator), torch.randint(s_, (s_,), generator=generator)
        mean_row, mean_unguided, mean_paper = (float(x[pick_t][:, pick_s].mean()) for x in tables)
        if mean_paper > mean_unguided:
            shares.append((mean_row - mean_unguided) / (mean_paper - mean_unguided))
    low, high = torch.quantile(torch.tensor(shares), torch.tensor([0.025, 0.975]))
    return float(low), float(high)


def preset_table(results: list[dict]) -> str:
    """Per task and model: paper mode's score and cost, and each preset's share of paper mode's gain over unguided
    (95% interval) and cost, as a multiple of an unguided run and as a share of paper mode's."""
    rows = {row_key(r): r for r in results}
    names = [n for n in ("fast", "balanced", "quality") if any(r["setting"] == f"{n} preset" for r in results)]
    lines = ["| model | task | paper mode (score, cost) | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for model, task in ((m, t) for m in MODELS for t in TASKS):
        unguided, paper = rows.get((model, task, UNGUIDED.name)), rows.get((model, task, PAPER.name))
        if not (unguided and paper):
            continue
        cells = []
        for name in names:
            row = rows.get((model, task, f"{name} preset"))
            if row is None:
                cells.append("–")
                continue
            low, high = retention_interval(row, unguided, paper)
            share = (row["mean"] - unguided["mean"]) / (paper["mean"] - unguided["mean"])
            cells.append(f"{share:.0%} ({low:.0%}–{high:.0%}), {row['sd15_cost']:.2f}× = "
                         f"{row['sd15_cost'] / paper['sd15_cost']:.2f} of paper")
        unit = " dB" if task == "inpainting" else ""
        lines.append(f"| {model} | {task} | {paper['mean']:.3f}{unit}, {paper['sd15_cost']:.1f}× | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def preset_summary(results: list[dict]) -> list[str]:
    """The README's presets table: per preset, over the task/model pairs with paper mode and unguided rows, its
    counted cost (× an unguided 20-step run, and as a share of paper mode's) and the share of paper mode's gain it
    keeps (median and range); tests/test_docs.py holds the README to these lines."""
    rows = {row_key(r): r for r in results}
    pairs = [(m, t) for m in MODELS for t in TASKS
             if (m, t, UNGUIDED.name) in rows and (m, t, PAPER.name) in rows]
    lines = []
    for name in ("fast", "balanced", "quality"):
        found = [(rows[(m, t, f"{name} preset")], rows[(m, t, UNGUIDED.name)], rows[(m, t, PAPER.name)])
                 for m, t in pairs if (m, t, f"{name} preset") in rows]
        if not found:
            continue
        costs = [row["sd15_cost"] for row, _, _ in found]
        shares = [row["sd15_cost"] / paper["sd15_cost"] for row, _, paper in found]
        kept = sorted((row["mean"] - unguided["mean"]) / (paper["mean"] - unguided["mean"])
                      for row, unguided, paper in found)
        median = (kept[(len(kept) - 1) // 2] + kept[len(kept) // 2]) / 2
        lines.append(f"| `{name}` | {min(costs):.2f}× to {max(costs):.2f}× ({min(shares):.2f} to {max(shares):.2f} of "
                     f"paper mode's) | {median:.0%} ({kept[0]:.0%} to {kept[-1]:.0%}) | {len(found)} |")
    papers = [rows[(m, t, PAPER.name)]["sd15_cost"] for m, t in pairs]
    lines.append(f"| `paper` | {min(papers):.1f}× to {max(papers):.1f}× | 100% by definition | {len(pairs)} |")
    return lines


def paired_interval(row: dict, other: dict) -> tuple[float, float]:
    """95% interval of the mean paired difference row − other over the same targets and seeds."""
    return bootstrap_interval(torch.tensor(row["scores"]) - torch.tensor(other["scores"]))


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (cost, score) points that no other point beats on both, cheapest first."""
    front, best = [], float("-inf")
    for cost, score in sorted(points, key=lambda p: (p[0], -p[1])):
        if score > best:
            front.append((cost, score))
            best = score
    return front


def plot(results: list[dict], path: str) -> None:
    """A PNG, one panel per task: score against SD 1.5 cost (log axis), unguided (square), paper mode (star) and
    the presets (diamonds) marked, each model's Pareto front drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(r["task"] == t for r in results)]
    figure, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 4), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        for model, colour in zip(MODELS, ("tab:blue", "tab:orange")):
            rows = [r for r in results if r["task"] == task and r["model"] == model]
            if not rows:
                continue
            costs, means = [r["sd15_cost"] for r in rows], [r["mean"] for r in rows]
            errors = [[r["mean"] - r["interval"][0] for r in rows], [r["interval"][1] - r["mean"] for r in rows]]
            axis.errorbar(costs, means, yerr=errors, fmt=".", color=colour, alpha=0.6, label=f"{model} settings")
            front = pareto_front(list(zip(costs, means)))
            axis.plot(*zip(*front), "-", color=colour, alpha=0.8, label=f"{model} Pareto front")
            for r in rows:
                marker = {UNGUIDED.name: "s", PAPER.name: "*"}.get(r["setting"], "D" if r["setting"].endswith(" preset") else None)
                marked = marker is not None
                if marked:
                    axis.plot(r["sd15_cost"], r["mean"], marker, color=colour, markersize=11, markeredgecolor="black")
                axis.annotate(r["setting"], (r["sd15_cost"], r["mean"]), textcoords="offset points", xytext=(4, 3),
                              fontsize=9 if marked else 6, color="black" if marked else colour)
        axis.set_xscale("log")
        axis.set_title(task)
        axis.set_xlabel("cost on SD 1.5, 512 px (unguided 20-step runs)")
        axis.set_ylabel("PSNR over known pixels (dB)" if task == "inpainting" else "held-out evaluator's score")
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write(results: list[dict], output: str, half: str, minutes: float | None = None) -> None:
    """The table, the rows as JSON and the plot, rewritten after every row so that a cut-off run keeps its rows."""
    timing = f" in {minutes:.1f} min on this machine" if minutes is not None else ""
    text = (markdown(results) + f"\n\n{len(results)} rows{timing}.\n\n"
            + "\n".join(claims(results) + preset_checks(results) + default_strength_checks(results)) + "\n\n"
            + "Each preset's share of paper mode's gain over unguided (95% interval) and its cost:\n\n"
            + preset_table(results) + "\n")
    with open(os.path.join(output, f"results_{half}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(output, f"results_{half}.json"), "w") as f:
        json.dump(results, f, indent=1)
    plot(results, os.path.join(output, f"frontier_{half}.png"))


def row_cost(task: str, setting: Setting) -> float:
    return expected_cost(task, setting) if setting.guided else sd_equivalent.unguided_multiple(setting.steps)


def costliest_first(rows: Sequence[tuple[str, str, Setting]]) -> list[int]:
    """Row indices by expected cost, costliest first: the order in which --jobs workers claim rows."""
    costs = [row_cost(task, setting) for _, task, setting in rows]  # each a stand-in engine run
    return sorted(range(len(rows)), key=lambda i: -costs[i])


def claim(claims: str, row: int) -> bool:
    """Whether this worker is the first to claim the row (creating its file is atomic)."""
    try:
        os.close(os.open(os.path.join(claims, str(row)), os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


def worker_outputs(output: str) -> list[str]:
    return sorted(glob.glob(os.path.join(output, "worker[0-9]*")))


def saved_rows(paths: Sequence[str]) -> list[dict]:
    """The rows in those of these results files that exist, one per (model, task, setting); a later file's wins."""
    rows = {}
    for path in filter(os.path.exists, paths):
        rows.update({row_key(r): r for r in json.load(open(path))})
    return list(rows.values())


def run_workers(args, rows: Sequence, todo: list[int], results: list[dict]) -> list[dict]:
    """--jobs: worker processes of this script, each with its share of the cores, claim the rows to do one at a
    time, costliest first, so that none waits while rows are left; their rows are printed as they come and
    joined with the earlier ones."""
    claims = os.path.join(args.output, "claims")
    for stale in worker_outputs(args.output) + glob.glob(claims):  # their rows are in `results` if they are wanted
        shutil.rmtree(stale)
    os.makedirs(claims)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    order = [todo[i] for i in costliest_first([rows[i] for i in todo])]
    command = [sys.executable, os.path.abspath(__file__), "--half", args.half, "--targets", str(args.targets),
               "--seeds", str(args.seeds), "--rows", args.rows, "--tasks", *args.tasks, "--models", *args.models,
               "--autocast", args.autocast, *(["--quick"] if args.quick else []),
               "--worker-rows", ",".join(map(str, order)), "--claims", claims]
    workers = []
    for n in range(min(args.jobs, len(order))):
        output = os.path.join(args.output, f"worker{n}")
        os.makedirs(output, exist_ok=True)
        with open(os.path.join(output, "log"), "w") as log:
            workers.append(subprocess.Popen(command + ["--output", output], stdout=log, stderr=subprocess.STDOUT,
                                            env=dict(os.environ, OMP_NUM_THREADS=str(threads))))
        print(f"worker {n}: {threads} thread(s), log in {output}/log", flush=True)
    paths = [os.path.join(output, f"results_{args.half}.json") for output in worker_outputs(args.output)]
    printed = set()
    while True:
        running = any(worker.poll() is None for worker in workers)
        for row in saved_rows(paths):
            if row_key(row) not in printed:
                printed.add(row_key(row))
                print(markdown([row]).splitlines()[-1], flush=True)
        if not running:
            break
        time.sleep(10)
    failed = [n for n, worker in enumerate(workers) if worker.returncode != 0]
    if failed:
        print(f"workers {failed} failed: see their logs; a rerun with --resume keeps the rows they finished", flush=True)
    position = {(m, t, s.name): i for i, (m, t, s) in enumerate(rows)}
    joined = {row_key(r): r for r in results + saved_rows(paths)}
    if not failed:
        for output in worker_outputs(args.output) + [claims]:
            shutil.rmtree(output)
    return sorted(joined.values(), key=lambda r: position.get(row_key(r), -1))


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--half", default="report", choices=splits.HALVES)
    parser.add_argument("--quick", action="store_true", help="4 rows on segmentation with the ε model, 4 targets × 1 seed")
    parser.add_argument("--targets", type=int, default=16, help="targets per row (default 16)")
    parser.add_argument("--seeds", type=int, default=2, help="sampling seeds per target (default 2)")
    parser.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS, help="only these tasks' rows")
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS, help="only these models' rows")
    parser.add_argument("--rows", default="all", choices=ROW_GROUPS,
                        help="main: unguided, paper mode and the presets everywhere; sweep: the levers and combinations; "
                             "strength: the auto schedule against raw w (not in all)")
    parser.add_argument("--output", default=os.path.join(PACK_DIR, "bench-output", "frontier"))
    parser.add_argument("--resume", action="store_true", help="keep the rows already in --output's results and run the rest")
    parser.add_argument("--jobs", type=int, default=1,
                        help="worker processes that share the rows and the cores (default 1); 2 on a 2-core machine")
    parser.add_argument("--autocast", default="off", choices=("off", "bf16"),
                        help="the guided rows' autocast, the sampler's own input (default off)")
    parser.add_argument("--worker-rows", help="run only these rows (indices into the row list; what --jobs gives a worker)")
    parser.add_argument("--claims", help="a folder of claimed rows: run only the listed rows no other worker has claimed")
    parser.add_argument("--replot", nargs="+", metavar="JSON",
                        help="sample nothing: write the table and plot of these runs' rows (results_<half>.json) together")
    args = parser.parse_args(argv)
    if args.quick:
        args.targets, args.seeds = 4, 1
    os.makedirs(args.output, exist_ok=True)
    if args.replot:
        results = [row for path in args.replot for row in json.load(open(path))]
        write(results, args.output, args.half)
        print(f"wrote {args.output}/results_{args.half}.md, .json and frontier_{args.half}.png from {len(results)} rows")
        return results
    rows = [(model, task, dataclasses.replace(setting, levers=setting.levers.replace(autocast=args.autocast))
             if setting.guided else setting)
            for model, task, setting in rows_to_run(args.quick, args.models, args.tasks, args.rows)]
    results = (saved_rows([os.path.join(path, f"results_{args.half}.json") for path in [args.output, *worker_outputs(args.output)]])
               if args.resume else [])
    autocast = {(model, task, setting.name): setting.levers.autocast for model, task, setting in rows}
    results = [r for r in results if r.get("autocast", "off") == autocast.get(row_key(r), r.get("autocast", "off"))]
    done = {row_key(r) for r in results}  # a row saved under another autocast runs again
    todo = [i for i, (model, task, setting) in enumerate(rows) if (model, task, setting.name) not in done]
    if args.worker_rows:
        todo = [int(i) for i in args.worker_rows.split(",")]
    print(f"{args.half} half, {args.targets} targets × {args.seeds} seeds per row, {len(todo)} rows to run", flush=True)
    started = time.time()
    if args.jobs > 1:
        results = run_workers(args, rows, todo, results)
        if results:
            write(results, args.output, args.half, (time.time() - started) / 60)
    else:
        toy = Toy(ComfyHost(os.environ["COMFYUI_PATH"]))
        features = evaluation.RealismFeatures(toy.evaluators["classifier"])
        real = evaluation.real_scenes()
        for i in todo:
            model, task, setting = rows[i]
            if model not in toy.models or (args.claims and not claim(args.claims, i)):
                continue
            results.append(run_row(toy, features, real, model, task, setting, args.half, args.targets, args.seeds))
            print(markdown(results[-1:]).splitlines()[-1], flush=True)
            write(results, args.output, args.half, (time.time() - started) / 60)
    print(f"\n{len(todo)} rows in {(time.time() - started) / 60:.1f} min; wrote {args.output}/results_{args.half}.md, "
          f".json and frontier_{args.half}.png")
    return results


if __name__ == "__main__":
    main()
