"""Draw the Templates-browser thumbnail of every shipped workflow: workflows/<name>.jpg beside <name>.json.

    bash tools/draw-workflow-thumbnails        (run by hand after the workflows change; the JPGs are committed)

ComfyUI shows a custom node pack's workflows as templates, each with the .jpg of the same name as its card. A
card shows the workflow's title (its note's first sentence) and what it steers towards, read from its API twin:
the CLIP text, the loaded target images (segmentation map, reference face, style), the boxes, the photo with
its hole; the toy world's card shows its real result, from running it headless through ComfyUI.
"""
from __future__ import annotations

import glob
import json
import os
import sys
import tempfile
import textwrap

from PIL import Image, ImageDraw, ImageFont

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS = os.path.join(PACK_DIR, "workflows")
INPUTS = os.path.join(WORKFLOWS, "inputs")
WIDTH, HEIGHT, TITLE_HEIGHT, MARGIN = 512, 384, 92, 12
BACKGROUND, TEXT, CAPTION = (24, 26, 32), (240, 240, 240), (170, 176, 190)
BOX_COLOURS = [(255, 196, 0), (0, 200, 255), (255, 90, 120), (120, 255, 120)]


def font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


ACRONYMS = {"CLIP", "SD", "VOC", "UGD"}


def title_of(workflow: dict) -> str:
    """The note's headline, up to its paper reference: "CLIP TEXT GUIDANCE on Stable Diffusion … (paper §4.1,
    Fig. 3)" becomes "CLIP text guidance on Stable Diffusion … (paper sec. 4.1, Fig. 3)"."""
    notes = [node["widgets_values"][0] for node in workflow["nodes"] if node["type"] == "Note"]
    first = notes[0].split("\n")[0] if notes else ""
    headline = first[:first.index(")") + 1] if "(paper" in first else first.split(". ")[0]
    title = " ".join(w.lower() if w.isupper() and w.strip(":,") not in ACRONYMS else w for w in headline.split(" "))
    return (title[:1].upper() + title[1:]).replace("§", "sec. ")  # the default font has no §


def fitted(image: Image.Image, width: int, height: int) -> Image.Image:
    image = image.convert("RGB")
    scale = min(width / image.width, height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.NEAREST if scale >= 2 else Image.LANCZOS)


def text_panel(text: str, width: int, height: int) -> Image.Image:
    panel = Image.new("RGB", (width, height), (44, 48, 60))
    draw = ImageDraw.Draw(panel)
    lines = textwrap.wrap(f"“{text}”", 18)
    draw.multiline_text((width // 2, height // 2), "\n".join(lines), font=font(30), fill=TEXT, anchor="mm",
                        align="center", spacing=8)
    return panel


def boxes_panel(boxes: str, units: str, width: int, height: int) -> Image.Image:
    """The boxes (label x0 y0 x1 y1 per line) on a square canvas, as the detector's targets."""
    side = min(width, height)
    panel = Image.new("RGB", (side, side), (60, 64, 76))
    draw = ImageDraw.Draw(panel)
    for i, line in enumerate(boxes.strip().splitlines()):
        label, *numbers = line.split()
        x0, y0, x1, y1 = (float(v) * (side if units == "fractions" else 1) for v in numbers)
        colour = BOX_COLOURS[i % len(BOX_COLOURS)]
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=4)
        draw.text((x0 + 6, y0 + 4), label, font=font(20), fill=colour)
    return panel


