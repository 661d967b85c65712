"""Draw the pack's registry icon, docs/icon.png: the toy demo's first row (docs/toy_demo.png, the main job's
picture), its target map beside its guided sample, on a 256 × 256 square.

    <the environment's python> tools/draw_icon.py
"""
from __future__ import annotations

import os

from PIL import Image

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
SIZE = 256


def draw_icon(demo: Image.Image) -> Image.Image:
    """The demo grid's first row: its target map (the first cell) and its guided sample (the last)."""
    cell = demo.height // 4  # four rows, one per seed
    target, guided = (demo.crop((x, 0, x + cell, cell)) for x in (0, demo.width - cell))
    icon = Image.new("RGB", (SIZE, SIZE), "white")
    half = SIZE // 2
    icon.paste(target.resize((half, half), Image.NEAREST), (0, SIZE // 4))
    icon.paste(guided.resize((half, half), Image.LANCZOS), (half, SIZE // 4))
    return icon


if __name__ == "__main__":
    draw_icon(Image.open(os.path.join(DOCS, "toy_demo.png")).convert("RGB")).save(os.path.join(DOCS, "icon.png"))
    print(f"wrote {os.path.join(DOCS, 'icon.png')}")
