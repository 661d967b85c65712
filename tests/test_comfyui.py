"""Guided sampling through a real ComfyUI executor (COMFYUI_PATH), with tiny random-weight stand-in models."""
from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import graphs


def images(comfy, result, node):
    files = result.outputs[node]["images"]
    return np.stack([np.asarray(Image.open(os.path.join(comfy.output_dir, f["subfolder"], f["filename"])), np.float32) / 255 for f in files])


def latent(comfy, prefix):
    (path,) = sorted(glob.glob(os.path.join(comfy.output_dir, "latents", f"{prefix}_*.latent")))[-1:]
    return load_file(path)["latent_tensor"]


def run_ok(comfy, graph):
    result = comfy.run(graph)
    assert result.success, result.errors
    return result


def error_text(result):
    assert not result.success
    return str(result.errors)


def clip_loss(comfy, pixels, text="a red square"):
    """The stand-in CLIP guidance loss of saved images, recomputed outside the graph."""
    stand_ins = comfy.pack_module("nodes.stand_ins")
    clip = comfy.pack_module("guidance.clip_similarity")
    model = clip.small_random_clip(0)
    loss = clip.CLIPSimilarityLoss(model, clip.encode_text(model, stand_ins.STAND_IN_CLIP_TOKENIZER, text)).bind("cpu")
    with torch.no_grad():
        return loss(torch.from_numpy(pixels).movedim(-1, 1))


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_guided_run_is_deterministic_works_with_batch_2_and_leaves_the_models_usable(comfy, sampler):
    graph = graphs.base_graph(batch=2)
    guidance = graphs.clip_guidance(graph, weight=0.05, backward_steps=1)
    guided = graphs.guided_sampler(graph, "7", guidance, sampler=sampler)
    graphs.save(graph, "8", guided, "det_guided")
    # A plain KSampler and VAEDecode after the guided run, on the same MODEL and VAE.
    plain = graphs.plain_sampler(graph, "9", latent=guided, sampler_name="euler", denoise=0.5)
    graphs.save(graph, "10", plain, "det_plain")
    first = run_ok(comfy, graph)
    second = run_ok(comfy, graph)
    a, b = images(comfy, first, "8"), images(comfy, second, "8")
    assert a.shape == (2, 48, 64, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a[0], a[1])
    plain_images = images(comfy, first, "10")
    assert plain_images.shape == (2, 48, 64, 3) and np.isfinite(plain_images).all()


def test_clip_guidance_ends_with_a_lower_loss_than_the_same_seed_unguided(comfy):
    graph = graphs.base_graph(batch=2)
    guidance = graphs.clip_guidance(graph, weight=0.005, backward_steps=10, backward_lr=0.2)
    graphs.save(graph, "8", graphs.guided_sampler(graph, "7", guidance, steps=6, recurrence=2), "clip_guided")
    graphs.save(graph, "10", graphs.plain_sampler(graph, "9", steps=6), "clip_unguided")
    result = run_ok(comfy, graph)
    guided, unguided = clip_loss(comfy, images(comfy, result, "8")), clip_loss(comfy, images(comfy, result, "10"))
    assert (guided < unguided - 2).all(), (guided, unguided)


