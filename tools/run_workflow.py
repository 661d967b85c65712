"""Run a workflow headless through ComfyUI and write its images to a folder.

    python tools/run_workflow.py [workflows/sd15_segmentation_guidance.json] --output output \
        [--comfyui PATH] [--input-dir DIR] [--extra-model-paths YAML] [--stand-ins never|if-missing|always]

Without a workflow it runs the toy world demo (workflows/toy_world_segmentation_guidance.json), whose models
ship with the pack. The workflow may be in the UI format (as saved by the frontend) or the API format ("Export (API)").
Model files come from the ComfyUI's models folders and its extra_model_paths.yaml. When one is missing the run stops and names it,
unless --stand-ins allows small random-weight stand-in models, built on the spot (and said so loudly).
Example inputs that a workflow loads (workflows/inputs/) are copied into ComfyUI's input folder when
they are not there yet.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from comfy_headless import ComfyHost  # noqa: E402
from workflow_format import ui_to_api  # noqa: E402

# loader class -> (model folder, file input, stand-in class, {loader output: stand-in output})
LOADERS = {
    "CheckpointLoaderSimple": ("checkpoints", "ckpt_name", "UGDStandInCheckpoint", {0: 0, 1: 1, 2: 2}),
    "VAELoader": ("vae", "vae_name", "UGDStandInCheckpoint", {0: 2}),
    "UGDCLIPGuidanceModelLoader": ("ugd", "weights", "UGDStandInCLIPGuidanceModel", {0: 0}),
    "UGDSegmentationModelLoader": ("ugd", "weights", "UGDStandInSegmentationModel", {0: 0}),
    "UGDFaceModelLoader": ("ugd", "weights", "UGDStandInFaceModel", {0: 0}),
    "UGDObjectDetectorLoader": ("ugd", "weights", "UGDStandInObjectDetector", {0: 0}),
    "UGDClassifierModelLoader": ("ugd", "weights", "UGDStandInClassifier", {0: 0}),
    "UGDADMModelLoader": ("unet", "ckpt_name", "UGDStandInADMModel", {0: 0, 1: 1, 2: 2}),
    "UGDNoiseAwareClassifierLoader": ("ugd", "weights", "UGDStandInNoiseAwareClassifier", {0: 0}),
}
EMPTY_IMAGE_LATENTS = {"EmptyLatentImage", "UGDEmptyPixelImage"}
IMAGE_LOADERS = {"LoadImage": "image", "LoadImageMask": "image"}
# Inputs that name files, which need not exist on the machine that checks a workflow.
FILE_INPUTS = {cls: {key} for cls, (_, key, _, _) in LOADERS.items()} | {k: {v} for k, v in IMAGE_LOADERS.items()}
# Loader choices that fetch their files themselves (the pack's loaders name them so).
AUTO, DOWNLOAD_PRETRAINED = "(auto: models/ugd, downloaded if missing)", "(download pretrained_tag)"
DOWNLOADED = {AUTO, DOWNLOAD_PRETRAINED}
# VAELoader's built-in approximate decoders and the files in models/vae_approx they need.
VAE_APPROX = {name: (f"{name}_encoder", f"{name}_decoder") for name in ("taesd", "taesdxl")}
STAND_IN_SIZE, STAND_IN_MAX_STEPS = 64, 10
DEMO_WORKFLOW = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "workflows",
                             "toy_world_segmentation_guidance.json")
DEMO_PICTURE_PREFIX = "ugd_toy_segmentation_grid"  # the demo's grid, 200×266 px: enlarged to be looked at
DEMO_ENLARGEMENT = 4


def _vae_approx_missing(name: str, folder_paths) -> list[str]:
    present = {os.path.splitext(f)[0] for f in folder_paths.get_filename_list("vae_approx")}
    return [f"{stem}.pth" for stem in VAE_APPROX[name] if stem not in present]


def missing_files(prompt: dict, folder_paths) -> list[str]:
    problems = []
    for node_id, node in prompt.items():
        if node["class_type"] not in LOADERS:
            continue
        folder, key, _, _ = LOADERS[node["class_type"]]
        name = node["inputs"][key]
        if node["class_type"] == "VAELoader" and name in VAE_APPROX:
            folder, missing = "vae_approx", _vae_approx_missing(name, folder_paths)
        else:
            missing = [] if name in DOWNLOADED or name in folder_paths.get_filename_list(folder) else [name]
        for file_name in missing:
            where = " or ".join(folder_paths.get_folder_paths(folder))
            problems.append(f"node {node_id} ({node['class_type']}) needs '{file_name}': put it in {where}")
    return problems


def provide_inputs(prompt: dict, workflow_path: str, folder_paths) -> list[str]:
    """Copy the images the prompt loads from <workflow folder>/inputs into ComfyUI's input folder where missing.

    Returns the problems: images found in neither place.
    """
    input_dir = folder_paths.get_input_directory()
    folder = os.path.dirname(os.path.abspath(workflow_path))
    shipped = os.path.join(folder if os.path.basename(folder) != "api" else os.path.dirname(folder), "inputs")
    problems = []
    for node_id, node in prompt.items():
        key = IMAGE_LOADERS.get(node["class_type"])
        if key is None:
            continue
        name = node["inputs"][key]
        if os.path.isfile(os.path.join(input_dir, name)):
            continue
        if os.path.isfile(os.path.join(shipped, name)):
            shutil.copy(os.path.join(shipped, name), os.path.join(input_dir, name))
            print(f"copied the example input {name} into {input_dir}")
        else:
            problems.append(f"node {node_id} ({node['class_type']}) needs the image '{name}': put it in {input_dir}")
    return problems


def with_stand_ins(prompt: dict) -> dict:
    """The prompt with every model loader replaced by a random-weight stand-in, at a CPU-friendly size."""
    prompt = json.loads(json.dumps(prompt))
    remap = {}
    for node_id, node in prompt.items():
        if node["class_type"] in LOADERS:
            _, _, stand_in, outputs = LOADERS[node["class_type"]]
            title = node.get("_meta", {}).get("title", node["class_type"])
            prompt[node_id] = {"class_type": stand_in, "inputs": {"seed": 0}, "_meta": {"title": f"stand-in for {title}"}}
            remap.update({(node_id, old): new for old, new in outputs.items()})
    for node in prompt.values():
        inputs = node["inputs"]
        for key, value in inputs.items():
            if isinstance(value, list) and len(value) == 2 and (str(value[0]), value[1]) in remap:
                inputs[key] = [str(value[0]), remap[(str(value[0]), value[1])]]
        if node["class_type"] in EMPTY_IMAGE_LATENTS:
            inputs["width"] = inputs["height"] = STAND_IN_SIZE
        if "steps" in inputs and isinstance(inputs["steps"], int):
            inputs["steps"] = min(inputs["steps"], STAND_IN_MAX_STEPS)
    return prompt


class NodeProgress:
    """Prints a line as each node starts, e.g. `[3/9] Universal Guided KSampler (k = 10)`; samplers add a step bar."""

    def __init__(self, prompt: dict):
        self.titles = {node_id: node.get("_meta", {}).get("title", node["class_type"]) for node_id, node in prompt.items()}
        self.done = 0

    def __call__(self, event: str, data: dict):
        if event == "execution_cached":
            for node_id in data.get("nodes", []):
                self.done += 1
                print(f"[{self.done}/{len(self.titles)}] {self.titles.get(node_id, node_id)} (cached)", flush=True)
        elif event == "executing" and data.get("node") is not None:
            self.done += 1
            print(f"[{self.done}/{len(self.titles)}] {self.titles.get(data['node'], data['node'])}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workflow", nargs="?", default=DEMO_WORKFLOW,
                        help="a workflow JSON, UI format or API format (default: the toy world demo, which needs no model files)")
    parser.add_argument("--output", default="output", help="folder for the images (default: output)")
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI folder (default: $COMFYUI_PATH)")
    parser.add_argument("--input-dir", help="ComfyUI's input folder for this run (default: the ComfyUI's own)")
    parser.add_argument("--extra-model-paths", action="append", metavar="YAML",
                        help="an extra_model_paths.yaml (repeatable; default: the ComfyUI's own, if it has one)")
    parser.add_argument("--stand-ins", choices=["never", "if-missing", "always"], default="never",
                        help="use random-weight stand-in models: never (default), if a model file is missing, or always")
    args = parser.parse_args(argv)
    if not args.comfyui:
        parser.error("no ComfyUI: pass --comfyui or set COMFYUI_PATH")
    with open(args.workflow) as f:
        workflow = json.load(f)

    host = ComfyHost(args.comfyui, os.path.abspath(args.output), args.input_dir and os.path.abspath(args.input_dir),
                     args.extra_model_paths, cli_args=() if accelerator_available() else ("--cpu",))
    prompt = workflow
    if "nodes" in workflow and "links" in workflow:
        try:
            prompt = ui_to_api(workflow, host.object_info())
        except ValueError as error:
            print(f"Cannot convert {args.workflow} to a prompt: {error}", file=sys.stderr)
            return 2
    input_problems = provide_inputs(prompt, args.workflow, host.folder_paths)
    if input_problems:
        print("Cannot run the workflow; input images are missing:\n  " + "\n  ".join(input_problems), file=sys.stderr)
        return 2
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

    result = host.run(prompt, on_event=NodeProgress(prompt))
    if not result.success:
        for error in result.errors:
            message = error.get("exception_message") or json.dumps(error, default=str)
            print(f"error: {message}", file=sys.stderr)
        return 1
    written = [os.path.join(host.output_dir, image["subfolder"], image["filename"])
               for node_output in result.outputs.values() for image in node_output.get("images", [])]
    for path in written:
        print("wrote", path)
    demo = [path for path in written if os.path.basename(path).startswith(DEMO_PICTURE_PREFIX)]
    if os.path.abspath(args.workflow) == os.path.abspath(DEMO_WORKFLOW) and demo:
        print(f"The demo picture, {DEMO_ENLARGEMENT}× enlarged: {enlarged_copy(demo[-1])}")
    return 0


def accelerator_available() -> bool:
    """Whether torch sees a GPU that ComfyUI picks by itself; without one ComfyUI needs --cpu."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or bool(mps and mps.is_available())


def enlarged_copy(path: str) -> str:
    """A nearest-neighbour copy of the image, DEMO_ENLARGEMENT times larger, beside it (`…_x4.png`)."""
    from PIL import Image

    with Image.open(path) as image:
        large = image.resize((image.width * DEMO_ENLARGEMENT, image.height * DEMO_ENLARGEMENT), Image.NEAREST)
    target = os.path.abspath(os.path.splitext(path)[0] + f"_x{DEMO_ENLARGEMENT}.png")
    large.save(target)
    return target


if __name__ == "__main__":
    sys.exit(main())
