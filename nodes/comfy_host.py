"""Running the engine inside ComfyUI: loading, autograd-safe weights, the differentiable decoder, checks.

Follows shared research `comfyui-integration.md` §1.5 and §8: every model is loaded in one
`load_models_gpu` call before any gradient block, inference-tensor weights are replaced by normal
clones (never through `.data`), and decoding uses `first_stage_model.decode` without a clamp.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import torch

import comfy.model_management
import comfy.samplers

from ..samplers.autograd_safety import make_autograd_safe
from ..samplers import cost
from ..samplers.checkpointing import checkpointed, outermost_blocks
from ..samplers.decoding import DECODE_RESOLUTIONS, at_reduced_resolution
from ..samplers.methods import METHODS, tfg
from ..samplers.pass_counts import PassCounts, report
from ..samplers.precision import AUTOCAST_DTYPES
from ..samplers.progress import LossHistory
from ..samplers.universal_guidance import GRADIENT_PATHS, sample_universal_guidance
from .live_progress import LiveProgress

log = logging.getLogger(__name__)

# ComfyUI's blocks that gradient checkpointing wraps: the UNet's, the VAE decoder's and TAESD's.
CHECKPOINTED_BLOCKS = {"ResBlock", "SpatialTransformer", "ResnetBlock", "AttnBlock", "Block"}


@dataclass(frozen=True)
class SamplerOptions:
    """The sampler's options beside k and the base step: the guidance method, and the speed and memory levers; the
    defaults are the paper's exact method.

    method: how a guided pass places its steps (samplers/methods); smoothing: TFG's γ̄; rho_schedule,
    mu_schedule, smoothing_schedule: TFG's schedules (samplers/methods/tfg.py).
    guidance_every: guide every N-th step only. guidance_end: guide the first fraction of the steps only.
    backward_end: the steps that those two leave plain, in the first fraction of the steps, take backward guidance.
    backward_recurrence: k on the steps with backward guidance, guided or backward_end's (0 = the sampler's
    recurrence on the guided steps, one pass on backward_end's).
    gradient: "through_unet" or "x0_only". weight_scale: multiplies every guidance's forward weight w.
    decode_resolution: "full", "half" or "quarter", the guidance decoder's resolution.
    checkpointing: recompute UNet and decoder activations in the backward pass.
    autocast: "off", "bf16" or "fp16" for the guided passes.
    """

    guidance_every: int = 1
    guidance_end: float = 1.0
    backward_end: float = 0.0
    backward_recurrence: int = 0
    gradient: str = "through_unet"
    weight_scale: float = 1.0
    decode_resolution: str = "full"
    checkpointing: bool = False
    autocast: str = "off"
    method: str = "ugd"
    smoothing: float = 0.0
    rho_schedule: str = "increase"
    mu_schedule: str = "increase"
    smoothing_schedule: str = "decrease"

    def __post_init__(self):
        if self.guidance_every < 1:
            raise ValueError(f"guidance_every must be at least 1, got {self.guidance_every}.")
        if not 0.0 < self.guidance_end <= 1.0:
            raise ValueError(f"guidance_end must be in (0, 1], got {self.guidance_end}.")
        if not 0.0 <= self.backward_end <= 1.0:
            raise ValueError(f"backward_end must be in [0, 1], got {self.backward_end}.")
        if self.backward_recurrence < 0:
            raise ValueError(f"backward_recurrence must be at least 0 (0 = recurrence), got {self.backward_recurrence}.")
        if not 0.0 <= self.weight_scale < float("inf"):
            raise ValueError(f"weight_scale must be a finite number >= 0, got {self.weight_scale}.")
        tfg.Settings(self.smoothing, self.rho_schedule, self.mu_schedule, self.smoothing_schedule)
        for name, value, choices in (("method", self.method, tuple(METHODS)),
                                     ("gradient", self.gradient, GRADIENT_PATHS),
                                     ("decode_resolution", self.decode_resolution, tuple(DECODE_RESOLUTIONS)),
                                     ("autocast", self.autocast, tuple(AUTOCAST_DTYPES))):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}.")


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


def counting_unet(extra_args: dict, counts: PassCounts) -> dict:
    """extra_args whose model options count the UNet's calls, with the CFG batch, around any wrapper already there."""
    model_options = dict(extra_args.get("model_options") or {})
    inner = model_options.get("model_function_wrapper")

    def wrapper(apply_model, args):
        x = args["input"]
        out = inner(apply_model, args) if inner else apply_model(x, args["timestep"], **args["c"])
        return counts.add("unet", out, x.shape[0])

    model_options["model_function_wrapper"] = wrapper
    return {**extra_args, "model_options": model_options}


