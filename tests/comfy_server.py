"""A real ComfyUI server on 127.0.0.1 with this pack installed, for the frontend and /prompt tests."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from tools.comfy_headless import PACK_DIR, PACK_MODULE

WORKFLOW_INPUTS = os.path.join(PACK_DIR, "workflows", "inputs")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """`python main.py --listen 127.0.0.1` in a scratch folder: its own custom_nodes (this pack, and any
    `extra_custom_nodes` folders), input folder (the workflows' example inputs), output folder and log."""

    def __init__(self, comfyui_path: str, timeout: float = 300, extra_custom_nodes: tuple[str, ...] = ()):
        self.root = tempfile.mkdtemp(prefix="ugd_server_")
        custom_nodes = os.path.join(self.root, "custom_nodes")
        os.makedirs(custom_nodes)
        os.symlink(PACK_DIR, os.path.join(custom_nodes, PACK_MODULE))
        for folder in extra_custom_nodes:
            os.symlink(folder, os.path.join(custom_nodes, os.path.basename(folder)))
        self.input_dir = os.path.join(self.root, "input")
        shutil.copytree(WORKFLOW_INPUTS, self.input_dir)
        self.output_dir = os.path.join(self.root, "output")
        config = os.path.join(self.root, "extra_model_paths.yaml")
        with open(config, "w") as f:
            f.write(f"ugd_tests:\n  base_path: {self.root}\n  custom_nodes: custom_nodes\n")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                   "--extra-model-paths-config", config, "--input-directory", self.input_dir,
                   "--output-directory", self.output_dir]
        if os.path.isdir(os.path.join(comfyui_path, "comfy_api_nodes")):
            command.append("--disable-api-nodes")
        self.log_path = os.path.join(self.root, "server.log")
        self._log = open(self.log_path, "w")
        # the tests' graphs use the pack's stand-ins, which it registers only for its tools and tests
        env = dict(os.environ, UGD_DEVELOPER_NODES="1")
        self.process = subprocess.Popen(command, cwd=comfyui_path, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while True:
            try:
                self.get("/object_info/UGDGuidedKSampler")
                return
            except (urllib.error.URLError, ConnectionError, KeyError):
                if self.process.poll() is not None or time.time() > deadline:
                    self.close()
                    raise RuntimeError(f"ComfyUI server did not start; its log:\n{self.log()}")
                time.sleep(1)

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict):
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def run(self, prompt: dict, timeout: float = 600, client_id: str = "ugd-tests") -> dict:
        """POST the prompt to /prompt and wait for its /history entry."""
        return self.wait(self.submit(prompt, client_id), timeout)

    def submit(self, prompt: dict, client_id: str = "ugd-tests") -> str:
        """POST the prompt to /prompt; its prompt id."""
        status, answer = self.post("/prompt", {"prompt": prompt, "client_id": client_id})
        if status != 200:
            raise AssertionError(f"/prompt refused the prompt ({status}): {json.dumps(answer)[:3000]}")
        return answer["prompt_id"]

    def resident_memory(self) -> int:
        """The server process's resident memory in bytes."""
        with open(f"/proc/{self.process.pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        """The prompt's /history entry, once it has run."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")  # an entry appears once the prompt has run
            if prompt_id in history:
                return history[prompt_id]
            time.sleep(1)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")

    def close(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log.close()


class ServerEvents:
    """The websocket messages the server sends one client id, collected in a background thread: JSON messages
    as dicts, and the progress texts of `PromptServer.send_progress_text` as {"type": "progress_text", "data":
    {"node": id, "text": text}}."""

    TEXT_EVENT = 3  # server.BinaryEventTypes.TEXT

    def __init__(self, server: ComfyServer, client_id: str):
        self.url = server.url.replace("http://", "ws://") + f"/ws?clientId={client_id}"
        self.messages: list[dict] = []
        self._connected, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._listen()), daemon=True)
        self._thread.start()
        if not self._connected.wait(60):
            raise RuntimeError(f"could not connect to {self.url}")

    async def _listen(self):
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(self.url) as socket_:
                self._connected.set()
                while not self._stop.is_set():
                    try:
                        message = await socket_.receive(timeout=0.5)
                    except asyncio.TimeoutError:
                        continue
                    if message.type == aiohttp.WSMsgType.TEXT:
                        self.messages.append(json.loads(message.data))
                    elif message.type == aiohttp.WSMsgType.BINARY:
                        self._binary(message.data)
                    elif message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        break

    def _binary(self, data: bytes):
        (event,) = struct.unpack(">I", data[:4])
        if event == self.TEXT_EVENT:
            (length,) = struct.unpack(">I", data[4:8])
            node = data[8:8 + length].decode()
            self.messages.append({"type": "progress_text", "data": {"node": node, "text": data[8 + length:].decode()}})

    def of_type(self, kind: str) -> list[dict]:
        return [m["data"] for m in list(self.messages) if m.get("type") == kind]

    def close(self):
        self._stop.set()
        self._thread.join(10)
