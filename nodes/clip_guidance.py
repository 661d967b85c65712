"""CLIP guidance nodes: load an open_clip model, and guide towards a text prompt, an image, or an image's style."""
from __future__ import annotations

import dataclasses
import logging
import os

import open_clip
import torch

import comfy.model_management
import comfy.model_patcher
import folder_paths

from ..guidance.clip_gram_style import CLIPGramStyleLoss, style_grams
from ..guidance.clip_similarity import CLIPSimilarityLoss, build_clip_model, encode_image, encode_text
from ..guidance.images import image_to_bchw
from .guidance_settings import GUIDANCE, guidance_output, settings_inputs
from .model_folder import MODEL_FOLDER, model_folder_hint
from .network_weights import LoaderNode, built_from, managed

log = logging.getLogger(__name__)

CLIP_GUIDANCE_MODEL = "UGD_CLIP_MODEL"
DOWNLOAD = "(download pretrained_tag)"


@dataclasses.dataclass(frozen=True)
class ClipGuidanceModel:
    """An open_clip model under ComfyUI's memory management, with the name of its tokenizer."""

    patcher: comfy.model_patcher.ModelPatcher
    tokenizer: str

    @classmethod
    def wrap(cls, model, tokenizer: str) -> "ClipGuidanceModel":
        return cls(managed(model), tokenizer)


def _download(architecture: str, pretrained_tag: str):
    cache_dir = os.path.join(folder_paths.get_folder_paths(MODEL_FOLDER)[0], "open_clip")
    log.info("Downloading open_clip %s/%s into %s (once).", architecture, pretrained_tag, cache_dir)
    try:
        model = open_clip.create_model(architecture, pretrained=pretrained_tag, cache_dir=cache_dir, require_pretrained=True)
    except Exception as error:
        raise RuntimeError(
            f"Could not get open_clip weights {architecture}/{pretrained_tag}: {error}. Without internet, save the "
            f"model's state dict as a .safetensors or .pt file in {model_folder_hint()} and choose it in 'weights'."
        ) from error
    return model.eval().requires_grad_(False)


class CLIPGuidanceModelLoader(LoaderNode):
    DESCRIPTION = "Loads an open_clip model for CLIP guidance, from a file in models/ugd or by downloading pretrained weights."
    CATEGORY = "universal_guidance/loaders"
    RETURN_TYPES = (CLIP_GUIDANCE_MODEL,)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "architecture": (open_clip.list_models(), {"default": "RN50", "tooltip": "open_clip architecture (the paper uses RN50)."}),
            "weights": ([DOWNLOAD] + folder_paths.get_filename_list(MODEL_FOLDER),
                        {"tooltip": "A state-dict file in models/ugd, or download pretrained_tag with open_clip."}),
            "pretrained_tag": ("STRING", {"default": "openai", "tooltip": "open_clip pretrained tag, used only when downloading."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, weights):
        if weights != DOWNLOAD and weights not in folder_paths.get_filename_list(MODEL_FOLDER):
            return f"CLIP guidance weights '{weights}' not found: put the file in {model_folder_hint()}."
        return True

    def load(self, architecture, weights, pretrained_tag):
        if weights == DOWNLOAD:
            model = _download(architecture, pretrained_tag)
        else:
            model = built_from(folder_paths.get_full_path(MODEL_FOLDER, weights),
                               lambda state: build_clip_model(architecture, state))
        return (ClipGuidanceModel.wrap(model, architecture),)


class CLIPTextGuidance:
    DESCRIPTION = ("Guides towards a text prompt with ℓ = −100·cos(CLIP image embedding, CLIP text embedding) (paper §4.1). "
                   "Paper settings: w = 10 with the paper schedule, recurrence k = 8, empty sampler prompt.")
    CATEGORY = "universal_guidance/guidance"
    RETURN_TYPES = (GUIDANCE,)
    FUNCTION = "guide"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip_model": (CLIP_GUIDANCE_MODEL, {"tooltip": "From CLIP Guidance Model Loader."}),
            "text": ("STRING", {"multiline": True, "default": "", "tooltip": "The prompt the images should match."}),
            **settings_inputs(),
        }}

    def guide(self, clip_model, text, **settings):
        if not text.strip():
            raise ValueError("CLIP Text Guidance: the text is empty; write the prompt the images should match.")
        comfy.model_management.load_models_gpu([clip_model.patcher])
        embedding = encode_text(clip_model.patcher.model, clip_model.tokenizer, text)
        loss = CLIPSimilarityLoss(clip_model.patcher.model, embedding)
        return guidance_output(f"CLIP text guidance ({text.strip()[:40]!r})", loss, [clip_model.patcher], **settings)


