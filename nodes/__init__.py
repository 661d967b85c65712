"""The ComfyUI layer: node classes that turn ComfyUI inputs into engine calls."""
from . import (adm_model, classifier_guidance, clip_guidance, combine_guidance, face_guidance, image_grid,
               noise_aware_classifier_guidance, object_location_guidance, reconstruction_guidance, sampler_nodes,
               segmentation_guidance, stand_in_families, stand_ins, toy_world_loaders)
from .model_folder import register_model_folder

register_model_folder()

_MODULES = (sampler_nodes, combine_guidance, clip_guidance, segmentation_guidance, face_guidance, object_location_guidance,
            classifier_guidance, reconstruction_guidance, toy_world_loaders, adm_model, noise_aware_classifier_guidance,
            image_grid, stand_ins, stand_in_families)
NODE_CLASS_MAPPINGS = {k: v for m in _MODULES for k, v in m.NODE_CLASS_MAPPINGS.items()}
NODE_DISPLAY_NAME_MAPPINGS = {k: v for m in _MODULES for k, v in m.NODE_DISPLAY_NAME_MAPPINGS.items()}
