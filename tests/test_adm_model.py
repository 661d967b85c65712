"""guided-diffusion's pixel-space model and noise-aware classifier in ComfyUI (COMFYUI_PATH).

No official weights can be had here: the paper's configuration is checked against the official checkpoints' keys and
shapes (adm/manifests, written from guided-diffusion's own code) on the meta device, and a tiny random-weight
configuration samples through ComfyUI's KSampler and the guided sampler.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import graphs
from test_comfyui import error_text, images, latent, run_ok

BOXES = "dog 0.1 0.1 0.6 0.6"
GUIDANCES = {  # guidance node, its network's stand-in and its inputs
    "clip": ("UGDCLIPTextGuidance", "UGDStandInCLIPGuidanceModel", "clip_model", {"text": "a red square"}),
    "location": ("UGDObjectLocationGuidance", "UGDStandInObjectDetector", "detector",
                 {"boxes": BOXES, "units": "auto", "proposal_seed": 0}),
    "classifier": ("UGDNoiseAwareClassifierGuidance", "UGDStandInNoiseAwareClassifier", "classifier",
                   {"target_class": "goldfish"}),
}
SETTINGS = dict(weight=0.0, schedule="paper", backward_steps=0, backward_lr=0.01, optimizer="adam", start_percent=0.0,
                end_percent=1.0)


def guidance_node(graph, node, kind, weight):
    class_type, stand_in, network_input, inputs = GUIDANCES[kind]
    graph[node + "n"] = {"class_type": stand_in, "inputs": {"seed": 0}}
    settings = {k: v for k, v in {**SETTINGS, "weight": weight}.items()
                if kind != "classifier" or k in ("weight", "schedule", "start_percent", "end_percent")}
    graph[node] = {"class_type": class_type, "inputs": {network_input: [node + "n", 0], **inputs, **settings}}
    return [node, 0]


def adm_graph(kinds, weight, prefix):
    """Stand-in ADM model (1), an empty 64×64 pixel latent (4), the guidances combined (6), the guided sampler (7)
    saved as 8, and a plain KSampler (9) after it on the same MODEL and VAE, saved as 10."""
    graph = {"1": {"class_type": "UGDStandInADMModel", "inputs": {"seed": 0}},
             "4": {"class_type": "UGDEmptyPixelImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}}}
    nodes = [guidance_node(graph, f"g{i}", kind, weight) for i, kind in enumerate(kinds)]
    guidance = nodes[0] if len(nodes) == 1 else ["6", 0]
    if len(nodes) > 1:
        graph["6"] = {"class_type": "UGDCombineGuidance",
                      "inputs": {f"guidance_{i + 1}": node for i, node in enumerate(nodes)}}
    graphs.guided_sampler(graph, "7", guidance, steps=3, cfg=1.0, vae=["1", 1], positive=["1", 2],
                          negative=["1", 2], recurrence=2)
    graph["9"] = plain_ksampler(["7", 0], denoise=0.5)
    for node, samples in (("8", ["7", 0]), ("10", ["9", 0])):
        graph[node + "d"] = {"class_type": "VAEDecode", "inputs": {"samples": samples, "vae": ["1", 1]}}
        graph[node] = {"class_type": "SaveImage", "inputs": {"images": [node + "d", 0], "filename_prefix": prefix}}
    return graph


def plain_ksampler(samples, denoise=1.0):
    return {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": ["1", 2], "negative": ["1", 2], "latent_image": samples, "seed": 3, "steps": 3,
        "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": denoise}}


@pytest.fixture
def pack(comfy):
    return lambda name: comfy.pack_module(name)


@pytest.mark.parametrize("name", ["256x256_diffusion_uncond", "256x256_diffusion", "128x128_diffusion",
                                  "512x512_diffusion", "128x128_classifier", "256x256_classifier",
                                  "512x512_classifier"])
def test_each_release_has_the_official_checkpoints_keys_and_shapes(pack, name):
    """The paper's model and classifier, and the other releases the loaders take."""
    networks, configs = pack("adm.networks"), pack("adm.configs")
    architecture, size = configs.MANIFESTS[name]
    network_class = networks.ADMClassifier if name.endswith("classifier") else networks.ADMUNet
    network = network_class(**architecture, device="meta")  # up to 559 M parameters, no memory
    assert all(p.is_meta for p in network.parameters())
    assert {k: list(v.shape) for k, v in network.state_dict().items()} == configs.manifest(name)
    releases = configs.CLASSIFIERS if name.endswith("classifier") else configs.DIFFUSION_MODELS
    assert configs.identify(network.state_dict(), releases) == (name, "")
    assert str(size) in name and architecture.get("image_size", size) == size


def test_a_checkpoint_of_another_layout_is_described(pack):
    configs = pack("adm.configs")
    shapes = configs.manifest("256x256_classifier")
    state = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    assert "keys are missing, e.g. time_embed.0.weight" in configs.layout_problem(
        {k: v for k, v in state.items() if k != "time_embed.0.weight"}, "256x256_classifier")
    assert "out.2.c_proj.weight has shape [10, 512, 1]" in configs.layout_problem(
        {**state, "out.2.c_proj.weight": torch.empty(10, 512, 1, device="meta")}, "256x256_classifier")
    assert "keys the checkpoint has not, e.g. label_emb.weight" in configs.layout_problem(
        {**state, "label_emb.weight": torch.empty(1)}, "256x256_classifier")


