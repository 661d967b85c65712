"""Make the example inputs of the shipped workflows, in workflows/inputs/ (run by hand; the PNGs are committed).

Every image is drawn here or cut from a public-domain or CC0 photo that scikit-image ships; SOURCES.md in
that folder says which is which. Needs Pillow, NumPy and scikit-image (all in tools/requirements-dev.txt).
"""
from __future__ import annotations

import os
import sys

import numpy as np
from PIL import Image, ImageDraw
from skimage import data

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INPUTS = os.path.join(PACK_DIR, "workflows", "inputs")
sys.path.insert(0, PACK_DIR)
from guidance.segmentation import voc_palette  # noqa: E402
from toy_world import data as toy_data  # noqa: E402
SIZE = 512
VOC_DOG = (64, 0, 128)


def segmentation_map_dog() -> Image.Image:
    """A standing dog's silhouette in the PASCAL VOC palette colour for 'dog', on background (black)."""
    image = Image.new("RGB", (SIZE, SIZE), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.ellipse((130, 210, 390, 350), fill=VOC_DOG)                       # body
    draw.ellipse((320, 120, 440, 240), fill=VOC_DOG)                       # head
    draw.polygon([(400, 200), (470, 215), (470, 250), (400, 240)], fill=VOC_DOG)  # muzzle
    draw.polygon([(330, 150), (300, 240), (350, 210)], fill=VOC_DOG)        # ear
    draw.polygon([(340, 250), (360, 200), (400, 240), (380, 280)], fill=VOC_DOG)  # neck
    for x in (150, 200, 310, 350):                                          # legs
        draw.rectangle((x, 320, x + 32, 450), fill=VOC_DOG)
    draw.polygon([(140, 250), (70, 170), (85, 160), (160, 235)], fill=VOC_DOG)  # tail
    return image


def style_swirls() -> Image.Image:
    """Yellow spiral strokes on deep blue around three centres, a night-sky pattern drawn from formulas."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    field = np.zeros_like(x)
    for cx, cy, arms in ((0.3, 0.35, 3), (0.72, 0.3, -2), (0.55, 0.78, 4)):
        r = np.hypot(x - cx, y - cy) + 1e-3
        theta = np.arctan2(y - cy, x - cx)
        # An integer number of arms keeps each spiral continuous across the angle's branch cut.
        field += np.exp(-r / 0.2) * np.sin(arms * theta + 25.0 * r)
    field += 0.3 * np.sin(14.0 * x + 9.0 * np.sin(6.0 * y))
    strokes = np.clip(0.5 + 0.6 * field, 0.0, 1.0)
    blue, yellow = np.array([20, 40, 110]), np.array([245, 205, 70])
    pixels = blue + strokes[..., None] * (yellow - blue)
    return Image.fromarray(pixels.astype(np.uint8))


def face_reference() -> Image.Image:
    """Eileen Collins' head and shoulders from scikit-image's astronaut photo (NASA, public domain)."""
    return Image.fromarray(data.astronaut()).crop((96, 0, 352, 256))


def inpainting_image() -> Image.Image:
    """The middle square of scikit-image's Chelsea the cat (CC0, Stefan van der Walt), at 512 px."""
    return Image.fromarray(data.chelsea()).crop((75, 0, 375, 300)).resize((SIZE, SIZE), Image.LANCZOS)


def inpainting_hole() -> Image.Image:
    """White where the inpainting generates (the cat's eyes and nose), black where the photo is kept."""
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).ellipse((90, 110, 440, 470), fill=255)
    return mask


TOY_MAP_SEED = 2_000_017  # a scene no toy network was trained on: a triangle and a circle


def toy_segmentation_map() -> Image.Image:
    """The segmentation of a toy scene in the VOC palette colours of its classes (circle = class 1, …)."""
    return Image.fromarray(voc_palette().numpy()[toy_data.scene(TOY_MAP_SEED).segmentation])


def main():
    os.makedirs(INPUTS, exist_ok=True)
    for name, make in (
        ("ugd_segmentation_map_dog.png", segmentation_map_dog),
        ("ugd_style_swirls.png", style_swirls),
        ("ugd_face_reference_astronaut.png", face_reference),
        ("ugd_inpainting_chelsea.png", inpainting_image),
        ("ugd_inpainting_hole.png", inpainting_hole),
        ("ugd_toy_segmentation_map.png", toy_segmentation_map),
    ):
        path = os.path.join(INPUTS, name)
        make().save(path, optimize=True)
        print("wrote", path)


if __name__ == "__main__":
    main()