@pytest.fixture
def reference_image(comfy):
    """A 64x48 reference image with a red left half, in ComfyUI's input folder."""
    pixels = np.zeros((48, 64, 3), np.uint8)
    pixels[:, :32] = (220, 30, 30)
    pixels[:, 32:] = (30, 30, 220)
    path = os.path.join(comfy.folder_paths.get_input_directory(), "ugd_test_reference.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path)
    return "ugd_test_reference.png", pixels.astype(np.float32) / 255


def test_reconstruction_guidance_ends_closer_to_the_reference_than_unguided(comfy, reference_image):
    filename, pixels = reference_image
    graph = graphs.base_graph(batch=1)
    guidance = graphs.reconstruction_guidance(graph, "6", graphs.load_image(graph, "5", filename), backward_steps=10, backward_lr=0.5)
    graphs.save(graph, "8", graphs.guided_sampler(graph, "7", guidance, steps=6, recurrence=1), "rec_guided")
    graphs.save(graph, "10", graphs.plain_sampler(graph, "9", steps=6), "rec_unguided")
    result = run_ok(comfy, graph)
    guided_error = ((images(comfy, result, "8") - pixels) ** 2).mean()
    unguided_error = ((images(comfy, result, "10") - pixels) ** 2).mean()
    assert guided_error < 0.85 * unguided_error, (guided_error, unguided_error)


@pytest.mark.parametrize("method, settings, sampler_settings", [
    ("ugd", dict(backward_steps=10, backward_lr=0.5), {}),
    ("freedom", dict(weight=0.5, backward_steps=0), dict(recurrence=2)),
    ("mpgd", dict(backward_steps=5, backward_lr=1e5), {}),
    ("dps", dict(weight=2000.0, backward_steps=0), dict(sampler="ddpm", steps=12)),
    ("tfg", dict(weight=0.05, backward_steps=4, backward_lr=1e4), dict(smoothing=0.1)),
    ("tfg", dict(weight=0.05, backward_steps=4, backward_lr=1e4),
     dict(smoothing=0.1, rho_schedule="decrease", mu_schedule="constant", smoothing_schedule="constant")),
])
def test_each_method_runs_through_the_executor_towards_the_reference(comfy, reference_image, method, settings,
                                                                      sampler_settings):
    """Against the same sampler and method with a guidance of weight 0, which gives the same noise."""
    filename, pixels = reference_image
    graph = graphs.base_graph(batch=1)
    no_op = graphs.clip_guidance(graph, node="11", weight=0.0)  # its CLIP model is node 5
    guidance = graphs.reconstruction_guidance(graph, "6", graphs.load_image(graph, "12", filename), **settings)
    sampler = {"recurrence": 1, "steps": 6, **sampler_settings, "method": method}
    graphs.save(graph, "8", graphs.guided_sampler(graph, "7", guidance, **sampler), method)
    graphs.save(graph, "10", graphs.guided_sampler(graph, "9", no_op, **sampler), method + "_unguided")
    result = run_ok(comfy, graph)
    guided, unguided = images(comfy, result, "8"), images(comfy, result, "10")
    assert np.isfinite(guided).all()
    assert ((guided - pixels) ** 2).mean() < 0.9 * ((unguided - pixels) ** 2).mean()


def test_zero_strength_guidance_matches_comfyuis_own_ddim(comfy):
    graph = graphs.base_graph(batch=1)
    graphs.save(graph, "8", graphs.guided_sampler(graph, "7", graphs.clip_guidance(graph, weight=0.0, backward_steps=0), recurrence=1), "zero_guided")
    graphs.save(graph, "10", graphs.plain_sampler(graph, "9"), "zero_plain")
    run_ok(comfy, graph)
    torch.testing.assert_close(latent(comfy, "zero_guided"), latent(comfy, "zero_plain"), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampling_node, inputs", [
    ("ModelSamplingDiscrete", {"sampling": "v_prediction", "zsnr": False}),
    ("ModelSamplingSD3", {"shift": 3.0}),  # a flow (CONST) model: x = (1 − σ)·x0 + σ·ε
], ids=["v-prediction", "flow"])
def test_v_prediction_and_flow_models(comfy, sampling_node, inputs):
    if sampling_node not in comfy.nodes.NODE_CLASS_MAPPINGS:
        pytest.skip(f"this ComfyUI has no {sampling_node} (flow models arrived 2024-06)")
    graph = graphs.base_graph(batch=1)
    graph["ms"] = {"class_type": sampling_node, "inputs": {"model": ["1", 0], **inputs}}
    zero = graphs.guided_sampler(graph, "7", graphs.clip_guidance(graph, node="6z", weight=0.0), recurrence=1, model=["ms", 0])
    graphs.save(graph, "8", zero, "param_zero")
    graph["9"] = {"class_type": "KSampler", "inputs": {
        "model": ["ms", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": 1,
        "steps": 4, "cfg": 5.0, "sampler_name": "ddim", "scheduler": "normal", "denoise": 1.0}}
    graphs.save(graph, "10", ["9", 0], "param_plain")
    guided = graphs.guided_sampler(graph, "11", graphs.clip_guidance(graph, weight=0.005, backward_steps=2), model=["ms", 0])
    graphs.save(graph, "12", guided, "param_guided")
    run_ok(comfy, graph)
    torch.testing.assert_close(latent(comfy, "param_zero"), latent(comfy, "param_plain"), rtol=1e-4, atol=1e-4)
    out = latent(comfy, "param_guided")
    assert torch.isfinite(out).all() and not torch.allclose(out, latent(comfy, "param_plain"))


def test_sampler_node_in_sampler_custom_matches_the_all_in_one_node(comfy):
    graph = graphs.base_graph(batch=1)
    guidance = graphs.clip_guidance(graph, weight=0.05, backward_steps=1)
    graphs.save(graph, "8", graphs.guided_sampler(graph, "7", guidance, seed=5, recurrence=2), "node_ksampler")
    graph["11"] = {"class_type": "UGDGuidedSampler", "inputs": {"vae": ["1", 2], "guidance": guidance, "sampler_name": "ddim",
                                                               "preset": "custom", "options": ["7o", 0]}}
    graph["12"] = {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 4, "denoise": 1.0}}
    graph["13"] = {"class_type": "SamplerCustom", "inputs": {
        "model": ["1", 0], "add_noise": True, "noise_seed": 5, "cfg": 5.0, "positive": ["2", 0], "negative": ["3", 0],
        "sampler": ["11", 0], "sigmas": ["12", 0], "latent_image": ["4", 0]}}
    graphs.save(graph, "14", ["13", 0], "node_custom")
    run_ok(comfy, graph)
    torch.testing.assert_close(latent(comfy, "node_custom"), latent(comfy, "node_ksampler"), rtol=1e-4, atol=1e-4)


