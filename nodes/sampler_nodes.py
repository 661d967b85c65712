"""The sampler nodes: a guided KSampler with KSampler's inputs, and a SAMPLER for SamplerCustom(Advanced); both take
a preset and, optionally, the Universal Guidance Options node's settings."""
from __future__ import annotations

import logging

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview

from ..samplers.presets import CUSTOM, DEFAULT, PRESET_NAMES, PRESETS, resolve
from ..samplers.progress import LossHistory
from ..samplers.settings import Settings, widget
from .guidance_options import OPTIONS
from .guidance_settings import GUIDANCE
from .guided_sampling import universal_guidance_sampler
from .host_models import check_guidance, guidance_patchers
from .loss_plot import loss_plot

log = logging.getLogger(__name__)

BASE = widget("base")
def preset_input(default: str) -> tuple:
    """The preset combo: each preset's values in its tooltip, so that the graph shows what runs."""
    return (list(PRESET_NAMES), {"default": default, "tooltip": (
        "; ".join(f"{name}: {preset.describe()}" for name, preset in PRESETS.items())
        + "; custom runs the options input as it is (without one, the paper's method with k = 1). A named preset "
          "replaces the options' values for the levers it sets, and the log names each one it replaced.")})


PRESET = preset_input(DEFAULT)
MODEL_INPUT = ("MODEL", {"tooltip": "The diffusion model; it is not changed."})
POSITIVE_INPUT = ("CONDITIONING", {"tooltip": "The prompt."})
NEGATIVE_INPUT = ("CONDITIONING", {"tooltip": "The negative prompt."})
GUIDANCE_INPUT = (GUIDANCE, {"tooltip": "What to steer towards: a guidance node's output, or Combine Guidance's."})
GUIDANCE_VAE = ("VAE", {"tooltip": "A second VAE that only decodes for the guidance loss, such as TAESD: faster, less "
                                   "exact."})
OPTIONS_INPUT = (OPTIONS, {"tooltip": "Every lever, from a Universal Guidance Options node; a named preset replaces "
                                      "the levers it sets."})


def run_settings(preset: str, options: Settings | None, base: str, steps: int | None) -> tuple[Settings, int | None]:
    """The settings and steps that run, from the preset, the options and the node's sampler; what a preset set, and
    every graph value it replaced, go to the log."""
    settings, steps, replaced = resolve(preset, options, steps)
    if preset != CUSTOM:
        log.info("Universal guidance: preset %s: %s.", preset, PRESETS[preset].describe())
    for note in replaced:
        log.warning("Universal guidance: %s.", note)
    return settings.replace(base=base), steps


def _sigmas(model, scheduler: str, steps: int, denoise: float):
    """KSampler's sigmas, with its denoise truncation."""
    total = steps if denoise >= 1.0 else int(steps / denoise)
    if hasattr(comfy.samplers, "calculate_sigmas") and hasattr(model, "get_model_object"):
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, total)
    else:  # ComfyUI before 2024-06
        sigmas = comfy.samplers.calculate_sigmas_scheduler(model.model, scheduler, total)
    return sigmas[-(steps + 1):].cpu()


def guided_ksample(model, vae, positive, negative, latent_image, guidance, seed: int, steps: int, cfg: float,
                   scheduler: str, denoise: float, settings: Settings, guidance_vae=None, expects_cheap_decoder=False):
    """KSampler's run with universal guidance: (the LATENT, the loss plot IMAGE)."""
    if expects_cheap_decoder and guidance_vae is None:
        log.warning("Universal guidance: this preset was measured with a TAESD guidance_vae; without one, every "
                    "guided pass decodes with the full VAE, which costs much more.")
    decoder_vae = guidance_vae or vae
    latent = latent_image["samples"]
    if hasattr(comfy.sample, "fix_empty_latent_channels"):
        latent = comfy.sample.fix_empty_latent_channels(model, latent)
    check_guidance(guidance, latent.shape, decoder_vae)
    history = LossHistory()
    ksampler = universal_guidance_sampler(guidance, decoder_vae, settings, history, encoder=vae)
    extra_models = [decoder_vae.patcher] + guidance_patchers(guidance)
    if hasattr(model, "set_additional_models"):  # loads them in the same call as the UNet
        model = model.clone()
        model.set_additional_models("universal_guidance", extra_models)
    else:
        comfy.model_management.load_models_gpu([model] + extra_models)
    noise = comfy.sample.prepare_noise(latent, seed, latent_image.get("batch_index"))
    sigmas = _sigmas(model, scheduler, steps, denoise)
    callback = latent_preview.prepare_callback(model, len(sigmas) - 1)
    samples = comfy.sample.sample_custom(
        model, noise, cfg, ksampler, sigmas, positive, negative, latent,
        noise_mask=latent_image.get("noise_mask"), callback=callback,
        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed,
    )
    out = latent_image.copy()
    out["samples"] = samples
    return out, loss_plot(history)


