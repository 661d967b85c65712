"""Image Grid: pictures side by side, one column per input and one row per batch item, for comparing runs."""
from __future__ import annotations

import torch
import torchvision


class ImageGrid:
    DESCRIPTION = ("Puts images side by side in one picture: one column per input (e.g. target, unguided, guided) and "
                   "one row per batch item. An input with a batch of 1 is repeated on every row.")
    CATEGORY = "universal_guidance/image"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "grid"

    @classmethod
    def INPUT_TYPES(cls):
        columns = {f"image_{i}": ("IMAGE", {"tooltip": f"Column {i}."}) for i in range(1, 5)}
        return {"required": {"image_1": columns.pop("image_1"), "image_2": columns.pop("image_2"),
                             "gap": ("INT", {"default": 2, "min": 0, "max": 64, "tooltip": "White pixels between pictures."})},
                "optional": columns}

    def grid(self, image_1, image_2, gap, image_3=None, image_4=None):
        columns = [image for image in (image_1, image_2, image_3, image_4) if image is not None]
        size, rows = columns[0].shape[1:3], max(image.shape[0] for image in columns)
        for number, image in enumerate(columns, start=1):
            if image.shape[1:3] != size:
                raise ValueError(f"Image Grid: image_{number} is {image.shape[2]}x{image.shape[1]}, but image_1 is "
                                 f"{size[1]}x{size[0]}: scale them to one size first (e.g. Upscale Image).")
            if image.shape[0] not in (1, rows):
                raise ValueError(f"Image Grid: image_{number} has a batch of {image.shape[0]}; give 1 or {rows}.")
        cells = torch.stack([image[..., :3].expand(rows, *image.shape[1:3], 3) for image in columns], dim=1)
        picture = torchvision.utils.make_grid(cells.flatten(0, 1).movedim(-1, 1), nrow=len(columns), padding=gap, pad_value=1.0)
        return (picture[None].movedim(1, -1),)


NODE_CLASS_MAPPINGS = {"UGDImageGrid": ImageGrid}
NODE_DISPLAY_NAME_MAPPINGS = {"UGDImageGrid": "Image Grid (side by side)"}