def test_the_model_is_comfyuis_eps_model_on_guided_diffusions_schedule(comfy, pack):
    import comfy.model_base

    model = pack("nodes.stand_ins").stand_in_adm_model(0)
    sampling = model.model.model_sampling
    assert model.model.model_type == comfy.model_base.ModelType.EPS
    schedule = pack("guidance.noise_aware_classifier").linear_alphas_cumprod()
    torch.testing.assert_close(sampling.sigmas.double(), ((1 - schedule) / schedule).sqrt(), rtol=1e-5, atol=0)
    # ComfyUI's timestep for a σ is the one the noise-aware classifier reads, on and between the schedule's steps
    # (ComfyUI before 2024-06 rounds it to the nearest step)
    classifier = pack("nodes.stand_ins").stand_in_noise_aware_classifier(0)
    on_steps = sampling.sigmas[[0, 10, 500, 999]]
    torch.testing.assert_close(classifier.timestep(on_steps), sampling.timestep(on_steps).float(), atol=2e-3, rtol=0)
    between = (sampling.sigmas[[100]] * sampling.sigmas[[101]]).sqrt()
    assert classifier.timestep(between).item() == pytest.approx(100.5, abs=0.01)
    assert abs(sampling.timestep(between).item() - 100.5) <= 0.51


def test_the_pixel_vae_maps_images_to_latents_in_minus_one_to_one_and_back(pack):
    vae = pack("nodes.adm_model").pixel_space_vae()
    image = torch.rand(2, 64, 32, 3)
    latent_image = vae.encode(image)
    assert latent_image.shape == (2, 3, 64, 32)
    torch.testing.assert_close(latent_image, image.movedim(-1, 1) * 2 - 1)
    torch.testing.assert_close(vae.decode(latent_image * 1.5), ((latent_image * 1.5 + 1) / 2).clamp(0, 1).movedim(1, -1))
    assert pack("nodes.host_models").vae_scale(vae) == 1


@pytest.mark.parametrize("kinds", [("clip",), ("location",), ("classifier",), ("clip", "location", "classifier")])
def test_each_guidance_samples_through_the_guided_sampler_and_a_plain_ksampler_works_after_it(comfy, kinds):
    prefix = "adm_" + "_".join(kinds)
    guided = run_ok(comfy, adm_graph(kinds, weight=2.0, prefix=prefix))
    unguided = run_ok(comfy, adm_graph(kinds, weight=0.0, prefix=prefix + "_unguided"))
    guided_images, plain_images = images(comfy, guided, "8"), images(comfy, guided, "10")
    assert guided_images.shape == plain_images.shape == (2, 64, 64, 3)
    assert np.isfinite(plain_images).all()
    assert np.abs(guided_images - images(comfy, unguided, "8")).max() > 1 / 255, "the guidance must act"


def test_a_plain_ksampler_gives_the_same_latent_after_a_guided_run(comfy):
    def plain_run(prefix):
        graph = {"1": {"class_type": "UGDStandInADMModel", "inputs": {"seed": 0}},
                 "4": {"class_type": "UGDEmptyPixelImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
                 "9": plain_ksampler(["4", 0]),
                 "9d": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 1]}},
                 "10": {"class_type": "SaveImage", "inputs": {"images": ["9d", 0], "filename_prefix": prefix}},
                 "11": {"class_type": "SaveLatent", "inputs": {"samples": ["9", 0], "filename_prefix": f"latents/{prefix}"}}}
        result = run_ok(comfy, graph)
        return latent(comfy, prefix), images(comfy, result, "10")

    before, before_image = plain_run("adm_plain_before")
    run_ok(comfy, adm_graph(("clip", "classifier"), weight=2.0, prefix="adm_between"))
    after, after_image = plain_run("adm_plain_after")
    assert torch.equal(before, after) and np.array_equal(before_image, after_image)
    # VAEDecode of the pixel model's latent is the latent moved from [−1, 1] to [0, 1]
    expected = ((before[0].movedim(0, -1) + 1) / 2).clamp(0, 1).numpy()
    assert np.abs(after_image[0] - expected).max() <= 1 / 255 + 1e-6


def test_the_noise_aware_classifier_refuses_a_latent_that_is_not_its_image(comfy):
    graph = adm_graph(("classifier",), weight=1.0, prefix="adm_bad")
    graph["4"]["inputs"].update(width=96, height=64)
    text = error_text(comfy.run(graph))
    assert "3-channel 64×64 image" in text and "(3, 64, 96)" in text and "Empty Pixel Image" in text


