"""The shipped workflows against the node definitions of the ComfyUI in this process (no server, no browser)."""
from __future__ import annotations

import copy
import json
import os
import re
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS_DIR = os.path.join(ROOT, "workflows")
sys.path.insert(0, os.path.join(ROOT, "tools"))
from build_workflows import PARTICLE_LEVERS, build_all, dumps  # noqa: E402
from run_workflow import FILE_INPUTS, IMAGE_LOADERS  # noqa: E402
from workflow_format import check_ui, combo_choices, ui_to_api, widget_inputs  # noqa: E402
from samplers.presets import PRESETS  # noqa: E402
from samplers.terms import AUTO_WEIGHT  # noqa: E402

UI_FILES = sorted(f for f in os.listdir(WORKFLOWS_DIR) if f.endswith(".json"))

# What the issue asks of each workflow: {file: {node type: {input: value}}}; the sampler's cfg and recurrence too.
PAPER_SETTINGS = {
    "toy_world_segmentation_guidance.json": {"UGDSegmentationGuidance": {"weight": 100, "schedule": "paper"},
                                             "UGDGuidedKSampler": {"recurrence": 4, "cfg": 1}},
    "sd15_clip_text_guidance.json": {"UGDCLIPTextGuidance": {"weight": 10, "schedule": "paper", "backward_steps": 0},
                                     "UGDGuidedKSampler": {"recurrence": 8, "cfg": 1}},
    "sd15_segmentation_guidance.json": {"UGDSegmentationGuidance": {"weight": 400, "schedule": "paper"},
                                        "UGDGuidedKSampler": {"recurrence": 10}},
    "sd15_face_guidance.json": {"UGDFaceIdentityGuidance": {"weight": 20000, "schedule": "paper"},
                                "UGDGuidedKSampler": {"recurrence": 2}},
    "sd15_object_location_guidance.json": {"UGDObjectLocationGuidance": {"weight": 100, "schedule": "paper"},
                                           "UGDGuidedKSampler": {"recurrence": 3}},
    "sd15_style_guidance.json": {"UGDCLIPImageGuidance": {"weight": 6, "schedule": "paper"},
                                 "UGDGuidedKSampler": {"recurrence": 6, "cfg": 3}},
    "sd15_unconditional_clip_guidance.json": {"UGDCLIPTextGuidance": {"backward_steps": 0},
                                              "UGDGuidedKSampler": {"cfg": 1}},
    "sd15_unconditional_object_location_forward_vs_backward.json": {
        "UGDObjectLocationGuidance": {"weight": 100}, "UGDGuidedKSampler": {"recurrence": 3, "cfg": 1}},
    "sd15_unconditional_segmentation_inpainting.json": {
        "UGDImageReconstructionGuidance": {"weight": 0}, "UGDSegmentationGuidance": {"weight": 200},
        "UGDGuidedKSampler": {"cfg": 1}},
    "sd15_segmentation_guidance_fast.json": {"UGDSegmentationGuidance": {"weight": AUTO_WEIGHT, "schedule": "auto"},
                                             "UGDGuidedKSampler": {"preset": "fast", "steps": PRESETS["fast"].steps}},
    "sd15_object_location_particles.json": {
        "UGDObjectLocationGuidance": {"weight": AUTO_WEIGHT, "schedule": "auto"},
        "UGDObjectLocationReward": {"units": "fractions"},
        "UGDGuidedKSampler": {**PARTICLE_LEVERS, "preset": "custom", "steps": PRESETS["fast"].steps}},
    "adm_clip_guidance.json": {"UGDADMModelLoader": {"ckpt_name": "256x256_diffusion_uncond.pt"},
                               "UGDCLIPTextGuidance": {"weight": 2, "schedule": "paper", "backward_steps": 0},
                               "UGDGuidedKSampler": {"recurrence": 10, "cfg": 1, "steps": 1000}},
    "adm_object_location_forward_vs_backward.json": {
        "UGDADMModelLoader": {"ckpt_name": "256x256_diffusion_uncond.pt"},
        "UGDObjectLocationGuidance": {"weight": 100, "schedule": "paper"},
        "UGDGuidedKSampler": {"recurrence": 3, "cfg": 1, "steps": 1000}},
    "adm_segmentation_inpainting.json": {
        "UGDADMModelLoader": {"ckpt_name": "256x256_diffusion_uncond.pt"},
        "UGDNoiseAwareClassifierLoader": {"weights": "256x256_classifier.pt"},
        "UGDImageReconstructionGuidance": {"weight": 0, "backward_steps": 1}, "UGDSegmentationGuidance": {"weight": 200},
        "UGDNoiseAwareClassifierGuidance": {"weight": 1, "schedule": "paper"},
        "UGDGuidedKSampler": {"recurrence": 1, "cfg": 1, "steps": 1000}},
}


