"""The Universal Guidance Guider: CFGGuider's conditioning and CFG, with guidance applied to the denoised x0 of every
model call, so that any of ComfyUI's samplers runs it through SamplerCustomAdvanced (samplers/guided_denoiser.py)."""
from __future__ import annotations

import comfy.model_management
import comfy.samplers

from ..samplers.guided_denoiser import GuidedDenoiser, check_supported
from ..samplers.settings import Settings
from .guidance_options import OPTIONS
from .host_models import checkpointing, control_networks, guidance_patchers, load_for_guidance
from .sampler_nodes import GUIDANCE_INPUT, MODEL_INPUT, NEGATIVE_INPUT, POSITIVE_INPUT

# ComfyUI before 2024-04 has no guiders (nor SamplerCustomAdvanced); the node is not registered there.
HAS_GUIDERS = hasattr(comfy.samplers, "CFGGuider")


class GuidedCFGGuider(comfy.samplers.CFGGuider if HAS_GUIDERS else object):
    """CFGGuider whose denoised x0 is guided at every model call."""

    def __init__(self, model_patcher, guidance, vae, settings: Settings):
        super().__init__(model_patcher)
        self.guidance, self.vae, self.settings = guidance, vae, settings
        self.guided: GuidedDenoiser | None = None

    def inner_sample(self, noise, latent_image, device, sampler, sigmas, denoise_mask, *args, **kwargs):
        decode = load_for_guidance(self.inner_model, noise.shape, self.guidance, self.vae,
                                   controls=control_networks(*self.conds.values()))
        self.guided = GuidedDenoiser(self.guidance, decode, self.inner_model.model_sampling.noise_scaling, sigmas,
                                     self.settings, noise.device, denoise_mask,
                                     comfy.model_management.throw_exception_if_processing_interrupted)
        try:
            with checkpointing(self.inner_model, self.vae, self.settings.checkpointing):
                return super().inner_sample(noise, latent_image, device, sampler, sigmas, denoise_mask, *args,
                                            **kwargs)
        finally:
            self.guided = None

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        plain = super().predict_noise
        if self.guided is None:
            return plain(x, timestep, model_options, seed)
        return self.guided(lambda x_in, sigma: plain(x_in, sigma, model_options, seed), x, timestep)


class UniversalGuidanceGuider:
    DESCRIPTION = ("A GUIDER for SamplerCustomAdvanced: CFG as CFGGuider gives it, with universal guidance applied to "
                   "the denoised image at every step, so that any sampler (DPM++ 2M, Euler ancestral, UniPC, …) runs "
                   "it. It runs forward and backward guidance (method ugd) or MPGD's steps (method mpgd); "
                   "recurrence, particles, known pixels and the other methods need the Universal Guidance Sampler.")
    CATEGORY = "universal_guidance"
    RETURN_TYPES = ("GUIDER",)
    OUTPUT_TOOLTIPS = ("For SamplerCustomAdvanced's guider input.",)
    FUNCTION = "get_guider"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": MODEL_INPUT,
                "positive": POSITIVE_INPUT,
                "negative": NEGATIVE_INPUT,
                "cfg": ("FLOAT", {"default": 7.5, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Classifier-free guidance scale, as in CFGGuider."}),
                "vae": ("VAE", {"tooltip": "Decodes the denoised latent for the guidance loss; TAESD works."}),
                "guidance": GUIDANCE_INPUT,
            },
            "optional": {"options": (OPTIONS, {"tooltip": (
                "Levers from a Universal Guidance Options node: method ugd or mpgd, the gradient path, the step "
                "windows, weight scale, decoder, memory and precision. Recurrence, particles and known pixels need "
                "the Universal Guidance Sampler.")})},
        }

    def get_guider(self, model, positive, negative, cfg, vae, guidance, options=None):
        settings = options or Settings()
        check_supported(settings)  # before sampling starts, naming the inputs to change
        if hasattr(model, "set_additional_models"):  # loads the decoder and networks in the UNet's call
            model = model.clone()
            model.set_additional_models("universal_guidance", [vae.patcher] + guidance_patchers(guidance))
        guider = GuidedCFGGuider(model, guidance, vae, settings)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return (guider,)


NODE_CLASS_MAPPINGS = {"UGDGuider": UniversalGuidanceGuider} if HAS_GUIDERS else {}
NODE_DISPLAY_NAME_MAPPINGS = {"UGDGuider": "Universal Guidance Guider"} if HAS_GUIDERS else {}
