"""Write the shipped workflows: workflows/<name>.json (UI format) and workflows/api/<name>.json (its API twin).

    bash tools/build-workflows

The graphs are written here once, as code, so that their widget order, links, layout and notes come
from the node definitions of a real ComfyUI; a test checks that the committed files match this script.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_workflow import AUTO, DOWNLOAD_PRETRAINED  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from adm.configs import DOWNLOAD_BASE  # noqa: E402
from samplers.cost import counted_passes, settings_multiple  # noqa: E402
from samplers.presets import CUSTOM, PRESETS  # noqa: E402
from samplers.settings import Settings  # noqa: E402
from samplers.terms import AUTO_WEIGHT  # noqa: E402
from workflow_format import (  # noqa: E402
    CONTROL, UPLOAD, combo_choices, declared_inputs, input_options, socket_inputs, ui_to_api, widget_slots)

WORKFLOWS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "workflows")
SD15 = "v1-5-pruned-emaonly.safetensors"
ADM_CHECKPOINT, ADM_CLASSIFIER = "256x256_diffusion_uncond.pt", "256x256_classifier.pt"
SEED = 42  # the reference scripts' seed
EXAMPLE_BOXES = "dog 0.07 0.32 0.43 0.68\nperson 0.55 0.11 0.95 0.89"
COLUMN_WIDTH, NODE_WIDTH, NOTE_WIDTH = 380, 330, 460


@dataclass(frozen=True)
class Output:
    node: "Node"
    slot: int


@dataclass(eq=False)
class Node:
    id: int
    type: str
    title: str | None
    values: dict
    links: dict  # input name -> Output
    column: int = 0

    def __getitem__(self, slot: int) -> Output:
        return Output(self, slot)


@dataclass
class Workflow:
    """A graph under construction: `add` nodes, then `ui(object_info)` lays it out in the UI format."""

    name: str
    note: str
    nodes: list[Node] = field(default_factory=list)

    def add(self, node_type: str, title: str | None = None, **inputs) -> Node:
        links = {k: v for k, v in inputs.items() if isinstance(v, Output)}
        values = {k: v for k, v in inputs.items() if not isinstance(v, Output)}
        column = 1 + max((link.node.column for link in links.values()), default=-1)
        node = Node(len(self.nodes) + 2, node_type, title, values, links, column)  # id 1 is the note
        self.nodes.append(node)
        return node

    def ui(self, object_info: dict) -> dict:
        ui_nodes, ui_links = [], []
        column_y = {}
        for order, node in enumerate(self.nodes):
            definition = object_info[node.type]
            values = _widget_values(node, definition)
            sockets = socket_inputs(definition)
            inputs = []
            for name, kind in sockets:
                link = None
                if name in node.links:
                    output = node.links[name]
                    link = len(ui_links) + 1
                    ui_links.append([link, output.node.id, output.slot, node.id, len(inputs),
                                     object_info[output.node.type]["output"][output.slot]])
                inputs.append({"name": name, "type": kind, "link": link})
            unknown = set(node.links) - {name for name, _ in sockets}
            if unknown:
                raise ValueError(f"{self.name}: {node.type} has no sockets {sorted(unknown)}")
            outputs = [{"name": name, "type": kind, "links": [], "slot_index": slot}
                       for slot, (name, kind) in enumerate(zip(definition["output_name"], definition["output"]))]
            height = _height(definition, len(inputs), len(outputs))
            x = NOTE_WIDTH + 60 + node.column * COLUMN_WIDTH
            y = column_y.get(node.column, 40)
            column_y[node.column] = y + height + 60
            ui_node = {"id": node.id, "type": node.type, "pos": [x, y], "size": [NODE_WIDTH, height], "flags": {},
                       "order": order + 1, "mode": 0, "inputs": inputs, "outputs": outputs,
                       "properties": {"Node name for S&R": node.type}, "widgets_values": values}
            if node.title:
                ui_node["title"] = node.title
            ui_nodes.append(ui_node)
        by_id = {n["id"]: n for n in ui_nodes}
        for link in ui_links:
            by_id[link[1]]["outputs"][link[2]]["links"].append(link[0])
        for ui_node in ui_nodes:
            for output in ui_node["outputs"]:
                output["links"] = output["links"] or None
        note = {"id": 1, "type": "Note", "title": "About this workflow", "pos": [20, 40],
                "size": [NOTE_WIDTH, 40 + 19 * _wrapped_lines(self.note)], "flags": {}, "order": 0, "mode": 0,
                "inputs": [], "outputs": [], "properties": {"text": ""}, "widgets_values": [self.note],
                "color": "#432", "bgcolor": "#653"}
        return {"last_node_id": 1 + len(self.nodes), "last_link_id": len(ui_links), "nodes": [note] + ui_nodes,
                "links": ui_links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.5, "offset": [0, 0]}},
                "version": 0.4}


def _widget_values(node: Node, definition: dict) -> list:
    specs = dict(declared_inputs(definition))
    unknown = set(node.values) - set(specs)
    if unknown:
        raise ValueError(f"{node.type} has no inputs {sorted(unknown)}")
    values = []
    for name, pseudo in widget_slots(definition):
        if pseudo == CONTROL:
            values.append("fixed")  # a shared workflow reproduces its images
        elif pseudo == UPLOAD:
            values.append("image")  # the upload button's value, as the frontend saves it
        elif name in node.values:
            values.append(node.values[name])
        else:
            choices = combo_choices(specs[name])
            values.append(input_options(specs[name]).get("default", choices[0] if choices else None))
    return values


def _height(definition: dict, n_inputs: int, n_outputs: int) -> int:
    options = [input_options(spec) for _, spec in declared_inputs(definition)]
    multiline = sum(1 for o in options if o.get("multiline"))
    previews = sum(1 for o in options if o.get("image_upload"))  # the loaded image is shown in the node
    return 36 + 22 * max(n_inputs, n_outputs) + 26 * len(widget_slots(definition)) + 70 * multiline + 240 * previews


def _wrapped_lines(text: str, width: int = 62) -> int:
    return sum(max(1, -(-len(line) // width)) for line in text.splitlines())


@dataclass(frozen=True)
class Base:
    """What a guided sampler takes from the model's side of a graph; `pixel` for a pixel-space model."""
    model: Output
    vae: Output
    positive: Output
    negative: Output
    latent: Output
    pixel: bool = False


