"""The toy world in a real ComfyUI (COMFYUI_PATH): its shipped weights are ComfyUI's own model classes, and
the shipped demo's segmentation guidance beats unguided sampling on the held-out evaluator."""
from __future__ import annotations

import functools
import importlib
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import guided_nodes
from guidance.segmentation import voc_palette
from toy_world import data, evaluation, networks, splits
from toy_world.diffusion import WEIGHTS_DIR

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(PACK_DIR, "workflows", "api", "toy_world_segmentation_guidance.json")
HELD_OUT = range(3_000_000, 3_000_032)  # scenes no toy network was trained on


def node(comfy, name):
    return comfy.nodes.NODE_CLASS_MAPPINGS[name]()


def test_shipped_weights_stay_under_20_mb():
    files = os.listdir(WEIGHTS_DIR)
    assert len([f for f in files if f.endswith(".safetensors")]) == 10
    assert sum(os.path.getsize(os.path.join(WEIGHTS_DIR, f)) for f in files) < 20e6


def test_toy_model_and_vae_load_into_comfyuis_own_classes(comfy):
    model_base = importlib.import_module("comfy.model_base")
    model_patcher = importlib.import_module("comfy.model_patcher")
    sd = importlib.import_module("comfy.sd")
    openaimodel = importlib.import_module("comfy.ldm.modules.diffusionmodules.openaimodel")
    autoencoder = importlib.import_module("comfy.ldm.models.autoencoder")
    with torch.inference_mode():
        model, vae, unconditional, cheap_vae = node(comfy, "UGDToyWorldLoader").load()
    assert isinstance(model, model_patcher.ModelPatcher) and isinstance(model.model, model_base.BaseModel)
    assert isinstance(model.model.diffusion_model, openaimodel.UNetModel)
    assert isinstance(vae, sd.VAE) and isinstance(vae.first_stage_model, autoencoder.AutoencoderKL)
    cheap_autoencoder = comfy.pack_module("toy_world.cheap_decoder").CheapAutoencoder  # the pack's copy of the module
    assert isinstance(cheap_vae, sd.VAE) and isinstance(cheap_vae.first_stage_model, cheap_autoencoder)
    images = data.batch(HELD_OUT[:8])[0]
    with torch.inference_mode():
        latents = vae.encode(images.movedim(1, -1))
        decoded = vae.decode(latents).movedim(-1, 1)
        cheaply = node(comfy, "VAEDecode").decode(cheap_vae, {"samples": latents})[0].movedim(-1, 1)
        (encoded,) = node(comfy, "VAEEncode").encode(cheap_vae, images.movedim(1, -1))
    assert latents.shape == encoded["samples"].shape == (8, 4, 16, 16)
    everywhere = torch.ones(1, 64, 64)
    assert evaluation.masked_psnr(decoded, images, everywhere).mean() > 20  # trained, not random
    to_decoder, to_scenes = (evaluation.masked_psnr(cheaply, i, everywhere).mean() for i in (decoded, images))
    assert to_decoder > to_scenes + 1  # distilled from that decoder, not trained on the scenes
    assert to_scenes > 20


def test_the_cheap_vae_guides_as_the_sampler_s_guidance_vae_and_leaves_both_vaes_usable(comfy):
    """Segmentation guidance through the cheap decoder, on 4 seeds: the held-out segmenter finds the demo's map in
    the guided samples (decoded by the full VAE) far better than in the unguided ones."""
    with torch.inference_mode():
        model, vae, unconditional, cheap_vae = node(comfy, "UGDToyWorldLoader").load()
        segmenter, _, _ = node(comfy, "UGDToyWorldGuidanceNetworks").load()
        (latent,) = node(comfy, "UGDEmptyToyWorldLatent").generate(4)
        target = torch.from_numpy(data.scene(2_000_017).segmentation).long()
        target_picture = voc_palette()[target].float()[None] / 255
        (guidance,) = node(comfy, "UGDSegmentationGuidance").guide(
            segmenter, "circle", "background", target_map=target_picture, weight=100.0, schedule="paper",
            backward_steps=0, backward_lr=0.1, optimizer="adam", start_percent=0.0, end_percent=1.0)
        common = dict(model=model, positive=unconditional, negative=unconditional, latent_image=latent, seed=5,
                      steps=20, cfg=1.0, scheduler="ddim_uniform", denoise=1.0)
        before = node(comfy, "VAEDecode").decode(cheap_vae, latent)[0]
        guided, _ = guided_nodes.ksampler(comfy, vae=vae, guidance=guidance, recurrence=4, guidance_vae=cheap_vae,
                                          **common)
        (unguided,) = node(comfy, "KSampler").sample(sampler_name="euler", **common)
        pictures = [vae.decode(samples["samples"]).movedim(-1, 1).clone() for samples in (guided, unguided)]
        assert torch.equal(node(comfy, "VAEDecode").decode(cheap_vae, latent)[0], before)
    evaluator = networks.load("segmenter", "evaluator")
    guided_score, unguided_score = (evaluation.segmentation_score(evaluator, p, target.expand(4, -1, -1)) for p in pictures)
    assert guided_score.mean() > unguided_score.mean() + 0.2, (guided_score, unguided_score)


