"""Combine Guidance: stack GUIDANCE inputs, each keeping its own settings (paper §3.4, multiple (f, ℓ) pairs)."""
from __future__ import annotations

from ..samplers.terms import combine
from .guidance_settings import GUIDANCE


class CombineGuidance:
    DESCRIPTION = "Applies every input guidance in one run; their updates add up, each with its own s(t), backward steps and window."
    CATEGORY = "universal_guidance/guidance"
    RETURN_TYPES = (GUIDANCE,)
    FUNCTION = "combine"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"guidance_1": (GUIDANCE, {"tooltip": "A guidance to apply."}),
                         "guidance_2": (GUIDANCE, {"tooltip": "Another guidance, applied in the same run."})},
            "optional": {"guidance_3": (GUIDANCE, {"tooltip": "A third guidance, if any."}),
                         "guidance_4": (GUIDANCE, {"tooltip": "A fourth guidance, if any."})},
        }

    def combine(self, guidance_1, guidance_2, guidance_3=None, guidance_4=None):
        return (combine(*(g for g in (guidance_1, guidance_2, guidance_3, guidance_4) if g is not None)),)


NODE_CLASS_MAPPINGS = {"UGDCombineGuidance": CombineGuidance}
NODE_DISPLAY_NAME_MAPPINGS = {"UGDCombineGuidance": "Combine Guidance"}
