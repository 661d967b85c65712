"""Small random-weight stand-ins for a Stable Diffusion 1.x checkpoint and for every guidance network.

They let a workflow run where no model files exist (tests, CI, trying a graph's wiring). Their images
are noise-like and mean nothing; every node here says so.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile

import torch

import comfy.ldm.models.autoencoder
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base

from ..guidance.classifier import small_random_classifier
from ..guidance.clip_similarity import small_random_clip
from ..guidance.face_identity import small_random_face_networks
from ..guidance.object_location import small_random_detector
from ..guidance.segmentation import small_random_segmenter
from .adm_model import UNCONDITIONAL, adm_model, pixel_space_vae
from .classifier_guidance import CLASSIFIER_MODEL
from .clip_guidance import CLIP_GUIDANCE_MODEL, ClipGuidanceModel
from .face_guidance import FACE_MODEL
from .network_weights import LoaderNode, managed
from .noise_aware_classifier_guidance import NOISE_AWARE_CLASSIFIER, noise_aware_classifier
from .object_location_guidance import DETECTOR_MODEL
from .segmentation_guidance import SEGMENTATION_MODEL

log = logging.getLogger(__name__)

CONTEXT_DIM = 64
UNET_CONFIG = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 32,
    "num_res_blocks": [1, 1],
    "channel_mult": [1, 2],
    "transformer_depth": [1, 1],
    "transformer_depth_output": [1, 1, 1, 1],
    "transformer_depth_middle": 1,
    "context_dim": CONTEXT_DIM,
    "use_linear_in_transformer": False,
    "adm_in_channels": None,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
    "use_spatial_transformer": True,
    "legacy": False,
    "use_checkpoint": False,
}
VAE_CONFIG = {
    "embed_dim": 4,
    "ddconfig": {
        "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
        "ch": 32, "ch_mult": [1, 2, 2, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
    },
}
# guided-diffusion's networks at a tiny size, for 64×64 images (tools/run_workflow.py's stand-in size)
ADM_UNET_CONFIG = dict(image_channels=3, model_channels=32, num_res_blocks=1, attention_resolutions=(2,),
                       channel_mult=(1, 2), num_head_channels=32, learn_sigma=True, num_classes=None)
ADM_CLASSIFIER_CONFIG = dict(image_size=64, image_channels=3, model_channels=32, num_res_blocks=1,
                             attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=32, num_classes=1000)
TEXT_CONFIG = {
    "architectures": ["CLIPTextModel"], "hidden_act": "quick_gelu", "hidden_size": CONTEXT_DIM,
    "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 49408,
    "max_position_embeddings": 77, "layer_norm_eps": 1e-05, "bos_token_id": 0, "eos_token_id": 2,
    "pad_token_id": 1, "projection_dim": CONTEXT_DIM, "torch_dtype": "float32", "model_type": "clip_text_model",
}
STAND_IN_CLIP_TOKENIZER = "RN50"  # open_clip's default BPE tokenizer, shipped with the package


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill every parameter: 1-D weights (norm scales) with 1, biases and scalars with 0, the rest N(0, 1/fan_in).

    ComfyUI builds its layers without initialising them, so this is what makes the weights defined.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # also outside the executor's inference mode
        for name, p in module.named_parameters():
            if p.ndim <= 1:
                p.copy_(torch.ones_like(p) if p.ndim == 1 and name.endswith("weight") else torch.zeros_like(p))
            else:
                fan_in = p[0].numel()
                p.copy_((torch.randn(p.shape, generator=generator, dtype=torch.float32) / fan_in**0.5).to(p))
    return module


# UNETLoader's weight_dtype choices
WEIGHT_DTYPES = {"default": None, "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def stand_in_model(seed: int, model_config=None, weight_dtype: str = "default", model_channels: int | None = None):
    """A random-weight MODEL of a ComfyUI supported-model config (default: SD 1.5's, at UNET_CONFIG's size, or with
    `model_channels`), its weights stored in `weight_dtype` and cast per call as UNETLoader's weight_dtype does."""
    model_config = model_config or comfy.supported_models.SD15(
        {**UNET_CONFIG, "model_channels": model_channels or UNET_CONFIG["model_channels"]})
    device = comfy.model_management.get_torch_device()
    dtype = WEIGHT_DTYPES[weight_dtype]
    if dtype is not None:
        model_config.set_inference_dtype(dtype, comfy.model_management.unet_manual_cast(
            dtype, device, model_config.supported_inference_dtypes))
    base = model_config.get_model({})
    randomize(base.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=comfy.model_management.unet_offload_device())


