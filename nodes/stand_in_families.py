"""Tiny random-weight stand-ins of SDXL (and its refiner), SD3 and Flux, built from ComfyUI's own model classes.

Each gives a MODEL, a VAE of the family's latent channels, and positive and negative conditioning shaped as the
family's text encoders give it (SDXL's pooled vector and size conditioning, the refiner's aesthetic score, SD3's pooled vector, Flux's pooled
vector and guidance input), so that a guided run through each family's real conditioning path can be tried
where no model files exist. Their images are noise-like and mean nothing.
"""
from __future__ import annotations

import logging

import torch

import comfy.supported_models

from .network_weights import LoaderNode
from .stand_ins import stand_in_model, stand_in_vae

log = logging.getLogger(__name__)

TOKENS = 8
# Per family: the supported-model class, its UNet or transformer config at a tiny size, the latent channels,
# the text context's width, the pooled vector's width, and extra conditioning keys.
FAMILIES = {
    "sdxl": dict(model="SDXL", latent_channels=4, context=64, pooled=1280, extra=dict(width=256, height=256),
                 config={"image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 32,
                         "num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [0, 1],
                         "transformer_depth_output": [0, 0, 1, 1], "transformer_depth_middle": 1,
                         "context_dim": 64, "num_head_channels": 16, "use_linear_in_transformer": True,
                         "adm_in_channels": 2816, "num_classes": "sequential", "use_spatial_transformer": True,
                         "legacy": False,
                         "use_temporal_attention": False, "use_temporal_resblock": False, "use_checkpoint": False}),
    "sdxl_refiner": dict(model="SDXLRefiner", latent_channels=4, context=64, pooled=1280,
                         extra=dict(width=256, height=256, aesthetic_score=6.0),
                         config={"image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 32,
                                 "num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [0, 1],
                                 "transformer_depth_output": [0, 0, 1, 1], "transformer_depth_middle": 1,
                                 "context_dim": 64, "num_head_channels": 16, "use_linear_in_transformer": True,
                                 "adm_in_channels": 2560, "num_classes": "sequential",
                                 "use_spatial_transformer": True, "legacy": False, "use_temporal_attention": False,
                                 "use_temporal_resblock": False, "use_checkpoint": False}),
    "sd3": dict(model="SD3", latent_channels=16, context=32, pooled=32, extra={},
                config={"in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "input_size": None,
                        "pos_embed_max_size": 16, "num_patches": 256, "adm_in_channels": 32,
                        "pos_embed_scaling_factor": None, "pos_embed_offset": None,
                        "context_embedder_config": {"target": "torch.nn.Linear",
                                                    "params": {"in_features": 32, "out_features": 128}}}),
    "flux": dict(model="Flux", latent_channels=16, context=32, pooled=32, extra=dict(guidance=3.5),
                 config={"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 32,
                         "context_in_dim": 32, "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2, "depth": 1,
                         "depth_single_blocks": 1, "axes_dim": [8, 12, 12], "theta": 10000, "patch_size": 2,
                         "qkv_bias": True, "guidance_embed": True}),
}


def stand_in_family_model(family: str, seed: int):
    spec = FAMILIES[family]
    config_class = getattr(comfy.supported_models, spec["model"], None)
    if config_class is None:
        raise RuntimeError(f"Stand-in Model Family: this ComfyUI has no {spec['model']} support; choose another "
                           "family, or update ComfyUI.")
    return stand_in_model(seed, config_class(dict(spec["config"])))


def stand_in_family_conditioning(family: str, seed: int) -> list:
    spec = FAMILIES[family]
    generator = torch.Generator().manual_seed(seed + 2)
    context = torch.randn(1, TOKENS, spec["context"], generator=generator)
    pooled = torch.randn(1, spec["pooled"], generator=generator)
    return [[context, {"pooled_output": pooled, **spec["extra"]}]]


class StandInModelFamily(LoaderNode):
    """MODEL, VAE and conditioning shaped like SDXL, SD3 or Flux but tiny and random: for testing a graph."""

    DESCRIPTION = ("Random-weight stand-ins for an SDXL, SD3 or Flux checkpoint, with conditioning shaped as "
                   "their text encoders give it. Their images mean nothing: use them only to test a workflow.")
    CATEGORY = "universal_guidance/testing"
    RETURN_TYPES = ("MODEL", "VAE", "CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("model", "vae", "positive", "negative")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "family": (list(FAMILIES), {"tooltip": "The model family to stand in for."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "Seed of the random weights."}),
        }}

    def load(self, family, seed):
        log.warning("Using STAND-IN %s models with random weights: the images will not mean anything.", family)
        return (stand_in_family_model(family, seed), stand_in_vae(seed, FAMILIES[family]["latent_channels"]),
                stand_in_family_conditioning(family, seed), stand_in_family_conditioning(family, seed + 3))


NODE_CLASS_MAPPINGS = {"UGDStandInModelFamily": StandInModelFamily}
NODE_DISPLAY_NAME_MAPPINGS = {"UGDStandInModelFamily": "Stand-in SDXL / SD3 / Flux (random weights, testing)"}
