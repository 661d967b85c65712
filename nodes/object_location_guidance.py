"""Object location guidance nodes (paper §4.2, Fig. 4): a Faster R-CNN loader and the guidance."""
from __future__ import annotations

from ..guidance.object_location import (UNITS, WEIGHTS, DetectedBoxesLoss, ObjectLocationLoss, build_detector,
                                        parse_box_sets)
from .guidance_settings import GUIDANCE, guidance_output, settings_inputs
from .network_weights import file_name, load_network, managed, weights_input, WeightsFileLoader

DETECTOR_MODEL = "UGD_DETECTOR_MODEL"
DETECTOR_FILE = file_name(WEIGHTS.url)
EXAMPLE_BOXES = "dog 38 166 218 346\nperson 284 56 484 456"  # the reference's first example, in 512 px


class ObjectDetectorLoader(WeightsFileLoader):
    DESCRIPTION = f"Loads torchvision's fasterrcnn_resnet50_fpn_v2 COCO detector ({DETECTOR_FILE} in models/ugd) for object location guidance."
    CATEGORY = "universal_guidance/loaders"
    RETURN_TYPES = (DETECTOR_MODEL,)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"weights": weights_input(DETECTOR_FILE)}}

    def load(self, weights):
        return (managed(load_network(weights, WEIGHTS.url, build_detector)),)


class ObjectLocationGuidance:
    DESCRIPTION = ("Guides objects into boxes: Faster R-CNN's training loss (classifier + objectness + RPN box "
                   "regression) for the given COCO-labelled boxes (paper §4.2). Paper settings: w = 100, recurrence "
                   "k = 3, a text prompt, cfg 1.5.")
    CATEGORY = "universal_guidance/guidance"
    RETURN_TYPES = (GUIDANCE,)
    FUNCTION = "guide"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "detector": (DETECTOR_MODEL, {"tooltip": "From Object Detector Loader."}),
            "boxes": ("STRING", {"multiline": True, "default": EXAMPLE_BOXES,
                                 "tooltip": "One box per line: a COCO class and x0 y0 x1 y1 (left, top, right, bottom). For a batch with "
                                            "other boxes for each image, give one set per image, each after a line '---' but the first."}),
            "units": (list(UNITS), {"default": "auto",
                                    "tooltip": "pixels of the sampled image, or fractions of its width and height. auto: fractions if every number is at most 1."}),
            "proposal_seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1,
                                      "tooltip": "Seeds the detector's random proposal sampling, so that runs reproduce."}),
            **settings_inputs(),
        }}

    def guide(self, detector, boxes, units, proposal_seed, **settings):
        box_sets = parse_box_sets(boxes, units, detector.model.categories)
        for parsed in box_sets:
            detector.model.check_boxes(parsed.labels)
        loss = ObjectLocationLoss(detector.model, box_sets, proposal_seed)
        count = (f"{len(box_sets[0].labels)} boxes" if len(box_sets) == 1 else f"{len(box_sets)} box sets, one per image")
        return guidance_output(f"object location guidance ({count})", loss, [detector], **settings)


class ObjectLocationReward:
    DESCRIPTION = ("Scores particles by the boxes the detector finds: the best overlap × confidence for each given "
                   "box. A reward only (the options node's particles): it ranks images better than the training "
                   "loss that Object Location Guidance steers with, but gives no gradient.")
    CATEGORY = "universal_guidance/guidance"
    RETURN_TYPES = (GUIDANCE,)
    FUNCTION = "reward"

    @classmethod
    def INPUT_TYPES(cls):
        required = ObjectLocationGuidance.INPUT_TYPES()["required"]
        return {"required": {name: required[name] for name in ("detector", "boxes", "units")}}

    def reward(self, detector, boxes, units):
        box_sets = parse_box_sets(boxes, units, detector.model.categories)
        count = (f"{len(box_sets[0].labels)} boxes" if len(box_sets) == 1 else f"{len(box_sets)} box sets, one per image")
        return guidance_output(f"object location reward ({count})", DetectedBoxesLoss(detector.model, box_sets),
                               [detector], reward_only=True)


NODE_CLASS_MAPPINGS = {
    "UGDObjectDetectorLoader": ObjectDetectorLoader,
    "UGDObjectLocationGuidance": ObjectLocationGuidance,
    "UGDObjectLocationReward": ObjectLocationReward,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "UGDObjectDetectorLoader": "Object Detector Loader (Faster R-CNN)",
    "UGDObjectLocationGuidance": "Object Location Guidance",
    "UGDObjectLocationReward": "Object Location Reward (particles)",
}