def load(name):
    with open(os.path.join(WORKFLOWS_DIR, name), encoding="utf-8") as f:
        return json.load(f)


def prompt_of(name):
    return load(os.path.join("api", name))


def samplers_of(prompt):
    """Each guided sampler's inputs with the levers that run: its options node's, or its named preset's."""
    samplers = []
    for node in prompt.values():
        if node["class_type"] == "UGDGuidedKSampler":
            inputs = node["inputs"]
            levers = (prompt[inputs["options"][0]]["inputs"] if "options" in inputs
                      else PRESETS[inputs["preset"]].levers)
            samplers.append({**levers, **inputs})
    return samplers


@pytest.fixture(scope="module")
def object_info(comfy):
    return comfy.object_info()


def test_every_experiment_of_the_issue_ships():
    assert set(UI_FILES) == set(PAPER_SETTINGS)


def test_committed_workflows_are_what_the_build_script_writes(object_info):
    built = build_all(object_info)
    assert sorted(built) == sorted(UI_FILES + [os.path.join("api", f) for f in os.listdir(os.path.join(WORKFLOWS_DIR, "api"))])
    for name, document in built.items():
        with open(os.path.join(WORKFLOWS_DIR, name), encoding="utf-8") as f:
            assert f.read() == dumps(document), f"{name} is stale: run tools/build-workflows"


@pytest.mark.parametrize("name", UI_FILES)
def test_workflow_is_consistent_with_the_node_definitions(object_info, name):
    assert check_ui(load(name), object_info, FILE_INPUTS) == []


@pytest.mark.parametrize("name", UI_FILES)
def test_api_twin_is_the_ui_workflow_converted(object_info, name):
    assert ui_to_api(load(name), object_info) == prompt_of(name)


@pytest.mark.parametrize("name", UI_FILES)
def test_workflow_has_the_paper_settings(name):
    prompt = prompt_of(name)
    for node_type, expected in PAPER_SETTINGS[name].items():
        nodes = (samplers_of(prompt) if node_type == "UGDGuidedKSampler" else
                 [n["inputs"] for n in prompt.values() if n["class_type"] == node_type])
        assert nodes, f"{name} has no {node_type}"
        for inputs in nodes:
            assert {k: inputs[k] for k in expected} == expected


@pytest.mark.parametrize("name", UI_FILES)
def test_note_names_the_experiment_every_file_and_the_settings(name):
    workflow = load(name)
    notes = [n["widgets_values"][0] for n in workflow["nodes"] if n["type"] == "Note"]
    assert len(notes) == 1
    note = notes[0]
    assert re.search(r"paper §\d\.\d, Fig\. \d+", note), "the experiment and its figure"
    assert "MODEL FILES" in note and "SETTINGS THAT MATTER" in note
    for node in prompt_of(name).values():
        inputs = node["inputs"]
        for key in FILE_INPUTS.get(node["class_type"], ()):
            if not inputs[key].startswith("("):  # "(auto …)" entries: the note names the file they fetch
                assert inputs[key] in note, f"the note does not name {inputs[key]}"
    for node_type, expected in PAPER_SETTINGS[name].items():
        if "weight" in expected and expected["weight"]:
            assert f"weight {expected['weight']}" in note


@pytest.mark.parametrize("name", UI_FILES)
def test_download_entries_are_the_loaders_own(object_info, name):
    """Loader choices such as "(auto …)" are the nodes' own, not a stale copy (they are exempt from file checks)."""
    for node in prompt_of(name).values():
        for key in FILE_INPUTS.get(node["class_type"], ()):
            value = node["inputs"][key]
            if value.startswith("("):
                assert value in combo_choices(object_info[node["class_type"]]["input"]["required"][key])