def stand_in_vae(seed: int, latent_channels: int = 4):
    params = {**VAE_CONFIG, "embed_dim": latent_channels,
              "ddconfig": {**VAE_CONFIG["ddconfig"], "z_channels": latent_channels}}
    # Built from a full state dict, so that ComfyUI does not log every key as missing.
    autoencoder = comfy.ldm.models.autoencoder.AutoencoderKL(**params)
    randomize(autoencoder, seed + 1)
    vae = comfy.sd.VAE(sd=autoencoder.state_dict(), config={"params": params})
    vae.latent_channels = latent_channels
    return vae


def stand_in_clip(seed: int):
    config_path = os.path.join(tempfile.gettempdir(), "ugd_stand_in_clip_text.json")
    with open(config_path, "w") as f:
        json.dump(TEXT_CONFIG, f)
    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    target.params = {"clip_model": comfy.sd1_clip.SDClipModel, "textmodel_json_config": config_path}
    clip = comfy.sd.CLIP(target)
    randomize(clip.cond_stage_model, seed + 2)
    return clip


class StandInCheckpoint(LoaderNode):
    """MODEL, CLIP and VAE shaped like Stable Diffusion 1.x but tiny and random: for testing a graph's wiring."""

    DESCRIPTION = "Random-weight stand-ins for a Stable Diffusion 1.x checkpoint. Their images mean nothing: use them only to test a workflow."
    CATEGORY = "universal_guidance/testing"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "Seed of the random weights."})},
                "optional": {
                    "weight_dtype": (list(WEIGHT_DTYPES), {"default": "default", "tooltip": (
                        "The UNet's weights stored in this type and cast per call, as UNETLoader's weight_dtype does.")}),
                    "model_channels": ("INT", {"default": UNET_CONFIG["model_channels"], "min": 32, "max": 320,
                                               "step": 32, "tooltip": (
                        "The UNet's first width; 64 or more lets a ControlNet, whose attention ComfyUI builds with "
                        "64-channel heads, be made for it.")})}}

    def load(self, seed, weight_dtype="default", model_channels=UNET_CONFIG["model_channels"]):
        log.warning("Using STAND-IN models with random weights: the images will not mean anything.")
        return (stand_in_model(seed, weight_dtype=weight_dtype, model_channels=model_channels), stand_in_clip(seed),
                stand_in_vae(seed))


def stand_in_adm_model(seed: int, class_conditional: bool = False):
    model = adm_model({**ADM_UNET_CONFIG, "num_classes": 1000 if class_conditional else None})
    randomize(model.model.diffusion_model, seed)
    return model


def stand_in_noise_aware_classifier(seed: int):
    classifier = noise_aware_classifier(ADM_CLASSIFIER_CONFIG)
    randomize(classifier.network, seed)
    return classifier


class StandInADMModel(LoaderNode):
    """A pixel-space MODEL shaped like guided-diffusion's but tiny and random: for testing a graph's wiring."""

    DESCRIPTION = ("Random-weight stand-ins for the ADM Model Loader's outputs: a tiny guided-diffusion UNet (64×64 "
                   "pixels; class-conditional if asked), the pixel VAE and the unconditional CONDITIONING. Their images "
                   "mean nothing: use them only to test a workflow.")
    CATEGORY = "universal_guidance/testing"
    RETURN_TYPES = ("MODEL", "VAE", "CONDITIONING")
    RETURN_NAMES = ("model", "pixel_vae", "unconditional")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "Seed of the random weights."})},
                "optional": {"class_conditional": ("BOOLEAN", {"default": False, "tooltip": "A class-conditional UNet, "
                                                               "which takes ADM Class Conditioning."})}}

    def load(self, seed, class_conditional=False):
        log.warning("Using a STAND-IN guided-diffusion model with random weights: the images will not mean anything.")
        return (stand_in_adm_model(seed, class_conditional), pixel_space_vae(), UNCONDITIONAL)


