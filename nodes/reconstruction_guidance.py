"""Image reconstruction / inpainting guidance node (paper §5.1)."""
from __future__ import annotations

from ..guidance.reconstruction import ReconstructionLoss
from .guidance_settings import GUIDANCE, guidance_output, settings_inputs


class ImageReconstructionGuidance:
    DESCRIPTION = ("ℓ2 between the decoded image and a reference IMAGE where the optional MASK leaves it known "
                   "(mask 1 = generate freely). Defaults to backward guidance only (w = 0), as in paper §5.1. With the "
                   "sampler's known_pixels replace, the known region is also held at its encoding.")
    CATEGORY = "universal_guidance/guidance"
    RETURN_TYPES = (GUIDANCE,)
    FUNCTION = "guide"

    @classmethod
    def INPUT_TYPES(cls):
        # The reference runs 1 Adam step of lr 0.01 per pass over 1000 steps; 5 of lr 0.1 suit 10-50 steps, and the
        # known pixels' polish (tuning half: README, Presets and defaults).
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The reference; resized to the sampled size (same aspect ratio needed)."}),
                **settings_inputs(weight=0.0, backward_steps=5, backward_lr=0.1),
            },
            "optional": {"mask": ("MASK", {"tooltip": "1 where the image is to be generated, 0 where the reference is kept."})},
        }

    def guide(self, image, mask=None, **settings):
        if settings["weight"] == 0 and settings["backward_steps"] == 0 and mask is None:
            raise ValueError("Image Reconstruction Guidance: weight and backward_steps are both 0 and there is no mask "
                             "of pixels to keep, so it would do nothing.")
        return guidance_output("image reconstruction guidance", ReconstructionLoss(image, mask), **settings)


NODE_CLASS_MAPPINGS = {"UGDImageReconstructionGuidance": ImageReconstructionGuidance}
NODE_DISPLAY_NAME_MAPPINGS = {"UGDImageReconstructionGuidance": "Image Reconstruction Guidance"}
