"""The shipped workflows in a real ComfyUI server: /object_info, the frontend in headless Chromium, and /prompt.

The browser tests need Chromium (Debian's `chromium`) and Playwright; without them they are skipped, unless
UGD_REQUIRE_BROWSER=1 (as in CI), where that is a failure. Screenshots go to test-output/screenshots/<host>/.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.error
import urllib.request

import pytest

from comfy_server import ComfyServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS_DIR = os.path.join(ROOT, "workflows")
sys.path.insert(0, os.path.join(ROOT, "tools"))
from run_workflow import FILE_INPUTS, with_stand_ins  # noqa: E402
from workflow_format import FRONTEND_ONLY, check_ui, declared_inputs, socket_inputs, widget_inputs  # noqa: E402

UI_FILES = sorted(f for f in os.listdir(WORKFLOWS_DIR) if f.endswith(".json"))
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]
# The app object: current frontends keep it in comfyAPI, the 2024 one on window.
APP = "(window.comfyAPI?.app?.app ?? window.app)"
VISIBLE_DIALOGS = """() => Array.from(document.querySelectorAll('.comfy-modal, .p-dialog, [role=dialog]'))
    .filter(e => getComputedStyle(e).display !== 'none' && getComputedStyle(e).visibility !== 'hidden'
                 && e.getBoundingClientRect().height > 0)
    .map(e => e.innerText.trim().slice(0, 400))"""


def load(name):
    with open(os.path.join(WORKFLOWS_DIR, name), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def server():
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        pytest.fail("Set COMFYUI_PATH to a ComfyUI checkout (tools/test does).")
    comfy_server = ComfyServer(path)
    yield comfy_server
    comfy_server.close()


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


@pytest.mark.parametrize("name", UI_FILES)
def test_workflow_is_consistent_with_the_servers_object_info(object_info, name):
    assert check_ui(load(name), object_info, FILE_INPUTS) == []


@pytest.mark.parametrize("name", UI_FILES)
def test_workflow_runs_end_to_end_through_prompt_with_stand_ins(server, name):
    prompt = with_stand_ins(load(os.path.join("api", name)))
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    savers = [node_id for node_id, node in prompt.items() if node["class_type"] == "SaveImage"]
    for node_id in savers:
        images = entry["outputs"][node_id]["images"]
        assert len(images) == 1
        assert os.path.getsize(os.path.join(server.output_dir, images[0]["subfolder"], images[0]["filename"])) > 0


def test_a_loader_of_another_type_with_the_same_id_and_inputs_is_not_taken_from_the_cache(server):
    """ComfyUI of 2024 keyed its cache by node id and inputs; the loaders' IS_CHANGED keeps types apart."""
    detector = with_stand_ins(load("api/sd15_object_location_guidance.json"))
    face = with_stand_ins(load("api/sd15_face_guidance.json"))
    assert detector["6"]["inputs"] == face["6"]["inputs"] and detector["6"]["class_type"] != face["6"]["class_type"]
    assert server.run(detector)["status"]["status_str"] == "success"
    entry = server.run(face)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]


def test_current_comfyui_offers_the_workflows_as_templates_and_not_their_api_twins(server):
    try:
        templates = server.get("/api/workflow_templates")
    except urllib.error.HTTPError as error:
        if error.code == 404:
            pytest.skip("this ComfyUI has no workflow templates of custom nodes (before 2025)")
        raise
    assert sorted(templates["comfyui_universal_guidance"]) == sorted(name[:-len(".json")] for name in UI_FILES)
    workflow = server.get(f"/api/workflow_templates/comfyui_universal_guidance/{UI_FILES[0]}")
    assert workflow == load(UI_FILES[0])
    for name in UI_FILES:  # each card's thumbnail, served beside its workflow
        thumbnail = name.replace(".json", ".jpg")
        with urllib.request.urlopen(f"{server.url}/api/workflow_templates/comfyui_universal_guidance/{thumbnail}") as response:
            with open(os.path.join(WORKFLOWS_DIR, thumbnail), "rb") as f:
                assert response.read() == f.read()


