"""The host's networks made ready for guidance: checked against the latent, loaded, autograd-safe, and the
differentiable decoder.

Follows shared research `comfyui-integration.md` §1.5 and §8: every model is loaded in one `load_models_gpu` call
before any gradient block, inference-tensor weights are replaced by normal clones (never through `.data`), and
decoding uses `first_stage_model.decode` without a clamp.
"""
from __future__ import annotations

import contextlib
import logging

import torch

import comfy.model_management

from ..samplers.autograd_safety import make_autograd_safe
from ..samplers.checkpointing import checkpointed, outermost_blocks

log = logging.getLogger(__name__)

# ComfyUI's blocks that gradient checkpointing wraps: the UNet's, SD3's and Flux's transformer blocks, the VAE
# decoder's and TAESD's.
CHECKPOINTED_BLOCKS = {"ResBlock", "SpatialTransformer", "JointBlock", "DoubleStreamBlock", "SingleStreamBlock",
                       "ResnetBlock", "AttnBlock", "Block"}
# Blocks that add into their inputs in place and return them: checkpointing runs them on copies.
PRIVATE_INPUT_BLOCKS = {"DoubleStreamBlock"}


def vae_scale(vae) -> int:
    """Pixels per latent cell of an image VAE."""
    if hasattr(vae, "spacial_compression_decode"):
        return int(vae.spacial_compression_decode())
    return int(getattr(vae, "downscale_ratio", 8))


def is_taesd(vae) -> bool:
    return type(vae.first_stage_model).__name__ == "TAESD"


def check_guidance(guidance, latent_shape, vae) -> None:
    """Raise ValueError before sampling if a guidance cannot serve this latent batch and size."""
    if not guidance:
        raise ValueError("The guidance input holds no guidance term.")
    if len(latent_shape) != 4:
        raise ValueError(f"Universal guidance works on image latents (B, C, h, w); got shape {tuple(latent_shape)}.")
    scale = vae_scale(vae)
    for term in guidance:
        if term.reads_noisy_input:
            term.loss.check_noisy_input(tuple(latent_shape))
        else:
            term.loss.check(latent_shape[0], latent_shape[2] * scale, latent_shape[3] * scale)


def guidance_patchers(guidance) -> list:
    return [patcher for term in guidance for patcher in term.models]


def _patcher_of(base_model):
    for loaded in comfy.model_management.current_loaded_models:
        if getattr(loaded.model, "model", None) is base_model:
            return loaded.model
    return None


def make_decoder(base_model, vae):
    """Differentiable `x0 -> image (B, 3, H, W)` in [0, 1], unclamped, on x0's device."""
    decoder = vae.first_stage_model

    def decode(x0):
        latent = base_model.process_latent_out(x0).to(vae.device, vae.vae_dtype)
        image = decoder.decode(latent).float().to(x0.device)
        return (image + 1) / 2

    return decode


def _normal_copies(model, extra_args):
    """Clone the inference-mode constants the denoiser multiplies with x: the inpainting mask, latent and noise.

    Autograd refuses to save inference tensors for backward.
    """
    with torch.inference_mode(False):
        for name in ("latent_image", "noise"):
            value = getattr(model, name, None)
            if torch.is_tensor(value):
                setattr(model, name, value.clone())
        return {k: v.clone() if torch.is_tensor(v) else v for k, v in (extra_args or {}).items()}


def checkpointing(base_model, vae, on: bool = True):
    """The UNet's and the guidance decoder's blocks checkpointed for the guided backward while in the context
    (samplers/checkpointing.py); nothing is changed if not `on`."""
    if not on:
        return contextlib.nullcontext()
    blocks = checkpoint_blocks(base_model, vae)
    return checkpointed(blocks, [block for block in blocks if type(block).__name__ in PRIVATE_INPUT_BLOCKS])


def checkpoint_blocks(base_model, vae) -> list[torch.nn.Module]:
    """The UNet's and the guidance decoder's blocks that gradient checkpointing wraps."""
    decoder = vae.first_stage_model
    decoder = getattr(decoder, "decoder", None) or getattr(decoder, "taesd_decoder", None) or decoder
    blocks = []
    for root in (base_model.diffusion_model, decoder):
        found = outermost_blocks(root, lambda m: type(m).__name__ in CHECKPOINTED_BLOCKS)
        if not found:
            log.warning("Universal guidance: no blocks to checkpoint in %s; it runs without checkpointing.",
                        type(root).__name__)
        blocks += found
    return blocks


def control_networks(*cond_lists) -> list[torch.nn.Module]:
    """The networks of every ControlNet or T2I adapter in these lists of conds, along each one's chain: the
    guidance gradient goes through them too."""
    networks = []
    for conds in cond_lists:
        for cond in conds or ():
            control = cond.get("control") if isinstance(cond, dict) else None
            while control is not None:
                networks += [m for m in (getattr(control, "control_model", None), getattr(control, "t2i_model", None))
                             if isinstance(m, torch.nn.Module)]
                control = getattr(control, "previous_controlnet", None)
    return networks


def sampler_conds(model, extra_args) -> list:
    """The conds of a sampler function's run: the guider's (ComfyUI since 2024-04) or extra_args' (before)."""
    conds = getattr(model.inner_model, "conds", None) or {}
    return [*conds.values(), *(extra_args.get(key) for key in ("cond", "uncond"))]


def load_for_guidance(base_model, x_shape, guidance, vae, other_vaes=(), controls=()):
    """Check the guidance against the latent, load the UNet, the VAE (and any other VAE guidance decodes with) and
    the guidance networks in one call, make them and the ControlNets' networks autograd-safe, and build the
    decoder."""
    check_guidance(guidance, x_shape, vae)
    patcher, networks = _patcher_of(base_model), guidance_patchers(guidance)
    vaes = [vae, *(other for other in other_vaes if other is not vae)]
    comfy.model_management.load_models_gpu(([patcher] if patcher else []) + [v.patcher for v in vaes] + networks)
    for module in [base_model, *controls] + [v.first_stage_model for v in vaes] + [p.model for p in networks]:
        make_autograd_safe(module)
    if getattr(comfy.model_management, "sage_attention_enabled", lambda: False)():
        log.warning("Universal guidance: SageAttention has no backward pass, so the guidance gradient loses the "
                    "attention layers' share. Start ComfyUI without --use-sage-attention for exact guidance.")
    return make_decoder(base_model, vae)


def prepare_guided_sampling(model, x_shape, extra_args, guidance, vae, other_vaes=()):
    """`load_for_guidance` for the denoiser ComfyUI hands a sampler function, with the inference-mode constants it
    multiplies x with cloned. Returns (base model, extra_args, decode)."""
    base_model = model.inner_model.inner_model
    controls = control_networks(*sampler_conds(model, extra_args or {}))
    extra_args = _normal_copies(model, extra_args)
    return base_model, extra_args, load_for_guidance(base_model, x_shape, guidance, vae, other_vaes, controls)
