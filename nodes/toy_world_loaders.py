"""The toy world in ComfyUI: its trained MODEL and VAE, an empty latent of its size, and its guidance networks.

Everything loads from toy_world/weights in the pack, so these nodes need no model files and no download.
"""
from __future__ import annotations

import copy

import torch

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.supported_models_base

from ..guidance.classifier import ImageClassifier, Preprocessing
from ..guidance.segmentation import Segmenter
from ..toy_world import data, networks
from ..toy_world.cheap_decoder import CheapAutoencoder, load_cheap_decoder
from ..toy_world.diffusion import (FLOW_SAMPLING, FLOW_UNET_FILE, LATENT_CHANNELS, LATENT_DOWNSCALE, SAMPLING, UNET_CONFIG,
                                  UNET_FILE, VAE_CONFIG, VAE_FILE, latent_metadata, read_weights)
from .classifier_guidance import CLASSIFIER_MODEL
from .network_weights import LoaderNode, managed
from .object_location_guidance import DETECTOR_MODEL
from .segmentation_guidance import SEGMENTATION_MODEL

UNCONDITIONAL = [[torch.zeros(1, 1, 1), {}]]  # the toy UNet has no cross-attention, so its context is never read


class ToyLatentFormat(comfy.latent_formats.LatentFormat):
    """Scale and preview colours of the toy VAE's latents, as measured after its training."""

    def __init__(self):
        self.scale_factor, self.latent_rgb_factors = latent_metadata()


class ToyWorldModelConfig(comfy.supported_models_base.BASE):
    unet_extra_config = {}
    sampling_settings = dict(SAMPLING)
    latent_format = ToyLatentFormat
    supported_inference_dtypes = [torch.float32]


class ToyWorldFlowModelConfig(ToyWorldModelConfig):
    """The flow twin: ComfyUI's CONST sampling with ModelSamplingDiscreteFlow's shift, as SD3 and Flux."""
    sampling_settings = dict(FLOW_SAMPLING)

    def model_type(self, state_dict, prefix=""):
        return comfy.model_base.ModelType.FLOW


DIFFUSION_MODELS = {"eps": (ToyWorldModelConfig, UNET_FILE), "flow": (ToyWorldFlowModelConfig, FLOW_UNET_FILE)}


def toy_model(diffusion_model: str = "eps") -> comfy.model_patcher.ModelPatcher:
    if diffusion_model not in DIFFUSION_MODELS:
        raise ValueError(f"Toy World Loader: diffusion_model is {diffusion_model!r}; use one of {tuple(DIFFUSION_MODELS)}.")
    if diffusion_model == "flow" and not hasattr(comfy.model_base.ModelType, "FLOW"):
        raise ValueError("Toy World Loader: this ComfyUI has no flow-model sampling (ModelType.FLOW came with SD3 "
                         "support in mid 2024). Choose diffusion_model eps, or update ComfyUI.")
    config_class, weights = DIFFUSION_MODELS[diffusion_model]
    config = config_class(copy.deepcopy(UNET_CONFIG))
    base = config.get_model({})
    base.diffusion_model.load_state_dict(read_weights(weights))
    return comfy.model_patcher.ModelPatcher(base, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def toy_vae() -> comfy.sd.VAE:
    vae = comfy.sd.VAE(sd=read_weights(VAE_FILE), config={"params": copy.deepcopy(VAE_CONFIG)})
    vae.downscale_ratio = vae.upscale_ratio = LATENT_DOWNSCALE
    return vae


def toy_cheap_vae() -> comfy.sd.VAE:
    """ComfyUI's VAE object around the cheap decoder (and the toy VAE's encoder), with a patcher of its own."""
    vae = toy_vae()
    vae.first_stage_model = CheapAutoencoder(vae.first_stage_model, load_cheap_decoder()).eval().to(vae.vae_dtype)
    vae.patcher = comfy.model_patcher.ModelPatcher(vae.first_stage_model, load_device=vae.device,
                                                   offload_device=comfy.model_management.vae_offload_device())
    return vae


class ToyWorldLoader(LoaderNode):
    DESCRIPTION = ("The toy world's diffusion model: a tiny unconditional UNet and VAE, trained by the pack on 64×64 "
                   "pictures of coloured shapes (toy_world/), as an ε model or its rectified-flow twin. No model "
                   "files needed. Connect `unconditional` to both positive and negative, and use Empty Toy World "
                   "Latent for the latent. `cheap_vae` decodes with a "
                   "small decoder distilled from the VAE's, in TAESD's role: a cheaper `guidance_vae` for the sampler.")
    CATEGORY = "universal_guidance/toy_world"
    RETURN_TYPES = ("MODEL", "VAE", "CONDITIONING", "VAE")
    RETURN_NAMES = ("model", "vae", "unconditional", "cheap_vae")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"diffusion_model": (list(DIFFUSION_MODELS), {
            "default": "eps", "tooltip": "eps: ε-prediction under SD's DDPM schedule, like SD 1.5. flow: its "
                                         "rectified-flow twin (velocity prediction, CONST sampling), like SD3 and Flux."})}}

    def load(self, diffusion_model="eps"):
        return (toy_model(diffusion_model), toy_vae(), UNCONDITIONAL, toy_cheap_vae())


class EmptyToyWorldLatent:
    DESCRIPTION = (f"An empty latent for the toy world: {LATENT_CHANNELS}×{data.SIZE // LATENT_DOWNSCALE}×"
                   f"{data.SIZE // LATENT_DOWNSCALE}, a {data.SIZE}×{data.SIZE} picture.")
    CATEGORY = "universal_guidance/toy_world"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"batch_size": ("INT", {"default": 4, "min": 1, "max": 64,
                                                    "tooltip": "How many pictures to sample."})}}

    def generate(self, batch_size):
        side = data.SIZE // LATENT_DOWNSCALE
        return ({"samples": torch.zeros(batch_size, LATENT_CHANNELS, side, side)},)


class ToyWorldGuidanceNetworks(LoaderNode):
    DESCRIPTION = ("The toy world's guidance networks, trained by the pack, for the usual guidance nodes: a segmenter "
                   "(background, circle, square, triangle, cross; paint maps in the VOC palette colours of classes 0-4), "
                   "a classifier of the coloured shapes present ('red circle'), and a box predictor for "
                   "Object Location Guidance (one box per shape).")
    CATEGORY = "universal_guidance/toy_world"
    RETURN_TYPES = (SEGMENTATION_MODEL, CLASSIFIER_MODEL, DETECTOR_MODEL)
    RETURN_NAMES = ("segmentation_model", "classifier", "detector")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        identity = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # the toy networks standardise their input themselves
        segmenter = Segmenter(networks.load("segmenter"), data.SIZE, *identity, classes=networks.SEGMENTATION_CLASSES)
        classifier = ImageClassifier(networks.load("classifier"), Preprocessing(data.SIZE, data.SIZE, *identity),
                                     networks.CLASSIFIER_CLASSES)
        return (managed(segmenter.eval()), managed(classifier.eval()), managed(networks.load("box_predictor")))


NODE_CLASS_MAPPINGS = {
    "UGDToyWorldLoader": ToyWorldLoader,
    "UGDEmptyToyWorldLatent": EmptyToyWorldLatent,
    "UGDToyWorldGuidanceNetworks": ToyWorldGuidanceNetworks,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "UGDToyWorldLoader": "Toy World Loader (model, VAE)",
    "UGDEmptyToyWorldLatent": "Empty Toy World Latent",
    "UGDToyWorldGuidanceNetworks": "Toy World Guidance Networks",
}
