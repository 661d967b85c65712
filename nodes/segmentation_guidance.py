"""Segmentation map guidance nodes (paper §4.2, Fig. 3): a VOC segmenter loader and the guidance."""
from __future__ import annotations

from ..guidance.segmentation import ARCHITECTURES, VOC_CLASSES, SegmentationLoss, build_segmenter, class_map_from_colours, class_map_from_mask
from ..toy_world.networks import SEGMENTATION_CLASSES as TOY_CLASSES
from .guidance_settings import GUIDANCE, guidance_output, settings_inputs
from .network_weights import load_network, managed, weights_input, WeightsFileLoader

SEGMENTATION_MODEL = "UGD_SEGMENTATION_MODEL"
CLASS_NAMES = list(VOC_CLASSES[1:]) + [c for c in TOY_CLASSES[1:] if c not in VOC_CLASSES]  # VOC, then the toy world's


class SegmentationModelLoader(WeightsFileLoader):
    DESCRIPTION = ("Loads a torchvision PASCAL VOC segmenter (21 classes) for segmentation guidance. The paper uses "
                   "lraspp_mobilenet_v3_large (lraspp_mobilenet_v3_large-d234d4ea.pth in models/ugd).")
    CATEGORY = "universal_guidance/loaders"
    RETURN_TYPES = (SEGMENTATION_MODEL,)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "architecture": (list(ARCHITECTURES), {"default": "lraspp_mobilenet_v3_large",
                                                   "tooltip": "torchvision's segmentation network, trained on the 21 "
                                                              "PASCAL VOC classes."}),
            "weights": weights_input("the architecture's torchvision file (lraspp_mobilenet_v3_large-d234d4ea.pth for "
                                     "the default)"),
        }}

    def load(self, architecture, weights):
        return (managed(load_network(weights, ARCHITECTURES[architecture][1].url, lambda state: build_segmenter(architecture, state))),)


class SegmentationGuidance:
    DESCRIPTION = ("Guides the image towards a segmentation map: per-pixel cross-entropy of the segmenter's output "
                   "(paper §4.2). The target is a map drawn in PASCAL VOC palette colours, or a mask with a class. "
                   "Paper settings: w = 400, recurrence k = 10, a text prompt, cfg 1.5.")
    CATEGORY = "universal_guidance/guidance"
    RETURN_TYPES = (GUIDANCE,)
    FUNCTION = "guide"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "segmentation_model": (SEGMENTATION_MODEL, {"tooltip": "From Segmentation Model Loader."}),
                "class_name": (CLASS_NAMES, {"default": "dog", "tooltip": "The class painted by the mask (unused with a target map); one of the segmenter's classes."}),
                "outside_mask": (["background", "ignore"], {"tooltip": "Outside the mask: ask for background, or leave it free."}),
                **settings_inputs(),
            },
            "optional": {
                "target_map": ("IMAGE", {"tooltip": "A segmentation map in PASCAL VOC palette colours; (224, 224, 192) means 'no loss'."}),
                "mask": ("MASK", {"tooltip": "Where class_name should be. Give this or target_map."}),
            },
        }

    def guide(self, segmentation_model, class_name, outside_mask, target_map=None, mask=None, **settings):
        if (target_map is None) == (mask is None):
            raise ValueError("Segmentation Guidance: connect either target_map (a VOC-coloured map) or mask (with class_name), not both or neither.")
        segmenter = segmentation_model.model
        if target_map is not None:
            target, what = class_map_from_colours(target_map, segmenter.classes), "map"
        else:
            target, what = class_map_from_mask(mask, class_name, outside_mask, segmenter.classes), class_name
        loss = SegmentationLoss(segmenter, target)
        return guidance_output(f"segmentation guidance ({what})", loss, [segmentation_model], **settings)


NODE_CLASS_MAPPINGS = {
    "UGDSegmentationModelLoader": SegmentationModelLoader,
    "UGDSegmentationGuidance": SegmentationGuidance,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "UGDSegmentationModelLoader": "Segmentation Model Loader",
    "UGDSegmentationGuidance": "Segmentation Guidance",
}
