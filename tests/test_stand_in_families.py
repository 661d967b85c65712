"""Guided sampling through ComfyUI's executor on tiny random-weight SDXL, SD3 and Flux stand-ins, with each
family's own conditioning (SDXL's pooled vector and sizes, SD3's pooled vector, Flux's guidance input)."""
from __future__ import annotations

import importlib

import numpy as np
import pytest

import graphs
from test_comfyui import images, run_ok

FAMILIES = {"sdxl": ("SDXL", "EmptyLatentImage"), "sd3": ("SD3", "EmptySD3LatentImage"),
            "flux": ("Flux", "EmptySD3LatentImage")}


def supported_models():
    """ComfyUI's model families (imported by name: the fixture is called comfy too)."""
    return importlib.import_module("comfy.supported_models")


def family_graph(family, weight):
    """Stand-in family (1), latent (4), CLIP guidance (5, 6), the guided sampler (7) saved as 8, and a plain
    KSampler (9) after it on the same MODEL and VAE, from the guided latent, saved as 10."""
    graph = {"1": {"class_type": "UGDStandInModelFamily", "inputs": {"family": family, "seed": 0}},
             "4": {"class_type": FAMILIES[family][1], "inputs": {"width": 64, "height": 64, "batch_size": 1}}}
    guidance = graphs.clip_guidance(graph, weight=weight)
    graphs.guided_sampler(graph, "7", guidance, steps=3, cfg=2.0, vae=["1", 1], positive=["1", 2],
                          negative=["1", 3], recurrence=2)
    graph["9"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": ["1", 2], "negative": ["1", 3], "latent_image": ["7", 0], "seed": 1,
        "steps": 3, "cfg": 2.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 0.5}}
    for node, samples in (("8", ["7", 0]), ("10", ["9", 0])):
        graph[node + "d"] = {"class_type": "VAEDecode", "inputs": {"samples": samples, "vae": ["1", 1]}}
        graph[node] = {"class_type": "SaveImage", "inputs": {"images": [node + "d", 0], "filename_prefix": family}}
    return graph


@pytest.mark.parametrize("family", FAMILIES)
def test_guidance_runs_on_each_family_and_a_plain_ksampler_works_after_it(comfy, family):
    if not hasattr(supported_models(), FAMILIES[family][0]):
        pytest.skip(f"this ComfyUI has no {FAMILIES[family][0]}")
    guided = run_ok(comfy, family_graph(family, weight=5.0))
    unguided = run_ok(comfy, family_graph(family, weight=0.0))
    guided_images, plain_images = images(comfy, guided, "8"), images(comfy, guided, "10")
    assert guided_images.shape == plain_images.shape == (1, 64, 64, 3)
    assert np.isfinite(plain_images).all()
    assert not np.array_equal(guided_images, images(comfy, unguided, "8"))  # the guidance acted


def test_a_family_the_host_lacks_is_named_with_the_fix(comfy):
    families = comfy.pack_module("nodes.stand_in_families")
    missing = [f for f, spec in families.FAMILIES.items() if not hasattr(supported_models(), spec["model"])]
    if not missing:
        pytest.skip("this ComfyUI has every family")
    with pytest.raises(RuntimeError, match="update ComfyUI"):
        families.stand_in_family_model(missing[0], 0)