def test_sampler_node_in_sampler_custom_advanced(comfy):
    if "SamplerCustomAdvanced" not in comfy.nodes.NODE_CLASS_MAPPINGS:
        pytest.skip("this ComfyUI has no SamplerCustomAdvanced (added 2024-04)")
    graph = graphs.base_graph(batch=1)
    guidance = graphs.clip_guidance(graph, weight=0.05, backward_steps=1)
    graphs.save(graph, "8", graphs.guided_sampler(graph, "7", guidance, seed=5, recurrence=2), "adv_ksampler")
    graph["11"] = {"class_type": "UGDGuidedSampler", "inputs": {"vae": ["1", 2], "guidance": guidance, "sampler_name": "ddim",
                                                               "preset": "custom", "options": ["7o", 0]}}
    graph["12"] = {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 4, "denoise": 1.0}}
    graph["13"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}}
    graph["14"] = {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "cfg": 5.0}}
    graph["15"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["13", 0], "guider": ["14", 0], "sampler": ["11", 0], "sigmas": ["12", 0], "latent_image": ["4", 0]}}
    graphs.save(graph, "16", ["15", 0], "adv_custom")
    run_ok(comfy, graph)
    torch.testing.assert_close(latent(comfy, "adv_custom"), latent(comfy, "adv_ksampler"), rtol=1e-4, atol=1e-4)


def test_guidance_vae_decodes_for_the_loss_only(comfy):
    graph = graphs.base_graph(batch=1)
    graph["other"] = {"class_type": "UGDStandInCheckpoint", "inputs": {"seed": 1}}
    guidance = graphs.clip_guidance(graph, weight=0.05, backward_steps=1)
    graphs.save(graph, "8", graphs.guided_sampler(graph, "7", guidance, guidance_vae=["other", 2]), "gvae_other")
    graphs.save(graph, "10", graphs.guided_sampler(graph, "9", guidance), "gvae_same")
    result = run_ok(comfy, graph)
    assert not torch.allclose(latent(comfy, "gvae_other"), latent(comfy, "gvae_same"))
    assert images(comfy, result, "8").shape == (1, 48, 64, 3)


def test_combined_guidance_respects_the_latent_noise_mask(comfy, reference_image):
    filename, _ = reference_image
    graph = graphs.base_graph(batch=1)
    image = graphs.load_image(graph, "5i", filename)
    graph["m0"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 48}}
    graph["m1"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 48}}
    graph["mask"] = {"class_type": "MaskComposite", "inputs": {
        "destination": ["m0", 0], "source": ["m1", 0], "x": 0, "y": 0, "operation": "add"}}
    graph["noise_mask"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["4", 0], "mask": ["mask", 0]}}
    graph["c"] = {"class_type": "UGDCombineGuidance", "inputs": {
        "guidance_1": graphs.clip_guidance(graph, weight=0.01, backward_steps=2),
        "guidance_2": graphs.reconstruction_guidance(graph, "6r", image, start_percent=0.5)}}
    graphs.save(graph, "8", graphs.guided_sampler(graph, "7", ["c", 0], latent=("noise_mask", 0)), "masked")
    run_ok(comfy, graph)
    out = latent(comfy, "masked")
    assert out.shape == (1, 4, 6, 8)
    assert torch.allclose(out[..., 4:], torch.zeros(()), atol=1e-4), "the area outside the noise mask must keep the input latent"
    assert out[..., :4].abs().mean() > 0.1


