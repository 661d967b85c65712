"""The ComfyUI layer: node classes that turn ComfyUI inputs into engine calls.

The developer stand-ins (small random-weight models for tests and wiring checks) are registered only when
UGD_DEVELOPER_NODES=1, which the pack's own tools and tests set; a user's ComfyUI never lists them.
"""
import os

from . import (adm_model, classifier_guidance, clip_guidance, combine_guidance, deprecated_sampler_nodes, face_guidance,
               guidance_options, guider, image_grid, noise_aware_classifier_guidance, object_location_guidance,
               reconstruction_guidance, reward_only_guidance, sampler_nodes, segmentation_guidance, toy_world_loaders)
from .model_folder import register_model_folder

DEVELOPER_NODES = "UGD_DEVELOPER_NODES"

register_model_folder()

_MODULES = [sampler_nodes, guider, guidance_options, combine_guidance, reward_only_guidance, clip_guidance,
            segmentation_guidance, face_guidance, object_location_guidance, classifier_guidance, reconstruction_guidance,
            toy_world_loaders, adm_model, noise_aware_classifier_guidance, image_grid, deprecated_sampler_nodes]
if os.environ.get(DEVELOPER_NODES) == "1":
    from . import stand_in_families, stand_ins

    _MODULES += [stand_ins, stand_in_families]
NODE_CLASS_MAPPINGS = {k: v for m in _MODULES for k, v in m.NODE_CLASS_MAPPINGS.items()}
NODE_DISPLAY_NAME_MAPPINGS = {k: v for m in _MODULES for k, v in m.NODE_DISPLAY_NAME_MAPPINGS.items()}