def hole_panel(photo: str, hole: str, width: int, height: int) -> Image.Image:
    """The photo with the hole to be generated shown as a grey checkerboard."""
    image = Image.open(os.path.join(INPUTS, photo)).convert("RGB")
    mask = Image.open(os.path.join(INPUTS, hole)).convert("L").resize(image.size)
    checks = Image.new("RGB", image.size, (150, 150, 150))
    draw = ImageDraw.Draw(checks)
    cell = max(8, image.width // 24)
    for y in range(0, image.height, cell):
        for x in range((y // cell % 2) * cell, image.width, 2 * cell):
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=(100, 100, 100))
    return fitted(Image.composite(checks, image, mask), width, height)


def toy_result(workflow_path: str, width: int, height: int) -> Image.Image:
    """The toy workflow's own grid (target | unguided | guided), from a headless run."""
    sys.path.insert(0, os.path.join(PACK_DIR, "tools"))
    import run_workflow

    with tempfile.TemporaryDirectory() as output:
        if run_workflow.main([workflow_path, "--output", output]) != 0:
            raise RuntimeError(f"{workflow_path} did not run")
        (grid,) = glob.glob(os.path.join(output, run_workflow.DEMO_PICTURE_PREFIX + "_*_.png"))
        return fitted(Image.open(grid), width, height)


def panels(name: str, prompt: dict, width: int, height: int) -> list[tuple[Image.Image, str]]:
    """(picture, caption) of what the workflow steers towards."""
    if name.startswith("toy_world"):
        return [(toy_result(os.path.join(WORKFLOWS, name + ".json"), width, height), "its real result: target | unguided | guided")]
    nodes = sorted(prompt.values(), key=lambda node: node["class_type"])
    found = []
    photo = next((n["inputs"]["image"] for n in nodes if n["class_type"] == "LoadImage"), None)
    hole = next((n["inputs"]["image"] for n in nodes if n["class_type"] == "LoadImageMask"), None)
    if hole:
        found.append((hole_panel(photo, hole, width, height), "the hole to fill, in the photo"))
    elif photo:
        title = next(n["_meta"]["title"] for n in nodes if n["class_type"] == "LoadImage")
        found.append((fitted(Image.open(os.path.join(INPUTS, photo)), width, height), title.lower()))
    for node in nodes:
        if node["class_type"] == "UGDCLIPTextGuidance":
            found.append((text_panel(node["inputs"]["text"], width, height), "the CLIP text"))
    location = [n for n in nodes if n["class_type"] == "UGDObjectLocationGuidance"]
    particles = max([n["inputs"]["particles"] for n in nodes if n["class_type"] == "UGDGuidanceOptions"], default=1)
    if location:
        found.append((boxes_panel(location[0]["inputs"]["boxes"], location[0]["inputs"]["units"], width, height),
                      "the boxes to place" + (", forward vs forward + backward" if len(location) > 1 else "")
                      + (f", best of {particles} particles" if particles > 1 else "")))
    if not found:
        raise ValueError(f"{name}: no target to draw; teach panels() its guidance")
    return found


def thumbnail(name: str) -> Image.Image:
    with open(os.path.join(WORKFLOWS, name + ".json"), encoding="utf-8") as f:
        workflow = json.load(f)
    with open(os.path.join(WORKFLOWS, "api", name + ".json"), encoding="utf-8") as f:
        prompt = json.load(f)
    card = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(card)
    draw.multiline_text((MARGIN, MARGIN), "\n".join(textwrap.wrap(title_of(workflow), 44)[:3]), font=font(20),
                        fill=TEXT, spacing=4)
    area_height = HEIGHT - TITLE_HEIGHT - 2 * MARGIN - 22
    pictures = panels(name, prompt, WIDTH - 2 * MARGIN, area_height)
    width = (WIDTH - MARGIN * (len(pictures) + 1)) // len(pictures)
    for i, (picture, caption) in enumerate(pictures):
        picture = fitted(picture, width, area_height)
        left = MARGIN + i * (width + MARGIN)
        card.paste(picture, (left + (width - picture.width) // 2, TITLE_HEIGHT + (area_height - picture.height) // 2))
        draw.text((left + width // 2, HEIGHT - MARGIN - 8), caption, font=font(15), fill=CAPTION, anchor="mm")
    return card


def main() -> None:
    for path in sorted(glob.glob(os.path.join(WORKFLOWS, "*.json"))):
        name = os.path.basename(path)[:-len(".json")]
        target = os.path.join(WORKFLOWS, name + ".jpg")
        thumbnail(name).save(target, quality=90)
        print("wrote", target)


if __name__ == "__main__":
    main()
