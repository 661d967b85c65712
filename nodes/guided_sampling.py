"""The guided sampler as a ComfyUI SAMPLER: the host's networks made ready, counted, and handed to the engine with
the run's settings."""
from __future__ import annotations

import logging
import time

import torch

import comfy.model_management
import comfy.samplers

from ..samplers.checkpointing import checkpointed
from ..samplers.pass_counts import PassCounts, report
from ..samplers.progress import LossHistory
from ..samplers.settings import Settings
from ..samplers.universal_guidance import sample_universal_guidance
from .cfg_branches import unconditional_branches
from .host_models import checkpoint_blocks, prepare_guided_sampling
from .live_progress import LiveProgress
from .run_report import counting_unet, log_plan, pass_summary

log = logging.getLogger(__name__)


def _sample(model, x, sigmas, extra_args=None, callback=None, disable=None, *, guidance, vae, settings: Settings,
            history: LossHistory | None = None):
    start, counts = time.perf_counter(), PassCounts()
    base_model, extra_args, decode = prepare_guided_sampling(model, x.shape, extra_args, guidance, vae)
    noise_scaling = base_model.model_sampling.noise_scaling
    log_plan(guidance, sigmas, noise_scaling, settings, vae, base_model)
    if history is not None:
        history.start(guidance, len(sigmas) - 1)
    extra_args = counting_unet(extra_args, counts)
    branches = unconditional_branches(model, extra_args) if settings.gradient == "unconditional" else None
    denoiser, guidance, decode, branches = counts.wrapped(model, guidance, decode, x.shape[-2] * x.shape[-1], branches)
    blocks = checkpoint_blocks(base_model, vae) if settings.checkpointing else []
    try:
        with checkpointed(blocks), counts.counting_optimizer_steps():
            samples = sample_universal_guidance(
                denoiser, x, sigmas, extra_args, callback, disable, guidance=guidance, decode=decode,
                noise_scaling=noise_scaling, settings=settings,
                check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted,
                update_mask=extra_args.get("denoise_mask"), unconditional=branches,
                on_pass=LiveProgress(callback, history))
    except torch.OutOfMemoryError:
        # Re-raised unchanged so that ComfyUI still frees its models; this says what to change.
        log.error("Universal guidance ran out of memory in a backward pass. Turn on checkpointing, give the "
                  "sampler a TAESD guidance_vae or a lower decode_resolution, use gradient x0_only, or lower the "
                  "resolution, batch size or backward steps.")
        raise
    log.info(pass_summary(counts, x.shape[0], time.perf_counter() - start))
    report(counts)
    return samples


def universal_guidance_sampler(guidance, vae, settings: Settings = Settings(),
                               history: LossHistory | None = None) -> comfy.samplers.KSAMPLER:
    """A ComfyUI SAMPLER running universal guidance; `vae` decodes for the guidance loss; `history`, if given,
    receives each term's loss over the steps."""
    return comfy.samplers.KSAMPLER(_sample, extra_options={"guidance": guidance, "vae": vae, "settings": settings,
                                                           "history": history})
