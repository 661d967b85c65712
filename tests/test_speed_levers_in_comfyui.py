"""The sampler nodes' speed and memory levers on the toy world's real ComfyUI UNet and VAE (COMFYUI_PATH):
each lever samples finite latents of the right shape that guidance has moved, checkpointing gives the default
path's result, and the host's modules are as they were afterwards."""
from __future__ import annotations

import pytest
import torch

import guided_nodes

SEED, STEPS = 3, 6
SETTINGS = dict(weight=100.0, schedule="paper", backward_steps=1, backward_lr=0.1, optimizer="adam",
                start_percent=0.0, end_percent=1.0)


def node(comfy, name):
    return comfy.nodes.NODE_CLASS_MAPPINGS[name]()


@pytest.fixture(scope="module")
def toy(comfy):
    with torch.inference_mode():
        model, vae, unconditional, _ = node(comfy, "UGDToyWorldLoader").load()
        segmenter, _, _ = node(comfy, "UGDToyWorldGuidanceNetworks").load()
        (latent,) = node(comfy, "UGDEmptyToyWorldLatent").generate(2)
        mask = torch.zeros(1, 64, 64)
        mask[:, 8:40, 8:40] = 1
        (guidance,) = node(comfy, "UGDSegmentationGuidance").guide(segmenter, "circle", "background", mask=mask, **SETTINGS)
    return dict(model=model, vae=vae, positive=unconditional, negative=unconditional, latent_image=latent,
                guidance=guidance)


def guided(comfy, toy, cfg=1.0, steps=STEPS, recurrence=2, **speed):
    out, _ = guided_nodes.ksampler(comfy, seed=SEED, steps=steps, cfg=cfg, scheduler="normal", denoise=1.0,
                                   recurrence=recurrence, **toy, **speed)
    return out["samples"]


def unguided(comfy, toy):
    with torch.inference_mode():
        (out,) = node(comfy, "KSampler").sample(toy["model"], SEED, STEPS, 1.0, "euler", "normal", toy["positive"],
                                                toy["negative"], toy["latent_image"], denoise=1.0)
    return out["samples"]


def instance_forwards(toy):
    modules = list(toy["model"].model.modules()) + list(toy["vae"].first_stage_model.modules())
    return [type(m).__name__ for m in modules if "forward" in m.__dict__]


def test_checkpointing_gives_the_default_result_and_leaves_the_modules_as_they_were(comfy, toy):
    host_models = comfy.pack_module("nodes.host_models")
    blocks = host_models.checkpoint_blocks(toy["model"].model, toy["vae"])
    names = {type(b).__name__ for b in blocks}
    assert {"ResBlock", "ResnetBlock"} <= names, names
    plain_before = unguided(comfy, toy)
    default = guided(comfy, toy)
    with_checkpointing = guided(comfy, toy, checkpointing=True)
    torch.testing.assert_close(with_checkpointing, default, rtol=1e-4, atol=1e-4)
    assert instance_forwards(toy) == []
    torch.testing.assert_close(unguided(comfy, toy), plain_before)  # the next node finds the same model


@pytest.mark.parametrize("speed", [
    dict(gradient="x0_only"),
    dict(decode_resolution="half"),
    dict(decode_resolution="quarter"),
    dict(guidance_every=2),
    dict(autocast="bf16"),
    dict(gradient="x0_only", decode_resolution="half", guidance_every=2, checkpointing=True),
], ids=lambda speed: ",".join(f"{k}={v}" for k, v in speed.items()))
def test_each_lever_samples_finite_guided_latents(comfy, toy, speed):
    samples = guided(comfy, toy, **speed)
    assert samples.shape == (2, 4, 16, 16) and samples.dtype == torch.float32
    assert torch.isfinite(samples).all()
    assert (samples - unguided(comfy, toy)).abs().mean() > 1e-2  # guidance still acts
    assert instance_forwards(toy) == []