class UniversalGuidedKSampler:
    DESCRIPTION = ("KSampler with universal guidance (Bansal et al. 2023): any GUIDANCE steers every step. Pick a "
                   "preset, or connect Universal Guidance Options to set every lever.")
    CATEGORY = "universal_guidance"
    # The loss plot comes after LATENT, so that links to output 0 mean what they mean on KSampler.
    RETURN_TYPES = ("LATENT", "IMAGE")
    RETURN_NAMES = ("LATENT", "loss_plot")
    OUTPUT_TOOLTIPS = ("The guided latent.",
                       "Each guidance's loss over the steps, its window shaded. The losses also show on this node "
                       "while it samples.")
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": MODEL_INPUT,
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True,
                                 "tooltip": "Seeds the noise, the re-noising between passes and the ddpm step's noise."}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000,
                                  "tooltip": "Denoising steps; the fast preset runs its own 10."}),
                "cfg": ("FLOAT", {"default": 7.5, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Classifier-free guidance scale, as in KSampler."}),
                "sampler_name": BASE,
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"default": "normal",
                                                                   "tooltip": "How the noise levels are spaced."}),
                "positive": POSITIVE_INPUT,
                "negative": NEGATIVE_INPUT,
                "latent_image": ("LATENT", {"tooltip": "The latent to denoise; its noise_mask, if any, limits "
                                                       "sampling and guidance to the masked area."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                                      "tooltip": "How much of the latent to replace, as in KSampler."}),
                "vae": ("VAE", {"tooltip": "Decodes the predicted clean latent for the guidance loss."}),
                "guidance": GUIDANCE_INPUT,
                "preset": PRESET,
            },
            "optional": {"guidance_vae": GUIDANCE_VAE, "options": OPTIONS_INPUT},
        }

    def sample(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise, vae,
               guidance, preset, guidance_vae=None, options=None):
        settings, steps = run_settings(preset, options, sampler_name, steps)
        cheap = preset in PRESETS and PRESETS[preset].cheap_decoder
        return guided_ksample(model, vae, positive, negative, latent_image, guidance, seed, steps, cfg, scheduler,
                              denoise, settings, guidance_vae, cheap)


class UniversalGuidanceSampler:
    DESCRIPTION = ("A SAMPLER running universal guidance, for SamplerCustom and SamplerCustomAdvanced with any guider "
                   "and scheduler. The noise seed seeds the re-noising too.")
    CATEGORY = "universal_guidance"
    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": ("VAE", {"tooltip": "Decodes the predicted clean latent for the guidance loss; TAESD works."}),
                "guidance": GUIDANCE_INPUT,
                "sampler_name": BASE,
                "preset": PRESET,
            },
            "optional": {"options": OPTIONS_INPUT},
        }

    def get_sampler(self, vae, guidance, sampler_name, preset, options=None):
        settings, _ = run_settings(preset, options, sampler_name, None)
        if preset in PRESETS and PRESETS[preset].steps:
            log.info("Universal guidance: preset %s was measured at %d steps; here the scheduler's sigmas set the "
                     "steps.", preset, PRESETS[preset].steps)
        return (universal_guidance_sampler(guidance, vae, settings),)


NODE_CLASS_MAPPINGS = {
    "UGDGuidedKSampler": UniversalGuidedKSampler,
    "UGDGuidedSampler": UniversalGuidanceSampler,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "UGDGuidedKSampler": "Universal Guided KSampler",
    "UGDGuidedSampler": "Universal Guidance Sampler",
}