@functools.cache
def held_out_scores(role: str) -> dict:
    """The scores docs/toy-world.md's network table gives, on the 256 test scenes that no network trained on."""
    scenes = [data.scene(seed) for seed in splits.TEST_SEEDS]
    images, maps = data.batch(splits.TEST_SEEDS)
    labels = [networks.labels(s) for s in scenes]
    with torch.no_grad():
        segmentation = networks.load("segmenter", role)(images)["out"].argmax(1)
        named = networks.load("classifier", role)(images) > 0
        presence, boxes = networks.load("box_predictor", role)(images)
    present = torch.stack([label["classes"] for label in labels]).bool()
    shapes = torch.stack([label["present"] for label in labels]).bool()
    return {"mIoU": evaluation.mean_iou(segmentation, maps).mean().item(),
            "found": ((named & present).sum() / present.sum()).item(),
            "presence": ((presence > 0) == shapes).float().mean().item(),
            "box IoU": networks.iou(boxes[shapes], torch.stack([label["boxes"] for label in labels])[shapes]).mean().item(),
            "false per image": ((named & ~present).sum() / len(present)).item()}


@pytest.mark.parametrize("role", networks.ROLES)
def test_guide_and_evaluator_networks_are_trained(role):
    scores = held_out_scores(role)
    assert scores["mIoU"] > 0.6 and scores["found"] > 0.3 and scores["false per image"] < 0.5, scores
    assert scores["presence"] > 0.7 and scores["box IoU"] > 0.35, scores


def test_every_evaluator_grades_at_least_as_well_as_the_guide_it_checks():
    guide, evaluator = held_out_scores("guide"), held_out_scores("evaluator")
    assert all(evaluator[name] >= guide[name] for name in ("mIoU", "found", "presence", "box IoU")), (guide, evaluator)
    assert evaluator["false per image"] <= guide["false per image"], (guide, evaluator)


def test_guidance_networks_plug_into_the_usual_guidance_nodes(comfy):
    with torch.inference_mode():
        segmenter, classifier, detector = node(comfy, "UGDToyWorldGuidanceNetworks").load()
        settings = dict(weight=1.0, schedule="paper", backward_steps=0, backward_lr=0.01, optimizer="adam",
                        start_percent=0.0, end_percent=1.0)
        mask = torch.zeros(1, 64, 64)
        mask[:, 10:30, 10:30] = 1
        (segmentation,) = node(comfy, "UGDSegmentationGuidance").guide(segmenter, "triangle", "background", mask=mask, **settings)
        (classification,) = node(comfy, "UGDClassifierGuidance").guide(classifier, "red circle", **settings)
        (location,) = node(comfy, "UGDObjectLocationGuidance").guide(detector, "circle 0.1 0.1 0.5 0.5", "auto", 0, **settings)
    images = data.batch(HELD_OUT[:2])[0]
    for guidance in (segmentation, classification, location):
        (term,) = guidance
        values = term.loss.bind(torch.device("cpu"))(images)
        assert values.shape == (2,) and torch.isfinite(values).all()
    with pytest.raises(ValueError, match="no class 'dog'.*circle, square, triangle, cross"):
        node(comfy, "UGDSegmentationGuidance").guide(segmenter, "dog", "background", mask=mask, **settings)
    with pytest.raises(ValueError, match="Did you mean 'red circle'"):
        node(comfy, "UGDClassifierGuidance").guide(classifier, "red circel", **settings)
    with pytest.raises(ValueError, match="one box per shape.*circle"):
        node(comfy, "UGDObjectLocationGuidance").guide(detector, "circle 0 0 .5 .5\ncircle .5 .5 1 1", "auto", 0, **settings)
    with pytest.raises(ValueError, match="Unknown object class 'dog'"):
        node(comfy, "UGDObjectLocationGuidance").guide(detector, "dog 0 0 .5 .5", "auto", 0, **settings)