def test_the_sampler_node_for_custom_sampling_takes_the_same_levers(comfy, toy):
    sampler = guided_nodes.sampler_node(comfy, toy["vae"], toy["guidance"], recurrence=1, gradient="x0_only",
                                        guidance_every=3, checkpointing=True, method="tfg", smoothing=0.2,
                                        rho_schedule="decrease", smoothing_schedule="constant")
    options = sampler.extra_options["settings"]
    assert (options.gradient, options.guidance_every, options.checkpointing) == ("x0_only", 3, True)
    assert (options.method, options.smoothing) == ("tfg", 0.2)
    assert (options.rho_schedule, options.mu_schedule, options.smoothing_schedule) == ("decrease", "increase",
                                                                                       "constant")


def test_a_preset_sets_its_levers_over_the_options_and_says_which_values_it_replaced(comfy, toy, caplog):
    presets = comfy.pack_module("samplers.presets")
    options = guided_nodes.options(comfy, guidance_every=3, gradient="through_unet", checkpointing=True,
                                   recurrence=2)
    assert presets.resolve("custom", options, 20) == (options, 20, [])
    settings, steps, notes = presets.resolve("fast", options, 20)
    fast = presets.PRESETS["fast"]
    assert steps == fast.steps
    assert {k: getattr(settings, k) for k in fast.levers} == fast.levers
    assert set(fast.levers) == {"method", "recurrence", "guidance_every", "gradient", "guidance_end", "weight_scale",
                                  "decode_resolution", "backward_end", "backward_recurrence", "known_pixels",
                                  "polish_steps"}
    assert settings.checkpointing is True and settings.smoothing == options.smoothing  # memory and TFG's stay
    # every graph value the preset replaced is named, with the way to keep it; the levers it leaves are not
    replaced = notes[0].split("options input's")[1]
    assert "guidance_every 3" in replaced and "recurrence 2" in replaced and "gradient through_unet" in replaced
    assert "preset custom" in notes[0] and "checkpointing" not in notes[0]
    assert "steps 20 is not used" in notes[1]
    assert presets.resolve("balanced", None, 20)[1] == 20  # balanced keeps the sampler's steps
    tooltip = node(comfy, "UGDGuidedKSampler").INPUT_TYPES()["required"]["preset"][1]["tooltip"]
    for name, preset in presets.PRESETS.items():
        assert f"{name}: {preset.describe()}" in tooltip  # what each preset sets is shown in the graph
    with pytest.raises(ValueError, match="preset must be one of"):
        presets.resolve("turbo", None, 20)
    with caplog.at_level("WARNING"):
        guided_nodes.ksampler(comfy, seed=SEED, steps=20, cfg=1.0, scheduler="normal", denoise=1.0, preset="fast",
                              recurrence=2, **toy)
    assert any("steps 20 is not used" in r.getMessage() for r in caplog.records)


def test_the_fast_preset_runs_its_steps_and_window_and_the_weight_scale_acts(comfy, toy):
    pass_counts = comfy.pack_module("samplers.pass_counts")
    fast = comfy.pack_module("samplers.presets").PRESETS["fast"]
    with pass_counts.recording() as counts:
        preset_run = guided(comfy, toy, preset="fast")
    levers = fast.over(comfy.pack_module("samplers.settings").Settings())
    guided_steps = sum(1 for i in range(fast.steps) if i / fast.steps < levers.guidance_end)
    late_steps = sum(1 for i in range(guided_steps, fast.steps) if i / fast.steps < levers.backward_end)
    samples, k = 2, levers.backward_recurrence or levers.recurrence  # the guidance takes a backward step
    late_k = levers.backward_recurrence or 1
    plain_steps = fast.steps - guided_steps - late_steps
    assert counts.forward["denoiser"] == samples * (guided_steps * k + late_steps * late_k + plain_steps)
    # forward guidance and, with UGD, one backward step on each guided pass (FreeDoM has none); the backward step
    # alone on the late steps
    decodes = 2 if levers.method == "ugd" else 1
    assert counts.forward["decoder"] == samples * (guided_steps * k * decodes + late_steps * late_k)
    assert counts.backward["unet"] == 0  # x0_only
    spelled_out, _ = guided_nodes.ksampler(comfy, seed=SEED, steps=fast.steps, cfg=1.0, scheduler="normal",
                                           denoise=1.0, **fast.levers, **toy)
    torch.testing.assert_close(preset_run, spelled_out["samples"])
    weak = guided(comfy, toy, weight_scale=0.0)
    strong = guided(comfy, toy)
    assert (weak - strong).abs().mean() > 1e-3  # no forward guidance is another run


