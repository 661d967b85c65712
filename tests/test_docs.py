"""The README and docs/: every link resolves to a file and, where it names one, a heading; the README stays one
screen's worth; and the README's presets table is the committed benchmark's."""
from __future__ import annotations

import glob
import json
import os
import re

import pytest

from bench import toy_world_frontier

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(PACK_DIR, "README.md"), *sorted(glob.glob(os.path.join(PACK_DIR, "docs", "*.md")))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def unfenced(path: str) -> str:
    """The page without its fenced code blocks, where neither headings nor links are."""
    return re.sub(r"^```.*?^```", "", open(path, encoding="utf-8").read(), flags=re.S | re.M)


def prose(path: str) -> str:
    """The page without its code, fenced or inline, where brackets are not links."""
    return re.sub(r"`[^`\n]*`", "", unfenced(path))


def anchors(path: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens, repeats
    numbered."""
    seen, found = {}, set()
    for heading in re.findall(r"^#{1,6} (.+)$", unfenced(path), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


def links(path: str) -> list[str]:
    return [target for target in LINK.findall(prose(path)) if not target.startswith(("http://", "https://", "mailto:"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, PACK_DIR))
def test_every_link_points_to_a_file_and_heading_that_exist(page):
    broken = []
    for target in links(page):
        file_part, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), file_part)) if file_part else page
        if not os.path.exists(resolved):
            broken.append(f"{target}: no file {os.path.relpath(resolved, PACK_DIR)}")
        elif anchor and (not resolved.endswith(".md") or anchor not in anchors(resolved)):
            broken.append(f"{target}: no heading #{anchor} in {os.path.relpath(resolved, PACK_DIR)}")
    assert not broken, broken


def test_the_readme_fits_one_screen_and_links_every_docs_page():
    readme = os.path.join(PACK_DIR, "README.md")
    assert len(open(readme, encoding="utf-8").read().splitlines()) <= 250
    linked = {os.path.normpath(os.path.join(PACK_DIR, target.partition("#")[0])) for target in links(readme)}
    unlinked = [page for page in PAGES[1:] if page not in linked]
    assert not unlinked, unlinked


def test_the_readmes_presets_table_is_the_committed_benchmarks():
    results = json.load(open(os.path.join(PACK_DIR, "bench", "frontier", "results_report.json")))
    readme = open(os.path.join(PACK_DIR, "README.md"), encoding="utf-8").read().splitlines()
    rows = toy_world_frontier.preset_summary(results)
    assert len(rows) == 4
    for row in rows:
        assert row in readme, row
    assert [line for line in readme if re.match(r"^\| `(fast|balanced|quality|paper)` \| [\d.]+×", line)] == rows


def test_the_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [gone](missing.md) [nowhere](#no-such-heading)\n`[code](x.md)`\n")
    assert links(str(page)) == ["#title", "missing.md", "#no-such-heading"]
    assert anchors(str(page)) == {"title"}


def test_the_registry_metadata_names_its_docs_icon_and_accelerators():
    import tomllib

    from PIL import Image

    from tools.draw_icon import draw_icon

    project = tomllib.load(open(os.path.join(PACK_DIR, "pyproject.toml"), "rb"))["project"]
    assert os.path.exists(os.path.join(PACK_DIR, project["urls"]["Documentation"]))
    for accelerator in ("NVIDIA CUDA", "AMD ROCm", "Intel Arc", "Apple Metal"):
        assert f"Environment :: GPU :: {accelerator}" in project["classifiers"]
    icon = Image.open(os.path.join(PACK_DIR, "docs", "icon.png"))
    assert icon.width == icon.height
    drawn = draw_icon(Image.open(os.path.join(PACK_DIR, "docs", "toy_demo.png")).convert("RGB"))
    assert icon.convert("RGB").tobytes() == drawn.tobytes()  # the committed icon is the script's