def _stable_diffusion(workflow: Workflow, positive: str, negative: str = "") -> Base:
    checkpoint = workflow.add("CheckpointLoaderSimple", ckpt_name=SD15)
    positive = workflow.add("CLIPTextEncode", "Positive prompt", text=positive, clip=checkpoint[1])
    negative = workflow.add("CLIPTextEncode", "Negative prompt", text=negative, clip=checkpoint[1])
    latent = workflow.add("EmptyLatentImage", width=512, height=512, batch_size=1)
    return Base(checkpoint[0], checkpoint[2], positive[0], negative[0], latent[0])


def _adm(workflow: Workflow, batch_size: int = 1) -> Base:
    """guided-diffusion's 256×256 unconditional ImageNet model, unconditioned (cfg 1), from an empty 256×256 image."""
    adm = workflow.add("UGDADMModelLoader", ckpt_name=ADM_CHECKPOINT)
    latent = workflow.add("UGDEmptyPixelImage", width=256, height=256, batch_size=batch_size)
    return Base(adm[0], adm[1], adm[2], adm[2], latent[0], pixel=True)


GUIDE_NAMES = {"clip": "CLIP RN50", "segmentation": "LR-ASPP"}


def _pixel_cost_note(title: str, steps: int, terms: list[dict], settings: Settings) -> str:
    """The passes of a pixel-space model's run, unpriced: no ADM weights could be timed here."""
    counts = counted_passes(steps, terms, settings)
    forward, backward = counts.forward, counts.backward
    return (f"\n\nEXPECTED COST{f' ({title})' if title else ''}\nPer image, counted (samplers/cost.py): "
            f"{forward['denoiser']:,.0f} UNet passes, {backward['denoiser']:,.0f} of them with a backward pass, "
            f"{forward['guidance_network']:,.0f} guidance-network passes and {counts.backward_guidance_steps:,.0f} "
            f"backward-guidance steps, against {steps:,} UNet passes unguided. Not priced: the ADM UNet's cost was "
            f"not measured (bench/speed measures SD 1.5).")


