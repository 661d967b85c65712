"""The ComfyUI layer: node classes that turn ComfyUI inputs into engine calls."""
from . import clip_guidance, combine_guidance, reconstruction_guidance, sampler_nodes, stand_ins
from .model_folder import register_model_folder

register_model_folder()

_MODULES = (sampler_nodes, combine_guidance, clip_guidance, reconstruction_guidance, stand_ins)
NODE_CLASS_MAPPINGS = {k: v for m in _MODULES for k, v in m.NODE_CLASS_MAPPINGS.items()}
NODE_DISPLAY_NAME_MAPPINGS = {k: v for m in _MODULES for k, v in m.NODE_DISPLAY_NAME_MAPPINGS.items()}