@pytest.mark.parametrize("name", UI_FILES)
def test_example_inputs_ship_beside_the_workflows(name):
    for node in prompt_of(name).values():
        if node["class_type"] in IMAGE_LOADERS:
            assert os.path.isfile(os.path.join(WORKFLOWS_DIR, "inputs", node["inputs"]["image"]))


def test_shipped_box_list_is_the_one_in_the_workflows():
    with open(os.path.join(WORKFLOWS_DIR, "inputs", "ugd_boxes_dog_person.txt")) as f:
        boxes = f.read().strip()
    for name in UI_FILES:
        for node in prompt_of(name).values():
            if node["class_type"] == "UGDObjectLocationGuidance":
                assert node["inputs"]["boxes"] == boxes


@pytest.mark.parametrize("name", ["sd15_unconditional_object_location_forward_vs_backward.json",
                                  "adm_object_location_forward_vs_backward.json"])
def test_forward_vs_backward_workflow_differs_only_in_backward_steps(name):
    prompt = prompt_of(name)
    forward, both = [n["inputs"] for n in prompt.values() if n["class_type"] == "UGDObjectLocationGuidance"]
    assert forward["backward_steps"] == 0 and both["backward_steps"] >= 1
    assert {k: v for k, v in forward.items() if k != "backward_steps"} == {k: v for k, v in both.items() if k != "backward_steps"}
    samplers = samplers_of(prompt)
    assert len(samplers) == 2 and samplers[0]["seed"] == samplers[1]["seed"]


def test_fast_variant_decodes_guidance_with_taesd_in_fewer_steps():
    slow, fast = prompt_of("sd15_segmentation_guidance.json"), prompt_of("sd15_segmentation_guidance_fast.json")
    sampler = lambda p: next(n["inputs"] for n in p.values() if n["class_type"] == "UGDGuidedKSampler")  # noqa: E731
    assert sampler(fast)["steps"] < sampler(slow)["steps"]
    decoder = fast[sampler(fast)["guidance_vae"][0]]
    assert decoder["class_type"] == "VAELoader" and decoder["inputs"]["vae_name"] == "taesd"
    assert "guidance_vae" not in sampler(slow)


def test_the_checks_catch_broken_workflows(object_info):
    workflow = load("sd15_segmentation_guidance.json")
    sampler = next(n for n in workflow["nodes"] if n["type"] == "UGDGuidedKSampler")

    short = copy.deepcopy(workflow)
    next(n for n in short["nodes"] if n["id"] == sampler["id"])["widgets_values"].pop()
    assert any("widget values" in p for p in check_ui(short, object_info, FILE_INPUTS))

    swapped = copy.deepcopy(workflow)  # a sampler name where the scheduler goes
    values = next(n for n in swapped["nodes"] if n["id"] == sampler["id"])["widgets_values"]
    values[4], values[5] = values[5], values[4]
    assert any("not one of the choices" in p for p in check_ui(swapped, object_info, FILE_INPUTS))

    unknown = copy.deepcopy(workflow)
    unknown["nodes"][1]["type"] = "UGDNoSuchNode"
    assert any("no such node type" in p for p in check_ui(unknown, object_info, FILE_INPUTS))

    mistyped = copy.deepcopy(workflow)
    mistyped["links"][0][5] = "IMAGE"
    assert any("joins" in p for p in check_ui(mistyped, object_info, FILE_INPUTS))

    unlinked = copy.deepcopy(workflow)
    next(n for n in unlinked["nodes"] if n["id"] == sampler["id"])["inputs"][0]["link"] = None
    assert any("not connected" in p for p in check_ui(unlinked, object_info, FILE_INPUTS))


