"""The headless workflow runner (the README's main job) and the shipped workflows."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS = sorted(glob.glob(os.path.join(ROOT, "workflows", "api", "*.json")))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from run_workflow import provide_inputs, with_stand_ins  # noqa: E402


def run_tool(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "run_workflow.py"), *args],
                          capture_output=True, text=True, timeout=600)


def test_stand_ins_replace_every_loader_and_rewire_its_outputs():
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": "taesd"}},
        "3": {"class_type": "UGDGuidedKSampler", "inputs": {"model": ["1", 0], "vae": ["1", 2], "guidance_vae": ["2", 0], "steps": 50}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 768, "batch_size": 1}},
    }
    out = with_stand_ins(prompt)
    assert out["1"]["class_type"] == out["2"]["class_type"] == "UGDStandInCheckpoint"
    assert out["3"]["inputs"]["guidance_vae"] == ["2", 2]  # VAELoader's VAE is output 0, the stand-in's is 2
    assert out["3"]["inputs"]["model"] == ["1", 0] and out["3"]["inputs"]["vae"] == ["1", 2]
    assert out["3"]["inputs"]["steps"] == 10 and out["4"]["inputs"]["width"] == 64
    assert prompt["1"]["class_type"] == "CheckpointLoaderSimple", "the input prompt must not change"


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=os.path.basename)
def test_shipped_workflow_uses_only_known_nodes_and_validates(comfy, workflow):
    with open(workflow) as f:
        prompt = json.load(f)
    unknown = {n["class_type"] for n in prompt.values()} - set(comfy.nodes.NODE_CLASS_MAPPINGS)
    assert not unknown
    assert provide_inputs(prompt, workflow, comfy.folder_paths) == []
    ok, error, _, node_errors = comfy.validate(with_stand_ins(prompt))
    assert ok, (error, node_errors)


MODEL_FILES = {"sd15_clip_text_guidance.json": "v1-5-pruned-emaonly.safetensors",
               "adm_clip_guidance.json": "256x256_diffusion_uncond.pt"}


@pytest.mark.parametrize("name, model_file", MODEL_FILES.items())
def test_main_job_without_model_files_says_so_and_stops(name, model_file):
    result = run_tool(os.path.join(ROOT, "workflows", "api", name), "--output", "unused")
    assert result.returncode == 2
    assert model_file in result.stderr and "--stand-ins if-missing" in result.stderr


@pytest.mark.parametrize("name", MODEL_FILES)
def test_main_job_with_stand_ins_writes_images_and_says_they_are_stand_ins(tmp_path, name):
    result = run_tool(os.path.join(ROOT, "workflows", "api", name), "--output", str(tmp_path), "--stand-ins", "if-missing")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "USING STAND-IN MODELS WITH RANDOM WEIGHTS" in result.stdout
    assert "NOT meaningful" in result.stdout
    written = glob.glob(str(tmp_path / "*.png"))
    assert len(written) == 1 and f"wrote {written[0]}" in result.stdout


def test_main_job_runs_the_demo_and_prints_where_its_enlarged_picture_is(tmp_path):
    result = run_tool("--output", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    (grid,) = glob.glob(str(tmp_path / "ugd_toy_segmentation_grid_*_.png"))
    enlarged = grid[:-len(".png")] + "_x4.png"
    assert result.stdout.rstrip().endswith(f"The demo picture, 4× enlarged: {enlarged}")
    small, large = Image.open(grid), Image.open(enlarged)
    assert large.size == (4 * small.width, 4 * small.height)
    assert np.array_equal(np.asarray(large)[::4, ::4], np.asarray(small))
    assert len(glob.glob(str(tmp_path / "ugd_toy_segmentation_loss_plot_*.png"))) == 1


def test_main_job_runs_a_ui_workflow_copying_its_example_inputs_with_progress(tmp_path):
    inputs = tmp_path / "input"
    inputs.mkdir()
    workflow = os.path.join(ROOT, "workflows", "sd15_face_guidance.json")
    result = run_tool(workflow, "--output", str(tmp_path / "out"), "--input-dir", str(inputs), "--stand-ins", "if-missing")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (inputs / "ugd_face_reference_astronaut.png").is_file()
    assert f"copied the example input ugd_face_reference_astronaut.png into {inputs}" in result.stdout
    assert "] Universal Guided KSampler (k = 2)" in result.stdout and "] stand-in for Load Checkpoint" in result.stdout
    assert len(glob.glob(str(tmp_path / "out" / "ugd_face_*.png"))) == 1


def test_main_job_names_a_missing_input_image(tmp_path):
    workflow = json.loads(open(os.path.join(ROOT, "workflows", "api", "sd15_style_guidance.json")).read())
    next(n for n in workflow.values() if n["class_type"] == "LoadImage")["inputs"]["image"] = "my_style.png"
    path = tmp_path / "style.api.json"
    path.write_text(json.dumps(workflow))
    result = run_tool(str(path), "--input-dir", str(tmp_path), "--stand-ins", "always")
    assert result.returncode == 2
    assert f"needs the image 'my_style.png': put it in {tmp_path}" in result.stderr


def test_main_job_names_the_taesd_files_the_fast_variant_needs(tmp_path):
    result = run_tool(os.path.join(ROOT, "workflows", "sd15_segmentation_guidance_fast.json"),
                      "--input-dir", str(tmp_path))
    assert result.returncode == 2
    assert "needs 'taesd_encoder.pth'" in result.stderr and "needs 'taesd_decoder.pth'" in result.stderr
    assert "vae_approx" in result.stderr


def test_main_job_names_a_node_type_this_comfyui_lacks(tmp_path):
    workflow = json.loads(open(os.path.join(ROOT, "workflows", "sd15_style_guidance.json")).read())
    workflow["nodes"][2]["type"] = "SomePackNode"
    path = tmp_path / "style.json"
    path.write_text(json.dumps(workflow))
    result = run_tool(str(path), "--input-dir", str(tmp_path))
    assert result.returncode == 2
    assert "is a SomePackNode, a node type this ComfyUI does not have" in result.stderr


def test_main_job_finds_models_through_extra_model_paths(tmp_path):
    checkpoints = tmp_path / "shared" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "v1-5-pruned-emaonly.safetensors").write_bytes(b"not a checkpoint")
    config = tmp_path / "extra_model_paths.yaml"
    config.write_text(f"shared:\n  base_path: {tmp_path / 'shared'}\n  checkpoints: checkpoints\n")
    workflow = os.path.join(ROOT, "workflows", "api", "sd15_clip_text_guidance.json")
    without = run_tool(workflow, "--input-dir", str(tmp_path))
    assert without.returncode == 2 and "needs 'v1-5-pruned-emaonly.safetensors'" in without.stderr
    found = run_tool(workflow, "--input-dir", str(tmp_path), "--extra-model-paths", str(config))
    assert "needs 'v1-5-pruned-emaonly.safetensors'" not in found.stderr
    assert found.returncode == 1, "the file is found, and ComfyUI then fails to load it"