def _rows(args: dict, which: int):
    """(row indices, the call's arguments) of the part of a UNet call's batch that belongs to `which` (0 = the
    prompt's rows, 1 = the negative's), or None if the call's inputs cannot be sliced (ControlNet's outputs, or a
    tensor of another batch size)."""
    chunks, x = args["cond_or_uncond"], args["input"]
    total, per = x.shape[0], x.shape[0] // len(args["cond_or_uncond"])
    index = torch.tensor([i * per + j for i, kind in enumerate(chunks) if kind == which for j in range(per)],
                         device=x.device)
    c = {}
    for key, value in args["c"].items():
        if key == "transformer_options":
            value = dict(value)
            kept = [i for i, kind in enumerate(chunks) if kind == which]
            for listed in ("cond_or_uncond", "uuids"):
                if isinstance(value.get(listed), list) and len(value[listed]) == len(chunks):
                    value[listed] = [value[listed][i] for i in kept]
        elif torch.is_tensor(value) and value.shape[:1] == (total,):
            value = value.index_select(0, index)
        elif value is not None:
            return None
        c[key] = value
    sliced = {"input": x.index_select(0, index), "timestep": args["timestep"].index_select(0, index), "c": c,
              "cond_or_uncond": [kind for kind in chunks if kind == which]}
    return index, sliced


def unconditional_branches(model, extra_args: dict):
    """The denoiser as `(x, σ) -> (x0 with CFG, the unconditional branch's x0)`, for the gradient path
    "unconditional": in the UNet's batch, the prompt's rows run without autograd and the negative prompt's with
    it, so the backward pass covers one branch of the CFG batch (the reference's object-location sampler). The
    unconditional x0 comes from ComfyUI's post-CFG hook, after its areas and masks. Without a negative branch
    (cfg 1) it is the x0 itself; where the batch cannot be sliced, both branches keep autograd."""
    model_options = dict(extra_args.get("model_options") or {})
    inner = model_options.get("model_function_wrapper")
    captured, branches_run = [], set()  # ComfyUI skips the negative branch at cfg 1 (its x0 reads as zeros then)

    def run(apply_model, args):
        return inner(apply_model, args) if inner else apply_model(args["input"], args["timestep"], **args["c"])

    def split(apply_model, args):
        chunks = args["cond_or_uncond"]
        branches_run.update(chunks)
        parts = [_rows(args, 0), _rows(args, 1)] if 0 in chunks and 1 in chunks and torch.is_grad_enabled() else []
        if not parts or None in parts:
            return run(apply_model, args)
        (cond_index, cond_args), (uncond_index, uncond_args) = parts
        with torch.no_grad():
            cond = run(apply_model, cond_args)
        uncond = run(apply_model, uncond_args)
        order = torch.argsort(torch.cat([cond_index, uncond_index]))
        return torch.cat([cond, uncond]).index_select(0, order)

    def capture(args):
        captured[:] = [args["uncond_denoised"] if 1 in branches_run else args["denoised"]]
        return args["denoised"]

    model_options["model_function_wrapper"] = split
    model_options["sampler_post_cfg_function"] = list(model_options.get("sampler_post_cfg_function", [])) + [capture]
    branch_args = {**extra_args, "model_options": model_options}

    def branches(x, sigma):
        branches_run.clear()
        x0 = model(x, sigma, **branch_args)
        return x0, captured.pop() if captured else x0  # a guider without CFG calls no post-CFG hook

    return branches


def pass_summary(counts: PassCounts, samples: int, seconds: float) -> str:
    per_sample = counts.per_sample(samples)
    parts = {"unet": "UNet (with the CFG batch)", "decoder": "guidance decoder", "guidance_network": "guidance losses"}
    passes = ", ".join(f"{label} {per_sample.forward[part]:g} forward / {per_sample.backward[part]:g} backward"
                       for part, label in parts.items())
    return f"Universal guidance: {samples} sample(s) in {seconds:.1f} s; per sample, {passes}."


