"""The guided sampler in the graphs users build, through ComfyUI's executor: after a LoRA, a ControlNet, fp8 weights,
core model patches, v-prediction with zero terminal SNR, img2img, masks, batches, a hires second pass, each
scheduler, another node's model_function_wrapper, SDXL's refiner and Flux.

Each row runs, in one prompt, a plain sampler (before), the guided sampler, and the same plain sampler again
(after), ordered by the tests' UGDTestModelAfter node, once with the gradient through the UNet and once with
x0_only. It checks that the guided run completes, lowers its loss against the plain run of the same seed, leaves
the MODEL giving bitwise the same latent after it, and repeats no warning. docs/compatibility.md tabulates the
rows on both hosts.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import graphs
from test_comfyui import images, latent, run_ok

SEED, STEPS, CFG = 3, 5, 4.0
WIDTH, HEIGHT = 64, 48
CONTROLNET_CHANNELS = 64  # ComfyUI builds a ControlNet of an unknown model with 64-channel attention heads
METHODS = {
    # forward guidance with its gradient through the UNet, and the same without the UNet's backward pass
    "through_unet": dict(gradient="through_unet"),
    "x0_only": dict(gradient="x0_only"),
}


@dataclasses.dataclass
class Row:
    """What a row changes in the base graph: `build(graph, files)` adds its nodes and returns the changed refs."""

    build: callable
    needs: tuple[str, ...] = ()  # node classes the host must have
    scheduler: str = "normal"
    denoise: float = 1.0
    options: dict = dataclasses.field(default_factory=dict)  # levers for the options node


def base(graph, files):
    return {}


def lora(graph, files):
    graph["lora"] = {"class_type": "LoraLoaderModelOnly",
                     "inputs": {"model": ["1", 0], "lora_name": files["lora"], "strength_model": 1.0}}
    return {"model": ["lora", 0]}


def controlnet(graph, files):
    graph["1"]["inputs"]["model_channels"] = CONTROLNET_CHANNELS
    graph["cn"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": files["controlnet"]}}
    graph["hint"] = {"class_type": "LoadImage", "inputs": {"image": files["source"]}}
    graph["apply"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["2", 0], "negative": ["3", 0], "control_net": ["cn", 0], "image": ["hint", 0],
        "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
    return {"positive": ["apply", 0], "negative": ["apply", 1]}


def fp8(graph, files):
    graph["1"]["inputs"]["weight_dtype"] = "fp8_e4m3fn"
    return {}


def patch(class_type, **inputs):
    def build(graph, files):
        graph["patch"] = {"class_type": class_type, "inputs": {"model": ["1", 0], **inputs}}
        return {"model": ["patch", 0]}
    return build


def encoded_source(graph, files):
    graph["src"] = {"class_type": "LoadImage", "inputs": {"image": files["source"]}}
    graph["enc"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["src", 0], "vae": ["1", 2]}}
    return ["enc", 0]


def masked(graph, files, value):
    """The encoded source with a noise mask: `value` in the right half, 0 (kept) in the left."""
    graph["m1"] = {"class_type": "SolidMask", "inputs": {"value": value, "width": WIDTH // 2, "height": HEIGHT}}
    graph["m0"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": WIDTH, "height": HEIGHT}}
    graph["mask"] = {"class_type": "MaskComposite", "inputs": {"destination": ["m0", 0], "source": ["m1", 0],
                                                               "x": WIDTH // 2, "y": 0, "operation": "add"}}
    graph["noise_mask"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": encoded_source(graph, files),
                                                                          "mask": ["mask", 0]}}
    return ["noise_mask", 0]


def differential_diffusion(graph, files):
    graph["patch"] = {"class_type": "DifferentialDiffusion", "inputs": {"model": ["1", 0]}}
    return {"model": ["patch", 0], "latent": masked(graph, files, 0.7)}


def inpainting(graph, files):
    return {"latent": masked(graph, files, 1.0)}


def img2img(graph, files):
    return {"latent": encoded_source(graph, files)}


def batch_4(graph, files):
    graph["rep"] = {"class_type": "RepeatLatentBatch", "inputs": {"samples": ["4", 0], "amount": 4}}
    return {"latent": ["rep", 0]}


def batch_index(graph, files):
    graph["rep"] = {"class_type": "RepeatLatentBatch", "inputs": {"samples": ["4", 0], "amount": 4}}
    graph["pick"] = {"class_type": "LatentFromBatch", "inputs": {"samples": ["rep", 0], "batch_index": 2, "length": 1}}
    return {"latent": ["pick", 0]}


def hires_second_pass(graph, files):
    first = graphs.plain_sampler(graph, "first", steps=3)
    graph["up"] = {"class_type": "LatentUpscaleBy", "inputs": {"samples": first,
                                                               "upscale_method": "nearest-exact", "scale_by": 1.5}}
    return {"latent": ["up", 0]}


def other_wrapper(graph, files):
    graph["patch"] = {"class_type": "UGDTestOtherWrapper", "inputs": {"model": ["1", 0]}}
    return {"model": ["patch", 0]}


def align_your_steps(graph, files):
    graph["sigmas"] = {"class_type": "AlignYourStepsScheduler", "inputs": {"model_type": "SD1", "steps": STEPS,
                                                                          "denoise": 1.0}}
    return {"sigmas": ["sigmas", 0]}


def family(name, latent_node="EmptyLatentImage", flux_guidance=False):
    def build(graph, files):
        graph["1"] = {"class_type": "UGDStandInModelFamily", "inputs": {"family": name, "seed": 0}}
        graph["4"] = {"class_type": latent_node, "inputs": {"width": WIDTH, "height": HEIGHT, "batch_size": 1}}
        refs = {"model": ["1", 0], "vae": ["1", 1], "positive": ["1", 2], "negative": ["1", 3]}
        if flux_guidance:
            graph["fg"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["1", 2], "guidance": 3.5}}
            refs["positive"] = ["fg", 0]
        return refs
    build.family = name
    return build


ROWS = {
    "plain": Row(base),
    "lora": Row(lora, ("LoraLoaderModelOnly",)),
    "controlnet": Row(controlnet, ("ControlNetApplyAdvanced",)),
    "fp8_e4m3fn": Row(fp8),
    "freeu_v2": Row(patch("FreeU_V2", b1=1.3, b2=1.4, s1=0.9, s2=0.2), ("FreeU_V2",)),
    "perturbed_attention": Row(patch("PerturbedAttentionGuidance", scale=3.0), ("PerturbedAttentionGuidance",)),
    "self_attention": Row(patch("SelfAttentionGuidance", scale=0.5, blur_sigma=2.0), ("SelfAttentionGuidance",)),
    "rescale_cfg": Row(patch("RescaleCFG", multiplier=0.7), ("RescaleCFG",)),
    "differential_diffusion": Row(differential_diffusion, ("DifferentialDiffusion",)),
    "v_prediction_zsnr": Row(patch("ModelSamplingDiscrete", sampling="v_prediction", zsnr=True),
                             ("ModelSamplingDiscrete",)),
    "img2img": Row(img2img, denoise=0.5),
    "inpainting": Row(inpainting, ("SetLatentNoiseMask",)),
    "batch_4": Row(batch_4, ("RepeatLatentBatch",)),
    "batch_index": Row(batch_index, ("LatentFromBatch",)),
    "hires_second_pass": Row(hires_second_pass, ("LatentUpscaleBy",), denoise=0.5),
    "karras": Row(base, scheduler="karras"),
    "exponential": Row(base, scheduler="exponential"),
    "sgm_uniform": Row(base, scheduler="sgm_uniform"),
    "beta": Row(base, scheduler="beta"),
    "align_your_steps": Row(align_your_steps, ("AlignYourStepsScheduler", "SamplerCustom")),
    "other_wrapper": Row(other_wrapper),
    "sdxl": Row(family("sdxl")),
    "sdxl_refiner": Row(family("sdxl_refiner")),
    "flux": Row(family("flux", "EmptySD3LatentImage", flux_guidance=True), ("FluxGuidance",)),
    # gradient checkpointing finds each family's blocks (a model without any would run without it, and warn)
    "sdxl_checkpointing": Row(family("sdxl"), options=dict(checkpointing=True)),
    "sd3_checkpointing": Row(family("sd3", "EmptySD3LatentImage"), options=dict(checkpointing=True)),
    "flux_checkpointing": Row(family("flux", "EmptySD3LatentImage", flux_guidance=True), ("FluxGuidance",),
                              options=dict(checkpointing=True)),
}


MASKED = ("inpainting", "differential_diffusion")


@pytest.fixture(scope="module")
def files(comfy, tmp_path_factory):
    """The rows' inputs, written by the test: a reference and a source image, a LoRA and a ControlNet of the
    stand-in SD 1.5."""
    folder = tmp_path_factory.mktemp("compatibility_models")
    input_dir = comfy.folder_paths.get_input_directory()
    pixels = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    pixels[:, : WIDTH // 2, 0] = 230
    Image.fromarray(pixels).save(f"{input_dir}/compat_reference.png")
    source = np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, 3), np.uint8)
    Image.fromarray(source).save(f"{input_dir}/compat_source.png")
    stand_ins = comfy.pack_module("nodes.stand_ins")
    model = stand_ins.stand_in_model(0).model
    generator = torch.Generator().manual_seed(5)
    lora_sd = {}
    for name, key in sorted(sys.modules["comfy.lora"].model_lora_keys_unet(model, {}).items()):
        weight = dict(model.named_parameters()).get(key) if isinstance(key, str) else None
        if not name.startswith("lora_unet_") or weight is None or weight.ndim != 2:
            continue
        lora_sd[f"{name}.lora_up.weight"] = torch.randn(weight.shape[0], 2, generator=generator) * 0.1
        lora_sd[f"{name}.lora_down.weight"] = torch.randn(2, weight.shape[1], generator=generator) * 0.1
        lora_sd[f"{name}.alpha"] = torch.tensor(2.0)
    assert lora_sd, "the stand-in has no LoRA keys"
    (folder / "loras").mkdir()
    save_file(lora_sd, str(folder / "loras" / "compat_lora.safetensors"))
    cldm = sys.modules["comfy.cldm.cldm"]
    config = {k: v for k, v in stand_ins.UNET_CONFIG.items() if k not in ("out_channels", "transformer_depth_output")}
    control = stand_ins.randomize(cldm.ControlNet(
        hint_channels=3, **{**config, "model_channels": CONTROLNET_CHANNELS}, num_heads=-1, num_head_channels=64,
        device="cpu", operations=sys.modules["comfy.ops"].disable_weight_init), 7)
    (folder / "controlnet").mkdir()
    save_file({k: v.contiguous() for k, v in control.state_dict().items()},
              str(folder / "controlnet" / "compat_controlnet.safetensors"))
    comfy.folder_paths.add_model_folder_path("loras", str(folder / "loras"))
    comfy.folder_paths.add_model_folder_path("controlnet", str(folder / "controlnet"))
    return {"lora": "compat_lora.safetensors", "controlnet": "compat_controlnet.safetensors",
            "reference": "compat_reference.png", "source": "compat_source.png"}


def row_graph(row: Row, files: dict, method: str, prefix: str) -> dict:
    """Before (b), guided (g) and after (a), each saved as a latent and an image."""
    graph = graphs.base_graph(width=WIDTH, height=HEIGHT, batch=1)
    refs = {"model": ["1", 0], "vae": ["1", 2], "positive": ["2", 0], "negative": ["3", 0], "latent": ["4", 0],
            **row.build(graph, files)}
    graph["ref"] = {"class_type": "LoadImage", "inputs": {"image": files["reference"]}}
    guidance = graphs.reconstruction_guidance(graph, "6", ["ref", 0], weight=1.0, schedule="auto", backward_steps=0)

    def plain(node, model):
        if "sigmas" in refs:
            graph[node + "s"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}}
            graph[node] = {"class_type": "SamplerCustom", "inputs": {
                "model": model, "add_noise": True, "noise_seed": SEED, "cfg": CFG, "positive": refs["positive"],
                "negative": refs["negative"], "sampler": [node + "s", 0], "sigmas": refs["sigmas"],
                "latent_image": refs["latent"]}}
        else:
            graph[node] = {"class_type": "KSampler", "inputs": {
                "model": model, "positive": refs["positive"], "negative": refs["negative"],
                "latent_image": refs["latent"], "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "ddim",
                "scheduler": row.scheduler, "denoise": row.denoise}}
        return [node, 0]

    def saved(node, samples):
        graph[node + "d"] = {"class_type": "VAEDecode", "inputs": {"samples": samples, "vae": refs["vae"]}}
        graph[node + "i"] = {"class_type": "SaveImage", "inputs": {"images": [node + "d", 0],
                                                                   "filename_prefix": f"{prefix}_{node}"}}
        graph[node + "l"] = {"class_type": "SaveLatent", "inputs": {"samples": samples,
                                                                    "filename_prefix": f"latents/{prefix}_{node}"}}

    saved("b", plain("b", refs["model"]))
    graph["gm"] = {"class_type": "UGDTestModelAfter", "inputs": {"model": refs["model"], "after": ["b", 0]}}
    graph["go"] = graphs.options_node(**METHODS[method], **row.options)
    if "sigmas" in refs:
        graph["gs"] = {"class_type": "UGDGuidedSampler", "inputs": {
            "vae": refs["vae"], "guidance": guidance, "sampler_name": "ddim", "preset": "custom", "options": ["go", 0]}}
        graph["g"] = {"class_type": "SamplerCustom", "inputs": {
            "model": ["gm", 0], "add_noise": True, "noise_seed": SEED, "cfg": CFG, "positive": refs["positive"],
            "negative": refs["negative"], "sampler": ["gs", 0], "sigmas": refs["sigmas"],
            "latent_image": refs["latent"]}}
    else:
        graph["g"] = {"class_type": "UGDGuidedKSampler", "inputs": {
            "model": ["gm", 0], "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "ddim",
            "scheduler": row.scheduler, "positive": refs["positive"], "negative": refs["negative"],
            "latent_image": refs["latent"], "denoise": row.denoise, "vae": refs["vae"], "guidance": guidance,
            "preset": "custom", "options": ["go", 0]}}
    saved("g", ["g", 0])
    graph["am"] = {"class_type": "UGDTestModelAfter", "inputs": {"model": refs["model"], "after": ["g", 0]}}
    saved("a", plain("a", ["am", 0]))
    return graph


class Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = Counter()

    def emit(self, record):
        self.messages[record.getMessage()] += 1


def missing_nodes(comfy, row: Row) -> list[str]:
    graph = graphs.base_graph()
    row.build(graph, {"lora": "", "controlnet": "", "source": ""})
    needed = set(row.needs) | {node["class_type"] for node in graph.values()}
    return sorted(needed - set(comfy.nodes.NODE_CLASS_MAPPINGS))


def reconstruction_error(pixels: np.ndarray, reference: np.ndarray, columns: slice) -> np.ndarray:
    """Per-image mean squared error to the reference in these columns."""
    return ((pixels - reference)[:, :, columns] ** 2).reshape(len(pixels), -1).mean(1)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ROWS)
def test_guided_sampling_in_a_users_graph(comfy, files, name, method):
    row = ROWS[name]
    missing = missing_nodes(comfy, row)
    if missing:
        pytest.skip(f"this ComfyUI has no {', '.join(missing)}")
    if name == "beta" and "beta" not in sys.modules["comfy.samplers"].KSampler.SCHEDULERS:
        pytest.skip("this ComfyUI has no beta scheduler")
    if hasattr(row.build, "family"):  # a stand-in family the host may not have
        spec = comfy.pack_module("nodes.stand_in_families").FAMILIES[row.build.family]
        if not hasattr(sys.modules["comfy.supported_models"], spec["model"]):
            pytest.skip(f"this ComfyUI has no {spec['model']}")
    wrapper_calls = (sys.modules[comfy.nodes.NODE_CLASS_MAPPINGS["UGDTestOtherWrapper"].__module__].WRAPPER_CALLS
                     if name == "other_wrapper" else None)
    calls_before = list(wrapper_calls) if wrapper_calls else None
    prefix = f"compat_{name}_{method}"
    warnings = Warnings()
    logging.getLogger().addHandler(warnings)
    try:
        result = run_ok(comfy, row_graph(row, files, method, prefix))
    finally:
        logging.getLogger().removeHandler(warnings)

    repeated = {message: n for message, n in warnings.messages.items() if n > 1}
    assert not repeated, repeated
    assert not [m for m in warnings.messages if "no blocks to checkpoint" in m]
    before, after = latent(comfy, f"{prefix}_b"), latent(comfy, f"{prefix}_a")
    assert torch.equal(before, after), "the MODEL gives another latent after the guided run"
    reference = np.asarray(Image.open(f"{comfy.folder_paths.get_input_directory()}/{files['reference']}"),
                           np.float32) / 255
    plain_images, guided_images = images(comfy, result, "bi"), images(comfy, result, "gi")
    if plain_images.shape[1:3] != reference.shape[:2]:  # the hires pass: the reference at the sampled size
        reference = np.asarray(Image.fromarray((reference * 255).astype(np.uint8)).resize(
            plain_images.shape[2:0:-1], Image.BICUBIC), np.float32) / 255
    # under a noise mask, only its right half may change
    columns = slice(WIDTH // 2, None) if name in MASKED else slice(None)
    plain_error = reconstruction_error(plain_images, reference, columns)
    guided_error = reconstruction_error(guided_images, reference, columns)
    assert (guided_error < plain_error).all(), (guided_error, plain_error)
    if name == "inpainting":  # the kept half is left as the plain sampler leaves it
        kept = (slice(None), slice(None), slice(None), slice(None, latent(comfy, f"{prefix}_g").shape[-1] // 2 - 1))
        assert torch.allclose(latent(comfy, f"{prefix}_g")[kept], before[kept], atol=1e-4)
    if wrapper_calls is not None:  # in the guided passes too: with autograd on through the UNet, or a third run
        if method == "through_unet":
            assert wrapper_calls[1] > calls_before[1], "the other node's wrapper was left out of the guided passes"
        assert wrapper_calls[0] - calls_before[0] >= 3 * STEPS