def test_widget_values_line_up_with_the_sampler_inputs(object_info):
    workflow = load("sd15_face_guidance.json")
    sampler = next(n for n in workflow["nodes"] if n["type"] == "UGDGuidedKSampler")
    values = widget_inputs(sampler, object_info["UGDGuidedKSampler"])
    assert values == {"seed": 42, "steps": 500, "cfg": 7.5, "sampler_name": "ddim", "scheduler": "ddim_uniform",
                      "denoise": 1.0, "preset": "custom"}
    assert sampler["widgets_values"][1] == "fixed", "a shared workflow must not re-randomise its seed"
    options = next(n for n in workflow["nodes"] if n["type"] == "UGDGuidanceOptions")
    assert widget_inputs(options, object_info["UGDGuidanceOptions"]) == {
        "recurrence": 2, "method": "ugd", "smoothing": 0.0, "rho_schedule": "increase", "mu_schedule": "increase",
        "smoothing_schedule": "decrease", "guidance_every": 1, "guidance_end": 1.0, "backward_end": 0.0,
        "backward_recurrence": 0, "gradient": "through_unet", "weight_scale": 1.0, "decode_resolution": "full",
        "known_pixels": "guidance", "polish_steps": 0, "particles": 1, "resample_every": 0, "resample_steps": "",
        "potential": "max", "temperature": 10.0, "resampling": "systematic", "particle_batch": 0,
        "return_particles": False, "checkpointing": False, "autocast": "off"}


@pytest.mark.parametrize("name", [n for n in UI_FILES if n.startswith("sd15_")])
def test_every_stable_diffusion_note_says_what_each_sampler_is_expected_to_cost(name):
    note = [n["widgets_values"][0] for n in load(name)["nodes"] if n["type"] == "Note"][0]
    samplers = samplers_of(prompt_of(name))
    costs = re.findall(r"EXPECTED COST[^\n]*\nAbout ([\d,.]+)× an unguided 20-step run", note)
    assert len(costs) == len(samplers)
    if name == "sd15_segmentation_guidance_fast.json":
        assert float(costs[0]) <= 1.5  # the fast preset's target
    if name == "sd15_segmentation_guidance.json":
        assert float(costs[0].replace(",", "")) > 1000  # 500 steps with k = 10 through the UNet and the VAE


@pytest.mark.parametrize("name", [n for n in UI_FILES if n.startswith("adm_")])
def test_every_adm_note_counts_each_samplers_passes(name):
    """No ADM weights could be timed here, so its notes count the passes instead of pricing them."""
    note = [n["widgets_values"][0] for n in load(name)["nodes"] if n["type"] == "Note"][0]
    samplers = samplers_of(prompt_of(name))
    counted = re.findall(r"EXPECTED COST[^\n]*\nPer image, counted \(samplers/cost.py\): ([\d,]+) UNet passes", note)
    assert [int(c.replace(",", "")) for c in counted] == [s["steps"] * s["recurrence"] for s in samplers]


@pytest.mark.parametrize("name", UI_FILES)
def test_every_workflow_has_its_templates_thumbnail(name):
    """ComfyUI's Templates browser shows <name>.jpg as the workflow's card; without it the card is blank."""
    from PIL import Image

    path = os.path.join(WORKFLOWS_DIR, name[:-len(".json")] + ".jpg")
    with Image.open(path) as image:
        assert image.format == "JPEG" and image.size == (512, 384)
        pixels = np.asarray(image.convert("RGB"), np.float32)
    assert pixels[100:-30].std() > 20  # a picture of the target, not an empty card


@pytest.mark.parametrize("name", [f for f in UI_FILES if not f.startswith("toy_world")])
def test_committed_thumbnails_are_what_the_script_draws_from_the_workflows(name):
    """A changed target (map, boxes, text, hole) shows in the card once tools/draw-workflow-thumbnails runs."""
    from PIL import Image
    from draw_workflow_thumbnails import thumbnail

    drawn = np.asarray(thumbnail(name[:-len(".json")]), np.float32)
    with Image.open(os.path.join(WORKFLOWS_DIR, name[:-len(".json")] + ".jpg")) as image:
        committed = np.asarray(image.convert("RGB"), np.float32)
    assert np.abs(drawn - committed).mean() < 3  # JPEG's loss only


def test_every_thumbnail_belongs_to_a_workflow():
    stems = {f[:-len(".json")] for f in UI_FILES}
    assert {f[:-len(".jpg")] for f in os.listdir(WORKFLOWS_DIR) if f.endswith(".jpg")} == stems