# --- the frontend ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    chromium = os.environ.get("UGD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        chromium = None
    if not chromium:
        message = "no Chromium or no Playwright: install Debian's chromium (tools/setup-browser) and playwright"
        if os.environ.get("UGD_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS, headless=True)
        yield instance
        instance.close()


class FrontendPage:
    """A fresh ComfyUI page that records uncaught errors."""

    def __init__(self, browser, server):
        self.page = browser.new_page(viewport={"width": 1920, "height": 1080})
        self.errors = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.goto(server.url)
        self.page.wait_for_function(f"() => {APP}?.graph && {APP}.canvas", timeout=120_000)
        self.page.wait_for_timeout(2000)  # the app finishes its start-up (settings, templates) before loading
        # Errors of the app's own start-up (e.g. current ComfyUI without its optional template package) are not
        # a workflow's; only those from loading one count.
        self.errors.clear()

    def load(self, workflow: dict):
        self.page.evaluate(f"async (workflow) => {{ await {APP}.loadGraphData(workflow); }}", workflow)
        self.page.wait_for_timeout(1000)

    def screenshot(self, path: str):
        """A screenshot with the whole graph in view."""
        self.page.evaluate(f"""() => {{
            const canvas = {APP}.canvas, nodes = {APP}.graph._nodes;
            const left = Math.min(...nodes.map(n => n.pos[0])), top = Math.min(...nodes.map(n => n.pos[1])) - 40;
            const right = Math.max(...nodes.map(n => n.pos[0] + n.size[0]));
            const bottom = Math.max(...nodes.map(n => n.pos[1] + n.size[1]));
            const scale = Math.min(1, 1800 / (right - left), 1000 / (bottom - top));
            canvas.ds.scale = scale;
            canvas.ds.offset = [20 / scale - left, 40 / scale - top];
            canvas.setDirty(true, true);
        }}""")
        self.page.wait_for_timeout(300)
        self.page.screenshot(path=path)

    def dialogs(self) -> list[str]:
        return self.page.evaluate(VISIBLE_DIALOGS)

    def graph(self) -> list[dict]:
        return self.page.evaluate(f"""() => {APP}.graph._nodes.map(n => ({{
            id: n.id, type: n.type,
            widgets: Object.fromEntries((n.widgets ?? []).map(w => [w.name, w.value])),
            inputs: (n.inputs ?? []).map(i => i.name)}}))""")

    def prompt(self) -> dict:
        return self.page.evaluate(f"async () => (await {APP}.graphToPrompt()).output")

    def close(self):
        self.page.close()


@pytest.fixture(scope="module")
def returning_user(server):
    """Current frontends open "Get Started with a Template" on a user's first page (Comfy.TutorialCompleted
    false), which would sit over the first workflow a test loads; the server's settings say it was seen."""
    assert server.post("/settings", {"Comfy.TutorialCompleted": True})[0] == 200
    assert server.get("/settings/Comfy.TutorialCompleted") is True


@pytest.fixture
def frontend(browser, server, returning_user):
    page = FrontendPage(browser, server)
    yield page
    page.close()


def screenshot_path(name: str) -> str:
    host = os.path.basename(os.path.normpath(os.environ.get("COMFYUI_PATH", "comfyui")))
    folder = os.path.join(ROOT, "test-output", "screenshots", host)
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, name.replace(".json", ".png"))


