"""The sampler nodes of 0.1, kept so that saved graphs still load and run: every lever was an input of their own.

ComfyUI stores widget values by position, so their inputs stay as they were, in the same order; DEPRECATED hides
them from the node search. They run through the same settings, presets and engine as the current nodes.
"""
from __future__ import annotations

from ..samplers.presets import CUSTOM, PRESETS
from ..samplers.settings import Settings, widget
from .guided_sampling import universal_guidance_sampler
from .sampler_nodes import (BASE, GUIDANCE_INPUT, GUIDANCE_VAE, UniversalGuidedKSampler, guided_ksample, preset_input,
                            run_settings)

# 0.1's optional levers, in their saved order (preset sat among them).
_LEVERS = ("guidance_every", "gradient", "decode_resolution", "checkpointing", "autocast", "guidance_end",
           "weight_scale", "preset", "backward_end", "backward_recurrence", "method", "smoothing", "rho_schedule",
           "mu_schedule", "smoothing_schedule")


def _levers() -> dict:
    return {name: preset_input(CUSTOM) if name == "preset" else widget(name) for name in _LEVERS}


def _settings(preset, sampler, steps, recurrence, levers) -> tuple[Settings, int | None]:
    return run_settings(preset, Settings(recurrence=recurrence, **levers), sampler, steps)


class DeprecatedGuidedKSampler:
    DESCRIPTION = "0.1's Universal Guided KSampler, for saved graphs: use Universal Guided KSampler instead."
    DEPRECATED = True
    CATEGORY = "universal_guidance/deprecated"
    RETURN_TYPES = UniversalGuidedKSampler.RETURN_TYPES
    RETURN_NAMES = UniversalGuidedKSampler.RETURN_NAMES
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        current = UniversalGuidedKSampler.INPUT_TYPES()["required"]
        required = {name: current[name] for name in ("model", "vae", "positive", "negative", "latent_image",
                                                      "guidance", "seed", "steps", "cfg")}
        required.update(sampler=BASE, scheduler=current["scheduler"], denoise=current["denoise"],
                        recurrence=widget("recurrence"))
        return {"required": required, "optional": {"guidance_vae": GUIDANCE_VAE, **_levers()}}

    def sample(self, model, vae, positive, negative, latent_image, guidance, seed, steps, cfg, sampler, scheduler,
               denoise, recurrence, guidance_vae=None, preset="custom", **levers):
        settings, steps = _settings(preset, sampler, steps, recurrence, levers)
        cheap = preset in PRESETS and PRESETS[preset].cheap_decoder
        return guided_ksample(model, vae, positive, negative, latent_image, guidance, seed, steps, cfg, scheduler,
                              denoise, settings, guidance_vae, cheap)


class DeprecatedGuidanceSampler:
    DESCRIPTION = "0.1's Universal Guidance Sampler, for saved graphs: use Universal Guidance Sampler instead."
    DEPRECATED = True
    CATEGORY = "universal_guidance/deprecated"
    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae": ("VAE", {"tooltip": "Decodes the predicted clean latent for the guidance loss."}),
                             "guidance": GUIDANCE_INPUT, "sampler": BASE,
                             "recurrence": widget("recurrence")},
                "optional": _levers()}

    def get_sampler(self, vae, guidance, sampler, recurrence, preset="custom", **levers):
        settings, _ = _settings(preset, sampler, None, recurrence, levers)
        return (universal_guidance_sampler(guidance, vae, settings),)


NODE_CLASS_MAPPINGS = {
    "UniversalGuidedKSampler": DeprecatedGuidedKSampler,
    "UGDUniversalGuidanceSampler": DeprecatedGuidanceSampler,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "UniversalGuidedKSampler": "Universal Guided KSampler (0.1, deprecated)",
    "UGDUniversalGuidanceSampler": "Universal Guidance Sampler (0.1, deprecated)",
}
