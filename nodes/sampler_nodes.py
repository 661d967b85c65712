"""The sampler nodes: an all-in-one guided KSampler, and a SAMPLER for SamplerCustom(Advanced)."""
from __future__ import annotations

import logging

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview

from ..samplers.decoding import DECODE_RESOLUTIONS
from ..samplers.precision import AUTOCAST_DTYPES
from ..samplers.methods import METHODS, tfg
from ..samplers.presets import PRESETS
from ..samplers.progress import LossHistory
from ..samplers.universal_guidance import BASE_STEPS, GRADIENT_PATHS
from .comfy_host import SamplerOptions, check_guidance, guidance_patchers, universal_guidance_sampler
from .guidance_settings import GUIDANCE
from .loss_plot import loss_plot

log = logging.getLogger(__name__)

RECURRENCE = ("INT", {"default": 1, "min": 1, "max": 100,
                      "tooltip": "k: denoising passes per step while guidance is active, re-noising in between (paper eq. 10). 1 = no recurrence."})
BASE = (list(BASE_STEPS), {"default": "ddim", "tooltip": "ddim: deterministic DDIM (η = 0). ddpm: ancestral DDPM-like step (η = 1)."})
GUIDANCE_VAE = ("VAE", {"tooltip": "Optional VAE used only to decode for the guidance loss, e.g. TAESD from Load VAE: faster, less exact."})
# The method and the speed and memory levers; the defaults are the paper's exact method (README: Speed and memory,
# Methods).
SAMPLER_OPTIONS = {
    "guidance_every": ("INT", {"default": 1, "min": 1, "max": 1000,
                               "tooltip": "Guide only every N-th step (1 = every step); the steps between are plain "
                                          "DDIM/DDPM steps. For a step window, set start/end_percent on the guidance."}),
    "gradient": (list(GRADIENT_PATHS), {"default": "through_unet",
                                        "tooltip": "through_unet: the paper's gradient, back through the UNet. x0_only: "
                                                   "the gradient at the predicted clean latent, no UNet backward "
                                                   "(MPGD's shortcut): cheaper and lighter, an approximation. "
                                                   "unconditional: the loss on the negative prompt's prediction, its "
                                                   "gradient through that branch only and CFG added after it (the "
                                                   "reference's object-location sampler): half the UNet backward "
                                                   "under CFG."}),
    "decode_resolution": (list(DECODE_RESOLUTIONS), {"default": "full",
                                                     "tooltip": "Decode for the guidance loss at full, half or quarter "
                                                                "resolution: the decoder costs 4× or 16× less, the "
                                                                "loss sees less detail."}),
    "checkpointing": ("BOOLEAN", {"default": False,
                                  "tooltip": "Gradient checkpointing of the UNet and the guidance decoder: their "
                                             "activations are recomputed in the backward pass instead of kept. Much "
                                             "less memory, some more time. The result is the same."}),
    "autocast": (list(AUTOCAST_DTYPES), {"default": "off",
                                         "tooltip": "Run the guided passes under bf16 or fp16 autocast (for GPUs; fp16 "
                                                    "with loss scaling). A pass that is not finite is redone in full "
                                                    "precision."}),
    "guidance_end": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                               "tooltip": "Guide only the first fraction of the steps (1 = all), within each "
                                          "guidance's own start/end_percent. Early steps set the layout."}),
    "weight_scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.05,
                               "tooltip": "Multiplies every guidance's forward weight w. x0_only's gradient "
                                          "overshoots at high noise, so it wants less (the presets use 0.3)."}),
    "preset": (["custom", *PRESETS], {"default": "custom", "tooltip": "\n".join(
        ["custom: the inputs as set.",
         *(f"{name}: {preset.describe()}." for name, preset in PRESETS.items()),
         "A preset other than custom sets these levers and ignores the inputs for them; checkpointing and "
         "autocast stay as set. Measured scores and costs: the pack's README, Quality against cost."])}),
    # After preset: saved graphs keep their widget values' positions, and those without these get the defaults.
    "backward_end": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                               "tooltip": "Backward guidance goes on without forward guidance, in "
                                          "backward_recurrence passes per step (one if that is 0), on the steps "
                                          "that guidance_end and guidance_every leave plain, up to this fraction "
                                          "of the steps (0 = it stops with them). Matching known pixels or boxes "
                                          "needs the late steps."}),
    "backward_recurrence": ("INT", {"default": 0, "min": 0, "max": 100,
                                    "tooltip": "k on the steps where a guidance takes backward steps, the guided "
                                               "ones and backward_end's, in place of recurrence (0 = recurrence on "
                                               "the guided steps, one pass on backward_end's): each of their "
                                               "passes costs m more decoder passes."}),
    "method": (list(METHODS), {"default": "ugd", "tooltip": "\n".join(
        ["How a guided pass steps (README: Methods). ugd: the paper's, into x0 and ε.",
         "freedom: a step on x_{t-1} through the UNet, sized to the noise (weight = ρ, about 0.02-1).",
         "mpgd: steps on x0 alone, no UNet backward (backward_steps = N_iter, backward_lr = μ; weight unused).",
         "dps: a step on x_{t-1} along the gradient of √loss (weight = ζ); use sampler ddpm and recurrence 1.",
         "tfg: TFG's variance (weight = ρ) and mean guidance (backward_steps, backward_lr = μ) with smoothing.",
         "Mean guidance takes plain gradient steps: the guidance's optimizer is not used."])}),
    "smoothing": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0, "step": 0.01,
                            "tooltip": "tfg only: γ̄, the loss is read at x0 plus noise of γ̄·√(1−ᾱ_t) (0 = off); "
                                       "smoothing_schedule constant makes it γ̄."}),
    "rho_schedule": (list(tfg.SCHEDULES), {"default": "increase", "tooltip":
                     "tfg only: ρ_t over the steps, 1 on average: ∝ α_t (increase, TFG's default), 1 − α_t "
                     "(decrease, strongest early) or constant."}),
    "mu_schedule": (list(tfg.SCHEDULES), {"default": "increase", "tooltip":
                    "tfg only: μ_t (the mean guidance's backward_lr) over the steps, as rho_schedule."}),
    "smoothing_schedule": (list(tfg.SMOOTHING_SCHEDULES), {"default": "decrease", "tooltip":
                           "tfg only: the smoothing noise γ̄·√(1−ᾱ_t) (decrease, TFG's default) or γ̄ (constant)."}),
}