def prepare_guided_sampling(model, x_shape, extra_args, guidance, vae, decode_resolution: str = "full",
                            counts: PassCounts | None = None):
    """Load the UNet, the VAE and the guidance networks, make them autograd-safe, and build the decoder.

    `model` is the denoiser ComfyUI hands a sampler function. With `counts`, the UNet's and the decoder's passes
    are counted. Returns (base model, extra_args, decode).
    """
    base_model = model.inner_model.inner_model
    extra_args = _normal_copies(model, extra_args)
    check_guidance(guidance, x_shape, vae)
    patcher, networks = _patcher_of(base_model), guidance_patchers(guidance)
    comfy.model_management.load_models_gpu(([patcher] if patcher else []) + [vae.patcher] + networks)
    for module in [base_model, vae.first_stage_model] + [p.model for p in networks]:
        make_autograd_safe(module)
    if getattr(comfy.model_management, "sage_attention_enabled", lambda: False)():
        log.warning("Universal guidance: SageAttention has no backward pass, so the guidance gradient loses the "
                    "attention layers' share. Start ComfyUI without --use-sage-attention for exact guidance.")
    decode = make_decoder(base_model, vae)
    if counts is not None:
        extra_args = counting_unet(extra_args, counts)
        decode = counts.counted("decoder", decode, full_area=x_shape[-2] * x_shape[-1])
    return base_model, extra_args, at_reduced_resolution(decode, decode_resolution)


def _engine_levers(options: SamplerOptions) -> dict:
    """The options that the engine takes as they are (the others act on the host's side)."""
    names = ("guidance_every", "guidance_end", "backward_end", "backward_recurrence", "gradient", "method",
             "smoothing", "rho_schedule", "mu_schedule", "smoothing_schedule")
    return {name: getattr(options, name) for name in names}


def is_taesd(vae) -> bool:
    return type(vae.first_stage_model).__name__ == "TAESD"


def log_plan(guidance, sigmas, noise_scaling, recurrence: int, base: str, options: SamplerOptions, vae) -> None:
    """Say what the run will cost before it starts, from its passes counted on a stand-in (samplers/cost.py)."""
    counts = cost.counted_passes(len(sigmas) - 1, recurrence, [cost.term_settings(t) for t in guidance],
                                 decode_resolution=options.decode_resolution, sigmas=sigmas.cpu(),
                                 noise_scaling=noise_scaling, base=base, **_engine_levers(options))
    log.info("Universal guidance: %s.", cost.plan_summary(counts, len(sigmas) - 1, "taesd" if is_taesd(vae) else "vae"))


def _sample(model, x, sigmas, extra_args=None, callback=None, disable=None, *, guidance, vae, recurrence, base,
            options: SamplerOptions, history: LossHistory | None = None):
    start, counts = time.perf_counter(), PassCounts()
    if options.weight_scale != 1.0:
        guidance = tuple(replace(term, weight=term.weight * options.weight_scale) for term in guidance)
    base_model, extra_args, decode = prepare_guided_sampling(model, x.shape, extra_args, guidance, vae,
                                                             options.decode_resolution, counts)
    noise_scaling = base_model.model_sampling.noise_scaling
    log_plan(guidance, sigmas, noise_scaling, recurrence, base, options, vae)
    if history is not None:
        history.start(guidance, len(sigmas) - 1)
    blocks = checkpoint_blocks(base_model, vae) if options.checkpointing else []
    try:
        with checkpointed(blocks):
            samples = sample_universal_guidance(
                model, x, sigmas, extra_args, callback, disable,
                guidance=guidance,
                decode=decode,
                noise_scaling=noise_scaling,
                recurrence=recurrence,
                base=base,
                check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted,
                update_mask=extra_args.get("denoise_mask"),
                autocast=options.autocast,
                counts=counts,
                unconditional=unconditional_branches(model, extra_args) if options.gradient == "unconditional" else None,
                on_pass=LiveProgress(callback, history),
                **_engine_levers(options),
            )
    except torch.OutOfMemoryError:
        # Re-raised unchanged so that ComfyUI still frees its models; this says what to change.
        log.error("Universal guidance ran out of memory in a backward pass. Turn on checkpointing, give the "
                  "sampler a TAESD guidance_vae or a lower decode_resolution, use gradient x0_only, or lower the "
                  "resolution, batch size or backward steps.")
        raise
    log.info(pass_summary(counts, x.shape[0], time.perf_counter() - start))
    report(counts)
    return samples


def universal_guidance_sampler(guidance, vae, recurrence: int, base: str, options: SamplerOptions = SamplerOptions(),
                               history: LossHistory | None = None) -> comfy.samplers.KSAMPLER:
    """A ComfyUI SAMPLER running universal guidance; `vae` decodes for the guidance loss; `history`, if given,
    receives each term's loss over the steps."""
    if recurrence < 1:
        raise ValueError(f"recurrence (k) must be at least 1, got {recurrence}.")
    return comfy.samplers.KSAMPLER(_sample, extra_options={"guidance": guidance, "vae": vae, "recurrence": recurrence,
                                                           "base": base, "options": options, "history": history})
