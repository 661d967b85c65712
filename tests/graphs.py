"""API-format prompts for the integration tests, built from small pieces."""
from __future__ import annotations

from samplers.settings import option_fields

GUIDANCE_DEFAULTS = dict(weight=0.0, schedule="paper", backward_steps=0, backward_lr=0.01, optimizer="adam",
                         start_percent=0.0, end_percent=1.0)


def base_graph(width=64, height=48, batch=2, prompt="a cat"):
    """Stand-in checkpoint (1), prompts (2, 3), empty latent (4)."""
    return {
        "1": {"class_type": "UGDStandInCheckpoint", "inputs": {"seed": 0}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}},
    }


def clip_guidance(graph, node="6", text="a red square", **settings):
    graph["5"] = {"class_type": "UGDStandInCLIPGuidanceModel", "inputs": {"seed": 0}}
    graph[node] = {"class_type": "UGDCLIPTextGuidance",
                   "inputs": {"clip_model": ["5", 0], "text": text, **{**GUIDANCE_DEFAULTS, **settings}}}
    return [node, 0]


def loaded_clip_guidance(graph, architecture, weights, pretrained_tag="", text="x", **settings):
    """CLIP Guidance Model Loader (5) feeding CLIP Text Guidance (6)."""
    graph["5"] = {"class_type": "UGDCLIPGuidanceModelLoader",
                  "inputs": {"architecture": architecture, "weights": weights, "pretrained_tag": pretrained_tag}}
    graph["6"] = {"class_type": "UGDCLIPTextGuidance",
                  "inputs": {"clip_model": ["5", 0], "text": text, **{**GUIDANCE_DEFAULTS, **settings}}}
    return ["6", 0]


def load_image(graph, node, filename):
    graph[node] = {"class_type": "LoadImage", "inputs": {"image": filename}}
    return [node, 0]


def reconstruction_guidance(graph, node, image, mask=None, **settings):
    inputs = {"image": image, **{**GUIDANCE_DEFAULTS, "backward_steps": 5, **settings}}
    if mask is not None:
        inputs["mask"] = mask
    graph[node] = {"class_type": "UGDImageReconstructionGuidance", "inputs": inputs}
    return [node, 0]


def options_node(**levers):
    """A Universal Guidance Options node with these levers, the others at their defaults."""
    return {"class_type": "UGDGuidanceOptions", "inputs": {**{f.name: f.default for f in option_fields()}, **levers}}


def guided_sampler(graph, node, guidance, latent=("4", 0), seed=1, steps=4, cfg=5.0, sampler="ddim", preset="custom",
                   model=("1", 0), vae=("1", 2), positive=("2", 0), negative=("3", 0), guidance_vae=None, **levers):
    """A Universal Guided KSampler (node); levers (recurrence, method, …) go to its options node (node + 'o'),
    recurrence 2 unless given."""
    inputs = {"model": list(model), "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler,
              "scheduler": "normal", "positive": list(positive), "negative": list(negative),
              "latent_image": list(latent), "denoise": 1.0, "vae": list(vae), "guidance": guidance, "preset": preset,
              "options": [node + "o", 0]}
    graph[node + "o"] = options_node(**{"recurrence": 2, **levers})
    if guidance_vae is not None:
        inputs["guidance_vae"] = guidance_vae
    graph[node] = {"class_type": "UGDGuidedKSampler", "inputs": inputs}
    return [node, 0]


def plain_sampler(graph, node, latent=("4", 0), seed=1, steps=4, cfg=5.0, sampler_name="ddim", denoise=1.0):
    graph[node] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": list(latent), "seed": seed,
        "steps": steps, "cfg": cfg, "sampler_name": sampler_name, "scheduler": "normal", "denoise": denoise}}
    return [node, 0]


def save(graph, node, latent, prefix):
    """VAEDecode + SaveImage (node) and SaveLatent (node + 'l')."""
    graph[node + "d"] = {"class_type": "VAEDecode", "inputs": {"samples": latent, "vae": ["1", 2]}}
    graph[node] = {"class_type": "SaveImage", "inputs": {"images": [node + "d", 0], "filename_prefix": prefix}}
    graph[node + "l"] = {"class_type": "SaveLatent", "inputs": {"samples": latent, "filename_prefix": "latents/" + prefix}}


STAND_INS = {
    "UGDSegmentationGuidance": ("segmentation_model", "UGDStandInSegmentationModel"),
    "UGDFaceIdentityGuidance": ("face_model", "UGDStandInFaceModel"),
    "UGDObjectLocationGuidance": ("detector", "UGDStandInObjectDetector"),
    "UGDClassifierGuidance": ("classifier", "UGDStandInClassifier"),
    "UGDCLIPImageGuidance": ("clip_model", "UGDStandInCLIPGuidanceModel"),
    "UGDCLIPGramStyleGuidance": ("clip_model", "UGDStandInCLIPGuidanceModel"),
}


def stand_in_guidance(graph, node, class_type, **inputs):
    """A guidance node (node) fed by its stand-in network (node + 'n'), with the shared settings defaulted."""
    network_input, stand_in = STAND_INS[class_type]
    graph[node + "n"] = {"class_type": stand_in, "inputs": {"seed": 0}}
    graph[node] = {"class_type": class_type,
                   "inputs": {network_input: [node + "n", 0], **{**GUIDANCE_DEFAULTS, **inputs}}}
    return [node, 0]