@pytest.mark.parametrize("name", UI_FILES)
def test_workflow_loads_in_the_frontend_with_every_node_and_widget(frontend, object_info, name):
    workflow = load(name)
    frontend.load(workflow)
    frontend.screenshot(screenshot_path(name))
    assert frontend.dialogs() == [], "a dialog opened while loading"
    assert frontend.errors == []

    loaded = {node["id"]: node for node in frontend.graph()}
    assert sorted(loaded) == sorted(node["id"] for node in workflow["nodes"])
    for node in workflow["nodes"]:
        shown = loaded[node["id"]]
        assert shown["type"] == node["type"]
        if node["type"] in FRONTEND_ONLY:
            continue
        definition = object_info[node["type"]]
        expected = widget_inputs(node, definition)
        assert {k: shown["widgets"].get(k) for k in expected} == expected, f"node {node['id']} ({node['type']})"
        assert {name for name, _ in socket_inputs(definition)} <= set(shown["inputs"])

    # The frontend's own "Export (API)" conversion is the shipped API twin. The 2024 frontend also exports
    # its upload button as an input, which the server ignores; only declared inputs are compared.
    def declared(prompt):
        return {node_id: (node["class_type"], {k: v for k, v in node["inputs"].items()
                                               if k in dict(declared_inputs(object_info[node["class_type"]]))})
                for node_id, node in prompt.items()}

    twin = load(os.path.join("api", name))
    assert declared(frontend.prompt()) == declared(twin)
    assert all(twin[k]["inputs"].keys() <= dict(declared_inputs(object_info[v["class_type"]])).keys() for k, v in twin.items())


def _has_templates_browser(page) -> bool:
    return page.evaluate(f"() => !!{APP}.extensionManager?.command")


def test_a_first_time_user_would_get_the_template_dialog_that_the_setting_keeps_shut(browser, server, returning_user):
    """What `returning_user` prevents: with Comfy.TutorialCompleted false, a fresh page opens the dialog."""
    assert server.post("/settings", {"Comfy.TutorialCompleted": False})[0] == 200
    page = None
    try:
        page = FrontendPage(browser, server)
        if not _has_templates_browser(page.page):
            pytest.skip("this frontend has no Templates browser (before 2025)")
        page.page.wait_for_function("() => document.body.innerText.includes('Get Started with a Template')",
                                    timeout=30_000)
    finally:
        assert server.post("/settings", {"Comfy.TutorialCompleted": True})[0] == 200
        if page is not None:
            page.close()


def test_the_templates_browser_shows_every_workflow_with_its_thumbnail(frontend):
    if not _has_templates_browser(frontend.page):
        pytest.skip("this frontend has no Templates browser (before 2025)")
    frontend.page.evaluate(f"() => {APP}.extensionManager.command.execute('Comfy.BrowseTemplates')")
    # The cards in view load their .jpg (512×384); the ones below the fold load when scrolled to.
    frontend.page.wait_for_function("""() => Array.from(document.images)
        .filter(i => i.complete && i.naturalWidth === 512 && i.naturalHeight === 384).length >= 4""", timeout=30_000)
    # The browser renders the first dozen cards and the rest as its grid is scrolled: scroll until all have shown.
    names = [name[:-len(".json")] for name in UI_FILES]
    shown = frontend.page.evaluate_handle("() => new Set()")
    try:
        frontend.page.wait_for_function("""([names, shown]) => {
            const text = Array.from(document.querySelectorAll('[role=dialog]')).map(e => e.innerText).join(' ');
            names.filter(n => text.includes(n)).forEach(n => shown.add(n));
            document.querySelectorAll('[role=dialog] *').forEach(e => {
                if (e.scrollHeight > e.clientHeight + 1) e.scrollTop += e.clientHeight; });
            return text.includes('Get Started with a Template') && names.every(n => shown.has(n));
        }""", arg=[names, shown], timeout=30_000, polling=250)
    except Exception:
        missing = frontend.page.evaluate("([names, shown]) => names.filter(n => !shown.has(n))", [names, shown])
        pytest.fail(f"the Templates browser never showed {missing}")
    frontend.page.screenshot(path=screenshot_path("templates_browser.json"))


def test_frontend_check_sees_a_missing_node_type(frontend):
    """The dialog check above can fail: a workflow with an unknown node type opens the missing-nodes dialog."""
    workflow = load("sd15_clip_text_guidance.json")
    workflow["nodes"][1]["type"] = "UGDNodeThatDoesNotExist"
    frontend.load(workflow)
    assert any("UGDNodeThatDoesNotExist" in text for text in frontend.dialogs())