def preset_levers(preset: str, steps: int | None, recurrence: int, options: dict) -> tuple[int | None, int, dict]:
    """(steps, recurrence, options) with the preset's values in place of the inputs' (custom keeps them)."""
    if preset == "custom":
        return steps, recurrence, options
    if preset not in PRESETS:
        raise ValueError(f"preset must be custom or one of {tuple(PRESETS)}, got {preset!r}.")
    chosen = PRESETS[preset]
    log.info("Universal guidance: preset %s: %s.", preset, chosen.describe())
    return chosen.steps or steps, chosen.recurrence, {**options, **chosen.levers()}


def _sigmas(model, scheduler: str, steps: int, denoise: float):
    """KSampler's sigmas, with its denoise truncation."""
    total = steps if denoise >= 1.0 else int(steps / denoise)
    if hasattr(comfy.samplers, "calculate_sigmas") and hasattr(model, "get_model_object"):
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, total)
    else:  # ComfyUI before 2024-06
        sigmas = comfy.samplers.calculate_sigmas_scheduler(model.model, scheduler, total)
    return sigmas[-(steps + 1):].cpu()


class UniversalGuidedKSampler:
    DESCRIPTION = ("KSampler with universal guidance (Bansal et al. 2023): forward and backward guidance by any "
                   "GUIDANCE, with per-step self-recurrence.")
    CATEGORY = "universal_guidance"
    # The loss plot comes after LATENT, so that saved graphs' links to output 0 keep their meaning.
    RETURN_TYPES = ("LATENT", "IMAGE")
    RETURN_NAMES = ("LATENT", "loss_plot")
    OUTPUT_TOOLTIPS = ("The guided latent.",
                       "Each guidance term's loss over the steps (batch mean, at each step's last pass), its window "
                       "shaded. The losses also show on this node while it samples.")
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model; it is not changed."}),
                "vae": ("VAE", {"tooltip": "Decodes the predicted clean latent for the guidance loss."}),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "latent_image": ("LATENT", {"tooltip": "Its noise_mask, if any, limits sampling to the masked area."}),
                "guidance": (GUIDANCE, {"tooltip": "From a guidance node, or Combine Guidance."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
                "cfg": ("FLOAT", {"default": 7.5, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
                "sampler": BASE,
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"default": "normal"}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01}),
                "recurrence": RECURRENCE,
            },
            "optional": {"guidance_vae": GUIDANCE_VAE, **SAMPLER_OPTIONS},
        }

    def sample(self, model, vae, positive, negative, latent_image, guidance, seed, steps, cfg, sampler,
               scheduler, denoise, recurrence, guidance_vae=None, preset="custom", **options):
        steps, recurrence, options = preset_levers(preset, steps, recurrence, options)
        if preset != "custom" and PRESETS[preset].cheap_decoder and guidance_vae is None:
            log.warning("Universal guidance: the %s preset was measured with a TAESD guidance_vae; without one, "
                        "every guided pass decodes with the full VAE, which costs much more.", preset)
        decoder_vae = guidance_vae or vae
        latent = latent_image["samples"]
        if hasattr(comfy.sample, "fix_empty_latent_channels"):
            latent = comfy.sample.fix_empty_latent_channels(model, latent)
        check_guidance(guidance, latent.shape, decoder_vae)
        history = LossHistory()
        ksampler = universal_guidance_sampler(guidance, decoder_vae, recurrence, sampler, SamplerOptions(**options),
                                              history)
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


class UniversalGuidanceSampler:
    DESCRIPTION = ("A SAMPLER running universal guidance, for SamplerCustom and SamplerCustomAdvanced with any "
                   "guider. The noise seed seeds the re-noising too.")
    CATEGORY = "universal_guidance"
    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": ("VAE", {"tooltip": "Decodes the predicted clean latent for the guidance loss (TAESD works)."}),
                "guidance": (GUIDANCE,),
                "sampler": BASE,
                "recurrence": RECURRENCE,
            },
            "optional": SAMPLER_OPTIONS,
        }

    def get_sampler(self, vae, guidance, sampler, recurrence, preset="custom", **options):
        # The sigmas come from outside this node, so a preset's steps are the scheduler's to set.
        _, recurrence, options = preset_levers(preset, None, recurrence, options)
        return (universal_guidance_sampler(guidance, vae, recurrence, sampler, SamplerOptions(**options)),)


NODE_CLASS_MAPPINGS = {
    "UniversalGuidedKSampler": UniversalGuidedKSampler,
    "UGDUniversalGuidanceSampler": UniversalGuidanceSampler,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "UniversalGuidedKSampler": "Universal Guided KSampler",
    "UGDUniversalGuidanceSampler": "Universal Guidance Sampler",
}