@pytest.mark.parametrize("change, message", [
    (dict(recurrence=0), "recurrence"),
    (dict(steps=0), "steps"),
])
def test_bad_sampler_settings_are_rejected_before_running(comfy, change, message):
    graph = graphs.base_graph(batch=1)
    graphs.guided_sampler(graph, "7", graphs.clip_guidance(graph, weight=1.0), **change)
    graphs.save(graph, "8", ["7", 0], "bad")
    assert message in error_text(comfy.run(graph))


def test_negative_weight_is_rejected(comfy):
    graph = graphs.base_graph(batch=1)
    graphs.guided_sampler(graph, "7", graphs.clip_guidance(graph, weight=-1.0))
    graphs.save(graph, "8", ["7", 0], "bad")
    assert "weight" in error_text(comfy.run(graph))


@pytest.mark.parametrize("size, batch, message", [((40, 40), 1, "cannot be resized"), ((64, 48), 3, "batch of 3")])
def test_guidance_images_that_do_not_fit_the_latent_are_rejected(comfy, size, batch, message):
    graph = graphs.base_graph(batch=2)
    graph["img"] = {"class_type": "EmptyImage", "inputs": {"width": size[0], "height": size[1], "batch_size": batch, "color": 0}}
    graphs.guided_sampler(graph, "7", graphs.reconstruction_guidance(graph, "6", ["img", 0]))
    graphs.save(graph, "8", ["7", 0], "bad")
    text = error_text(comfy.run(graph))
    assert message in text
    assert "ValueError" in text


def test_missing_clip_weight_file_is_named_with_where_to_put_it(comfy):
    graph = graphs.base_graph(batch=1)
    graphs.guided_sampler(graph, "7", graphs.loaded_clip_guidance(graph, "RN50", "missing.safetensors", "openai"))
    graphs.save(graph, "8", ["7", 0], "bad")
    text = error_text(comfy.run(graph))
    assert "missing.safetensors" in text and os.path.join("models", "ugd") in text


def test_clip_guidance_model_loads_from_a_file_in_the_ugd_folder(comfy, tmp_path):
    import open_clip
    from safetensors.torch import save_file

    config = {"embed_dim": 32,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "ugd-test-tiny.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "ugd-test-tiny.json")
    model = open_clip.create_model("ugd-test-tiny")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "tiny_clip.safetensors")
    comfy.folder_paths.add_model_folder_path("ugd", str(tmp_path))
    graph = graphs.base_graph(batch=1)
    guidance = graphs.loaded_clip_guidance(graph, "ugd-test-tiny", "tiny_clip.safetensors", text="a dog", weight=0.01)
    graphs.save(graph, "8", graphs.guided_sampler(graph, "7", guidance, recurrence=1), "file_clip")
    run_ok(comfy, graph)


def test_out_of_memory_says_what_to_change_and_keeps_comfyuis_own_handling(comfy, monkeypatch, caplog):
    host = comfy.pack_module("nodes.guided_sampling")

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(host, "sample_universal_guidance", out_of_memory)
    graph = graphs.base_graph(batch=1)
    graphs.guided_sampler(graph, "7", graphs.clip_guidance(graph, weight=1.0))
    graphs.save(graph, "8", ["7", 0], "oom")
    with caplog.at_level("ERROR"):
        text = error_text(comfy.run(graph))
    assert "OutOfMemoryError" in text
    assert any("TAESD guidance_vae" in r.getMessage() for r in caplog.records)


def test_failed_clip_download_says_where_to_put_the_file(comfy):
    graph = graphs.base_graph(batch=1)
    graphs.guided_sampler(graph, "7", graphs.loaded_clip_guidance(graph, "RN50", "(download pretrained_tag)", "no-such-tag"))
    graphs.save(graph, "8", ["7", 0], "bad")
    text = error_text(comfy.run(graph))
    assert "Could not get open_clip weights RN50/no-such-tag" in text and os.path.join("models", "ugd") in text
