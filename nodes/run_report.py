"""What a guided run says about its cost: the passes it will run, before the first step, and the passes it ran,
after the last; and the UNet counter that sees the host's CFG batch."""
from __future__ import annotations

import logging

from ..samplers import cost
from ..samplers.pass_counts import PassCounts
from ..samplers.settings import Settings
from .host_models import is_taesd

log = logging.getLogger(__name__)

# Model families whose part costs bench/speed measured (samplers/part_costs.json), by ComfyUI's config class.
PRICED_FAMILIES = {"SD15"}


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


def log_plan(guidance, sigmas, noise_scaling, settings: Settings, vae, base_model) -> None:
    """Say what the run will compute before it starts, from its passes counted on a stand-in (samplers/cost.py):
    priced as SD 1.5 for that family, as a ratio of passes for any other."""
    steps = len(sigmas) - 1
    counts = cost.counted_passes(steps, [cost.term_settings(t) for t in guidance], settings, sigmas=sigmas.cpu(),
                                 noise_scaling=noise_scaling)
    priced = type(getattr(base_model, "model_config", None)).__name__ in PRICED_FAMILIES
    log.info("Universal guidance: %s.", cost.plan_summary(counts, steps, "taesd" if is_taesd(vae) else "vae", priced))


def pass_summary(counts: PassCounts, samples: int, seconds: float) -> str:
    per_sample = counts.per_sample(samples)
    parts = {"unet": "UNet (with the CFG batch)", "decoder": "guidance decoder", "guidance_network": "guidance losses",
             "polish_decoder": "known pixels' polish"}
    passes = ", ".join(f"{label} {per_sample.forward[part]:g} forward / {per_sample.backward[part]:g} backward"
                       for part, label in parts.items() if part != "polish_decoder" or per_sample.forward[part])
    return f"Universal guidance: {samples} sample(s) in {seconds:.1f} s; per sample, {passes}."
