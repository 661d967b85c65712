"""Run a shipped API-format workflow headless through ComfyUI and write its images to a folder.

    python tools/run_workflow.py workflows/sd15_clip_text_guidance.api.json --output output \
        [--comfyui PATH] [--stand-ins never|if-missing|always]

Model files come from the ComfyUI's models folders. When one is missing the run stops and names it,
unless --stand-ins allows small random-weight stand-in models, built on the spot (and said so loudly).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from comfy_headless import ComfyHost  # noqa: E402

# loader class -> (model folder, file input, stand-in class, {loader output: stand-in output})
LOADERS = {
    "CheckpointLoaderSimple": ("checkpoints", "ckpt_name", "UGDStandInCheckpoint", {0: 0, 1: 1, 2: 2}),
    "VAELoader": ("vae", "vae_name", "UGDStandInCheckpoint", {0: 2}),
    "UGDCLIPGuidanceModelLoader": ("ugd", "weights", "UGDStandInCLIPGuidanceModel", {0: 0}),
    "UGDSegmentationModelLoader": ("ugd", "weights", "UGDStandInSegmentationModel", {0: 0}),
    "UGDFaceModelLoader": ("ugd", "weights", "UGDStandInFaceModel", {0: 0}),
    "UGDObjectDetectorLoader": ("ugd", "weights", "UGDStandInObjectDetector", {0: 0}),
    "UGDClassifierModelLoader": ("ugd", "weights", "UGDStandInClassifier", {0: 0}),
}
# Loader choices that fetch their files themselves.
DOWNLOADED = {"(download pretrained_tag)", "(auto: models/ugd, downloaded if missing)", "taesd", "taesdxl"}
STAND_IN_SIZE, STAND_IN_MAX_STEPS = 64, 10


def missing_files(prompt: dict, folder_paths) -> list[str]:
    problems = []
    for node_id, node in prompt.items():
        if node["class_type"] not in LOADERS:
            continue
        folder, key, _, _ = LOADERS[node["class_type"]]
        name = node["inputs"][key]
        if name not in DOWNLOADED and name not in folder_paths.get_filename_list(folder):
            where = " or ".join(folder_paths.get_folder_paths(folder))
            problems.append(f"node {node_id} ({node['class_type']}) needs '{name}': put it in {where}")
    return problems


def with_stand_ins(prompt: dict) -> dict:
    """The prompt with every model loader replaced by a random-weight stand-in, at a CPU-friendly size."""
    prompt = json.loads(json.dumps(prompt))
    remap = {}
    for node_id, node in prompt.items():
        if node["class_type"] in LOADERS:
            _, _, stand_in, outputs = LOADERS[node["class_type"]]
            prompt[node_id] = {"class_type": stand_in, "inputs": {"seed": 0}}
            remap.update({(node_id, old): new for old, new in outputs.items()})
    for node in prompt.values():
        inputs = node["inputs"]
        for key, value in inputs.items():
            if isinstance(value, list) and len(value) == 2 and (str(value[0]), value[1]) in remap:
                inputs[key] = [str(value[0]), remap[(str(value[0]), value[1])]]
        if node["class_type"] == "EmptyLatentImage":
            inputs["width"] = inputs["height"] = STAND_IN_SIZE
        if "steps" in inputs and isinstance(inputs["steps"], int):
            inputs["steps"] = min(inputs["steps"], STAND_IN_MAX_STEPS)
    return prompt


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workflow", help="an API-format workflow JSON (ComfyUI's 'Export (API)')")
    parser.add_argument("--output", default="output", help="folder for the images (default: output)")
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI folder (default: $COMFYUI_PATH)")
    parser.add_argument("--stand-ins", choices=["never", "if-missing", "always"], default="never",
                        help="use random-weight stand-in models: never (default), if a model file is missing, or always")
    args = parser.parse_args(argv)
    if not args.comfyui:
        parser.error("no ComfyUI: pass --comfyui or set COMFYUI_PATH")
    with open(args.workflow) as f:
        prompt = json.load(f)
    if "nodes" in prompt and "links" in prompt:
        parser.error(f"{args.workflow} is in the UI format; export it with 'Export (API)' and run that file")

    host = ComfyHost(args.comfyui, os.path.abspath(args.output))
    problems = missing_files(prompt, host.folder_paths)
    if args.stand_ins == "always" or (problems and args.stand_ins == "if-missing"):
        for problem in problems:
            print(f"missing model: {problem}")
        print("=" * 78)
        print(f"USING STAND-IN MODELS WITH RANDOM WEIGHTS at {STAND_IN_SIZE}x{STAND_IN_SIZE} px and at most "
              f"{STAND_IN_MAX_STEPS} steps.\nThe run exercises the whole workflow, but its images are NOT meaningful.")
        print("=" * 78)
        prompt = with_stand_ins(prompt)
    elif problems:
        print("Cannot run the workflow; model files are missing:\n  " + "\n  ".join(problems), file=sys.stderr)
        print("Or run with --stand-ins if-missing to try the workflow with random-weight stand-in models.", file=sys.stderr)
        return 2

    result = host.run(prompt)
    if not result.success:
        for error in result.errors:
            message = error.get("exception_message") or json.dumps(error, default=str)
            print(f"error: {message}", file=sys.stderr)
        return 1
    for node_output in result.outputs.values():
        for image in node_output.get("images", []):
            print("wrote", os.path.join(host.output_dir, image["subfolder"], image["filename"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