def test_image_grid_puts_columns_side_by_side_and_rejects_other_sizes(comfy):
    grid_node = node(comfy, "UGDImageGrid")
    red, blue = torch.zeros(2, 8, 8, 3), torch.zeros(1, 8, 8, 3)
    red[..., 0], blue[..., 2] = 1, 1
    (grid,) = grid_node.grid(red, blue, 2)
    assert grid.shape == (1, 2 + 2 * 10, 2 + 2 * 10, 3)
    assert grid[0, 12, 2].tolist() == [1, 0, 0] and grid[0, 12, 12].tolist() == [0, 0, 1]  # second row, both columns
    assert grid[0, 0, 0].tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="image_2 is 4x8"):
        grid_node.grid(red, torch.zeros(1, 8, 4, 3), 2)


def cells(grid: np.ndarray, rows: int, columns: int, gap: int = 2) -> np.ndarray:
    """The (rows, columns, 64, 64, 3) pictures of an Image Grid."""
    step = data.SIZE + gap
    return np.stack([[grid[gap + r * step: gap + r * step + data.SIZE, gap + c * step: gap + c * step + data.SIZE]
                      for c in range(columns)] for r in range(rows)])


def test_demo_workflow_guides_towards_the_map_better_than_unguided(comfy):
    """The shipped demo through ComfyUI's executor: over its 4 seeds, the held-out segmenter finds the target map
    in the guided samples far better than in the unguided ones of the same seeds."""
    with open(DEMO) as f:
        prompt = json.load(f)
    shutil.copy(os.path.join(PACK_DIR, "workflows", "inputs", "ugd_toy_segmentation_map.png"), comfy.folder_paths.get_input_directory())
    result = comfy.run(prompt)
    assert result.success, result.errors
    saved = {image["filename"].rsplit("_", 2)[0]: os.path.join(comfy.output_dir, image["subfolder"], image["filename"])
             for output in result.outputs.values() for image in output.get("images", [])}
    assert set(saved) == {"ugd_toy_segmentation_grid", "ugd_toy_segmentation_loss_plot"}
    assert np.asarray(Image.open(saved["ugd_toy_segmentation_loss_plot"])).shape == (360, 640, 3)
    grid = np.asarray(Image.open(saved["ugd_toy_segmentation_grid"]), np.float32) / 255
    pictures = torch.from_numpy(cells(grid, rows=4, columns=3)).permute(0, 1, 4, 2, 3)
    target = data.scene(2_000_017).segmentation
    assert (pictures[0, 0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8).any(axis=-1).sum() == (target > 0).sum()
    evaluator = networks.load("segmenter", "evaluator")
    maps = torch.from_numpy(target).long().expand(4, -1, -1)
    unguided = evaluation.segmentation_score(evaluator, pictures[:, 1], maps)
    guided = evaluation.segmentation_score(evaluator, pictures[:, 2], maps)
    assert guided.mean() > unguided.mean() + 0.25, (guided, unguided)
    assert (guided > unguided).sum() >= 3, (guided, unguided)


def test_kid_puts_real_scenes_near_real_and_noisy_samples_further_than_unguided(comfy):
    """KID's checks on images whose answer is known, with 128 unguided samples through ComfyUI's KSampler."""
    with torch.inference_mode():
        model, vae, unconditional, _ = node(comfy, "UGDToyWorldLoader").load()
        latent = node(comfy, "UGDEmptyToyWorldLatent").generate(batch_size=128)[0]
        samples = node(comfy, "KSampler").sample(model, 7, 20, 1.0, "euler", "ddim_uniform", unconditional, unconditional, latent)[0]
        unguided = vae.decode(samples["samples"]).movedim(-1, 1).clone()
    checks = evaluation.kid_checks(evaluation.RealismFeatures(networks.load("classifier", "evaluator")), unguided)
    (real, real_spread), (sampled, _), (noisy, _) = checks.values()
    assert abs(real) < 2 * real_spread + 0.05 * sampled, checks
    assert real < sampled < noisy, checks
