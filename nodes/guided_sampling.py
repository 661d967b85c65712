"""The guided sampler as a ComfyUI SAMPLER: the host's networks made ready, counted, and handed to the engine with
the run's settings."""
from __future__ import annotations

import dataclasses
import logging
import time

import torch

import comfy.model_management
import comfy.samplers

from ..samplers.known_pixels import HeldLatent, kept_cells, known_region
from ..samplers.pass_counts import PassCounts, report
from ..samplers.progress import LossHistory
from ..samplers.settings import Settings
from ..samplers.universal_guidance import sample_universal_guidance
from .cfg_branches import unconditional_branches
from .host_models import checkpointing, make_decoder, prepare_guided_sampling, vae_scale
from .live_progress import LiveProgress
from .run_report import counting_unet, log_plan, pass_summary

log = logging.getLogger(__name__)


def _held_latent(x, extra_args, guidance, encoder, base_model) -> HeldLatent | None:
    """The guidance's known pixels encoded, the cells to hold at them, the noise to hold them with and the
    encoder's decoder, or None where no guidance knows pixels (samplers/known_pixels.py)."""
    scale = vae_scale(encoder)
    region = known_region(guidance, x.shape[0], x.shape[-2] * scale, x.shape[-1] * scale)
    if region is None:
        log.warning("Universal guidance: known_pixels is replace, but no guidance knows pixels (Image Reconstruction "
                    "Guidance with a mask); nothing is replaced.")
        return None
    image, known = region
    latent = base_model.process_latent_in(encoder.encode(image.movedim(1, -1)).to(x))
    generator = torch.Generator().manual_seed(int(extra_args.get("seed") or 0))
    with torch.inference_mode(False):  # autograd saves these for the guided backward
        return HeldLatent(latent.clone(), kept_cells(known.to(x), tuple(x.shape[-2:])).clone(),
                          torch.randn(x.shape, generator=generator).to(x), make_decoder(base_model, encoder))


def _sample(model, x, sigmas, extra_args=None, callback=None, disable=None, *, guidance, vae, settings: Settings,
            encoder=None, history: LossHistory | None = None):
    start, counts = time.perf_counter(), PassCounts()
    # encoded before the guided networks load, so that those load in one call
    held = (_held_latent(x, extra_args, guidance, encoder or vae, model.inner_model.inner_model)
            if settings.known_pixels == "replace" else None)
    base_model, extra_args, decode = prepare_guided_sampling(model, x.shape, extra_args, guidance, vae,
                                                             [encoder] if held is not None and encoder else [])
    noise_scaling = base_model.model_sampling.noise_scaling
    if settings.particles == 1 and all(term.reward_only for term in guidance):
        log.warning("Universal guidance: every guidance is a particle reward only, and particles is 1: nothing "
                    "guides this run. Set particles on the options node, or guide with the guidance itself.")
    log_plan(guidance, sigmas, noise_scaling, settings, vae, base_model)
    if history is not None:
        history.start(guidance, len(sigmas) - 1)
    extra_args = counting_unet(extra_args, counts)
    branches = unconditional_branches(model, extra_args) if settings.gradient == "unconditional" else None
    denoiser, guidance, decode, branches = counts.wrapped(model, guidance, decode, x.shape[-2] * x.shape[-1], branches)
    if held is not None:
        held = dataclasses.replace(held, decode=counts.counted("polish_decoder", held.decode, x.shape[-2] * x.shape[-1]))
    try:
        with checkpointing(base_model, vae, settings.checkpointing), counts.counting_optimizer_steps():
            samples = sample_universal_guidance(
                denoiser, x, sigmas, extra_args, callback, disable, guidance=guidance, decode=decode,
                noise_scaling=noise_scaling, settings=settings,
                check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted,
                update_mask=extra_args.get("denoise_mask"), unconditional=branches, held=held,
                on_pass=LiveProgress(callback, history), on_chosen=history and history.chosen)
    except torch.OutOfMemoryError:
        # Re-raised unchanged so that ComfyUI still frees its models; this says what to change.
        log.error("Universal guidance ran out of memory in a backward pass. Turn on checkpointing, give the "
                  "sampler a TAESD guidance_vae or a lower decode_resolution, use gradient x0_only, or lower the "
                  "resolution, batch size or backward steps.")
        raise
    log.info(pass_summary(counts, x.shape[0], time.perf_counter() - start))
    report(counts)
    return samples


def universal_guidance_sampler(guidance, vae, settings: Settings = Settings(), history: LossHistory | None = None,
                               encoder=None) -> comfy.samplers.KSAMPLER:
    """A ComfyUI SAMPLER running universal guidance; `vae` decodes for the guidance loss, `encoder` (vae if None)
    encodes known pixels; `history`, if given, receives each term's loss over the steps."""
    return comfy.samplers.KSAMPLER(_sample, extra_options={"guidance": guidance, "vae": vae, "settings": settings,
                                                           "encoder": encoder, "history": history})