def _image_features(clip_model, image, encode):
    """`encode(model, image)` of a ComfyUI IMAGE, without gradients, on the CLIP model's device."""
    comfy.model_management.load_models_gpu([clip_model.patcher])
    model = clip_model.patcher.model
    with torch.no_grad():
        return encode(model, image_to_bchw(image).to(next(model.parameters()).device, torch.float32))


class CLIPImageGuidance:
    DESCRIPTION = ("Guides towards a reference image with ℓ = −100·cos(CLIP image embeddings): the paper's style "
                   "guidance (§4.2) and Semantic Diffusion Guidance's content guidance. Paper settings for style: "
                   "w = 6, recurrence k = 6, a text prompt, cfg 3.")
    CATEGORY = "universal_guidance/guidance"
    RETURN_TYPES = (GUIDANCE,)
    FUNCTION = "guide"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip_model": (CLIP_GUIDANCE_MODEL, {"tooltip": "From CLIP Guidance Model Loader."}),
            "image": ("IMAGE", {"tooltip": "The style or content reference; 1 for all samples, or one per sample."}),
            **settings_inputs(),
        }}

    def guide(self, clip_model, image, **settings):
        embedding = _image_features(clip_model, image, encode_image)
        loss = CLIPSimilarityLoss(clip_model.patcher.model, embedding, "reference images")
        return guidance_output("CLIP image guidance", loss, [clip_model.patcher], **settings)


class CLIPGramStyleGuidance:
    DESCRIPTION = ("Guides towards the style of an image by matching Gram matrices of early CLIP image features "
                   "(Semantic Diffusion Guidance's style guidance). ℓ is relative, 0 at the style image's own statistics.")
    CATEGORY = "universal_guidance/guidance"
    RETURN_TYPES = (GUIDANCE,)
    FUNCTION = "guide"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip_model": (CLIP_GUIDANCE_MODEL, {"tooltip": "From CLIP Guidance Model Loader (ResNet or ViT)."}),
            "style_image": ("IMAGE", {"tooltip": "The style reference; 1 for all samples, or one per sample."}),
            **settings_inputs(),
        }}

    def guide(self, clip_model, style_image, **settings):
        grams = _image_features(clip_model, style_image, style_grams)
        loss = CLIPGramStyleLoss(clip_model.patcher.model, grams)
        return guidance_output("CLIP Gram style guidance", loss, [clip_model.patcher], **settings)


NODE_CLASS_MAPPINGS = {
    "UGDCLIPGuidanceModelLoader": CLIPGuidanceModelLoader,
    "UGDCLIPTextGuidance": CLIPTextGuidance,
    "UGDCLIPImageGuidance": CLIPImageGuidance,
    "UGDCLIPGramStyleGuidance": CLIPGramStyleGuidance,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "UGDCLIPGuidanceModelLoader": "CLIP Guidance Model Loader",
    "UGDCLIPTextGuidance": "CLIP Text Guidance",
    "UGDCLIPImageGuidance": "CLIP Image Guidance (style / content)",
    "UGDCLIPGramStyleGuidance": "CLIP Gram Style Guidance",
}
