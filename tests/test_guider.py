"""The Universal Guidance Guider under SamplerCustomAdvanced with ComfyUI's own samplers: it lowers the guidance
loss against CFGGuider with the same noise, keeps to the latent's noise mask, and refuses the levers that need
the pack's sampler loop before sampling."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import graphs
from test_comfyui import error_text, images, latent, run_ok
from test_compatibility import HEIGHT, WIDTH, files, masked, reconstruction_error  # noqa: F401 (fixture)

SAMPLERS = ["dpmpp_2m", "euler_ancestral", "uni_pc"]


@pytest.fixture(autouse=True)
def guiders(comfy):
    if "UGDGuider" not in comfy.nodes.NODE_CLASS_MAPPINGS:
        pytest.skip("this ComfyUI has no guiders (SamplerCustomAdvanced came in 2024-04)")


def guider_graph(files, sampler, prefix, options=None, mask=False):
    """CFGGuider (p) and the Universal Guidance Guider (u), each through SamplerCustomAdvanced with one noise."""
    graph = graphs.base_graph(width=WIDTH, height=HEIGHT, batch=2)
    latent_ref = masked(graph, files, 1.0) if mask else ["4", 0]
    graph["ref"] = {"class_type": "LoadImage", "inputs": {"image": files["reference"]}}
    guidance = graphs.reconstruction_guidance(graph, "6", ["ref", 0], weight=1.0, schedule="auto", backward_steps=2)
    graph["go"] = graphs.options_node(**(options or {}))
    graph["p"] = {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                        "cfg": 4.0}}
    graph["u"] = {"class_type": "UGDGuider", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                        "cfg": 4.0, "vae": ["1", 2], "guidance": guidance,
                                                        "options": ["go", 0]}}
    graph["k"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}}
    graph["s"] = {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "karras", "steps": 6,
                                                            "denoise": 1.0}}
    graph["n"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 4}}
    for guider in ("p", "u"):
        graph[guider + "x"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["n", 0], "guider": [guider, 0], "sampler": ["k", 0], "sigmas": ["s", 0],
            "latent_image": latent_ref}}
        graphs.save(graph, guider + "i", [guider + "x", 0], f"{prefix}_{guider}")
    return graph


def reference(comfy, files):
    return np.asarray(Image.open(f"{comfy.folder_paths.get_input_directory()}/{files['reference']}"), np.float32) / 255


@pytest.mark.parametrize("method", ["ugd", "mpgd"])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_the_guider_lowers_the_loss_with_comfyuis_samplers(comfy, files, sampler, method):
    options = {"method": method, "gradient": "through_unet" if method == "ugd" else "x0_only"}
    result = run_ok(comfy, guider_graph(files, sampler, f"guider_{sampler}_{method}", options))
    plain, guided = images(comfy, result, "pi"), images(comfy, result, "ui")
    target = reference(comfy, files)
    assert (reconstruction_error(guided, target, slice(None)) < reconstruction_error(plain, target, slice(None))).all()


def test_the_guider_keeps_to_the_latents_noise_mask(comfy, files):
    run_ok(comfy, guider_graph(files, "dpmpp_2m", "guider_mask", mask=True))
    plain, guided = latent(comfy, "guider_mask_p"), latent(comfy, "guider_mask_u")
    kept = slice(None, plain.shape[-1] // 2 - 1)
    assert torch.allclose(guided[..., kept], plain[..., kept], atol=1e-4)
    assert not torch.allclose(guided[..., plain.shape[-1] // 2 + 1:], plain[..., plain.shape[-1] // 2 + 1:])


@pytest.mark.parametrize("lever, value, named", [("recurrence", 3, "recurrence"), ("method", "freedom", "freedom"),
                                                  ("particles", 4, "particles")])
def test_the_guider_refuses_the_sampler_loops_levers_naming_them_before_sampling(comfy, files, lever, value, named):
    result = comfy.run(guider_graph(files, "euler", f"guider_refused_{lever}", {lever: value}))
    text = error_text(result)
    assert named in text and "Universal Guidance Sampler" in text, text
