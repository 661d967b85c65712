"""The guided sampler nodes called directly, as ComfyUI's executor calls them, with their levers given through the
Universal Guidance Options node."""
from __future__ import annotations

import torch

KSAMPLER_INPUTS = ("model", "seed", "steps", "cfg", "scheduler", "positive", "negative", "latent_image", "denoise",
                   "vae", "guidance")


def node(comfy, name):
    return comfy.nodes.NODE_CLASS_MAPPINGS[name]()


def options(comfy, **levers):
    """The Options node's settings: these levers, the others at the node's defaults."""
    fields = comfy.pack_module("samplers.settings").option_fields()
    with torch.inference_mode():
        (settings,) = node(comfy, "UGDGuidanceOptions").options(**{**{f.name: f.default for f in fields}, **levers})
    return settings


def ksampler(comfy, sampler="ddim", preset="custom", guidance_vae=None, **inputs):
    """(LATENT, loss plot) of the Universal Guided KSampler; inputs that are not KSampler's are levers."""
    own = {name: inputs.pop(name) for name in KSAMPLER_INPUTS if name in inputs}
    with torch.inference_mode():
        return node(comfy, "UGDGuidedKSampler").sample(sampler_name=sampler, preset=preset, guidance_vae=guidance_vae,
                                                       options=options(comfy, **inputs), **own)


def sampler_node(comfy, vae, guidance, sampler="ddim", preset="custom", **levers):
    """The Universal Guidance Sampler's SAMPLER."""
    with torch.inference_mode():
        (sampler_object,) = node(comfy, "UGDGuidedSampler").get_sampler(vae, guidance, sampler, preset,
                                                                         options(comfy, **levers))
    return sampler_object
