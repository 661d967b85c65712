"""Running the engine inside ComfyUI: loading, autograd-safe weights, the differentiable decoder, checks.

Follows shared research `comfyui-integration.md` §1.5 and §8: every model is loaded in one
`load_models_gpu` call before any gradient block, inference-tensor weights are replaced by normal
clones (never through `.data`), and decoding uses `first_stage_model.decode` without a clamp.
"""
from __future__ import annotations

import logging

import torch

import comfy.model_management
import comfy.samplers

from ..samplers.autograd_safety import make_autograd_safe
from ..samplers.universal_guidance import sample_universal_guidance

log = logging.getLogger(__name__)


def vae_scale(vae) -> int:
    """Pixels per latent cell of an image VAE."""
    if hasattr(vae, "spacial_compression_decode"):
        return int(vae.spacial_compression_decode())
    return int(getattr(vae, "downscale_ratio", 8))


def check_guidance(guidance, latent_shape, vae) -> None:
    """Raise ValueError before sampling if a guidance cannot serve this latent batch and size."""
    if not guidance:
        raise ValueError("The guidance input holds no guidance term.")
    if len(latent_shape) != 4:
        raise ValueError(f"Universal guidance works on image latents (B, C, h, w); got shape {tuple(latent_shape)}.")
    scale = vae_scale(vae)
    for term in guidance:
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


def _sample(model, x, sigmas, extra_args=None, callback=None, disable=None, *, guidance, vae, recurrence, base):
    base_model = model.inner_model.inner_model
    extra_args = _normal_copies(model, extra_args)
    check_guidance(guidance, x.shape, vae)
    patcher, networks = _patcher_of(base_model), guidance_patchers(guidance)
    comfy.model_management.load_models_gpu(([patcher] if patcher else []) + [vae.patcher] + networks)
    for module in [base_model, vae.first_stage_model] + [p.model for p in networks]:
        make_autograd_safe(module)
    if getattr(comfy.model_management, "sage_attention_enabled", lambda: False)():
        log.warning("Universal guidance: SageAttention has no backward pass, so the guidance gradient loses the "
                    "attention layers' share. Start ComfyUI without --use-sage-attention for exact guidance.")
    try:
        return sample_universal_guidance(
            model, x, sigmas, extra_args, callback, disable,
            guidance=guidance,
            decode=make_decoder(base_model, vae),
            noise_scaling=base_model.model_sampling.noise_scaling,
            recurrence=recurrence,
            base=base,
            check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted,
            update_mask=extra_args.get("denoise_mask"),
        )
    except torch.OutOfMemoryError:
        # Re-raised unchanged so that ComfyUI still frees its models; this says what to change.
        log.error("Universal guidance ran out of memory in a backward pass. Lower the resolution or batch size, "
                  "give the sampler a TAESD guidance_vae, or use fewer backward steps.")
        raise


def universal_guidance_sampler(guidance, vae, recurrence: int, base: str) -> comfy.samplers.KSAMPLER:
    """A ComfyUI SAMPLER running universal guidance; `vae` decodes for the guidance loss."""
    if recurrence < 1:
        raise ValueError(f"recurrence (k) must be at least 1, got {recurrence}.")
    return comfy.samplers.KSAMPLER(_sample, extra_options={"guidance": guidance, "vae": vae, "recurrence": recurrence, "base": base})
