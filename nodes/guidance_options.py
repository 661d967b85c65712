"""The Universal Guidance Options node: every lever of the guided samplers, built from the settings' own fields
(samplers/settings.py), so that a new lever shows here without touching this file."""
from __future__ import annotations

from ..samplers.settings import Settings, option_fields, widget

OPTIONS = "UGD_OPTIONS"


class GuidanceOptions:
    DESCRIPTION = ("Every lever of the guided samplers: the method and its strengths and schedules, recurrence, the "
                   "step windows, the gradient path, the decoder, known pixels, particles, memory and precision. With "
                   "preset custom the sampler runs these values; a named preset replaces the ones it sets and keeps "
                   "the others, particles included.")
    CATEGORY = "universal_guidance"
    RETURN_TYPES = (OPTIONS,)
    RETURN_NAMES = ("options",)
    OUTPUT_TOOLTIPS = ("For a guided sampler's options input.",)
    FUNCTION = "options"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {field.name: widget(field.name) for field in option_fields()}}

    def options(self, **levers):
        return (Settings(**levers),)


NODE_CLASS_MAPPINGS = {"UGDGuidanceOptions": GuidanceOptions}
NODE_DISPLAY_NAME_MAPPINGS = {"UGDGuidanceOptions": "Universal Guidance Options"}