@pytest.mark.parametrize("loader, inputs, names", [
    ("UGDADMModelLoader", {"ckpt_name": "256x256_diffusion_uncond.pt"},
     ["256x256_diffusion_uncond.pt", "unet", "openaipublic.blob.core.windows.net/diffusion/jul-2021/"]),
    ("UGDNoiseAwareClassifierLoader", {"weights": "256x256_classifier.pt"},
     ["256x256_classifier.pt", os.path.join("models", "ugd"), "jul-2021/256x256_classifier.pt"]),
])
def test_a_missing_checkpoint_is_named_with_where_to_get_it_and_where_it_goes(comfy, loader, inputs, names):
    graph = adm_graph(("classifier",), weight=1.0, prefix="adm_missing")
    if loader == "UGDADMModelLoader":
        graph["1"] = {"class_type": loader, "inputs": inputs}
    else:
        graph["g0n"] = {"class_type": loader, "inputs": inputs}
    text = error_text(comfy.run(graph))
    for name in names:
        assert name in text


def test_a_class_conditional_model_samples_the_class_it_is_given(comfy):
    def run(conditioning, prefix):
        graph = {"1": {"class_type": "UGDStandInADMModel", "inputs": {"seed": 0, "class_conditional": True}},
                 "4": {"class_type": "UGDEmptyPixelImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
                 "9": plain_ksampler(["4", 0]),
                 "11": {"class_type": "SaveLatent", "inputs": {"samples": ["9", 0], "filename_prefix": f"latents/{prefix}"}}}
        if conditioning is not None:
            graph["2"] = {"class_type": "UGDADMClassConditioning", "inputs": {"class_name": conditioning}}
            graph["9"]["inputs"].update(positive=["2", 0], negative=["2", 0])
        return graph

    run_ok(comfy, run("goldfish", "adm_goldfish"))
    run_ok(comfy, run("207", "adm_retriever"))
    assert not torch.equal(latent(comfy, "adm_goldfish"), latent(comfy, "adm_retriever"))
    assert "connect ADM Class Conditioning" in error_text(comfy.run(run(None, "adm_no_class")))
    assert "Unknown class 'goldfsh'" in error_text(comfy.run(run("goldfsh", "adm_typo")))


def test_a_file_of_another_network_is_named_before_the_model_is_built(comfy, monkeypatch, tmp_path):
    torch.save({"time_embed.0.weight": torch.zeros(4, 4)}, tmp_path / "not_adm.pt")
    folders = comfy.folder_paths
    name = folders.map_legacy("unet") if hasattr(folders, "map_legacy") else "unet"  # diffusion_models from 2024-08
    monkeypatch.setitem(folders.folder_names_and_paths, name, ([str(tmp_path)], folders.folder_names_and_paths[name][1]))
    graph = adm_graph(("clip",), weight=1.0, prefix="adm_wrong")
    graph["1"] = {"class_type": "UGDADMModelLoader", "inputs": {"ckpt_name": "not_adm.pt"}}
    text = error_text(comfy.run(graph))
    assert "not_adm.pt is not a guided-diffusion UNet the loader knows" in text
    assert "keys are missing" in text and "256x256_diffusion_uncond.pt" in text and "512x512_diffusion.pt" in text


@pytest.mark.skipif(not os.environ.get("UGD_GUIDED_DIFFUSION"),
                    reason="set UGD_GUIDED_DIFFUSION to a checkout of openai/guided-diffusion to compare with its code")
def test_the_networks_compute_what_guided_diffusions_own_code_computes(pack, monkeypatch):
    """The same random weights in guided-diffusion's UNetModel and EncoderUNetModel and in the pack's networks."""
    monkeypatch.syspath_prepend(os.environ["UGD_GUIDED_DIFFUSION"])
    from guided_diffusion import unet as official

    networks = pack("adm.networks")
    small = dict(model_channels=64, num_res_blocks=1, attention_resolutions=(2, 4), channel_mult=(1, 2, 2),
                 num_head_channels=32)
    by_heads = {**small, "num_heads": 4, "num_head_channels": -1}  # the 128 px model's attention
    options = dict(image_size=64, in_channels=3, use_scale_shift_norm=True, resblock_updown=True)
    torch.manual_seed(0)
    x, t, y = torch.randn(2, 3, 64, 64), torch.tensor([10.0, 700.0]), torch.tensor([3, 7])
    pairs = [(official.UNetModel(out_channels=6, **options, **small), networks.ADMUNet(**small), {}),
             (official.UNetModel(out_channels=6, num_classes=10, **options, **by_heads),
              networks.ADMUNet(num_classes=10, **by_heads), {"y": y}),
             (official.EncoderUNetModel(out_channels=10, pool="attention", **options, **small),
              networks.ADMClassifier(image_size=64, num_classes=10, **small), {})]
    for reference, ours, labels in pairs:
        with torch.no_grad():
            for p in reference.parameters():
                p.normal_(0, 0.05)
            ours.load_state_dict(reference.state_dict(), strict=True)
            expected = reference.eval()(x, t, **labels)
            torch.testing.assert_close(ours.eval()(x, t, **labels), expected[:, :3] if expected.ndim == 4 else expected,
                                       rtol=1e-4, atol=1e-6)