class StandInCLIPGuidanceModel(LoaderNode):
    """A CLIP guidance model with random weights, for testing a graph's wiring."""

    DESCRIPTION = "A random-weight open_clip model for CLIP guidance nodes. Its guidance means nothing: use it only to test a workflow."
    CATEGORY = "universal_guidance/testing"
    RETURN_TYPES = (CLIP_GUIDANCE_MODEL,)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "Seed of the random weights."})}}

    def load(self, seed):
        log.warning("Using a STAND-IN CLIP guidance model with random weights: its guidance will not mean anything.")
        return (ClipGuidanceModel.wrap(small_random_clip(seed), STAND_IN_CLIP_TOKENIZER),)


def _stand_in_network_node(return_type: str, build, what: str, detail: str = "") -> type:
    """A node class giving `build(seed)` under ComfyUI's memory management, for testing a graph's wiring."""

    def load(self, seed):
        log.warning("Using a STAND-IN %s with random weights: its guidance will not mean anything.", what)
        return (managed(build(seed)),)

    return type(f"StandIn{return_type}", (LoaderNode,), {
        "DESCRIPTION": f"A tiny random-weight {what} for the guidance nodes{detail}. Its guidance means nothing: use it only to test a workflow.",
        "CATEGORY": "universal_guidance/testing",
        "RETURN_TYPES": (return_type,),
        "FUNCTION": "load",
        "INPUT_TYPES": classmethod(lambda cls: {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "Seed of the random weights."})}}),
        "load": load,
    })


STAND_IN_NETWORKS = {
    "UGDStandInSegmentationModel": (_stand_in_network_node(SEGMENTATION_MODEL, small_random_segmenter, "segmentation model"),
                                    "Stand-in Segmentation Model (random weights, testing)"),
    "UGDStandInFaceModel": (_stand_in_network_node(FACE_MODEL, small_random_face_networks, "face model",
                                                   ", whose detector takes the middle of every image for the face"),
                            "Stand-in Face Model (random weights, testing)"),
    "UGDStandInObjectDetector": (_stand_in_network_node(DETECTOR_MODEL, small_random_detector, "object detector"),
                                 "Stand-in Object Detector (random weights, testing)"),
    "UGDStandInClassifier": (_stand_in_network_node(CLASSIFIER_MODEL, small_random_classifier, "ImageNet classifier"),
                             "Stand-in Classifier (random weights, testing)"),
    "UGDStandInNoiseAwareClassifier": (_stand_in_network_node(NOISE_AWARE_CLASSIFIER, stand_in_noise_aware_classifier,
                                                              "noise-aware classifier", " of 64×64 noisy images"),
                                       "Stand-in Noise-Aware Classifier (random weights, testing)"),
}

NODE_CLASS_MAPPINGS = {
    "UGDStandInCheckpoint": StandInCheckpoint,
    "UGDStandInCLIPGuidanceModel": StandInCLIPGuidanceModel,
    "UGDStandInADMModel": StandInADMModel,
    **{name: node for name, (node, _) in STAND_IN_NETWORKS.items()},
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "UGDStandInCheckpoint": "Stand-in Checkpoint (random weights, testing)",
    "UGDStandInCLIPGuidanceModel": "Stand-in CLIP Guidance Model (random weights, testing)",
    "UGDStandInADMModel": "Stand-in ADM Model (random weights, testing)",
    **{name: title for name, (_, title) in STAND_IN_NETWORKS.items()},
}
