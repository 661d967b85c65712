import os
import sys
import tempfile

# The engine and guidance packages import as top-level packages here, with no ComfyUI involved.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def comfy():
    """The ComfyUI at COMFYUI_PATH, loaded in this process with the pack and the tests' custom nodes installed."""
    from tools.comfy_headless import ComfyHost

    path = os.environ.get("COMFYUI_PATH")
    if not path:
        pytest.fail("Set COMFYUI_PATH to a ComfyUI checkout to run the integration tests (tools/test does).")
    custom_nodes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "custom_nodes")
    return ComfyHost(path, input_dir=tempfile.mkdtemp(prefix="ugd_input_"), extra_custom_nodes=(custom_nodes,))