@pytest.mark.parametrize("speed, message", [
    (dict(guidance_every=0), "guidance_every must be at least 1"),
    (dict(guidance_end=0.0), "guidance_end must be in"),
    (dict(backward_end=1.5), "backward_end must be in"),
    (dict(backward_recurrence=-1), "backward_recurrence must be at least 0"),
    (dict(weight_scale=float("nan")), "weight_scale must be a finite number"),
    (dict(gradient="backwards"), "gradient must be one of"),
    (dict(decode_resolution="tiny"), "decode_resolution must be one of"),
    (dict(autocast="int8"), "autocast must be one of"),
])
def test_bad_lever_settings_are_rejected_before_sampling(comfy, toy, speed, message):
    with pytest.raises(ValueError, match=message):
        guided(comfy, toy, **speed)


def test_a_guided_run_counts_the_unet_with_its_cfg_batch_and_the_decoder_at_its_size(comfy, toy):
    pass_counts = comfy.pack_module("samplers.pass_counts")
    with pass_counts.recording() as counts:
        guided(comfy, toy, cfg=3.0, guidance_every=2, decode_resolution="half")
    samples, guided_passes, plain_passes = 2, 3 * 2, 3  # steps 0, 2 and 4 guided with k = 2, the others plain
    assert counts.forward["denoiser"] == samples * (guided_passes + plain_passes)
    assert counts.forward["unet"] == 2 * counts.forward["denoiser"]  # cond and uncond in one batch
    assert counts.backward["unet"] == 2 * counts.backward["denoiser"] == 2 * samples * guided_passes
    decodes = samples * guided_passes * (1 + SETTINGS["backward_steps"])  # forward guidance, then each backward step
    assert counts.forward["decoder"] == counts.backward["decoder"] == decodes / 4  # a quarter of the area
    assert counts.forward["guidance_network"] == counts.backward["guidance_network"] == decodes


def test_the_unconditional_gradient_halves_the_unets_backward_and_matches_when_the_branches_agree(comfy, toy):
    """The toy's prompt and negative prompt are the same, so at cfg 2 the CFG batch has two equal branches: the
    gradient through the unconditional one alone is the full one, and its backward covers half the batch. (Two
    steps: w = 100 at the first σ amplifies the branches' float differences, which later steps would compound.)"""
    recording = comfy.pack_module("samplers.pass_counts").recording
    runs = {}
    for gradient in ("through_unet", "unconditional"):
        with recording() as counts:
            samples = guided(comfy, toy, cfg=2.0, steps=2, gradient=gradient)
        runs[gradient] = samples, counts
    (full, full_counts), (half, half_counts) = runs["through_unet"], runs["unconditional"]
    assert (half - full).abs().max() < 1e-3 * full.abs().mean()
    assert half_counts.forward["unet"] == full_counts.forward["unet"]
    assert half_counts.backward["unet"] == full_counts.backward["unet"] / 2 > 0
    assert half_counts.backward["denoiser"] == full_counts.backward["denoiser"] / 2


def test_the_unconditional_gradient_at_cfg_1_is_the_full_one(comfy, toy):
    """ComfyUI runs no negative branch at cfg 1; the gradient is then the one branch's, as through_unet's."""
    torch.testing.assert_close(guided(comfy, toy, steps=3, gradient="unconditional"), guided(comfy, toy, steps=3),
                               rtol=1e-5, atol=1e-5)