def _multiple(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def _cost_note(title: str, steps: int, terms: list[dict], settings: Settings, decoder: str, guide: str | None) -> str:
    multiple = settings_multiple(steps, terms, settings, decoder, guide)
    parts = ["the UNet", "TAESD" if decoder == "taesd" else "the VAE"] + ([GUIDE_NAMES[guide]] if guide else [])
    priced = ", ".join(parts[:-1]) + " and " + parts[-1]
    unpriced = "" if guide else " The guidance networks' passes come on top: bench/speed does not measure them."
    under = ", ".join(f"{name} {_multiple(settings_multiple(preset.steps or steps, terms, preset.over(Settings()), 'taesd' if preset.cheap_decoder else 'vae', guide))}×"
                      for name, preset in PRESETS.items())
    return (f"\n\nEXPECTED COST{f' ({title})' if title else ''}\nAbout {_multiple(multiple)}× an unguided 20-step run of SD "
            f"1.5 at 512 px, from the passes these settings make, counted (samplers/cost.py), with {priced} priced "
            f"as bench/speed measured them.{unpriced} With the sampler's presets instead (at {steps} steps, fast at "
            f"its own 10 with a TAESD guidance_vae): {under}.")


def _options(workflow: Workflow, recurrence: int) -> Output:
    """A Universal Guidance Options node: the paper's method with k = recurrence, every other lever at its default."""
    return workflow.add("UGDGuidanceOptions", f"Options (k = {recurrence})", recurrence=recurrence)[0]


def _sample_and_save(workflow: Workflow, base: Base, guidance: Output, prefix: str, *, steps: int, cfg: float,
                     recurrence: int, terms: list[dict], guide: str | None, title: str | None = None,
                     guidance_vae: Output | None = None, preset: str | None = None, options: Output | None = None,
                     cost_title: str = "", settings: Settings | None = None):
    """The guided sampler, decode and save; the note gains the settings' expected cost. Without a preset the
    sampler takes an options node (`options`, whose `settings` are given, or a new one with k = recurrence); a
    preset's steps show in its steps widget. `terms` are the guidance terms' weight and backward_steps, `guide` the
    guidance network as samplers/cost prices it."""
    extra = {"guidance_vae": guidance_vae} if guidance_vae else {}
    if preset:
        chosen = PRESETS[preset]
        steps, settings = chosen.steps or steps, chosen.over(Settings())
    else:
        settings = settings or Settings(recurrence=recurrence)
        extra["options"] = options or _options(workflow, recurrence)
    title = title or f"Universal Guided KSampler ({f'{preset} preset' if preset else f'k = {recurrence}'})"
    workflow.note += (_pixel_cost_note(cost_title, steps, terms, settings) if base.pixel else
                      _cost_note(cost_title, steps, terms, settings, "taesd" if guidance_vae else "vae", guide))
    sampler = workflow.add("UGDGuidedKSampler", title, model=base.model, seed=SEED, steps=steps, cfg=cfg,
                           sampler_name="ddim", scheduler="ddim_uniform", positive=base.positive,
                           negative=base.negative, latent_image=base.latent, denoise=1.0, vae=base.vae,
                           guidance=guidance, preset=preset or CUSTOM, **extra)
    decode = workflow.add("VAEDecode", samples=sampler[0], vae=base.vae)
    workflow.add("SaveImage", images=decode[0], filename_prefix=prefix)


SD_FILE = (f"- {SD15} in models/checkpoints/ (the paper used SD v1.4, sd-v1-4.ckpt; any SD 1.x checkpoint "
           "works).")
CLIP_FILE = ("- CLIP RN50 'openai': downloaded on first run into models/ugd/open_clip/, or pick a "
             "state-dict file in models/ugd/ in the CLIP loader.")
SEG_FILE = "- lraspp_mobilenet_v3_large-d234d4ea.pth in models/ugd/ (torchvision; downloaded on first run)."
DETECTOR_FILE = "- fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth in models/ugd/ (torchvision; downloaded on first run)."
FACE_FILE = "- 20180402-114759-vggface2.pt in models/ugd/ (facenet-pytorch; downloaded on first run)."
CLASSIFIER_FILE = "- resnet50-11ad3fa6.pth in models/ugd/ (torchvision; downloaded on first run)."
TAESD_FILE = "- taesd_decoder.pth and taesd_encoder.pth in models/vae_approx/ (github.com/madebyollin/taesd)."


def _paper_guidance(workflow: Workflow, node_type: str, title: str, **inputs) -> Node:
    """A guidance node on the paper's schedule s(t) = w·√(1−ᾱ_t), with the paper's raw w (new nodes start on auto)."""
    return workflow.add(node_type, title, schedule="paper", **inputs)


def _note(experiment: str, files: list[str], settings: str) -> str:
    return f"{experiment}\n\nMODEL FILES\n" + "\n".join(files) + f"\n\nSETTINGS THAT MATTER\n{settings}"


def _clip_text_guided(name: str, note: str, text: str, recurrence: int, guidance_title: str, weight: float = 10.0,
                      adm: bool = False) -> Workflow:
    """CLIP text guidance, forward only, over 1000 DDIM steps: on Stable Diffusion with an empty prompt, or on
    guided-diffusion's unconditional ImageNet model."""
    workflow = Workflow(name, note)
    base = _adm(workflow) if adm else _stable_diffusion(workflow, "")
    clip = workflow.add("UGDCLIPGuidanceModelLoader", architecture="RN50", weights=DOWNLOAD_PRETRAINED,
                        pretrained_tag="openai")
    guidance = _paper_guidance(workflow, "UGDCLIPTextGuidance", guidance_title, clip_model=clip[0], text=text, weight=weight,
                            backward_steps=0)
    _sample_and_save(workflow, base, guidance[0], name.replace("sd15", "ugd"), steps=1000, cfg=1.0,
                     recurrence=recurrence, terms=[dict(weight=weight)], guide="clip")
    return workflow


def clip_text() -> Workflow:
    return _clip_text_guided("sd15_clip_text_guidance", _note(
        "CLIP TEXT GUIDANCE on Stable Diffusion used as an unconditional model (paper §4.1, Fig. 3). "
        "The empty prompt makes SD unconditional; CLIP RN50 steers it towards the text in the CLIP node.",
        [SD_FILE, CLIP_FILE],
        "s(t) = 10·√(1−ᾱ): weight 10, schedule paper. Recurrence k = 8. Empty prompt, cfg 1 (no CFG). "
        "1000 DDIM steps as in the reference code; fewer run faster and guide less. Forward guidance only "
        "(backward_steps 0)."), "Dog scuba-diving", 8, "CLIP Text Guidance (s = 10·√(1−ᾱ))")


def _segmentation_guided(name: str, experiment: str, steps: int, preset: str | None) -> Workflow:
    """The paper's segmentation experiment; with a preset, the guidance node at its defaults, as a user starts."""
    files = [SD_FILE, SEG_FILE, "- ugd_segmentation_map_dog.png in ComfyUI/input/ (shipped in workflows/inputs/)."]
    strength = (f"Segmentation Guidance at its defaults: schedule auto, weight {AUTO_WEIGHT:g} (a fraction of the "
                "predicted noise, the same for every guidance)."
                if preset else "s(t) = 400·√(1−ᾱ): weight 400, schedule paper.")
    sampling = (f"The sampler's {preset} preset: {PRESETS[preset].describe()}; its tooltip and the run's log show "
                f"these values. " if preset else f"Recurrence k = 10. {steps} DDIM steps. ")
    settings = (f"{strength} {sampling}cfg 1.5 with the text prompt. The map is painted in PASCAL VOC colours "
                "(dog = (64, 0, 128), background black) and must have the image's aspect ratio.")
    taesd = preset and PRESETS[preset].cheap_decoder
    if taesd:
        files.append(TAESD_FILE)
        settings += (" TAESD decodes x0 for the guidance loss (the full VAE still decodes the result). "
                     "Compare with sd15_segmentation_guidance.")
    workflow = Workflow(name, _note(experiment, files, settings))
    sd = _stable_diffusion(workflow, "Walker hound, Walker foxhound on snow")
    segmenter = workflow.add("UGDSegmentationModelLoader", architecture="lraspp_mobilenet_v3_large", weights=AUTO)
    target = workflow.add("LoadImage", "Segmentation map (VOC colours)", image="ugd_segmentation_map_dog.png")
    if preset:
        guidance = workflow.add("UGDSegmentationGuidance", "Segmentation Guidance (defaults: auto)",
                                segmentation_model=segmenter[0], target_map=target[0])
    else:
        guidance = _paper_guidance(workflow, "UGDSegmentationGuidance", "Segmentation Guidance (s = 400·√(1−ᾱ))",
                                   segmentation_model=segmenter[0], target_map=target[0], weight=400.0,
                                   backward_steps=0)
    decoder = workflow.add("VAELoader", "Guidance decoder (TAESD)", vae_name="taesd") if taesd else None
    _sample_and_save(workflow, sd, guidance[0], workflow.name.replace("sd15", "ugd"), steps=steps, cfg=1.5,
                     recurrence=10, terms=[dict(weight=AUTO_WEIGHT if preset else 400.0)], guide="segmentation",
                     guidance_vae=decoder[0] if decoder else None, preset=preset)
    return workflow


def segmentation() -> Workflow:
    return _segmentation_guided(
        "sd15_segmentation_guidance",
        "SEGMENTATION MAP GUIDANCE with a text prompt (paper §4.1, Fig. 4). MobileNetV3-Large LR-ASPP "
        "makes the dog take the shape of the map while the prompt sets breed and scene.", 500, preset=None)


def segmentation_fast() -> Workflow:
    return _segmentation_guided(
        "sd15_segmentation_guidance_fast",
        "SEGMENTATION MAP GUIDANCE, FAST PRESET of sd15_segmentation_guidance (paper §4.1, Fig. 4). The fast "
        "preset (FreeDoM's step, 10 steps, a TAESD guidance decoder) was chosen on the pack's toy world, where on "
        "segmentation it keeps 99% (ε model) and 83% (flow model) of paper mode's gain at about 1.25 unguided "
        "runs (docs/presets-speed-memory.md, Presets); on Stable Diffusion expect a looser fit to the map than the paper's 500 steps "
        "with k = 10.", 500, preset="fast")


def face() -> Workflow:
    workflow = Workflow("sd15_face_guidance", _note(
        "FACE IDENTITY GUIDANCE with a text prompt (paper §4.1, Fig. 5). MTCNN finds the face (no gradient) "
        "and FaceNet (InceptionResnetV1, VGGFace2) pulls its embedding towards the reference face's.",
        [SD_FILE, FACE_FILE, "- MTCNN ships with facenet-pytorch.",
         "- ugd_face_reference_astronaut.png in ComfyUI/input/ (shipped in workflows/inputs/; NASA, public domain)."],
        "s(t) = 20000·√(1−ᾱ): weight 20000, schedule paper. Recurrence k = 2. cfg 7.5 with the text prompt. "
        "500 DDIM steps as in the reference. The reference must show one clear face."))
    sd = _stable_diffusion(workflow, "Headshot of a person with blonde hair with space background")
    faces = workflow.add("UGDFaceModelLoader", weights=AUTO)
    reference = workflow.add("LoadImage", "Reference face", image="ugd_face_reference_astronaut.png")
    guidance = _paper_guidance(workflow, "UGDFaceIdentityGuidance", "Face Identity Guidance (s = 20000·√(1−ᾱ))",
                            face_model=faces[0], reference=reference[0], weight=20000.0, backward_steps=0)
    _sample_and_save(workflow, sd, guidance[0], "ugd_face", steps=500, cfg=7.5, recurrence=2,
                     terms=[dict(weight=20000.0)], guide=None)
    return workflow


def object_location() -> Workflow:
    workflow = Workflow("sd15_object_location_guidance", _note(
        "OBJECT LOCATION GUIDANCE with a text prompt (paper §4.1, Fig. 6). Faster R-CNN (ResNet-50-FPN v2, "
        "COCO) puts each named object in its box.",
        [SD_FILE, DETECTOR_FILE],
        "s(t) = 100·√(1−ᾱ): weight 100, schedule paper. Recurrence k = 3. cfg 1.5 with the text prompt. "
        "250 DDIM steps as in the reference. Boxes: one per line, 'label x0 y0 x1 y1', COCO labels, here as "
        "fractions of the image (also in workflows/inputs/ugd_boxes_dog_person.txt)."))
    sd = _stable_diffusion(workflow, "a headshot of a woman with a dog")
    detector = workflow.add("UGDObjectDetectorLoader", weights=AUTO)
    guidance = _paper_guidance(workflow, "UGDObjectLocationGuidance", "Object Location Guidance (s = 100·√(1−ᾱ))",
                            detector=detector[0], boxes=EXAMPLE_BOXES, units="fractions", weight=100.0,
                            backward_steps=0)
    _sample_and_save(workflow, sd, guidance[0], "ugd_object_location", steps=250, cfg=1.5, recurrence=3,
                     terms=[dict(weight=100.0)], guide=None)
    return workflow


def style() -> Workflow:
    workflow = Workflow("sd15_style_guidance", _note(
        "STYLE GUIDANCE from a reference image with a text prompt (paper §4.1, Fig. 7). The CLIP RN50 image "
        "embedding of the sample is pulled towards the style image's; the prompt sets the content.",
        [SD_FILE, CLIP_FILE,
         "- ugd_style_swirls.png in ComfyUI/input/ (shipped in workflows/inputs/; drawn by this project)."],
        "s(t) = 6·√(1−ᾱ): weight 6, schedule paper. Recurrence k = 6. cfg 3 (the paper uses 3 or 4 to balance "
        "prompt against style). 500 DDIM steps as in the reference."))
    sd = _stable_diffusion(workflow, "A colorful photo of a eiffel tower")
    clip = workflow.add("UGDCLIPGuidanceModelLoader", architecture="RN50", weights=DOWNLOAD_PRETRAINED,
                        pretrained_tag="openai")
    reference = workflow.add("LoadImage", "Style image", image="ugd_style_swirls.png")
    guidance = _paper_guidance(workflow, "UGDCLIPImageGuidance", "CLIP Image Guidance: style (s = 6·√(1−ᾱ))", clip_model=clip[0],
                            image=reference[0], weight=6.0, backward_steps=0)
    _sample_and_save(workflow, sd, guidance[0], "ugd_style", steps=500, cfg=3.0, recurrence=6,
                     terms=[dict(weight=6.0)], guide="clip")
    return workflow


UNCONDITIONAL = ("The paper runs this on an unconditional ImageNet diffusion model, which the adm_ workflow of this "
                 "experiment loads; this one runs it on Stable Diffusion with an empty prompt and cfg 1.")


def unconditional_clip() -> Workflow:
    return _clip_text_guided("sd15_unconditional_clip_guidance", _note(
        "CLIP GUIDANCE, FORWARD ONLY, of the unconditional-model experiments (paper §4.2, Fig. 8): prompts "
        f"far from the training data, such as an art style. {UNCONDITIONAL}",
        [SD_FILE, CLIP_FILE],
        "Forward guidance only (backward_steps 0). Recurrence k = 10 and 1000 DDIM steps as in the reference's "
        "ImageNet command. weight 10 (schedule paper), the paper's Stable Diffusion strength for this loss; "
        "the ImageNet value (2) was tuned for a pixel-space model."),
        "English foxhound by Edward Hopper", 10, "CLIP Text Guidance, forward only")


OBJECT_LOCATION_SETTINGS = (
    "s(t) = 100·√(1−ᾱ) (weight 100, schedule paper) and k = 3 in both. The second adds backward guidance: m = 1 "
    "Adam step with lr 1e-3 per pass, as in the reference. 1000 DDIM steps. The paper finds forward + backward places "
    "the objects, where forward only often misses category or place.")


def _object_location_forward_vs_backward(workflow: Workflow, base: Base) -> Workflow:
    detector = workflow.add("UGDObjectDetectorLoader", weights=AUTO)
    common = dict(detector=detector[0], boxes=EXAMPLE_BOXES, units="fractions", weight=100.0, optimizer="adam",
                  backward_lr=1e-3)
    forward = _paper_guidance(workflow, "UGDObjectLocationGuidance", "Forward only", backward_steps=0, **common)
    both = _paper_guidance(workflow, "UGDObjectLocationGuidance", "Forward + backward (m = 1)", backward_steps=1, **common)
    prefix = "ugd_adm_object_location" if base.pixel else "ugd_object_location"
    options = _options(workflow, 3)  # one for both samplers: only the guidance differs
    _sample_and_save(workflow, base, forward[0], f"{prefix}_forward", steps=1000, cfg=1.0,
                     recurrence=3, terms=[dict(weight=100.0)], guide=None, title="Sampler: forward only (k = 3)",
                     options=options, cost_title="forward only")
    _sample_and_save(workflow, base, both[0], f"{prefix}_forward_backward", steps=1000, cfg=1.0,
                     recurrence=3, terms=[dict(weight=100.0, backward_steps=1)], guide=None,
                     title="Sampler: forward + backward (k = 3)", options=options, cost_title="forward + backward")
    return workflow


def unconditional_object_location() -> Workflow:
    workflow = Workflow("sd15_unconditional_object_location_forward_vs_backward", _note(
        "OBJECT LOCATION: FORWARD ONLY vs FORWARD + BACKWARD, side by side (paper §4.2, Fig. 9). The same "
        f"seed and boxes, sampled twice. {UNCONDITIONAL}",
        [SD_FILE, DETECTOR_FILE], OBJECT_LOCATION_SETTINGS))
    return _object_location_forward_vs_backward(workflow, _stable_diffusion(workflow, ""))


INPAINTING_FILES = ("- ugd_inpainting_chelsea.png and ugd_inpainting_hole.png in ComfyUI/input/ (shipped in "
                    "workflows/inputs/; Chelsea the cat, CC0, from scikit-image).")
INPAINTING_SETTINGS = ("Inpainting: weight 0 (s = 0), backward_steps 1, Adam lr 0.01, as in the reference. "
                       "Segmentation: s(t) = 200·√(1−ᾱ) (weight 200), class cat inside the hole, outside ignored. ")


def _inpainting_photo(workflow: Workflow):
    """The photo, its hole, and inpainting by backward guidance alone."""
    photo = workflow.add("LoadImage", "Photo to inpaint", image="ugd_inpainting_chelsea.png")
    hole = workflow.add("LoadImageMask", "Hole (white = generate)", image="ugd_inpainting_hole.png", channel="red")
    inpainting = _paper_guidance(workflow, "UGDImageReconstructionGuidance", "Inpainting (backward only)", image=photo[0],
                              mask=hole[0], weight=0.0, backward_steps=1, backward_lr=0.01)
    return hole, inpainting


def _segmentation_of_the_hole(workflow: Workflow, hole: Node) -> Node:
    segmenter = workflow.add("UGDSegmentationModelLoader", architecture="lraspp_mobilenet_v3_large", weights=AUTO)
    return _paper_guidance(workflow, "UGDSegmentationGuidance", "Segmentation Guidance (s = 200·√(1−ᾱ))",
                        segmentation_model=segmenter[0], mask=hole[0], class_name="cat", outside_mask="ignore",
                        weight=200.0, backward_steps=0)


def _segmentation_inpainting(workflow: Workflow, base: Base, classify, classifier_term: dict) -> Workflow:
    """Inpainting, a classifier's guidance (`classify(workflow)` adds its nodes) and segmentation, combined;
    `classifier_term` is the classifier term's settings for the cost count."""
    hole, inpainting = _inpainting_photo(workflow)
    classify = classify(workflow)
    segment = _segmentation_of_the_hole(workflow, hole)
    combined = workflow.add("UGDCombineGuidance", guidance_1=inpainting[0], guidance_2=classify[0],
                            guidance_3=segment[0])
    prefix = "ugd_adm_segmentation_inpainting" if base.pixel else "ugd_segmentation_inpainting"
    _sample_and_save(workflow, base, combined[0], prefix, steps=1000, cfg=1.0, recurrence=1,
                     terms=[dict(weight=0.0, backward_steps=1), classifier_term, dict(weight=200.0)], guide=None)
    return workflow


def _resnet_classifier_guidance(workflow: Workflow) -> Node:
    classifier = workflow.add("UGDClassifierModelLoader", architecture="resnet50", weights=AUTO)
    return _paper_guidance(workflow, "UGDClassifierGuidance", "Classifier Guidance", classifier=classifier[0],
                        target_class="tabby", weight=100.0, backward_steps=0)


def unconditional_segmentation_inpainting() -> Workflow:
    workflow = Workflow("sd15_unconditional_segmentation_inpainting", _note(
        "SEGMENTATION-GUIDED INPAINTING (paper §5.1, Fig. 10): three guidances at once through Combine "
        "Guidance. Inpainting keeps the photo outside the hole (backward guidance only), a classifier asks "
        f"for a tabby cat and segmentation for a cat filling the hole. {UNCONDITIONAL}",
        [SD_FILE, SEG_FILE, CLASSIFIER_FILE, INPAINTING_FILES],
        INPAINTING_SETTINGS + "Classifier (ResNet-50): weight 100 through forward guidance; the paper used a "
        "noise-aware classifier's own guidance (eq. 4) instead. k = 1, 1000 DDIM steps, as in the reference."))
    return _segmentation_inpainting(workflow, _stable_diffusion(workflow, ""), _resnet_classifier_guidance,
                                    dict(weight=100.0))


ADM_FILE = (f"- {ADM_CHECKPOINT} in models/unet/ (current ComfyUI also reads models/diffusion_models/): "
            f"guided-diffusion's unconditional ImageNet model, from {DOWNLOAD_BASE}{ADM_CHECKPOINT} "
            "(github.com/openai/guided-diffusion). Nothing downloads by itself.")
ADM_CLASSIFIER_FILE = (f"- {ADM_CLASSIFIER} in models/ugd/: guided-diffusion's noise-aware ImageNet classifier, from "
                       f"{DOWNLOAD_BASE}{ADM_CLASSIFIER}.")
ADM = ("On the paper's own model: guided-diffusion's 256×256 unconditional ImageNet model (pixel space, its pixel VAE "
       "decodes), with its unconditional CONDITIONING as positive and negative and cfg 1.")


def adm_clip() -> Workflow:
    return _clip_text_guided("adm_clip_guidance", _note(
        "CLIP GUIDANCE, FORWARD ONLY, on the unconditional ImageNet model (paper §4.2, Fig. 8): prompts far from "
        f"the training data, such as an art style. {ADM}", [ADM_FILE, CLIP_FILE],
        "s(t) = 2·√(1−ᾱ) (weight 2, schedule paper) and k = 10, the paper's values for this prompt (5 and 5, "
        "and 2 and 10, for its others); the reference's loss sums its 2 identical prompts per image, which doubles "
        "its effective weight. Forward guidance only (backward_steps 0). 1000 DDIM steps as in the reference."),
        "English foxhound by Edward Hopper", 10, "CLIP Text Guidance (s = 2·√(1−ᾱ))", weight=2.0, adm=True)


def adm_object_location() -> Workflow:
    workflow = Workflow("adm_object_location_forward_vs_backward", _note(
        "OBJECT LOCATION: FORWARD ONLY vs FORWARD + BACKWARD, side by side, on the unconditional ImageNet model "
        f"(paper §4.2, Fig. 9). The same seed and boxes, sampled twice. {ADM}", [ADM_FILE, DETECTOR_FILE],
        OBJECT_LOCATION_SETTINGS))
    return _object_location_forward_vs_backward(workflow, _adm(workflow))


def _noise_aware_classifier_guidance(workflow: Workflow) -> Node:
    classifier = workflow.add("UGDNoiseAwareClassifierLoader", weights=ADM_CLASSIFIER)
    return workflow.add("UGDNoiseAwareClassifierGuidance", "Noise-Aware Classifier Guidance (scale 1)",
                        classifier=classifier[0], target_class="tabby", weight=1.0)


def adm_segmentation_inpainting() -> Workflow:
    workflow = Workflow("adm_segmentation_inpainting", _note(
        "SEGMENTATION-GUIDED INPAINTING with the noise-aware classifier (paper §5.1, Fig. 10): inpainting keeps "
        "the photo outside the hole (backward guidance only), the noise-aware classifier's own guidance asks for "
        f"a tabby cat, and segmentation for a cat filling the hole, all through Combine Guidance. {ADM}",
        [ADM_FILE, ADM_CLASSIFIER_FILE, SEG_FILE, INPAINTING_FILES],
        INPAINTING_SETTINGS + "Noise-aware classifier: classifier guidance (eq. 4) on the noisy image, "
        "ε̂' = ε̂ − √(1−ᾱ)·∇ log p(tabby | x_t, t), weight 1, the reference's classifier scale. k = 1, 1000 DDIM "
        "steps, as in the reference."))
    return _segmentation_inpainting(workflow, _adm(workflow), _noise_aware_classifier_guidance,
                                    dict(weight=1.0, reads_noisy_input=True))


TOY_STEPS, TOY_RECURRENCE, TOY_WEIGHT = 20, 4, 100.0


# Particles with gradient guidance, as bench/toy-world-particles chose them at the balanced budget (docs/particles.md)
PARTICLE_LEVERS = dict(PRESETS["fast"].levers, particles=8, resample_every=4, potential="max", temperature=10.0)


def object_location_particles() -> Workflow:
    settings = Settings(**PARTICLE_LEVERS)
    workflow = Workflow("sd15_object_location_particles", _note(
        "OBJECT LOCATION WITH PARTICLES, the object location experiment (paper §4.1, Fig. 6) searched: 8 samples "
        "of one image run side by side, each guided into the boxes by Faster R-CNN's training loss as the fast "
        "preset guides, resampled every 4 steps by the boxes the detector finds in them (Object Location Reward), "
        "and the best one kept (docs/particles.md).",
        [SD_FILE, DETECTOR_FILE, TAESD_FILE],
        f"Object Location Guidance at its defaults (schedule auto, weight {AUTO_WEIGHT:g}). The options node holds "
        "the fast preset's levers (FreeDoM's step, k = 4 in the first 40% of the steps, the gradient at x0, weight "
        "×0.5) and the particles: 8, resampled every 4 steps by FK steering's max potential at λ = 10. 10 DDIM "
        "steps, cfg 1.5 with the text prompt; TAESD decodes x0 for the guidance and the reward. Set "
        "return_particles on the options node to see all 8, the best first."))
    sd = _stable_diffusion(workflow, "a headshot of a woman with a dog")
    detector = workflow.add("UGDObjectDetectorLoader", weights=AUTO)
    guidance = workflow.add("UGDObjectLocationGuidance", "Object Location Guidance (defaults: auto)",
                            detector=detector[0], boxes=EXAMPLE_BOXES, units="fractions")
    reward = workflow.add("UGDObjectLocationReward", "Object Location Reward (scores the particles)",
                          detector=detector[0], boxes=EXAMPLE_BOXES, units="fractions")
    both = workflow.add("UGDCombineGuidance", guidance_1=guidance[0], guidance_2=reward[0])
    options = workflow.add("UGDGuidanceOptions", "Options (fast preset's levers, 8 particles)", **PARTICLE_LEVERS)
    decoder = workflow.add("VAELoader", "Guidance decoder (TAESD)", vae_name="taesd")
    _sample_and_save(workflow, sd, both[0], "ugd_object_location_particles", steps=PRESETS["fast"].steps, cfg=1.5,
                     recurrence=settings.recurrence, terms=[dict(weight=AUTO_WEIGHT), dict(reward_only=True)],
                     guide=None, guidance_vae=decoder[0], options=options[0], settings=settings,
                     title="Universal Guided KSampler (8 particles)")
    return workflow


def toy_world_segmentation() -> Workflow:
    workflow = Workflow("toy_world_segmentation_guidance", _note(
        "TOY WORLD SEGMENTATION GUIDANCE: the paper's segmentation experiment (paper §4.1, Fig. 4) in the pack's own "
        "miniature world of coloured shapes, whose diffusion model, VAE and segmenter were trained by the pack "
        "(toy_world/). Four seeds, sampled without and with guidance from the same noise. The grid shows one row "
        "per seed: target map, unguided, guided.",
        ["- none to download: the toy model, VAE and networks ship with the pack (toy_world/weights/).",
         "- ugd_toy_segmentation_map.png in ComfyUI/input/ (shipped in workflows/inputs/): a triangle and a circle."],
        f"s(t) = {TOY_WEIGHT:g}·√(1−ᾱ): weight {TOY_WEIGHT:g}, schedule paper. Recurrence k = {TOY_RECURRENCE}. "
        f"{TOY_STEPS} DDIM steps, cfg 1 (the toy model is unconditional). The map is painted in the VOC palette "
        "colours of the toy classes: background black, circle (128, 0, 0), square (0, 128, 0), triangle "
        "(128, 128, 0), cross (0, 0, 128)."))
    toy = workflow.add("UGDToyWorldLoader")
    networks = workflow.add("UGDToyWorldGuidanceNetworks")
    target = workflow.add("LoadImage", "Target map (toy classes in VOC colours)", image="ugd_toy_segmentation_map.png")
    guidance = _paper_guidance(workflow, "UGDSegmentationGuidance", f"Segmentation Guidance (s = {TOY_WEIGHT:g}·√(1−ᾱ))",
                            segmentation_model=networks[0], target_map=target[0], weight=TOY_WEIGHT,
                            backward_steps=0)
    latent = workflow.add("UGDEmptyToyWorldLatent", batch_size=4)
    common = dict(model=toy[0], positive=toy[2], negative=toy[2], latent_image=latent[0], seed=SEED, steps=TOY_STEPS,
                  cfg=1.0, scheduler="ddim_uniform", denoise=1.0)
    unguided = workflow.add("KSampler", "Unguided (same seed; euler = DDIM)", sampler_name="euler", **common)
    guided = workflow.add("UGDGuidedKSampler", f"Universal Guided KSampler (k = {TOY_RECURRENCE})", sampler_name="ddim",
                          vae=toy[1], guidance=guidance[0], preset=CUSTOM, options=_options(workflow, TOY_RECURRENCE),
                          **common)
    unguided_image = workflow.add("VAEDecode", "Decode unguided", samples=unguided[0], vae=toy[1])
    guided_image = workflow.add("VAEDecode", "Decode guided", samples=guided[0], vae=toy[1])
    grid = workflow.add("UGDImageGrid", "Target | unguided | guided", image_1=target[0], image_2=unguided_image[0],
                        image_3=guided_image[0])
    workflow.add("SaveImage", images=grid[0], filename_prefix="ugd_toy_segmentation_grid")
    workflow.add("SaveImage", "Loss plot (the guided sampler's second output)", images=guided[1],
                 filename_prefix="ugd_toy_segmentation_loss_plot")
    return workflow


WORKFLOWS = (toy_world_segmentation, clip_text, segmentation, face, object_location, style, unconditional_clip,
             unconditional_object_location, unconditional_segmentation_inpainting, segmentation_fast,
             object_location_particles, adm_clip, adm_object_location, adm_segmentation_inpainting)


def build_all(object_info: dict) -> dict[str, dict]:
    """{path under workflows/: JSON} for every shipped workflow and its API twin."""
    files = {}
    for make in WORKFLOWS:
        workflow = make()
        ui = workflow.ui(object_info)
        files[f"{workflow.name}.json"] = ui
        files[f"api/{workflow.name}.json"] = ui_to_api(ui, object_info)
    return files


def dumps(document: dict) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    from comfy_headless import ComfyHost

    comfyui = os.environ.get("COMFYUI_PATH")
    if not comfyui:
        print("set COMFYUI_PATH to a ComfyUI folder", file=sys.stderr)
        return 2
    for name, document in build_all(ComfyHost(comfyui).object_info()).items():
        with open(os.path.join(WORKFLOWS_DIR, name), "w", encoding="utf-8") as f:
            f.write(dumps(document))
        print("wrote", os.path.join("workflows", name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
