"""The toy world's latent diffusion model: configs for ComfyUI's own AutoencoderKL and UNetModel, kept small.

Plain data, so that the training script and the ComfyUI loader build the very same modules, and the one
reader of the weight files they share. The VAE maps a
64×64 image to a 4×16×16 latent; the UNet is unconditional (no attention, so no text context) and predicts
the noise (EPS) under Stable Diffusion's DDPM schedule; its twin predicts the flow's velocity.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import load_file

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
VAE_FILE, UNET_FILE = "toy_vae.safetensors", "toy_unet.safetensors"

VAE_CONFIG = {
    "embed_dim": 4,
    "ddconfig": {
        "double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3,
        "ch": 32, "ch_mult": [1, 1, 1], "num_res_blocks": 0, "attn_resolutions": [], "dropout": 0.0,
    },
}
LATENT_CHANNELS, LATENT_DOWNSCALE = 4, 4

UNET_CONFIG = {
    "image_size": 16,
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "model_channels": 32,
    "num_res_blocks": [1, 1, 1],
    "channel_mult": [1, 2, 4],
    "transformer_depth": [0] * 3,
    "transformer_depth_output": [0] * 6,
    "transformer_depth_middle": -1,
    "context_dim": None,
    "use_spatial_transformer": False,
    "use_linear_in_transformer": False,
    "adm_in_channels": None,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
    "legacy": False,
    "use_checkpoint": False,
    "num_heads": -1,
    "num_head_channels": 32,
}
# Stable Diffusion's DDPM schedule, which ComfyUI's EPS models use by default.
SAMPLING = {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000}
# The flow twin: ComfyUI's CONST sampling (x = (1−σ)·x0 + σ·ε, velocity prediction) at timestep σ·multiplier,
# as SD3 and Flux use. Shift 1 leaves σ as drawn; small latents need no shift towards noise.
FLOW_UNET_FILE = "toy_unet_flow.safetensors"
FLOW_SAMPLING = {"shift": 1.0, "multiplier": 1000}


def read_weights(name: str) -> dict[str, torch.Tensor]:
    """A state dict from toy_world/weights, in float32 (the files hold half precision)."""
    return {k: v.float() for k, v in load_file(os.path.join(WEIGHTS_DIR, name)).items()}


def latent_metadata() -> tuple[float, list]:
    """The latent scale factor and preview RGB factors that training measured and stored in the VAE file."""
    with safe_open(os.path.join(WEIGHTS_DIR, VAE_FILE), "pt") as f:
        metadata = f.metadata()
    return float(metadata["latent_scale_factor"]), json.loads(metadata["latent_rgb_factors"])
