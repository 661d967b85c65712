"""The nodes as a ComfyUI user meets them: the sampler's inputs, tooltips, the options node, saved 0.1 graphs, the
pre-run line, and a menu without developer nodes."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

import guided_nodes
from test_comfyui import run_ok

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from run_workflow import provide_inputs  # noqa: E402
from workflow_format import ui_to_api  # noqa: E402

KSAMPLER_INPUTS = {"model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
                   "latent_image", "denoise"}


def pack_nodes(comfy) -> dict:
    return comfy.pack_module("nodes").NODE_CLASS_MAPPINGS


def sentences(text: str) -> int:
    return len(re.findall(r"[.!?](?:\s|$)", text.strip()))


def test_the_guided_ksampler_has_ksamplers_inputs_and_a_few_of_its_own(comfy):
    inputs = pack_nodes(comfy)["UGDGuidedKSampler"].INPUT_TYPES()
    assert set(inputs["required"]) == KSAMPLER_INPUTS | {"vae", "guidance", "preset"}
    assert set(inputs["optional"]) == {"guidance_vae", "options"}
    assert set(inputs["required"]) - {"vae", "guidance", "preset"} == set(comfy.nodes.NODE_CLASS_MAPPINGS["KSampler"]
                                                                          .INPUT_TYPES()["required"])
    sampler = pack_nodes(comfy)["UGDGuidedSampler"].INPUT_TYPES()
    assert set(sampler["required"]) == {"vae", "guidance", "sampler_name", "preset"}
    assert set(sampler["optional"]) == {"options"}


def test_every_input_of_every_node_has_a_tooltip_of_at_most_two_sentences(comfy):
    problems = []
    for name, node_class in pack_nodes(comfy).items():
        for group in ("required", "optional"):
            for input_name, spec in node_class.INPUT_TYPES().get(group, {}).items():
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                tooltip = options.get("tooltip", "")
                if not tooltip or sentences(tooltip) > 2:
                    problems.append(f"{name}.{input_name}: {tooltip!r}")
    assert not problems, problems


def test_the_options_node_shows_every_lever_of_the_settings_and_checks_them(comfy):
    settings = comfy.pack_module("samplers.settings")
    required = pack_nodes(comfy)["UGDGuidanceOptions"].INPUT_TYPES()["required"]
    assert list(required) == [f.name for f in settings.option_fields()]
    assert set(required) == set(settings.LEVERS) - {"base"}  # the sampler's sampler_name sets the base step
    chosen = guided_nodes.options(comfy, recurrence=3, method="tfg", smoothing=0.2)
    assert (chosen.recurrence, chosen.method, chosen.smoothing, chosen.gradient) == (3, "tfg", 0.2, "through_unet")
    try:
        guided_nodes.options(comfy, backward_end=2.0)
    except ValueError as error:
        assert "backward_end must be in [0, 1], got 2.0" in str(error)
    else:
        raise AssertionError("a backward_end of 2 was accepted")


def test_a_saved_0_1_graph_loads_into_the_deprecated_node_and_samples_what_the_new_one_does(comfy):
    """The toy demo as 0.1 saved it (tests/fixtures), against the shipped one, both cut to 4 steps and 2 seeds."""
    object_info = comfy.object_info()
    deprecated = pack_nodes(comfy)["UniversalGuidedKSampler"]
    assert deprecated.DEPRECATED is True and pack_nodes(comfy)["UGDUniversalGuidanceSampler"].DEPRECATED is True
    prompts = {}
    shipped = os.path.join(ROOT, "workflows", "toy_world_segmentation_guidance.json")
    for label, path in (("old", os.path.join(ROOT, "tests", "fixtures", "v0.1_toy_world_segmentation_guidance.json")),
                        ("new", shipped)):
        with open(path) as f:
            prompt = ui_to_api(json.load(f), object_info)
        assert provide_inputs(prompt, shipped, comfy.folder_paths) == []
        for node in prompt.values():
            inputs = node["inputs"]
            if "steps" in inputs:
                inputs["steps"] = 4
            if "batch_size" in inputs:
                inputs["batch_size"] = 2
            if "filename_prefix" in inputs:
                inputs["filename_prefix"] = f"{label}_{inputs['filename_prefix']}"
        prompts[label] = prompt
    assert "UniversalGuidedKSampler" in {n["class_type"] for n in prompts["old"].values()}
    assert "UGDGuidedKSampler" in {n["class_type"] for n in prompts["new"].values()}
    outputs = {label: run_ok(comfy, prompt) for label, prompt in prompts.items()}
    grids = {}
    for label, result in outputs.items():
        (node,) = [n for n, p in prompts[label].items() if p["inputs"].get("filename_prefix", "").endswith("grid")]
        files = result.outputs[node]["images"]
        grids[label] = np.asarray(Image.open(os.path.join(comfy.output_dir, files[0]["subfolder"], files[0]["filename"])))
    assert grids["old"].shape == grids["new"].shape and (grids["old"] == grids["new"]).all()


def test_the_pre_run_line_prices_sd_15_and_gives_any_other_model_a_ratio_of_passes(comfy, caplog):
    with torch.inference_mode():
        model, vae, unconditional, _ = guided_nodes.node(comfy, "UGDToyWorldLoader").load()
        segmenter, _, _ = guided_nodes.node(comfy, "UGDToyWorldGuidanceNetworks").load()
        (latent,) = guided_nodes.node(comfy, "UGDEmptyToyWorldLatent").generate(1)
        mask = torch.zeros(1, 64, 64)
        mask[:, 8:40, 8:40] = 1
        (guidance,) = guided_nodes.node(comfy, "UGDSegmentationGuidance").guide(
            segmenter, "circle", "background", mask=mask, weight=10.0, schedule="paper", backward_steps=0,
            backward_lr=0.1, optimizer="adam", start_percent=0.0, end_percent=1.0)
    with caplog.at_level("INFO"):
        guided_nodes.ksampler(comfy, model=model, vae=vae, positive=unconditional, negative=unconditional,
                              latent_image=latent, guidance=guidance, seed=0, steps=3, cfg=1.0, scheduler="normal",
                              denoise=1.0, recurrence=2)
    (plan,) = [r.getMessage() for r in caplog.records if "denoiser passes" in r.getMessage()]
    assert "3 steps, 6 denoiser passes (6 with a backward pass)" in plan
    assert "4.0× the denoiser passes of an unguided run of 3 steps" in plan and "not of time" in plan
    assert "SD 1.5 at 512 px" not in plan  # the toy model is not priced as what it is not


def test_a_users_comfyui_lists_no_developer_nodes(comfy):
    """A fresh process without UGD_DEVELOPER_NODES, as a user's ComfyUI starts."""
    code = (
        "import sys; sys.path.insert(0, 'tools'); from comfy_headless import ComfyHost;"
        f"host = ComfyHost({comfy.path!r}, developer_nodes=False);"
        "names = host.pack_module('nodes').NODE_CLASS_MAPPINGS;"
        "print(sorted(names)); print(sorted({c.CATEGORY for c in names.values()}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    names, categories = result.stdout.strip().splitlines()[-2:]
    assert "StandIn" not in names and "universal_guidance/testing" not in categories
    assert "UGDToyWorldLoader" in names and "universal_guidance/toy_world" in categories  # the main job's nodes


def test_new_nodes_start_on_the_balanced_preset_and_the_auto_strength(comfy):
    nodes = pack_nodes(comfy)
    for sampler in ("UGDGuidedKSampler", "UGDGuidedSampler"):
        assert nodes[sampler].INPUT_TYPES()["required"]["preset"][1]["default"] == "balanced"
    assert nodes["UniversalGuidedKSampler"].INPUT_TYPES()["optional"]["preset"][1]["default"] == "custom"  # 0.1's
    auto_weight = comfy.pack_module("samplers.terms").AUTO_WEIGHT
    for node in ("UGDSegmentationGuidance", "UGDClassifierGuidance", "UGDObjectLocationGuidance", "UGDCLIPTextGuidance",
                 "UGDCLIPImageGuidance", "UGDCLIPGramStyleGuidance", "UGDFaceIdentityGuidance"):
        required = nodes[node].INPUT_TYPES()["required"]
        assert (required["schedule"][1]["default"], required["weight"][1]["default"]) == ("auto", auto_weight), node
    reconstruction = nodes["UGDImageReconstructionGuidance"].INPUT_TYPES()["required"]
    assert (reconstruction["weight"][1]["default"], reconstruction["backward_steps"][1]["default"]) == (0.0, 5)
